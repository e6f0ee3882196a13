"""802.1Q transport. This host kernel has no 8021q; these run where it exists (VM tier)."""
from __future__ import annotations

import pytest

from tests.dataplane.dp_helpers import addr, link, ping, sh, state, underlay, veth, vlan_segment
from xen_tvd.dataplane import apply
from xen_tvd.desired.names import OWNER_ALIAS_PREFIX

pytestmark = pytest.mark.usefixtures("needs_8021q")


def test_vlan_uplink_created_enslaved_idempotent_and_recreated(ns):
    underlay(ns)
    seg = vlan_segment("alpha", 100)
    st = state(seg, vlan_offload_off=("ul0",))
    rep = apply(st, netns=ns)
    assert "created vlan tvl-alpha" in rep.changes
    v = link(ns, "tvl-alpha")
    assert v["kind"] == "vlan" and v["data"]["IFLA_VLAN_ID"] == 100
    assert v["link"] == link(ns, "ul0")["index"] and v["master"] == "tvd-alpha" and v["up"]
    assert v["alias"] == OWNER_ALIAS_PREFIX + "vlan=alpha"
    assert apply(st, netns=ns).changes == []
    st2 = state(vlan_segment("alpha", 101))
    apply(st2, netns=ns)
    assert link(ns, "tvl-alpha")["data"]["IFLA_VLAN_ID"] == 101
    assert apply(st2, netns=ns).changes == []


def test_vlan_ping_between_hosts_and_isolation(mkns):
    ha, hb = mkns("hA"), mkns("hB")
    veth(ha, "ul0", "ul0", peer_ns=hb)
    guests = {}
    for h, tag, ip in ((ha, "vmA", "192.168.20.1"), (hb, "vmB", "192.168.20.2"), (hb, "vmC", "192.168.20.3")):
        g = mkns(tag)
        vif = "vif2.0" if tag == "vmC" else "vif1.0"
        veth(h, vif, "eth0", peer_ns=g, up=False)
        addr(g, "eth0", ip)
        guests[tag] = g
    apply(state(vlan_segment("alpha", 100), ports=(("vif1.0", "alpha"),)), netns=ha)
    apply(state(vlan_segment("alpha", 100), vlan_segment("beta", 200),
                ports=(("vif1.0", "alpha"), ("vif2.0", "beta"))), netns=hb)
    assert ping(guests["vmA"], "192.168.20.2")
    assert ping(guests["vmA"], "192.168.20.2", size=1472)
    assert not ping(guests["vmA"], "192.168.20.3", count=2)
