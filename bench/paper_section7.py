#!/usr/bin/env python3
"""Reproduce the paper's section 7 measurements on network namespaces (run as root).

VM-to-VM paths, each built fresh in its own namespaces:
  baseline        plain Linux bridge, no xen-tvd ("standard Xen bridged" in the paper)
  tvd-same        xen-tvd vSwitch, both VMs on one host, the TVD's settings as shipped
                  (planner + dataplane.apply + plug_vif)
  tvd-same-csumoff  the same with `tx-checksum-offload: false` (the per-TVD opt-out, paper 6.2:
                  vif tx checksum offload off, which also turns off TSO on the vif)
  tvd-same-routed the same host path in a TVD with subnets and a permitted flow to another TVD:
                  the host gets a router and the stateful inter-TVD flow filter, which every
                  bridged frame of the TVD meets too (br_netfilter)
  plain-l2        two hosts whose bridges are joined by a bare veth "wire" (no encapsulation)
  tvd-vxlan       xen-tvd across two hosts over VXLAN, underlay MTU 1500 (VMs get 1450)
  tvd-vxlan-csumoff  the same with the opt-out
  tvd-vxlan-jumbo xen-tvd over VXLAN on an underlay whose MTU may be raised (`max-mtu`), so
                  the planner raises it and VMs keep 1500
  kernel-vxlan    the same two hosts joined by a bare kernel VXLAN device made with `ip link`
                  (same VNI, group, port, MTUs as xen-tvd's plan; no port security, no underlay
                  filter, no ownership marks): what any kernel-VXLAN setup pays, so the cost of
                  the encapsulation itself is told apart from what xen-tvd adds to it
  kernel-vxlan-jumbo  the same on the raised underlay MTU (VMs keep 1500)
Same-host paths are compared with `baseline`, cross-host ones with `plain-l2`; the tvd-vxlan
paths also with their kernel-vxlan twin (column "vs kernel").

For each path: ping RTT min/avg/max/mdev over --pings pings (as the paper's Table 3), TCP
throughput with iperf3, and small-packet rate: 64-byte UDP payloads sent by trafgen
(netsniff-ng) from one CPU as fast as it can, packets/s that arrived at the receiving VM. Paths are measured in
interleaved rounds (A B C D A B C D ...) so machine noise spreads over all of them; the report
gives the median over rounds and the ratios. No timed asserts anywhere: this is a measurement,
not a test.

--host-cpus gives each host of a cross-host path its own CPU, as two machines have: host 1's
underlay receive, the VM1 senders (iperf3 client, trafgen) on CPU 0, host 2's underlay receive
and the iperf3 server on CPU 1 (RPS on each host's underlay NIC). Without it both hosts' work
runs one after the other on the sender's CPU, which charges a cross-host path the sum of the
two hosts' per-packet cost where two machines would pay the larger of the two. Same-host paths
are measured as without it (pinned to CPU 0).

--tree LABEL=DIR adds every xen-tvd path again, built by the xen-tvd source tree DIR (e.g. a
`git worktree` of the commit before a change), labelled `LABEL:path`, in the same interleaved
rounds: before/after figures measured side by side in one run.

Usage: python3 bench/paper_section7.py [--rounds 3] [--pings 300] [--seconds 3]
                                       [--paths a,b,..] [--tree LABEL=DIR] [--host-cpus]
                                       [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

if "PYTHONPATH" not in os.environ:   # --tree runs the attach step with another tree first
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

def policy_text(max_mtu: int = 1500) -> str:
    return f"""
version: 1
tvds:
  alpha: {{vlan: 100}}                              # xen-tvd as shipped
  beta: {{vlan: 200, tx-checksum-offload: false}}   # the per-TVD opt-out
  gamma: {{vlan: 300, subnets: [192.168.77.0/24]}}   # routed: a flow to delta
  delta: {{vlan: 400, subnets: [192.168.78.0/24]}}
flows:
  - {{from: gamma, to: delta, policy: open}}
networks:
  lan: {{subnet: 10.99.0.0/24, multicast: true, mtu: 1500, max-mtu: {max_mtu}}}
hosts:
  h1: {{address: 10.99.0.1, capabilities: [ethernet, ip], nics: [{{network: lan, nic: eth0, address: 10.99.0.1}}]}}
  h2: {{address: 10.99.0.2, capabilities: [ethernet, ip], nics: [{{network: lan, nic: eth0, address: 10.99.0.2}}]}}
"""


SAME_HOST = ("baseline", "tvd-same", "tvd-same-csumoff", "tvd-same-routed")
KINDS = ["baseline", "tvd-same", "tvd-same-csumoff", "tvd-same-routed", "plain-l2", "tvd-vxlan",
         "tvd-vxlan-csumoff", "tvd-vxlan-jumbo", "kernel-vxlan", "kernel-vxlan-jumbo"]
VM_IP = {1: "192.168.77.1", 2: "192.168.77.2"}


def sh(*args: str, ns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Topology:
    """Namespaces for one measured path; always removed, even on failure."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"tvdbench-{uuid.uuid4().hex[:6]}"
        self.tag = tag
        self.namespaces: list[str] = []

    def ns(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", full)
        sh("ip", "link", "set", "lo", "up", ns=full)
        self.namespaces.append(full)
        return full

    def vm(self, host_ns: str, domid: int) -> str:
        """A VM namespace whose eth0 pairs with vif<domid>.0 in the host namespace."""
        vm = self.ns(f"vm{domid}")
        vif = f"vif{domid}.0"
        sh("ip", "link", "add", vif, "type", "veth", "peer", "name", "eth0", "netns", vm,
           ns=host_ns)
        sh("ip", "addr", "add", f"{VM_IP[domid]}/24", "dev", "eth0", ns=vm)
        sh("ip", "link", "set", "eth0", "up", ns=vm)
        return vm

    def wire(self, a: str, b: str, ip_a: str | None, ip_b: str | None) -> None:
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b, ns=a)
        for n, ip in ((a, ip_a), (b, ip_b)):
            if ip:
                sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=n)
            sh("ip", "link", "set", "eth0", "up", ns=n)

    def close(self) -> None:
        for n in reversed(self.namespaces):
            sh("ip", "netns", "del", n, check=False)
            sh("ip", "netns", "del", f"{n}-rtr", check=False)   # a routed host's router


def plain_bridge(host: str, members: list[str]) -> None:
    sh("ip", "link", "add", "name", "br0", "type", "bridge", "stp_state", "0",
       "forward_delay", "0", ns=host)
    for m in members:
        sh("ip", "link", "set", m, "master", "br0", "up", ns=host)
    sh("ip", "link", "set", "br0", "up", ns=host)


def kernel_vxlan(host: str, local: str, vif: str, vm: str, jumbo: bool) -> None:
    """A bare kernel VXLAN bridge, configured as xen-tvd's plan configures alpha's (VNI 100,
    group 239.0.0.100, port 4789, learning; underlay 1500 or raised to 1550, VMs 1450 or 1500)."""
    vm_mtu = 1500 if jumbo else 1450
    if jumbo:
        sh("ip", "link", "set", "eth0", "mtu", str(vm_mtu + 50), ns=host)
    sh("ip", "link", "add", "vx0", "type", "vxlan", "id", "100", "local", local, "dev", "eth0",
       "dstport", "4789", "group", "239.0.0.100", "ttl", "1", ns=host)
    for dev, ns in (("vx0", host), (vif, host), ("eth0", vm)):
        sh("ip", "link", "set", dev, "mtu", str(vm_mtu), ns=ns)
    plain_bridge(host, ["vx0", vif])


def tvd_attach(max_mtu: int, placement: dict[str, list[str]], host_ns: dict[str, str],
               vm_ns: dict[str, str], tvd: str, tree: str | None = None) -> None:
    """Plan, apply and plug with this checkout's xen-tvd, or (tree) in a subprocess that
    imports the xen-tvd of another source tree."""
    if tree is not None:
        args = json.dumps([max_mtu, placement, host_ns, vm_ns, tvd])
        r = subprocess.run([sys.executable, __file__, "--attach", args],
                           env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"attach with {tree} failed: {r.stderr.strip()[-2000:]}")
        return
    from xen_tvd.dataplane import apply, plug_vif
    from xen_tvd.desired.model import VifPort
    from xen_tvd.planner import plan
    from xen_tvd.policy import load_policy
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(policy_text(max_mtu))
        f.flush()
        policy = load_policy(f.name)
    ports = {h: [VifPort(v, tvd) for v in vifs] for h, vifs in placement.items()}
    states = plan(policy, ports)
    for h, state in states.items():
        apply(state, netns=host_ns[h])
        seg = state.segment(tvd)
        for port in state.ports:
            vm = vm_ns[port.ifname]
            plug_vif(port, seg, netns=host_ns[h],
                     frontend_mtu_cb=lambda mtu, vm=vm: sh("ip", "link", "set", "eth0", "mtu",
                                                           str(mtu), ns=vm))


def build(path: str, trees: dict[str, str]) -> tuple[Topology, str, str]:
    label, _, kind = path.rpartition(":")
    tree = trees[label] if label else None
    t = Topology(kind)
    tvd = {"csumoff": "beta", "routed": "gamma"}.get(kind.rsplit("-", 1)[-1], "alpha")
    max_mtu = 9000 if kind.endswith("-jumbo") else 1500
    try:
        if kind in SAME_HOST:
            h = t.ns("h1")
            v1, v2 = t.vm(h, 1), t.vm(h, 2)
            if kind == "baseline":
                plain_bridge(h, ["vif1.0", "vif2.0"])
            else:
                tvd_attach(max_mtu, {"h1": ["vif1.0", "vif2.0"]}, {"h1": h},
                           {"vif1.0": v1, "vif2.0": v2}, tvd, tree)
        else:
            h1, h2 = t.ns("h1"), t.ns("h2")
            if kind == "plain-l2":
                t.wire(h1, h2, None, None)
                v1, v2 = t.vm(h1, 1), t.vm(h2, 2)
                plain_bridge(h1, ["eth0", "vif1.0"])
                plain_bridge(h2, ["eth0", "vif2.0"])
            elif kind.startswith("kernel-vxlan"):
                t.wire(h1, h2, "10.99.0.1", "10.99.0.2")
                v1, v2 = t.vm(h1, 1), t.vm(h2, 2)
                kernel_vxlan(h1, "10.99.0.1", "vif1.0", v1, kind.endswith("-jumbo"))
                kernel_vxlan(h2, "10.99.0.2", "vif2.0", v2, kind.endswith("-jumbo"))
            else:
                t.wire(h1, h2, "10.99.0.1", "10.99.0.2")
                v1, v2 = t.vm(h1, 1), t.vm(h2, 2)
                tvd_attach(max_mtu, {"h1": ["vif1.0"], "h2": ["vif2.0"]},
                           {"h1": h1, "h2": h2}, {"vif1.0": v1, "vif2.0": v2}, tvd, tree)
        # warm up: ARP and (for VXLAN) FDB learning
        for _ in range(50):
            if sh("ping", "-c1", "-W1", VM_IP[2], ns=v1, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{path}: VM1 cannot reach VM2")
        return t, v1, v2
    except BaseException:
        t.close()
        raise


PING_RE = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def iperf(v1: str, v2: str, seconds: int, *client_args: str, cpus: tuple[int, int] | None = None) -> dict:
    """One iperf3 run VM1 -> VM2 (its JSON `end`); retries while the one-shot server starts.
    cpus: (client's, server's) CPU."""
    if cpus is not None:
        client_args = (*client_args, "-A", str(cpus[0]))
    for _ in range(20):
        server = subprocess.Popen(["ip", "netns", "exec", v2, "iperf3", "-s", "-1",
                                   *(("-A", str(cpus[1])) if cpus else ())],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.2)
            r = sh("iperf3", "-c", VM_IP[2], "-t", str(seconds), "-J", *client_args, ns=v1,
                   check=False)
            result = json.loads(r.stdout or "{}")
            end = result.get("end", {})
            if r.returncode == 0 and ("sum_received" in end or "sum" in end):
                return end
        finally:
            server.kill()
            server.wait()
    raise RuntimeError(f"iperf3 never completed: {result.get('error', r.stderr)}")


TRAFGEN = """{{ eth(da={da}, sa={sa}, type=0x0800),
  ipv4(saddr={src}, daddr={dst}, ttl=64), udp(sport=9, dport=9), fill(0x00, 64) }}
"""


def _counter(ns: str, name: str) -> int:
    return int(sh("cat", f"/sys/class/net/eth0/statistics/{name}", ns=ns).stdout)


def udp_pps(v1: str, v2: str, seconds: int, cpu: int | None = None) -> float:
    """64-byte UDP payloads from VM1 as fast as one CPU can send them (trafgen, a packet-mmap
    ring: no per-packet syscall, so the path's own per-packet cost dominates): packets/s that
    reached VM2's NIC."""
    if shutil.which("trafgen") is None:
        raise RuntimeError("trafgen not found (apt-get install netsniff-ng)")
    mac = {ns: sh("cat", "/sys/class/net/eth0/address", ns=ns).stdout.strip() for ns in (v1, v2)}
    # VM2 drops them at its NIC's ingress (counted by then): its UDP stack answering each one
    # with ICMP port unreachable would put its own cost, the same on every path, into the rate
    sh("nft", "-f", "-", ns=v2, input="table netdev sink {\n chain in { type filter hook "
       "ingress device eth0 priority 0; udp dport 9 drop; }\n}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
        f.write(TRAFGEN.format(da=mac[v2], sa=mac[v1], src=VM_IP[1], dst=VM_IP[2]))
        f.flush()
        before, t0 = _counter(v2, "rx_packets"), time.monotonic()
        pin = ("taskset", "-c", str(cpu)) if cpu is not None else ()
        sh("timeout", "-s", "INT", str(seconds), *pin, "trafgen", "--dev", "eth0", "--conf", f.name,
           "--cpus", "1", "-q", ns=v1, check=False)
        return (_counter(v2, "rx_packets") - before) / (time.monotonic() - t0)


def own_cpus(t: Topology) -> None:
    """--host-cpus: each host's underlay receive (RPS) on its own CPU: h1 on 0, h2 on 1."""
    for n in t.namespaces:
        for host, mask in (("-h1", "1"), ("-h2", "2")):
            if n.endswith(host):
                sh("sh", "-c", f"echo {mask} > /sys/class/net/eth0/queues/rx-0/rps_cpus", ns=n)


def measure(path: str, trees: dict[str, str], pings: int, seconds: int,
            host_cpus: bool = False) -> dict:
    t, v1, v2 = build(path, trees)
    cross = path.rpartition(":")[2] not in SAME_HOST
    try:
        if host_cpus and cross:
            own_cpus(t)
        out = sh("ping", "-q", "-c", str(pings), "-i", "0.002", VM_IP[2], ns=v1).stdout
        mn, avg, mx, mdev = map(float, PING_RE.search(out).groups())
        pins = ((0, 1) if cross else (0, 0)) if host_cpus else None
        gbps = iperf(v1, v2, seconds, cpus=pins)["sum_received"]["bits_per_second"] / 1e9
        return {"rtt_min": mn, "rtt_avg": avg, "rtt_max": mx, "rtt_mdev": mdev, "gbps": gbps,
                "kpps": udp_pps(v1, v2, seconds, 0 if host_cpus else None) / 1e3}
    finally:
        t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--paths", default=",".join(KINDS), help="comma-separated subset of the paths")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="also measure the xen-tvd paths built by the source tree DIR")
    ap.add_argument("--host-cpus", action="store_true",
                    help="each host of a cross-host path on its own CPU (RPS; see above)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--attach", help=argparse.SUPPRESS)   # internal: tvd_attach for --tree
    args = ap.parse_args()
    if args.attach:
        tvd_attach(*json.loads(args.attach))
        return 0
    kinds = [k for k in args.paths.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if args.host_cpus and (os.cpu_count() or 1) < 2:
        ap.error("--host-cpus needs two CPUs")
    trees = dict(t.split("=", 1) for t in args.tree)
    paths = kinds + [f"{label}:{k}" for label in trees for k in kinds if k.startswith("tvd-")]
    runs: dict[str, list[dict]] = {k: [] for k in paths}
    for r in range(args.rounds):
        for k in paths:
            runs[k].append(measure(k, trees, args.pings, args.seconds, args.host_cpus))
            m = runs[k][-1]
            print(f"round {r + 1} {k:24s} rtt avg {m['rtt_avg']:.3f} ms {m['gbps']:.2f} Gbit/s "
                  f"{m['kpps']:.0f} kpps", file=sys.stderr)
    med = {k: {m: statistics.median(x[m] for x in runs[k]) for m in runs[k][0]} for k in paths}

    def ref(path: str) -> str | None:
        kind = path.rpartition(":")[2]
        want = "baseline" if kind in SAME_HOST else "plain-l2"
        return want if want in med else None

    def twin(path: str) -> str | None:
        kind = path.rpartition(":")[2]
        want = kind.replace("tvd-vxlan", "kernel-vxlan") if kind in ("tvd-vxlan", "tvd-vxlan-jumbo") else None
        return want if want in med else None

    def ratios(m: dict, r: str | None) -> str:
        return (f"{m['rtt_avg'] / med[r]['rtt_avg']:.3f}/{m['gbps'] / med[r]['gbps']:.3f}/"
                f"{m['kpps'] / med[r]['kpps']:.3f}") if r else ""

    print(f"{'path':24s} {'rtt min/avg/max/mdev (ms)':>30s} {'Gbit/s':>7s} {'kpps':>6s} "
          f"{'RTT/tput/pps ratio':>19s} {'vs kernel':>19s}")
    for k in paths:
        m = med[k]
        rtt = f"{m['rtt_min']:.3f}/{m['rtt_avg']:.3f}/{m['rtt_max']:.3f}/{m['rtt_mdev']:.3f}"
        print(f"{k:24s} {rtt:>30s} {m['gbps']:7.2f} {m['kpps']:6.0f} {ratios(m, ref(k)):>19s} "
              f"{ratios(m, twin(k)):>19s}")
    print(f"(median of {args.rounds} interleaved rounds, {args.pings} pings, {args.seconds}s "
          f"iperf3 TCP and {args.seconds}s of 64-byte UDP from trafgen each; same-host paths vs baseline, "
          f"cross-host vs plain-l2; 'vs kernel': tvd-vxlan paths vs the bare kernel VXLAN twin"
          f"{'; each host on its own CPU' if args.host_cpus else ''})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": runs, "median": med}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
