"""Membership extraction from domain XML (xen_tvd.libvirt.domain), no libvirt needed."""
from __future__ import annotations

import pytest

from xen_tvd.libvirt.domain import MembershipError, parse_domain

from tests.libvirt.lv_helpers import EXAMPLE, domain_xml, membership, nic

M1, M2, M3 = "00:16:3e:00:00:01", "00:16:3e:00:00:02", "00:16:3e:00:00:03"


def test_example_domain_two_nics_two_tvds():
    with open(EXAMPLE, "rb") as f:
        m = parse_domain(f.read())
    assert m.name == "web-frontend"
    assert m.tvds == ["alpha", "gamma"]
    assert [(n.devid, n.tvd, n.why) for n in m.nics] == [(0, "alpha", "metadata"),
                                                          (1, "gamma", "network")]
    assert m.properties == {"tpm-measured-boot": "immutable-log"}
    req = m.register_request()
    assert req == {"v": 1, "op": "register", "uuid": "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                   "name": "web-frontend",
                   "nics": [{"devid": 0, "tvd": "alpha"}, {"devid": 1, "tvd": "gamma"}],
                   "properties": {"tpm-measured-boot": "immutable-log"}}


def test_the_vms_tx_checksum_offload_opt_out_is_registered(tmp_path, capsys):
    """<tvd:membership tx-checksum-offload='off'>: as xl.cfg tvd_tx_checksum_offload = 0."""
    xml = domain_xml(nic("bridge", "tvd-alpha", M1),
                     membership(tvd="alpha", **{"tx-checksum-offload": "off"}))
    assert parse_domain(xml).register_request()["tx_checksum_offload"] is False
    for attrs in ({"tx-checksum-offload": "on"}, {}):
        m = parse_domain(domain_xml(nic("bridge", "tvd-alpha", M1), membership(tvd="alpha", **attrs)))
        assert m.tx_checksum_offload and "tx_checksum_offload" not in m.register_request()
    # and `tvdctl libvirt membership` says so
    from xen_tvd.cli.tvdctl import main
    path = tmp_path / "d.xml"
    path.write_text(xml)
    assert main(["libvirt", "membership", str(path)]) == 0
    assert "  vif tx checksum offload: off (tx-checksum-offload='off'; vifs plugged by vif-tvd)" \
        in capsys.readouterr().out.splitlines()


def test_membership_from_network_bridge_and_xl_form():
    m = parse_domain(domain_xml(nic("network", "tvd-alpha", M1) + nic("bridge", "tvd-beta", M2)
                                + nic("bridge", "tvd:gamma", M3)))
    assert [(n.tvd, n.why) for n in m.nics] == [("alpha", "network"), ("beta", "bridge"),
                                                ("gamma", "bridge")]


def test_live_xml_of_a_network_nic_is_read_by_its_network():
    """A running domain's XML (what `reconnect` gets) shows a type='network' NIC as
    type='bridge' with the network, libvirt's port and the bridge; the hashed vSwitch of a long
    TVD name must not make it unreadable."""
    live = ("<interface type='bridge'><mac address='%s'/><source network='%s' "
            "portid='2bb7f7c1-08ed-4cd7-a771-62b912fa4251' bridge='%s'/><target dev='vnet0'/>"
            "</interface>")
    m = parse_domain(domain_xml(live % (M1, "tvd-alpha", "tvd-alpha")
                                + live % (M2, "tvd-finance-department", "tvd-0a1b2c3d4e5")))
    assert [(n.type, n.source, n.tvd, n.why) for n in m.nics] == [
        ("network", "tvd-alpha", "alpha", "network"),
        ("network", "tvd-finance-department", "finance-department", "network")]


def test_domain_wide_tvd_covers_other_nics():
    m = parse_domain(domain_xml(nic("bridge", "br0", M1.upper()) + nic("network", "tvd-beta", M2),
                                membership(tvd="alpha")))
    assert [(n.mac, n.tvd, n.why) for n in m.nics] == [(M1, "alpha", "domain"), (M2, "beta", "network")]


def test_domain_without_membership_is_not_a_member():
    m = parse_domain(domain_xml(nic("network", "default", M1)))
    assert not m.is_member and m.tvds == []


def test_hostdev_interfaces_take_no_devid():
    m = parse_domain(domain_xml("<interface type='hostdev'><mac address='00:16:3e:00:00:09'/></interface>"
                                + nic("network", "default", M1)))
    assert [n.devid for n in m.nics] == [None, 0]


@pytest.mark.parametrize("xml, reason", [
    (domain_xml(nic("network", "tvd-alpha", M1), membership(f"<tvd:nic mac='{M1}' tvd='beta'/>")),
     "metadata puts it in TVD 'beta' but it uses network 'tvd-alpha'"),
    (domain_xml(nic("network", "tvd-alpha", M1) + nic("network", "default", M2)),
     "is in no TVD"),
    (domain_xml(nic("network", "tvd-alpha", M1) + "<interface type='hostdev'><mac address='00:16:3e:00:00:09'/></interface>"),
     "passed-through PCI NIC"),
    (domain_xml(nic("network", "default", M1), membership(f"<tvd:nic mac='{M2}' tvd='alpha'/>")),
     f"<tvd:nic mac='{M2}'> matches no <interface>"),
    (domain_xml(nic("network", "x", M1), membership(f"<tvd:nic mac='{M1}' tvd='a'/><tvd:nic mac='{M1}' tvd='b'/>")),
     "listed in two TVDs"),
    (domain_xml(nic("network", "x", M1), membership(tvd="Alpha")), "is not a TVD name"),
    (domain_xml(nic("network", "x", M1), membership(tvds="alpha")), "unknown attribute"),
    (domain_xml(nic("network", "x", M1), membership(tvd="a", **{"tx-checksum-offload": "0"})),
     "<tvd:membership tx-checksum-offload='0'> must be 'off' (this VM's vifs) or 'on'"),
    (domain_xml(nic("network", "x", M1), membership("<tvd:nics/>", tvd="alpha")), "unknown child <nics>"),
    (domain_xml(nic("network", "x", M1), membership("<tvd:property name='p' assurance='vibes'/>", tvd="a")),
     "unknown assurance 'vibes'"),
    (domain_xml(nic("network", "x", M1), membership("<tvd:property/>", tvd="a")), "needs a name"),
    (domain_xml(nic("network", "x", M1), membership(tvd="a") + membership(tvd="b")),
     "exactly one <tvd:membership>"),
    (domain_xml(nic("network", "x", M1), f"<tvd:tvd xmlns:tvd='https://xen-tvd.org/xmlns/libvirt/1'/>"),
     "exactly one <tvd:membership>"),
    (domain_xml(nic("bridge", "tvd-0123456789a", M1)), "hashed vSwitch of a long TVD name"),
    (domain_xml(nic("bridge", "tvd:Bad!", M1)), "is not a TVD name"),
    (domain_xml(nic("network", "tvd-alpha", M1), uuid="not-a-uuid"), "has no valid <uuid>"),
    (domain_xml(nic("network", "tvd-alpha", "zz:zz")), "is not a MAC address"),
    ("<domain><name>x</name>", "not well-formed"),
    ("<network/>", "expected a <domain> document"),
])
def test_contradictions_are_refused(xml, reason):
    with pytest.raises(MembershipError) as e:
        parse_domain(xml)
    assert reason in str(e.value)
    assert "\n" not in str(e.value)


def test_foreign_metadata_is_ignored():
    other = "<app:x xmlns:app='https://example.org/app'><app:tvd tvd='alpha'/></app:x>"
    m = parse_domain(domain_xml(nic("network", "default", M1), other))
    assert not m.is_member
