"""Underlay VXLAN source filter (inet xen_tvd_underlay), tier 1.

A rogue namespace on the hosts' bridged underlay sends forged VXLAN (UDP 4789) to each host,
carrying alpha's and beta's VNIs with a broadcast inner frame; every VM sniffs. First without
the filter (underlay_peers=None), to prove the forged packets really get decapsulated and
delivered; then with the planner's underlay_peers: zero may arrive, and honest cross-host
traffic still flows. Known limit (not tested as a pass): a rogue that spoofs an enrolled
peer's source address still gets in — only encryption stops that.
"""
from __future__ import annotations

import ipaddress
import socket
import time

from tests.dataplane.dishonest import (BCAST, ETH_IP, ROGUE_IP, VMS, Lab, eth, marker, print_table, udp4, vxlan)
from tests.dataplane.dp_helpers import ping
from xen_tvd.dataplane import apply, nftables
from xen_tvd.desired.model import HostState, Segment, VxlanUplink
from xen_tvd.planner import plan

PER_KIND = 25
HOST_IP = {"h1": "10.0.0.1", "h2": "10.0.0.2"}


def _forge(lab: Lab, kind: str, vni: int, to: str) -> int:
    from pyroute2 import netns as pr_netns
    s = pr_netns.create_socket(lab.rogue, socket.AF_INET, socket.SOCK_DGRAM, 0, flags=0)
    try:
        if ipaddress.ip_address(to).is_multicast:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ROGUE_IP))
        for i in range(PER_KIND):
            inner = eth(BCAST, "02:66:66:66:66:66", ETH_IP, udp4("192.168.10.66", "192.168.10.255", 9, 9, marker(kind, i)))
            s.sendto(vxlan(vni, inner), (to, 4789))
    finally:
        s.close()
    return PER_KIND


def _attack(lab: Lab, seq: int) -> dict[str, tuple[int, dict]]:
    vni = {t: lab.policy.tvds[t].vni for t in ("alpha", "beta")}
    out = {}
    for h, ip in HOST_IP.items():
        for t in ("alpha", "beta"):
            kind = f"forged VXLAN VNI {vni[t]} ({t}) to {h}:4789 r{seq}"
            out[kind] = (_forge(lab, kind, vni[t], ip), None)
    for t in ("alpha", "beta"):  # the BUM path: the TVD's multicast group on the underlay
        group = lab.planned["h1"].segment(t).uplink.group
        kind = f"forged VXLAN VNI {vni[t]} ({t}) to group {group}:4789 r{seq}"
        out[kind] = (_forge(lab, kind, vni[t], group), None)
    lab.barrier(seq)
    time.sleep(0.3)
    return {k: (n, lab.arrivals(k)) for k, (n, _) in out.items()}


def test_planner_lists_hosts_sharing_a_vxlan_segment(tmp_path):
    from xen_tvd.policy import load_policy
    from tests.dataplane.dishonest import POLICY
    from xen_tvd.desired.model import VifPort
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    st = plan(load_policy(str(f)), {"h1": [VifPort("vif1.0", "alpha")], "h2": [VifPort("vif1.0", "alpha")]})
    assert st["h1"].underlay_peers == ("10.0.0.2",) and st["h2"].underlay_peers == ("10.0.0.1",)
    only = plan(load_policy(str(f)), {"h1": [VifPort("vif1.0", "alpha")]})
    assert only["h1"].underlay_peers == ()   # no VXLAN segment: no filter is installed


def test_forged_vxlan_from_the_underlay_is_dropped_before_decapsulation(mkns, tmp_path):
    lab = Lab(mkns, tmp_path, underlay_filter=False)
    try:
        for h, ns in lab.hosts.items():
            assert nftables.list_json(ns, "table", "inet", "xen_tvd_underlay") is None
        # 1. control: without the filter the forged frames do reach the VMs of the forged VNI
        #    on the host they were sent to (a VXLAN endpoint never re-floods into the overlay)
        before = _attack(lab, 1)
        for kind, (_, got) in before.items():
            tvd, host = ("alpha" if "(alpha)" in kind else "beta"), kind.split(" to ")[1][:2]
            victims = [v for v in VMS if VMS[v][2] == tvd and host in (VMS[v][0], "gr")]
            assert victims and all(got[v] == PER_KIND for v in victims), (kind, got)
        # 2. the planner's peers: only the other enrolled host may send VXLAN
        for h, ns in lab.hosts.items():
            rep = apply(lab.planned[h], netns=ns)
            assert any("xen_tvd_underlay" in c for c in rep.changes), rep.changes
            assert apply(lab.planned[h], netns=ns).changes == []      # idempotent
        after = _attack(lab, 2)
        rows, bad = [], []
        for kind, (n, got) in after.items():
            arrived = sum(got.values())
            rows.append((kind.rsplit(" r", 1)[0], n, arrived, "-", f"rogue host {ROGUE_IP}"))
            if arrived:
                bad.append((kind, got))
        ctl = {k.rsplit(" r", 1)[0]: sum(g.values()) for k, (_, g) in before.items()}
        rows += [(f"(no filter) {k}", PER_KIND, "-", f"{v} (control)", f"rogue host {ROGUE_IP}") for k, v in ctl.items()]
        print_table("underlay filter: forged VXLAN from a rogue host on the underlay; receivers: all 5 VMs", rows)
        assert not bad, bad
        assert ping(lab.ns("a2"), VMS["a3"][3]) and ping(lab.ns("b1"), VMS["b2"][3]), \
            "honest cross-host VXLAN broken by the filter"
    finally:
        lab.close()


def test_underlay_table_follows_segments_and_peers(ns):
    from tests.dataplane.dp_helpers import underlay
    underlay(ns)
    seg = Segment("alpha", "tvd-alpha", VxlanUplink(100, "10.0.0.1", "ul0", remotes=("10.0.0.9",)), 1450)
    apply(HostState("h", segments=(seg,)), netns=ns)                      # peers not computed
    assert nftables.list_json(ns, "table", "inet", "xen_tvd_underlay") is None
    apply(HostState("h", segments=(seg,), underlay_peers=("10.0.0.2", "fd00::2")), netns=ns)
    listed = {o["set"]["name"]: o["set"] for o in
              nftables.list_json(ns, "table", "inet", "xen_tvd_underlay") if "set" in o}
    sets = {name: s.get("elem", []) for name, s in listed.items()}
    assert sorted(sets["peers4"]) == ["10.0.0.2", "10.0.0.9"] and sets["peers6"] == ["fd00::2"]
    assert sets["vxlan_ports"] == [4789]
    # sized peer sets: the kernel's fixed hash, not an rhashtable, on every packet's lookup
    assert listed["peers4"].get("size") == listed["peers6"].get("size") == 64, listed
    many = tuple(str(ipaddress.ip_address("10.1.0.1") + i) for i in range(300))
    apply(HostState("h", segments=(seg,), underlay_peers=many), netns=ns)   # beyond the minimum size
    peers4 = [o["set"] for o in nftables.list_json(ns, "table", "inet", "xen_tvd_underlay")
              if o.get("set", {}).get("name") == "peers4"][0]
    assert len(peers4["elem"]) == 301 and peers4["size"] >= 301, peers4["size"]
    rep = apply(HostState("h", underlay_peers=("10.0.0.2",)), netns=ns)   # no VXLAN segment left
    table_gone = [i for i, c in enumerate(rep.changes)
                  if c.startswith("deleted nftables table inet xen_tvd_underlay")]
    vxlan_gone = [i for i, c in enumerate(rep.changes) if "vx" in c and c.startswith(("deleted", "removed"))]
    assert table_gone and vxlan_gone, rep.changes
    # the filter outlives the VXLAN device it guards: no moment accepts VXLAN from anyone
    assert vxlan_gone[-1] < table_gone[0], rep.changes
    assert nftables.list_json(ns, "table", "inet", "xen_tvd_underlay") is None


def test_tvd_traffic_to_the_vxlan_port_passes_the_underlay_filter(mkns, tmp_path):
    """The filter is about VXLAN delivered to this host. With br_netfilter (built into the
    6.18 host kernel, loaded in tier 2's 6.1; bridge-nf-call-iptables=1 in every netns)
    frames bridged between a TVD's ports traverse inet hooks too, so a VM's own UDP to port
    4789 (e.g. a nested overlay) must not be mistaken for forged VXLAN: neither on the same
    host (vif -> vif) nor across hosts (decapsulated, vxlan -> vif)."""
    from tests.dataplane.dishonest import Injector
    lab = Lab(mkns, tmp_path)
    try:
        for h, ns in lab.hosts.items():
            assert nftables.list_json(ns, "table", "inet", "xen_tvd_underlay") is not None, h
        _, _, _, ip1, _, m1 = VMS["a1"]
        inj = Injector(lab.ns("a1"))
        try:
            for i in range(PER_KIND):
                inj.send(eth(BCAST, m1, ETH_IP, udp4(ip1, "192.168.10.255", 4789, 4789,
                                                     vxlan(4242, marker("tvd udp 4789", i)))))
            lab.barrier(1)
        finally:
            inj.close()
        got = lab.arrivals("tvd udp 4789")
        assert (got["a2"], got["a3"], got["b1"], got["b2"]) == (PER_KIND, PER_KIND, 0, 0), got
    finally:
        lab.close()
