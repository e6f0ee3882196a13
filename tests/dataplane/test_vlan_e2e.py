"""VLAN transport end to end: policy -> planner -> apply() on two "hosts" -> traffic.

Two host namespaces joined by a veth "trunk" (both ends named eth0) stand in for two Dom0s on a
VLAN-capable switch. The planner must choose 802.1Q (all hosts have `vlan`, one vlan-capable
network) and list eth0 for VLAN-offload-off; apply() builds it; VMs of one TVD reach each other
across the trunk, and a VM of the other TVD on the same IP subnet receives none of their frames.
Needs 8021q: skips on the tier-1 host kernel, must pass in the stock-kernel VM tier (tier 2).
"""
from __future__ import annotations

import pytest

from dp_helpers import Sniffer, addr, ethtool_k, link, mac, ping, veth
from xen_tvd.dataplane import apply
from xen_tvd.dataplane.model import VifPort, VlanUplink
from xen_tvd.planner import plan
from xen_tvd.policy import load_policy

POLICY = """
version: 1
tvds:
  alpha: {vlan: 100}
  beta: {vlan: 200}
networks:
  lan: {subnet: 10.0.1.0/24, multicast: true, vlan-capable: true, mtu: 1500, max-mtu: 1500}
hosts:
  h1: {address: 10.0.1.1, capabilities: [vlan, ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.0.1.1}]}
  h2: {address: 10.0.1.2, capabilities: [vlan, ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.0.1.2}]}
"""


@pytest.fixture
def planned(tmp_path):
    f = tmp_path / "policy.yaml"
    f.write_text(POLICY)
    placement = {h: [VifPort("vif1.0", "alpha"), VifPort("vif2.0", "beta")] for h in ("h1", "h2")}
    return plan(load_policy(str(f)), placement)


def test_planner_chooses_vlan_on_the_shared_vlan_capable_network(planned):
    for h in ("h1", "h2"):
        st = planned[h]
        assert st.segment("alpha").uplink == VlanUplink(100, "eth0")
        assert st.segment("beta").uplink == VlanUplink(200, "eth0")
        assert st.vlan_offload_off == ("eth0",)


@pytest.mark.usefixtures("needs_8021q")
def test_two_hosts_over_a_trunk_ping_within_tvd_and_other_tvd_sees_nothing(mkns, planned):
    hosts = {"h1": mkns("h1"), "h2": mkns("h2")}
    veth(hosts["h1"], "eth0", "eth0", peer_ns=hosts["h2"])   # the "switch": an 802.1Q trunk
    for ns in hosts.values():
        k = ethtool_k(ns, "eth0")
        # veth offers both VLAN offloads, on by default: apply() has something to turn off
        assert k["rx-vlan-offload"] == "on" and k["tx-vlan-offload"] == "on", k

    vms = {}
    for i, (h, vif, tvd) in enumerate((("h1", "vif1.0", "alpha"), ("h2", "vif1.0", "alpha"),
                                       ("h1", "vif2.0", "beta"), ("h2", "vif2.0", "beta"))):
        g = mkns(f"{tvd[0]}{h}")
        veth(hosts[h], vif, "eth0", peer_ns=g, up=False)
        addr(g, "eth0", f"192.168.30.{i + 1}")                # one subnet: isolation is L2's job
        vms[(tvd, h)] = g

    for h, ns in hosts.items():
        rep = apply(planned[h], netns=ns)
        assert rep.warnings == [] and rep.missing_ports == [], rep
        assert any("eth0" in c and "vlan" in c for c in rep.changes), rep.changes
        assert apply(planned[h], netns=ns).changes == []       # converged
        k = ethtool_k(ns, "eth0")
        assert k["rx-vlan-offload"] == "off" and k["tx-vlan-offload"] == "off", k
        trunk = link(ns, "eth0")["index"]
        for tvd, vid in (("alpha", 100), ("beta", 200)):
            v = link(ns, f"tvl-{tvd}")
            assert v["kind"] == "vlan" and v["data"]["IFLA_VLAN_ID"] == vid
            assert v["link"] == trunk and v["master"] == f"tvd-{tvd}" and v["up"]
        assert link(ns, "vif1.0")["master"] == "tvd-alpha"
        assert link(ns, "vif2.0")["master"] == "tvd-beta"

    a1, a2, b1, b2 = vms[("alpha", "h1")], vms[("alpha", "h2")], vms[("beta", "h1")], vms[("beta", "h2")]
    sniff = Sniffer(b2, "eth0")   # everything the beta VM on h2 ever receives
    try:
        assert ping(a1, "192.168.30.2"), "alpha VM on h1 cannot reach alpha VM on h2 over the trunk"
        # a full 1500-byte frame crosses: a VLAN uplink costs the VMs no MTU
        assert ping(a1, "192.168.30.2", size=1472), "1500-byte DF frame lost on the VLAN trunk"
        assert not ping(a1, "192.168.30.4", count=2), "alpha VM reached the beta VM on the other host"
        assert not ping(a2, "192.168.30.3", count=2), "alpha VM reached the beta VM on the other host"
        # positive control: beta works across hosts, so the sniffer does see beta's frames
        assert ping(b1, "192.168.30.4"), "beta VM on h1 cannot reach beta VM on h2 over the trunk"
        seen = sniff.sources()
    finally:
        sniff.close()
    assert mac(b1, "eth0") in seen
    assert mac(a1, "eth0") not in seen, "a frame from alpha VM h1 reached the beta VM"
    assert mac(a2, "eth0") not in seen, "a frame from alpha VM h2 reached the beta VM"
