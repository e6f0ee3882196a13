"""Per-TVD `allow-dhcp-server` / `allow-router-advertisements`: port security lets exactly the
allowing TVD's VMs send DHCP(v6) server replies / router advertisements; every other TVD's
VMs still cannot (tier 1, real nftables)."""
from __future__ import annotations

import textwrap
import time

import pytest

from tests.dataplane.dishonest import (BCAST, ETH_IP, ETH_IP6, Injector, MarkSniffer, dhcp_offer, eth,
                       link_local, marker, nd_ra, udp6)
from tests.dataplane.dp_helpers import addr, ipr, veth
from xen_tvd.dataplane import apply, plug_vif
from xen_tvd.desired.model import HostState, VifPort
from xen_tvd.planner import plan
from xen_tvd.policy import load_policy

POLICY = """
version: 1
tvds:
  srv: {vlan: 100, allow-dhcp-server: true, allow-router-advertisements: true}
  plain: {vlan: 200}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
networks:
  lan: {subnet: 10.0.0.0/24}
"""
ALL6 = "33:33:00:00:00:01"
# vm -> (tvd, vif, mac, ip)
VMS = {"s1": ("srv", "vif1.0", "00:16:3e:00:01:01", "192.168.7.1"),
       "s2": ("srv", "vif2.0", "00:16:3e:00:01:02", "192.168.7.2"),
       "p1": ("plain", "vif3.0", "00:16:3e:00:02:01", "192.168.8.1"),
       "p2": ("plain", "vif4.0", "00:16:3e:00:02:02", "192.168.8.2")}
SERVER_FRAMES = {
    "DHCP offer": lambda mac, ip, m: eth(BCAST, mac, ETH_IP, dhcp_offer(ip, mac, "192.168.7.9", m)),
    "DHCPv6 reply": lambda mac, ip, m: eth(ALL6, mac, ETH_IP6, udp6(link_local(mac), "ff02::1", 547, 546, m)),
    "router advert": lambda mac, ip, m: eth(ALL6, mac, ETH_IP6, nd_ra(link_local(mac), mac, m)),
}
N = 20


def test_policy_knobs_reach_the_segments(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(POLICY))
    pol = load_policy(str(f))
    st = plan(pol, {"h1": [VifPort("vif1.0", "srv"), VifPort("vif3.0", "plain")]})["h1"]
    assert (st.segment("srv").allow_dhcp_server, st.segment("srv").allow_router_advertisements) == (True, True)
    assert (st.segment("plain").allow_dhcp_server, st.segment("plain").allow_router_advertisements) == (False, False)


@pytest.mark.parametrize("hotplug", [False, True], ids=["apply", "plug_vif"])
def test_only_the_allowing_tvd_may_serve(mkns, tmp_path, hotplug):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(POLICY))
    pol = load_policy(str(f))
    h = mkns("h1")
    veth(h, "ul0", "ul0p")
    addr(h, "ul0", "10.0.0.1")
    vms = {}
    ports = []
    for vm, (tvd, vif, mac, ip) in VMS.items():
        vms[vm] = mkns(f"vm-{vm}")
        veth(h, vif, "eth0", peer_ns=vms[vm], up=False)
        with ipr(vms[vm]) as i:
            i.link("set", index=i.link_lookup(ifname="eth0")[0], address=mac, state="up")
        ports.append(VifPort(vif, tvd, mac=mac, addresses=(ip,)))
    st = plan(pol, {"h1": ports})["h1"]
    if hotplug:   # the Xen hotplug path: apply() without ports, then plug_vif per vif
        apply(HostState("h1", segments=st.segments, underlay_peers=st.underlay_peers), netns=h)
        for p in ports:
            plug_vif(p, st.segment(p.tvd), netns=h)
    else:
        apply(st, netns=h)
    sniff = {vm: MarkSniffer(ns) for vm, ns in vms.items()}
    try:
        for sender, peer in (("s1", "s2"), ("p1", "p2")):
            _, _, mac, ip = VMS[sender]
            inj = Injector(vms[sender])
            try:
                for kind, make in SERVER_FRAMES.items():
                    for i in range(N):
                        inj.send(make(mac, ip, marker(f"{sender} {kind}", i)))
            finally:
                inj.close()
        time.sleep(0.5)
        for kind in SERVER_FRAMES:
            assert sniff["s2"].count(f"s1 {kind}") == N, kind      # allowed: all arrive
            assert sniff["p2"].count(f"p1 {kind}") == 0, kind      # not allowed: none
    finally:
        for s in sniff.values():
            s.close()
        apply(HostState("h1"), netns=h)
