"""The paper lab, end to end on the host kernel: 3 Dom0 hosts (2 on a multicast LAN, 1 across
a WAN router without multicast routing), TVDs alpha/beta/gamma in ONE IP subnet, all
inter-TVD flows closed. Brought up once for the module (see conftest.paper_lab)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from pyroute2 import NetNS

from xen_tvd.lab.isolation import flood_and_sniff


def ping(lab, vm, dst, size=None, dev="eth0", wait=5):
    cmd = ["ping", "-n", "-c", "1", "-w", str(wait), "-I", dev]
    if size is not None:
        cmd += ["-M", "do", "-s", str(size)]
    return lab.exec(vm, *cmd, dst)


# ---- connectivity inside a TVD ---------------------------------------------------------------

@pytest.mark.parametrize("src,dst,path", [
    ("a1", "192.168.50.13", "same host h1 (alpha)"),
    ("g2", "192.168.50.34", "same host h2 (gamma)"),
    ("a1", "192.168.50.12", "h1 -> h2 over the LAN (VXLAN multicast group)"),
    ("b1", "192.168.50.22", "h1 -> h2 over the LAN (beta)"),
    ("a2", "192.168.50.14", "h2 -> h3 across the WAN router (head-end replication)"),
    ("g3", "192.168.50.31", "h3 -> h1 across the WAN router (gamma)"),
])
def test_same_tvd_reaches(paper_lab, src, dst, path):
    r = ping(paper_lab, src, dst)
    assert r.returncode == 0, f"{path}: {r.stdout}{r.stderr}"


def test_two_nic_vm_reaches_both_tvds_from_the_right_nic(paper_lab):
    assert ping(paper_lab, "ab", "192.168.50.14", dev="eth0").returncode == 0   # alpha a3
    assert ping(paper_lab, "ab", "192.168.50.24", dev="eth1").returncode == 0   # beta b3


OTHER_TVD = [
    ("a1", "192.168.50.21"),   # alpha -> beta, same host
    ("a1", "192.168.50.31"),   # alpha -> gamma, same host
    ("b2", "192.168.50.12"),   # beta -> alpha, same host h2
    ("g1", "192.168.50.24"),   # gamma -> beta across the WAN
    ("b1", "192.168.50.13"),   # beta -> the two-NIC VM's alpha address
]


def test_other_tvd_unreachable_in_same_subnet(paper_lab):
    """Same IP subnet, different TVD: no answer (the pings run concurrently)."""
    procs = [(src, dst, subprocess.Popen(
        [sys.executable, "-m", "xen_tvd.lab", "exec", paper_lab.spec, src, "--",
         "ping", "-n", "-c", "1", "-w", "2", "-I", "eth0", dst],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for src, dst in OTHER_TVD]
    answered = [(s, d, p.communicate()[0]) for s, d, p in procs if p.wait() == 0]
    assert not answered


# ---- the whole matrix -------------------------------------------------------------------------

def test_verify_matrix_matches_policy(paper_lab):
    r = paper_lab.cli("verify", "--json")
    m = json.loads(r.stdout)
    bad = [c for c in m["cells"] if not c["ok"]]
    assert r.returncode == 0 and m["ok"], bad
    nics = len(m["nics"])
    assert nics == 12
    assert m["pairs"] == nics * (nics - 1) - 2     # minus ab/eth0<->ab/eth1 (same VM)
    kinds = {(c["flow"], c["expected"]) for c in m["cells"]}
    assert kinds == {("same-tvd", True), ("closed", False)}
    reached = [c for c in m["cells"] if all(c["results"].values())]
    assert {(c["src_tvd"], c["dst_tvd"]) for c in reached} == {
        ("alpha", "alpha"), ("beta", "beta"), ("gamma", "gamma")}
    assert all(set(c["results"]) == {"icmp", "tcp", "arp"} for c in m["cells"])


def test_verify_prints_plain_matrix_when_not_a_terminal(paper_lab):
    r = paper_lab.cli("verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\033[" not in r.stdout
    assert "all match the policy" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("a1/eth0(alpha)"))
    assert row.split()[1:] == ["-", "ITA", "ITA", "ITA", "...", "...", "...", "...", "...",
                               "...", "...", "..."]


# ---- isolation: nothing of another TVD arrives -------------------------------------------------

@pytest.mark.parametrize("src_vm,src_eth", [
    ("a1", "eth0"),    # alpha on h1 (LAN, shares h1 with beta/gamma and the two-NIC VM)
    ("b3", "eth0"),    # beta across the WAN
    ("g4", "eth0"),    # gamma on h2
    ("ab", "eth1"),    # the two-NIC VM's beta side
])
def test_flood_reaches_no_other_tvd(paper_lab, src_vm, src_eth):
    topo, policy = paper_lab.topology(), paper_lab.policy()
    sent, results = flood_and_sniff(topo, policy, src_vm, src_eth, count=20)
    assert {"broadcast", "unknown-unicast", "foreign-unicast", "arp-request", "vlan-tagged",
            "ipv4-broadcast", "multicast"} <= set(sent["sent"])
    same = [r for r in results if r.same_tvd]
    foreign = [r for r in results if not r.same_tvd]
    assert same and foreign
    # positive control: every same-TVD NIC, on every host, saw the flood and its end; unknown
    # unicast reaches no VM at all, not even of the same TVD: a vif whose MAC is declared (every
    # lab VM's is) takes no unknown-unicast flooding (dataplane/common.py pin_mac, issue #16)
    for r in same:
        assert r.end_seen, f"{r.nic.key} ({r.nic.tvd}) missed the END marker"
        assert r.marked.get("broadcast", 0) > 0 and r.marked.get("unknown-unicast", 0) == 0, r
    leaks = {r.nic.key: r.marked for r in foreign if r.total}
    assert not leaks, f"frames from {src_vm}/{src_eth} leaked into other TVDs: {leaks}"


def test_two_nic_vm_does_not_join_its_tvds(paper_lab):
    """Flooding alpha from a1: ab's beta NIC sees nothing, ab's alpha NIC sees the flood."""
    topo, policy = paper_lab.topology(), paper_lab.policy()
    _, results = flood_and_sniff(topo, policy, "a1", "eth0", count=10)
    by = {r.nic.key: r for r in results}
    assert by["ab/eth0"].end_seen and by["ab/eth0"].total > 0
    assert by["ab/eth1"].total == 0, by["ab/eth1"].marked
    # and the VM itself forwards nothing between its NICs
    r = paper_lab.exec("ab", "cat", "/proc/sys/net/ipv4/ip_forward")
    assert r.stdout.strip() == "0"


# ---- MTU: what the VM is told is what crosses the VXLAN underlay -------------------------------

def _vm_mtu(lab, vm, eth="eth0") -> int:
    st = lab.status()
    return next(n["mtu"] for n in st["vms"][vm]["nics"] if n["name"] == eth)


@pytest.mark.parametrize("src,dst,dst_vm", [
    ("a1", "192.168.50.12", "a2"),     # LAN, VXLAN
    ("b2", "192.168.50.24", "b3"),     # across the WAN, VXLAN unicast
])
def test_df_ping_of_the_advertised_mtu_crosses_hosts(paper_lab, src, dst, dst_vm):
    mtu = _vm_mtu(paper_lab, src)
    assert mtu == _vm_mtu(paper_lab, dst_vm) == 1500 - 50     # told via frontend_mtu_cb
    ok = ping(paper_lab, src, dst, size=mtu - 28)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    too_big = ping(paper_lab, src, dst, size=mtu - 28 + 1, wait=1)
    assert too_big.returncode != 0


def test_status_reads_vifs_and_vswitches_from_the_kernel(paper_lab):
    st = paper_lab.status()
    assert all(n["present"] for n in st["namespaces"])
    vifs = {(h, v["name"]): v for h, he in st["hosts"].items() for v in he["vifs"]}
    assert len(vifs) == 12
    for (h, name), v in vifs.items():
        assert v["bridge"] == f"tvd-{v['tvd']}", (h, v)
        assert v["mtu"] == 1450 and v["state"] == "up"
    h3 = st["hosts"]["h3"]
    assert {vs["name"] for vs in h3["vswitches"]} == {"tvd-alpha", "tvd-beta", "tvd-gamma"}
    uplinks = [p for vs in h3["vswitches"] for p in vs["ports"] if p["kind"] == "vxlan"]
    assert sorted(p["vni"] for p in uplinks) == [10100, 10200, 10300]
    assert all(p["group"] is None for p in uplinks)   # across the WAN: no multicast group
    assert all(v["listener_alive"] for v in st["vms"].values())


def test_exec_passes_the_exit_code_through(paper_lab):
    assert paper_lab.exec("a1", "sh", "-c", "exit 7").returncode == 7
    r = paper_lab.exec("a1", "cat", "/sys/class/net/eth0/address")
    assert r.returncode == 0 and r.stdout.startswith("00:16:3e:")
    assert paper_lab.exec("nosuchvm", "true").returncode == 1


# ---- breaking isolation behind the lab's back is detected, and `up` repairs it -----------------
# (kept last in the module: it changes the lab, then restores it)

def test_verify_detects_a_vif_on_the_wrong_bridge_and_up_repairs(paper_lab):
    topo = paper_lab.topology()
    host_ns = topo.hosts["h1"].ns
    b1_vif = topo.vms["b1"].nics[0].vif
    with NetNS(host_ns, flags=0) as ns:      # b1 (beta) enslaved to alpha's vSwitch
        ns.link("set", index=ns.link_lookup(ifname=b1_vif)[0],
                master=ns.link_lookup(ifname="tvd-alpha")[0])
    r = paper_lab.cli("verify")
    assert r.returncode == 1, r.stdout + r.stderr
    bad = {line.split()[1] + " " + line.split()[3].rstrip(":")
           for line in r.stdout.splitlines() if line.startswith("MISMATCH")}
    assert "b1/eth0(beta) a1/eth0(alpha)" in bad and "a3/eth0(alpha) b1/eth0(beta)" in bad
    assert all("b1/eth0(beta)" in pair for pair in bad)        # only b1 is affected
    assert "pair(s) differ from the policy" in r.stdout

    # repair: delete a vif, kill a listener too, then rerun `up`
    st = paper_lab.status()
    os.kill(st["vms"]["g3"]["listener_pid"], signal.SIGKILL)
    with NetNS(topo.hosts["h2"].ns, flags=0) as ns:
        ns.link("del", index=ns.link_lookup(ifname=topo.vms["a2"].nics[0].vif)[0])
    paper_lab.cli("up", check=True)
    r = paper_lab.cli("verify", "--json")
    assert r.returncode == 0, [c for c in json.loads(r.stdout)["cells"] if not c["ok"]]
    st = paper_lab.status()
    assert all(v["listener_alive"] for v in st["vms"].values())


# ---- co-hosted VMs never touch the wire --------------------------------------------------------

WIRE_SNIFFER = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))   # ETH_P_ALL
s.bind(("eth0", 0))
s.settimeout(0.2)
pattern, end, seen = bytes.fromhex(sys.argv[1]), time.monotonic() + float(sys.argv[2]), 0
print("ready", flush=True)
while time.monotonic() < end:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    seen += pattern in frame
print(seen, flush=True)
"""


def frames_on_h1_underlay(lab, src, dst, pattern):
    """Count frames on h1's underlay NIC (eth0 in its Dom0 namespace) that carry the ping
    payload pattern while `src` pings `dst` five times."""
    sniffer = subprocess.Popen(["ip", "netns", "exec", f"{lab.name}-h-h1", sys.executable, "-c",
                                WIRE_SNIFFER, pattern * 4, "4"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert sniffer.stdout.readline().strip() == "ready"
        r = lab.exec(src, "ping", "-n", "-c", "5", "-i", "0.2", "-w", "3", "-p", pattern,
                     "-I", "eth0", dst)
        assert r.returncode == 0, r.stdout + r.stderr
        out, _ = sniffer.communicate(timeout=20)
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
    return int(out.strip().splitlines()[-1])


def test_co_hosted_vms_talk_through_the_local_vswitch_only(paper_lab):
    # control: a1 (h1) -> a2 (h2) crosses the LAN, so the pattern shows in VXLAN on h1's eth0
    assert frames_on_h1_underlay(paper_lab, "a1", "192.168.50.12", "5ca1ab1e") > 0
    # a1 -> ab (both alpha, both on h1): nothing of it leaves h1
    assert frames_on_h1_underlay(paper_lab, "a1", "192.168.50.13", "c0ffee11") == 0
