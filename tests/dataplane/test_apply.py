"""apply(): bridges, VXLAN uplinks, ownership, idempotency and repair, on a real kernel."""
from __future__ import annotations

import json

import pytest
from pyroute2 import netns as pr_netns

from tests.dataplane.dp_helpers import (add_link, addr, del_link, ethtool_k, flood_list, link, names, set_link,
                        sh, state, underlay, veth, vx_segment)
from xen_tvd.dataplane import ApplyReport, DataplaneError, apply
from xen_tvd.desired.model import HostState, Segment, VifPort
from xen_tvd.desired.names import OWNER_ALIAS_PREFIX


def assert_converged(st, ns):
    again = apply(st, netns=ns)
    assert again.changes == [], again.changes
    assert not again.changed
    return again


def assert_segment(ns, seg, ports=()):
    br = link(ns, seg.bridge)
    assert br["kind"] == "bridge" and br["up"] and br["mtu"] == seg.mtu
    assert br["alias"] == f"{OWNER_ALIAS_PREFIX}segment={seg.tvd}"
    assert br["data"]["IFLA_BR_STP_STATE"] == 0 and br["data"]["IFLA_BR_FORWARD_DELAY"] == 0
    if seg.uplink is not None:
        vx = link(ns, "tvx-" + seg.bridge[4:])
        up = seg.uplink
        assert vx["kind"] == "vxlan" and vx["up"] and vx["master"] == seg.bridge and vx["mtu"] == seg.mtu
        assert vx["alias"].startswith(OWNER_ALIAS_PREFIX)
        d = vx["data"]
        assert (d["IFLA_VXLAN_ID"], d["IFLA_VXLAN_LOCAL"], d["IFLA_VXLAN_PORT"], d["IFLA_VXLAN_TTL"],
                d["IFLA_VXLAN_LEARNING"]) == (up.vni, up.local_ip, up.port, up.ttl, 1)
        assert d["IFLA_VXLAN_LINK"] == link(ns, up.underlay_dev)["index"]
        assert flood_list(ns, vx_name(seg)) - {up.group} == set(up.remotes)
    for p in ports:
        v = link(ns, p)
        assert v["master"] == seg.bridge and v["up"] and v["mtu"] == seg.mtu


def vx_name(seg):
    return "tvx-" + seg.bridge[4:]


def test_creates_bridge_and_vxlan_then_rerun_changes_nothing(ns):
    underlay(ns)
    seg = vx_segment("alpha", 100, "10.0.0.1", remotes=("10.0.0.2",))
    st = state(seg)
    rep = apply(st, netns=ns)
    assert isinstance(rep, ApplyReport) and rep.changed
    assert "created bridge tvd-alpha" in rep.changes and "created vxlan tvx-alpha" in rep.changes
    assert rep.missing_ports == [] and rep.warnings == []
    assert_segment(ns, seg)
    assert_converged(st, ns)


def test_multicast_group_vxlan(ns):
    underlay(ns)
    seg = vx_segment("alpha", 100, "10.0.0.1", group="239.1.1.7")
    apply(state(seg), netns=ns)
    vx = link(ns, "tvx-alpha")
    assert vx["data"]["IFLA_VXLAN_GROUP"] == "239.1.1.7"
    assert flood_list(ns, "tvx-alpha") == {"239.1.1.7"}
    assert_converged(state(seg), ns)
    # group changed -> recreated with the new group
    seg2 = vx_segment("alpha", 100, "10.0.0.1", group="239.1.1.8")
    rep = apply(state(seg2), netns=ns)
    assert any(c.startswith("deleted vxlan tvx-alpha (recreating: group") for c in rep.changes), rep.changes
    assert link(ns, "tvx-alpha")["data"]["IFLA_VXLAN_GROUP"] == "239.1.1.8"
    assert_segment(ns, seg2)
    assert_converged(state(seg2), ns)


def test_head_end_replication_entries_follow_remotes(ns):
    underlay(ns)
    seg = vx_segment("alpha", 100, "10.0.0.1", remotes=("10.0.0.2", "10.0.0.3"))
    apply(state(seg), netns=ns)
    assert flood_list(ns, "tvx-alpha") == {"10.0.0.2", "10.0.0.3"}
    before = link(ns, "tvx-alpha")["index"]
    seg2 = vx_segment("alpha", 100, "10.0.0.1", remotes=("10.0.0.3", "10.0.0.4"))
    rep = apply(state(seg2), netns=ns)
    assert sorted(rep.changes) == ["added remote 10.0.0.4 to tvx-alpha", "removed remote 10.0.0.2 from tvx-alpha"]
    assert flood_list(ns, "tvx-alpha") == {"10.0.0.3", "10.0.0.4"}
    assert link(ns, "tvx-alpha")["index"] == before  # updated in place, not recreated
    assert_converged(state(seg2), ns)
    # remotes plus a group: the group's own entry is the kernel's and must survive
    seg3 = vx_segment("alpha", 100, "10.0.0.1", group="239.1.1.1", remotes=("10.0.0.5",))
    apply(state(seg3), netns=ns)
    assert flood_list(ns, "tvx-alpha") == {"239.1.1.1", "10.0.0.5"}
    assert_converged(state(seg3), ns)


@pytest.mark.parametrize("field,value", [("vni", 200), ("port", 8472), ("ttl", 64), ("local_ip", "10.0.0.9")])
def test_changed_vxlan_parameter_recreates_device(ns, field, value):
    underlay(ns)
    addr(ns, "ul0", "10.0.0.9")
    kw = dict(vni=100, local="10.0.0.1")
    seg = vx_segment("alpha", kw["vni"], kw["local"])
    apply(state(seg), netns=ns)
    up = seg.uplink.__class__(**{**seg.uplink.__dict__, field: value})
    seg2 = Segment(tvd="alpha", bridge="tvd-alpha", uplink=up, mtu=1450)
    rep = apply(state(seg2), netns=ns)
    assert "created vxlan tvx-alpha" in rep.changes
    assert_segment(ns, seg2)
    assert_converged(state(seg2), ns)


def test_stale_owned_devices_removed_and_their_vifs_detached(ns):
    """veth stands in for Xen's netback vif."""
    underlay(ns)
    a = vx_segment("alpha", 100, "10.0.0.1")
    b = vx_segment("beta", 200, "10.0.0.1")
    veth(ns, "vif2.0", "guest2")
    apply(state(a, b, ports=(("vif2.0", "beta"),)), netns=ns)
    assert link(ns, "vif2.0")["master"] == "tvd-beta"
    rep = apply(state(a), netns=ns)
    assert "tvd-beta" not in names(ns) and "tvx-beta" not in names(ns)
    assert "deleted bridge tvd-beta (not in desired state)" in rep.changes
    v = link(ns, "vif2.0")
    assert v is not None and v["master"] is None and not v["up"]  # detached, never deleted
    assert_segment(ns, a)
    assert_converged(state(a), ns)


def test_uplink_removed_or_switched_off(ns):
    underlay(ns)
    seg = vx_segment("alpha", 100, "10.0.0.1")
    apply(state(seg), netns=ns)
    local_only = Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=1450)
    rep = apply(state(local_only), netns=ns)
    assert "tvx-alpha" not in names(ns) and link(ns, "tvd-alpha")["up"]
    assert rep.changes == ["deleted vxlan tvx-alpha (not in desired state)"]
    assert_converged(state(local_only), ns)


def test_foreign_devices_never_touched(ns):
    underlay(ns)
    # A foreign bridge with a member, a foreign VXLAN, a look-alike bridge without our alias,
    # and a device carrying our alias but not our name prefix: all must survive unchanged.
    add_link(ns, ifname="br-foreign", kind="bridge")
    veth(ns, "fport", "fpeer")
    set_link(ns, "fport", master=link(ns, "br-foreign")["index"])
    ul = link(ns, "ul0")["index"]
    add_link(ns, ifname="vx-foreign", kind="vxlan", vxlan_id=100, vxlan_link=ul, vxlan_port=4790)
    set_link(ns, "vx-foreign", master=link(ns, "br-foreign")["index"])
    add_link(ns, ifname="tvd-lookalike", kind="bridge")
    add_link(ns, ifname="other0", kind="bridge")
    set_link(ns, "other0", ifalias=OWNER_ALIAS_PREFIX + "segment=zzz")
    before = {n: link(ns, n) for n in ("br-foreign", "fport", "vx-foreign", "tvd-lookalike", "other0", "ul0")}

    apply(state(vx_segment("alpha", 100, "10.0.0.1")), netns=ns)
    apply(HostState(host="h"), netns=ns)   # empty desired state: delete everything we own
    after = {n: link(ns, n) for n in before}
    assert after == before
    assert "tvd-alpha" not in names(ns)

    # a desired name already taken by a foreign device: refuse, touch nothing
    with pytest.raises(DataplaneError, match="tvd-lookalike already exists .* not owned by xen-tvd"):
        apply(state(Segment(tvd="lookalike", bridge="tvd-lookalike", uplink=None, mtu=1400)), netns=ns)
    assert link(ns, "tvd-lookalike") == before["tvd-lookalike"]


@pytest.mark.parametrize("damage", [
    "delete_bridge", "delete_uplink", "uplink_nomaster", "bridge_down", "uplink_down",
    "stp_on", "wrong_mtus", "vif_half_attached", "vif_moved_away", "alias_lost",
])
def test_partial_state_is_repaired(ns, damage):
    """Simulate a crash or an admin's hand edit, then the next apply must restore everything.
    veth stands in for Xen's netback vif."""
    underlay(ns)
    seg = vx_segment("alpha", 100, "10.0.0.1", remotes=("10.0.0.2",))
    other = vx_segment("beta", 200, "10.0.0.1")
    veth(ns, "vif1.0", "guest1")
    st = state(seg, other, ports=(("vif1.0", "alpha"),))
    apply(st, netns=ns)
    assert_segment(ns, seg, ports=("vif1.0",))

    if damage == "delete_bridge":
        del_link(ns, "tvd-alpha")  # kernel also un-enslaves tvx-alpha and vif1.0
    elif damage == "delete_uplink":
        del_link(ns, "tvx-alpha")
    elif damage == "uplink_nomaster":
        set_link(ns, "tvx-alpha", master=0)
    elif damage == "bridge_down":
        set_link(ns, "tvd-alpha", state="down")
    elif damage == "uplink_down":
        set_link(ns, "tvx-alpha", state="down")
    elif damage == "stp_on":
        set_link(ns, "tvd-alpha", kind="bridge", br_stp_state=1, br_forward_delay=1500)
    elif damage == "wrong_mtus":
        set_link(ns, "vif1.0", mtu=1500)
        set_link(ns, "tvd-alpha", mtu=1300)
        set_link(ns, "tvx-alpha", mtu=1400)
    elif damage == "vif_half_attached":  # MTU set, never enslaved, still down
        set_link(ns, "vif1.0", master=0)
        set_link(ns, "vif1.0", state="down")
    elif damage == "vif_moved_away":
        set_link(ns, "vif1.0", master=link(ns, "tvd-beta")["index"])
    elif damage == "alias_lost":
        # An owned uplink whose alias was changed (still our prefix) is put right.
        set_link(ns, "tvx-alpha", ifalias=OWNER_ALIAS_PREFIX + "vxlan=old")

    rep = apply(st, netns=ns)
    assert rep.changed, f"{damage}: nothing repaired"
    assert_segment(ns, seg, ports=("vif1.0",))
    assert_segment(ns, other)
    assert link(ns, "tvx-alpha")["alias"] == OWNER_ALIAS_PREFIX + "vxlan=alpha"
    assert_converged(st, ns)


def test_missing_port_is_reported_not_raised(ns):
    underlay(ns)
    st = state(vx_segment("alpha", 100, "10.0.0.1"), ports=(("vif9.0", "alpha"),))
    rep = apply(st, netns=ns)
    assert rep.missing_ports == ["vif9.0"]
    veth(ns, "vif9.0", "guest9")  # hotplug would now plug it; apply also picks it up
    rep = apply(st, netns=ns)
    assert rep.missing_ports == [] and "attached vif9.0 to tvd-alpha" in rep.changes


def test_stray_vif_on_our_bridge_is_detached_not_deleted(ns):
    """veth stands in for Xen's netback vif."""
    underlay(ns)
    st = state(vx_segment("alpha", 100, "10.0.0.1"), ports=(("vif1.0", "alpha"),))
    veth(ns, "vif1.0", "g1")
    veth(ns, "vif3.0", "g3")
    apply(st, netns=ns)
    set_link(ns, "vif3.0", master=link(ns, "tvd-alpha")["index"])  # someone plugged a stranger
    rep = apply(st, netns=ns)
    assert "detached vif3.0 from tvd-alpha" in rep.changes
    v = link(ns, "vif3.0")
    assert v["master"] is None and not v["up"]
    assert link(ns, "vif1.0")["master"] == "tvd-alpha"
    assert_converged(st, ns)


def test_port_moves_between_segments(ns):
    underlay(ns)
    a, b = vx_segment("alpha", 100, "10.0.0.1"), vx_segment("beta", 200, "10.0.0.1", mtu=1400)
    veth(ns, "vif1.0", "g1")
    apply(state(a, b, ports=(("vif1.0", "alpha"),)), netns=ns)
    apply(state(a, b, ports=(("vif1.0", "beta"),)), netns=ns)
    assert_segment(ns, b, ports=("vif1.0",))
    assert_converged(state(a, b, ports=(("vif1.0", "beta"),)), ns)


def test_apply_sets_port_mtu_and_tx_csum_offload(ns):
    """veth stands in for Xen's netback vif; read back through netlink and `ethtool -k`."""
    underlay(ns)
    off = vx_segment("alpha", 100, "10.0.0.1", mtu=1400)
    on = vx_segment("beta", 200, "10.0.0.1", vif_tx_csum_offload=True)
    veth(ns, "vif1.0", "g1")
    veth(ns, "vif2.0", "g2")
    set_link(ns, "vif2.0", mtu=9000)
    sh(ns, "ethtool", "-K", "vif2.0", "tx", "off")
    st = state(off, on, ports=(("vif1.0", "alpha"), ("vif2.0", "beta")))
    apply(st, netns=ns)
    assert link(ns, "vif1.0")["mtu"] == 1400 and link(ns, "vif2.0")["mtu"] == 1450
    assert ethtool_k(ns, "vif1.0")["tx-checksumming"] == "off"
    assert ethtool_k(ns, "vif2.0")["tx-checksumming"] == "on"
    assert_converged(st, ns)


def test_vlan_offload_turned_off_on_listed_nics(ns):
    underlay(ns)
    assert ethtool_k(ns, "ul0")["rx-vlan-offload"] == "on"
    st = state(vx_segment("alpha", 100, "10.0.0.1"), vlan_offload_off=("ul0", "nosuchnic"))
    rep = apply(st, netns=ns)
    k = ethtool_k(ns, "ul0")
    assert k["rx-vlan-offload"] == "off" and k["tx-vlan-offload"] == "off"
    assert any("nosuchnic" in w for w in rep.warnings)
    assert_converged(st, ns)


def test_vxlan_underlay_nic_gets_generic_receive_offload(ns):
    """VXLAN packets of one flow are decapsulated and bridged once per GRO batch; veth (the
    lab's underlay) starts with GRO off, a physical NIC with it on."""
    underlay(ns)
    assert ethtool_k(ns, "ul0")["generic-receive-offload"] == "off"
    st = state(vx_segment("alpha", 100, "10.0.0.1"))
    rep = apply(st, netns=ns)
    assert ethtool_k(ns, "ul0")["generic-receive-offload"] == "on"
    assert "turned rx-gro on on ul0" in rep.changes
    assert_converged(st, ns)


def test_underlay_mtu_applied(ns):
    underlay(ns)
    st = state(vx_segment("alpha", 100, "10.0.0.1", mtu=1500), underlay_mtu={"ul0": 1550})
    apply(st, netns=ns)
    assert link(ns, "ul0")["mtu"] == 1550 and link(ns, "tvx-alpha")["mtu"] == 1500
    assert_converged(st, ns)


def test_segment_mtu_too_big_for_underlay_is_a_clear_error(ns):
    underlay(ns)
    with pytest.raises(DataplaneError) as ei:
        apply(state(vx_segment("alpha", 100, "10.0.0.1", mtu=1500)), netns=ns)
    msg = str(ei.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert "MTU 1500 on tvx-alpha" in msg and "underlay ul0 MTU >= Segment.mtu + 50" in msg
    assert "created bridge tvd-alpha" in ei.value.report.changes


def test_bad_desired_state_rejected_before_any_change(ns):
    underlay(ns)
    with pytest.raises(DataplaneError, match="underlay device eth7 for VXLAN not found"):
        apply(state(vx_segment("alpha", 100, "10.0.0.1", dev="eth7")), netns=ns)
    with pytest.raises(DataplaneError, match="bridge name 'xenbr0' must be 'tvd-<x>'"):
        apply(state(Segment(tvd="a", bridge="xenbr0", uplink=None, mtu=1500)), netns=ns)
    with pytest.raises(DataplaneError, match="at most 15"):
        apply(state(Segment(tvd="a", bridge="tvd-abcdefghijkl", uplink=None, mtu=1500)), netns=ns)
    with pytest.raises(DataplaneError, match="no segment on this host"):
        apply(state(ports=(("vif1.0", "ghost"),)), netns=ns)
    assert names(ns) == {"lo", "ul0", "ul0p"}


def test_unknown_namespace_is_an_error_and_not_created():
    with pytest.raises(DataplaneError, match="namespace 'tvdt-does-not-exist' does not exist"):
        apply(HostState(host="h"), netns="tvdt-does-not-exist")
    assert "tvdt-does-not-exist" not in pr_netns.listnetns()


def test_apply_in_current_namespace(ns):
    """netns=None acts on the caller's namespace: run a child inside `ns` to prove it."""
    underlay(ns)
    code = ("from xen_tvd.dataplane import apply;"
            "from xen_tvd.desired.model import *;"
            "s=HostState(host='h',segments=(Segment(tvd='alpha',bridge='tvd-alpha',mtu=1450,"
            "uplink=VxlanUplink(vni=100,local_ip='10.0.0.1',underlay_dev='ul0')),));"
            "r=apply(s); r2=apply(s); print(len(r.changes), len(r2.changes))")
    import os, sys
    out = sh(ns, sys.executable, "-c", code, check=False)
    assert out.returncode == 0, out.stderr
    n1, n2 = map(int, out.stdout.split())
    assert n1 > 0 and n2 == 0
    assert link(ns, "tvx-alpha")["master"] == "tvd-alpha"


def test_port_that_cannot_be_configured_is_left_detached_others_still_attached(ns):
    """One broken port must not keep the other VMs offline. A VXLAN device (max MTU 1450 on a
    1500 underlay) plays a vif that rejects the segment MTU; veth plays a healthy netback vif."""
    underlay(ns)
    add_link(ns, ifname="vifbad.0", kind="vxlan", vxlan_id=7, vxlan_link=link(ns, "ul0")["index"], vxlan_port=4791)
    set_link(ns, "vifbad.0", state="up")
    veth(ns, "vif1.0", "g1")
    st = state(Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=1500),
               ports=(("vifbad.0", "alpha"), ("vif1.0", "alpha")))
    rep = apply(st, netns=ns)
    assert len(rep.warnings) == 1 and "setting MTU 1500 on vifbad.0" in rep.warnings[0]
    assert "left detached" in rep.warnings[0]
    bad = link(ns, "vifbad.0")
    assert bad["master"] is None and not bad["up"]
    assert link(ns, "vif1.0")["master"] == "tvd-alpha" and link(ns, "vif1.0")["up"]


def test_segment_that_cannot_be_built_is_removed_whole_and_the_others_still_apply(ns):
    """alpha's VXLAN device cannot take MTU 1500 on a 1500 underlay (the stand-in for any
    uplink the kernel refuses, such as a VLAN without 8021q): no tvd-alpha bridge may stay
    behind to take vifs that reach nothing, alpha's vif stays detached, beta still comes up,
    and the error says what failed. Rerunning changes nothing; fixing the plan repairs it."""
    underlay(ns)
    veth(ns, "vif1.0", "g1")
    veth(ns, "vif2.0", "g2")
    ports = (("vif1.0", "alpha"), ("vif2.0", "beta"))
    beta = vx_segment("beta", 200, "10.0.0.1")
    broken = state(vx_segment("alpha", 100, "10.0.0.1", mtu=1500), beta, ports=ports)
    for attempt in range(2):
        with pytest.raises(DataplaneError) as ei:
            apply(broken, netns=ns)
        msg = str(ei.value)
        assert "\n" not in msg and "MTU 1500 on tvx-alpha" in msg
        assert "segment(s) alpha removed" in msg and "other segments are applied" in msg
        assert link(ns, "tvd-alpha") is None and link(ns, "tvx-alpha") is None
        assert link(ns, "vif1.0")["master"] is None
        assert_segment(ns, beta, ports=("vif2.0",))
        assert any("vif1.0 left detached" in w for w in ei.value.report.warnings)
    fixed = state(vx_segment("alpha", 100, "10.0.0.1"), beta, ports=ports)
    apply(fixed, netns=ns)
    assert_segment(ns, fixed.segments[0], ports=("vif1.0",))
    assert_converged(fixed, ns)


def test_pinned_vifs_flooding_is_repaired_where_it_was_turned_back_on(ns):
    """Each vif with a declared MAC takes no unknown-unicast flooding. apply() reads every
    port's flag from one dump per run (a read per vif was N x N at scale: bench/nft_rules.py),
    so the repair must still find exactly the port an admin changed by hand."""
    underlay(ns)
    seg = vx_segment("alpha", 100, "10.0.0.1")
    ports = tuple(VifPort(f"vif{i}.0", "alpha", mac=f"02:00:00:00:00:0{i}") for i in (1, 2, 3))
    for p in ports:
        veth(ns, p.ifname, f"g{p.ifname[3]}")
    st = HostState("h", segments=(seg,), ports=ports)
    apply(st, netns=ns)

    def flooding():
        out = sh(ns, "bridge", "-j", "-d", "link", "show").stdout
        return {e["ifname"]: e["flood"] for e in json.loads(out) if e["ifname"].startswith("vif")}

    assert flooding() == {"vif1.0": False, "vif2.0": False, "vif3.0": False}
    sh(ns, "bridge", "link", "set", "dev", "vif2.0", "flood", "on")
    rep = apply(st, netns=ns)
    assert [c for c in rep.changes if "flooding" in c] == ["no unknown-unicast flooding to vif2.0"]
    assert flooding() == {"vif1.0": False, "vif2.0": False, "vif3.0": False}
    assert_converged(st, ns)
