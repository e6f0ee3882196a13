"""VLAN transport end to end: policy -> planner -> apply() on two "hosts" -> traffic.

Two host namespaces joined by a "trunk" (both ends named eth0) stand in for two Dom0s on a
VLAN-capable switch. The planner must choose 802.1Q (all hosts have `vlan`, one vlan-capable
network) and list eth0 for VLAN-offload-off; apply() builds it; VMs of one TVD reach each other
across the trunk, and a VM of the other TVD on the same IP subnet receives none of their frames.
Two trunks: a veth pair, and two NICs with a real driver wired to each other (in the
stock-kernel VM tier: virtio-net NICs on a qemu hub of their own, TVD_VM_WIRE), whose driver
has its own offload and VLAN-filter features.
Needs 8021q: skips on the tier-1 host kernel, must pass in the stock-kernel VM tier (tier 2).
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.dataplane.dp_helpers import Sniffer, addr, ethtool_k, link, mac, ping, veth
from xen_tvd.dataplane import apply
from xen_tvd.desired.model import VifPort, VlanUplink
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


def _features(ns: str | None, dev: str) -> dict[str, str]:
    """`ethtool -k` lines as {feature: "on" | "off [fixed]" | ...} (fixedness kept)."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ethtool", "-k", dev]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in out.splitlines()[1:]
                                              if ":" in l)}


@pytest.fixture(params=["veth", "real-nic"])
def trunk(request, mkns):
    """host -> namespace; each host's "eth0" is one end of the trunk."""
    hosts = {"h1": mkns("h1"), "h2": mkns("h2")}
    if request.param == "veth":
        veth(hosts["h1"], "eth0", "eth0", peer_ns=hosts["h2"])
        for ns in hosts.values():
            k = ethtool_k(ns, "eth0")
            # veth offers both VLAN offloads, on by default: apply() has something to turn off
            assert k["rx-vlan-offload"] == "on" and k["tx-vlan-offload"] == "on", k
        yield hosts
        return
    wire = os.environ.get("TVD_VM_WIRE", "").split()
    if len(wire) != 2:
        pytest.skip("needs two NICs of a real driver wired to each other: the stock-kernel VM "
                    "tier gives two virtio-net NICs on a qemu hub (TVD_VM_WIRE)")
    before = {nic: _features(None, nic) for nic in wire}
    print("real-NIC trunk, VLAN features before:", {n: {k: v for k, v in f.items() if "vlan" in k}
                                                   for n, f in before.items()})
    for nic, ns in zip(wire, hosts.values()):
        subprocess.run(["ip", "link", "set", nic, "netns", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", nic, "name", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    try:
        yield hosts
    finally:   # back under their own names: a deleted namespace would return them renamed
        for nic, ns in zip(wire, hosts.values()):
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=False)
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "name", nic], check=False)
            subprocess.run(["ip", "-n", ns, "link", "set", nic, "netns", "1"], check=False)


@pytest.mark.usefixtures("needs_8021q")
def test_two_hosts_over_a_trunk_ping_within_tvd_and_other_tvd_sees_nothing(mkns, planned, trunk):
    hosts = trunk

    vms = {}
    for i, (h, vif, tvd) in enumerate((("h1", "vif1.0", "alpha"), ("h2", "vif1.0", "alpha"),
                                       ("h1", "vif2.0", "beta"), ("h2", "vif2.0", "beta"))):
        g = mkns(f"{tvd[0]}{h}")
        veth(hosts[h], vif, "eth0", peer_ns=g, up=False)
        addr(g, "eth0", f"192.168.30.{i + 1}")                # one subnet: isolation is L2's job
        vms[(tvd, h)] = g

    for h, ns in hosts.items():
        offered = ethtool_k(ns, "eth0")["rx-vlan-offload"] == "on"
        rep = apply(planned[h], netns=ns)
        assert rep.warnings == [] and rep.missing_ports == [], rep
        if offered:
            assert any("eth0" in c and "vlan" in c for c in rep.changes), rep.changes
        assert apply(planned[h], netns=ns).changes == []       # converged
        k = ethtool_k(ns, "eth0")
        # off, whether apply() turned it off or the driver never offers it ("off [fixed]")
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
