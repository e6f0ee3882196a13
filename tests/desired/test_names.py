"""xen_tvd.desired.names: device names fit Linux and are derived the same way everywhere."""
from __future__ import annotations

from xen_tvd.desired.names import (IFNAME_MAX, OWNED_NAME_PREFIXES, bridge_name, external_ifname,
                                   leg_peer, leg_port, router_netns)
from xen_tvd.desired.patterns import IFNAME_RE


def test_bridge_names_fit_linux_ifnamsiz():
    assert bridge_name("alpha") == "tvd-alpha"
    long = bridge_name("a-very-long-tvd-name")
    assert len(long) <= 15 and long.startswith("tvd-")
    assert long != bridge_name("a-very-long-tvd-namf")


def test_every_derived_name_is_a_valid_interface_name():
    longest = "t" + "x" * 31                     # the longest policy name
    for name in (bridge_name("a"), bridge_name(longest), external_ifname("corp"),
                 external_ifname(longest), leg_port(4094), leg_peer(4094)):
        assert len(name) <= IFNAME_MAX and IFNAME_RE.match(name), name


def test_external_names_hash_like_bridge_names_when_too_long():
    assert external_ifname("corp") == "ext-corp"
    assert external_ifname("a-very-long-external") != external_ifname("a-very-long-externam")


def test_owned_prefixes_cover_what_the_dataplane_creates_but_not_router_side_names():
    assert bridge_name("a").startswith(OWNED_NAME_PREFIXES)
    assert leg_port(10).startswith(OWNED_NAME_PREFIXES)
    # router-side ends live in the router namespace, which apply() owns as a whole
    assert not leg_peer(10).startswith(OWNED_NAME_PREFIXES)
    assert not external_ifname("corp").startswith(OWNED_NAME_PREFIXES)


def test_router_namespace_of_a_dom0_and_of_a_lab_host():
    assert router_netns("h1") == "tvd-rtr-h1"
    assert router_netns("h1", "lab-h-h1") == "lab-h-h1-rtr"


def test_the_wireguard_device_is_named_as_xen_tvd_owns_it():
    from xen_tvd.desired.names import WIREGUARD_PREFIX
    from xen_tvd.desired.wireguard import DEVICE
    assert DEVICE.startswith(WIREGUARD_PREFIX) and WIREGUARD_PREFIX in OWNED_NAME_PREFIXES
    assert len(DEVICE) <= IFNAME_MAX
