"""plug_vif / unplug_vif. In every test a veth stands in for the netback vif Xen would create
(same kernel role: a netdev in Dom0 whose peer is the guest's eth0)."""
from __future__ import annotations

import pytest

from tests.dataplane.dp_helpers import add_link, ethtool_k, link, set_link, state, underlay, veth, vx_segment
from xen_tvd.dataplane import DataplaneError, apply, plug_vif, unplug_vif
from xen_tvd.desired.model import HostState, Segment, VifPort


@pytest.fixture
def host(ns):
    """A host with segments alpha (csum off, mtu 1450) and beta (csum on, mtu 1400)."""
    underlay(ns)
    a = vx_segment("alpha", 100, "10.0.0.1")
    b = vx_segment("beta", 200, "10.0.0.1", mtu=1400, vif_tx_csum_offload=True)
    apply(state(a, b), netns=ns)
    return ns, a, b


def test_plug_sets_mtu_csum_master_up_and_calls_frontend(host):
    ns, a, _ = host
    veth(ns, "vif1.0", "guest", up=False)
    seen = []
    plug_vif(VifPort("vif1.0", "alpha"), a, netns=ns, frontend_mtu_cb=seen.append)
    v = link(ns, "vif1.0")
    assert (v["master"], v["up"], v["mtu"]) == ("tvd-alpha", True, 1450)
    assert ethtool_k(ns, "vif1.0")["tx-checksumming"] == "off"
    assert seen == [1450]
    plug_vif(VifPort("vif1.0", "alpha"), a, netns=ns)  # idempotent
    assert link(ns, "vif1.0") == v
    # apply agrees with what plug did: nothing left to change
    assert apply(state(a, host[2], ports=(("vif1.0", "alpha"),)), netns=ns).changes == []


def test_a_ports_own_mtu_only_lowers_the_segments(host):
    """VifPort.mtu (the guest's xl vif mtu=): kept when lower, by plug and by a later apply;
    never above the segment's."""
    ns, a, b = host
    veth(ns, "vif1.0", "g1")
    veth(ns, "vif2.0", "g2")
    seen = []
    plug_vif(VifPort("vif1.0", "alpha", mtu=1400), a, netns=ns, frontend_mtu_cb=seen.append)
    plug_vif(VifPort("vif2.0", "alpha", mtu=9000), a, netns=ns, frontend_mtu_cb=seen.append)
    assert seen == [1400, 1450]
    assert (link(ns, "vif1.0")["mtu"], link(ns, "vif2.0")["mtu"], link(ns, "tvd-alpha")["mtu"]) == (1400, 1450, 1450)
    st = HostState(host="h", segments=(a, b), ports=(VifPort("vif1.0", "alpha", mtu=1400),
                                                     VifPort("vif2.0", "alpha", mtu=9000)))
    assert apply(st, netns=ns).changes == []
    with pytest.raises(DataplaneError, match="MTU 20 outside 68..65535"):
        plug_vif(VifPort("vif1.0", "alpha", mtu=20), a, netns=ns)


def test_plug_with_tx_csum_offload_on(host):
    ns, _, b = host
    veth(ns, "vif2.0", "guest")
    plug_vif(VifPort("vif2.0", "beta"), b, netns=ns)
    assert ethtool_k(ns, "vif2.0")["tx-checksumming"] == "on"
    assert link(ns, "vif2.0")["mtu"] == 1400


def test_replug_into_other_segment(host):
    ns, a, b = host
    veth(ns, "vif1.0", "guest")
    plug_vif(VifPort("vif1.0", "alpha"), a, netns=ns)
    plug_vif(VifPort("vif1.0", "beta"), b, netns=ns)
    assert link(ns, "vif1.0")["master"] == "tvd-beta"


def test_plug_fails_closed_when_bridge_missing(host):
    ns, a, _ = host
    veth(ns, "vif1.0", "guest")
    plug_vif(VifPort("vif1.0", "alpha"), a, netns=ns)  # attached and up ...
    gamma = Segment(tvd="gamma", bridge="tvd-gamma", uplink=None, mtu=1500)
    with pytest.raises(DataplaneError) as ei:         # ... then re-plugged to a missing bridge
        plug_vif(VifPort("vif1.0", "gamma"), gamma, netns=ns)
    msg = str(ei.value)
    assert "bridge tvd-gamma does not exist" in msg and "run apply()" in msg and "\n" not in msg
    v = link(ns, "vif1.0")
    assert v["master"] is None and not v["up"]


def test_plug_refuses_foreign_bridge_of_same_name(ns):
    add_link(ns, ifname="tvd-alpha", kind="bridge")  # no xen-tvd alias: not ours
    veth(ns, "vif1.0", "guest")
    seg = Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=1500)
    with pytest.raises(DataplaneError, match="is not a xen-tvd bridge"):
        plug_vif(VifPort("vif1.0", "alpha"), seg, netns=ns)
    assert link(ns, "vif1.0")["master"] is None and not link(ns, "vif1.0")["up"]


def test_plug_fails_closed_when_frontend_callback_fails(host):
    ns, a, _ = host
    veth(ns, "vif1.0", "guest")

    def broken(mtu):
        raise OSError("xenstore write denied")

    with pytest.raises(DataplaneError, match="frontend MTU callback for vif1.0 failed: xenstore write denied"):
        plug_vif(VifPort("vif1.0", "alpha"), a, netns=ns, frontend_mtu_cb=broken)
    v = link(ns, "vif1.0")
    assert v["master"] is None and not v["up"]


def test_plug_fails_closed_when_mtu_rejected(host):
    ns, _, _ = host
    veth(ns, "vif1.0", "guest")
    set_link(ns, "vif1.0", master=link(ns, "tvd-alpha")["index"])
    huge = Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=70000)  # > veth max MTU
    with pytest.raises(DataplaneError, match="setting MTU 70000 on vif1.0"):
        plug_vif(VifPort("vif1.0", "alpha"), huge, netns=ns)
    v = link(ns, "vif1.0")
    assert v["master"] is None and not v["up"]


def test_plug_missing_vif_and_port_segment_mismatch(host):
    ns, a, _ = host
    with pytest.raises(DataplaneError, match="cannot plug vif7.0: no such interface"):
        plug_vif(VifPort("vif7.0", "alpha"), a, netns=ns)
    with pytest.raises(DataplaneError, match="is for TVD beta"):
        plug_vif(VifPort("vif7.0", "beta"), a, netns=ns)


def test_unplug_detaches_idempotent_and_tolerates_gone(host):
    ns, a, _ = host
    veth(ns, "vif1.0", "guest")
    plug_vif(VifPort("vif1.0", "alpha"), a, netns=ns)
    unplug_vif("vif1.0", netns=ns)
    v = link(ns, "vif1.0")
    assert v is not None and v["master"] is None and not v["up"]  # detached, not deleted
    unplug_vif("vif1.0", netns=ns)
    unplug_vif("vif99.0", netns=ns)  # already destroyed by Xen: fine


def test_plug_and_unplug_in_unknown_namespace_are_clear_errors():
    seg = Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=1500)
    with pytest.raises(DataplaneError, match="namespace 'tvdt-nope' does not exist"):
        plug_vif(VifPort("vif1.0", "alpha"), seg, netns="tvdt-nope")
    with pytest.raises(DataplaneError, match="namespace 'tvdt-nope' does not exist"):
        unplug_vif("vif1.0", netns="tvdt-nope")
