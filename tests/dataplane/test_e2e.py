"""Two "hosts" (namespaces) joined by a veth underlay, each running apply() for a TVD on the
same VNI; "VMs" are namespaces whose eth0 is a veth peer of a host-side `vifN.0` (veth stands
in for the netback vif). Traffic stays inside the test namespaces."""
from __future__ import annotations

import pytest

from tests.dataplane.dp_helpers import Sniffer, addr, link, mac, ping, sh, state, veth, vx_segment
from xen_tvd.dataplane import apply, plug_vif
from xen_tvd.desired.model import VifPort
from xen_tvd.planner import plan
from xen_tvd.policy import load_policy


def vm(mkns, host_ns, vif, ip, tag):
    g = mkns(tag)
    veth(host_ns, vif, "eth0", peer_ns=g, up=False)
    addr(g, "eth0", ip)
    return g


@pytest.fixture
def two_hosts(mkns):
    ha, hb = mkns("hA"), mkns("hB")
    veth(ha, "ul0", "ul0", peer_ns=hb)
    addr(ha, "ul0", "10.0.0.1")
    addr(hb, "ul0", "10.0.0.2")
    return ha, hb


@pytest.mark.parametrize("bum", ["head-end", "multicast"])
def test_ping_crosses_hosts_and_other_tvd_stays_isolated(mkns, two_hosts, bum):
    ha, hb = two_hosts

    def segs(local, peer):
        kw = {"remotes": (peer,)} if bum == "head-end" else {"group": "239.1.1.1"}
        return (vx_segment("alpha", 100, local, **kw), vx_segment("beta", 200, local, **kw))

    sa, sb = segs("10.0.0.1", "10.0.0.2"), segs("10.0.0.2", "10.0.0.1")
    vm_a = vm(mkns, ha, "vif1.0", "192.168.10.1", "vmA")      # alpha on host A
    vm_b = vm(mkns, hb, "vif1.0", "192.168.10.2", "vmB")      # alpha on host B
    vm_c = vm(mkns, hb, "vif2.0", "192.168.10.3", "vmC")      # beta on host B, same subnet
    vm_d = vm(mkns, ha, "vif2.0", "192.168.10.4", "vmD")      # beta on host A
    for g in (vm_a, vm_b, vm_c, vm_d):
        sh(g, "ip", "link", "set", "eth0", "mtu", "1450")     # guest learns MTU from frontend

    # host A: everything through apply(); host B: ports through plug_vif (the hotplug path)
    rep = apply(state(*sa, ports=(("vif1.0", "alpha"), ("vif2.0", "beta"))), netns=ha)
    assert rep.missing_ports == [] and rep.warnings == []
    apply(state(*sb), netns=hb)
    plug_vif(VifPort("vif1.0", "alpha"), sb[0], netns=hb)
    plug_vif(VifPort("vif2.0", "beta"), sb[1], netns=hb)

    sniff = Sniffer(vm_c, "eth0")  # everything the beta VM on host B ever receives
    try:
        assert ping(vm_a, "192.168.10.2"), "alpha VM A cannot reach alpha VM B across hosts"
        # largest unfragmented frame at the segment MTU crosses the VXLAN (1450 - 28 IP/ICMP)
        assert ping(vm_a, "192.168.10.2", size=1422)
        assert not ping(vm_a, "192.168.10.3", count=2), "alpha reached a beta VM"
        # positive control: beta works across hosts, and the sniffer does see beta's frames
        assert ping(vm_d, "192.168.10.3"), "beta VM D cannot reach beta VM C"
        seen = sniff.sources()
    finally:
        sniff.close()
    assert mac(vm_d, "eth0") in seen
    assert mac(vm_a, "eth0") not in seen, "a frame from alpha VM A reached the beta VM"
    assert mac(vm_b, "eth0") not in seen, "a frame from alpha VM B reached the beta VM"


RAISED_POLICY = """
version: 1
tvds:
  alpha: {vlan: 100}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true, mtu: 1500, max-mtu: %d}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""


@pytest.mark.parametrize("max_mtu, vm_mtu", [(9000, 1500), (1500, 1450)])
def test_raised_underlay_keeps_vms_at_1500_end_to_end(mkns, two_hosts, tmp_path, max_mtu, vm_mtu):
    """Issue #13.2: a network the capability model lets be raised (max-mtu) gets its underlay
    raised by VXLAN's 50 bytes through policy -> planner -> apply(), so VMs keep 1500 and the
    largest unfragmented 1500-byte frame crosses hosts; a network that may not be raised keeps
    the underlay at 1500 and gives the VMs 1450 (the control: that 1472-byte DF ping fails)."""
    f = tmp_path / "p.yaml"
    f.write_text(RAISED_POLICY % max_mtu)
    states = plan(load_policy(str(f)), {h: [VifPort("vif1.0", "alpha")] for h in ("h1", "h2")})
    guests = []
    for h, ns, ip in (("h1", two_hosts[0], "192.168.10.1"), ("h2", two_hosts[1], "192.168.10.2")):
        st = states[h]
        assert st.segment("alpha").mtu == vm_mtu
        assert st.underlay_mtu == ({"ul0": 1550} if max_mtu > 1500 else {})
        g = vm(mkns, ns, "vif1.0", ip, f"vm{h}")
        rep = apply(st, netns=ns)
        assert rep.missing_ports == [] and rep.warnings == []
        assert link(ns, "ul0")["mtu"] == (1550 if max_mtu > 1500 else 1500)
        assert link(ns, "vif1.0")["mtu"] == vm_mtu
        sh(g, "ip", "link", "set", "eth0", "mtu", str(vm_mtu))   # the frontend reads the vif's
        guests.append(g)
    assert ping(guests[0], "192.168.10.2", size=vm_mtu - 28), "largest DF frame lost across hosts"
    assert ping(guests[0], "192.168.10.2", size=1472) == (vm_mtu == 1500)
