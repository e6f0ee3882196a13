#!/usr/bin/env python3
"""Reproduce the paper's section 7 measurements on network namespaces (run as root).

Four VM-to-VM paths, each built fresh in its own namespaces:
  baseline      plain Linux bridge, no xen-tvd ("standard Xen bridged" in the paper)
  tvd-same      xen-tvd vSwitch, both VMs on one host (planner + dataplane.apply + plug_vif)
  tvd-vxlan     xen-tvd across two hosts over VXLAN (planner + dataplane)
  ...+csum      the same with the TVD's `tx-checksum-offload: true` (the default turns vif tx
                checksum offload off, paper 6.2, which also turns off TSO on the vif)
  plain-l2      two hosts whose bridges are joined by a bare veth "wire" (no encapsulation)

For each path: ping RTT min/avg/max/mdev over --pings pings (as the paper's Table 3) and TCP
throughput with iperf3. Paths are measured in interleaved rounds (A B C D A B C D ...) so
machine noise spreads over all of them; the report gives the median over rounds and the ratio
to the baseline (same-host) or to plain L2 (cross-host). No timed asserts anywhere: this is a
measurement, not a test.

Usage: python3 bench/paper_section7.py [--rounds 3] [--pings 300] [--seconds 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from xen_tvd.dataplane import apply, plug_vif  # noqa: E402
from xen_tvd.dataplane.model import VifPort  # noqa: E402
from xen_tvd.planner import plan  # noqa: E402
from xen_tvd.policy import load_policy  # noqa: E402

POLICY = """
version: 1
tvds:
  alpha: {vlan: 100}                              # xen-tvd default: vif tx-csum offload off
  beta: {vlan: 200, tx-checksum-offload: true}    # same, offload left on
networks:
  lan: {subnet: 10.99.0.0/24, multicast: true, mtu: 1500}
hosts:
  h1: {address: 10.99.0.1, capabilities: [ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.99.0.1}]}
  h2: {address: 10.99.0.2, capabilities: [ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.99.0.2}]}
"""
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


def plain_bridge(host: str, members: list[str]) -> None:
    sh("ip", "link", "add", "name", "br0", "type", "bridge", "stp_state", "0",
       "forward_delay", "0", ns=host)
    for m in members:
        sh("ip", "link", "set", m, "master", "br0", "up", ns=host)
    sh("ip", "link", "set", "br0", "up", ns=host)


def tvd_attach(policy, placement: dict[str, list[str]], host_ns: dict[str, str],
               vm_ns: dict[str, str], tvd: str) -> None:
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


def build(kind: str, policy) -> tuple[Topology, str, str]:
    t = Topology(kind)
    tvd = "beta" if kind.endswith("+csum") else "alpha"
    try:
        if kind in ("baseline", "tvd-same", "tvd-same+csum"):
            h = t.ns("h1")
            v1, v2 = t.vm(h, 1), t.vm(h, 2)
            if kind == "baseline":
                plain_bridge(h, ["vif1.0", "vif2.0"])
            else:
                tvd_attach(policy, {"h1": ["vif1.0", "vif2.0"]}, {"h1": h},
                           {"vif1.0": v1, "vif2.0": v2}, tvd)
        else:
            h1, h2 = t.ns("h1"), t.ns("h2")
            if kind == "plain-l2":
                t.wire(h1, h2, None, None)
                v1, v2 = t.vm(h1, 1), t.vm(h2, 2)
                plain_bridge(h1, ["eth0", "vif1.0"])
                plain_bridge(h2, ["eth0", "vif2.0"])
            else:
                t.wire(h1, h2, "10.99.0.1", "10.99.0.2")
                v1, v2 = t.vm(h1, 1), t.vm(h2, 2)
                tvd_attach(policy, {"h1": ["vif1.0"], "h2": ["vif2.0"]},
                           {"h1": h1, "h2": h2}, {"vif1.0": v1, "vif2.0": v2}, tvd)
        # warm up: ARP and (for VXLAN) FDB learning
        for _ in range(50):
            if sh("ping", "-c1", "-W1", VM_IP[2], ns=v1, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{kind}: VM1 cannot reach VM2")
        return t, v1, v2
    except BaseException:
        t.close()
        raise


PING_RE = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def iperf(v1: str, v2: str, seconds: int) -> float:
    """TCP throughput VM1 -> VM2 in Gbit/s; retries while the one-shot server starts."""
    for _ in range(20):
        server = subprocess.Popen(["ip", "netns", "exec", v2, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.2)
            r = sh("iperf3", "-c", VM_IP[2], "-t", str(seconds), "-J", ns=v1, check=False)
            result = json.loads(r.stdout or "{}")
            if r.returncode == 0 and "sum_received" in result.get("end", {}):
                return result["end"]["sum_received"]["bits_per_second"] / 1e9
        finally:
            server.kill()
            server.wait()
    raise RuntimeError(f"iperf3 never completed: {result.get('error', r.stderr)}")


def measure(kind: str, policy, pings: int, seconds: int) -> dict:
    t, v1, v2 = build(kind, policy)
    try:
        out = sh("ping", "-q", "-c", str(pings), "-i", "0.002", VM_IP[2], ns=v1).stdout
        mn, avg, mx, mdev = map(float, PING_RE.search(out).groups())
        gbps = iperf(v1, v2, seconds)
        return {"rtt_min": mn, "rtt_avg": avg, "rtt_max": mx, "rtt_mdev": mdev, "gbps": gbps}
    finally:
        t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(POLICY)
    policy = load_policy(f.name)
    os.unlink(f.name)
    kinds = ["baseline", "tvd-same", "tvd-same+csum", "plain-l2", "tvd-vxlan", "tvd-vxlan+csum"]
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds:
            runs[k].append(measure(k, policy, args.pings, args.seconds))
            print(f"round {r + 1} {k:14s} rtt avg {runs[k][-1]['rtt_avg']:.3f} ms "
                  f"{runs[k][-1]['gbps']:.2f} Gbit/s", file=sys.stderr)
    med = {k: {m: statistics.median(x[m] for x in runs[k]) for m in runs[k][0]} for k in kinds}
    ref = {k: ("baseline" if k in ("baseline", "tvd-same", "tvd-same+csum") else "plain-l2")
           for k in kinds}
    print(f"{'path':14s} {'rtt min/avg/max/mdev (ms)':>30s} {'Gbit/s':>8s} {'RTT ratio':>10s} "
          f"{'tput ratio':>10s}")
    for k in kinds:
        m, b = med[k], med[ref[k]]
        rtt = f"{m['rtt_min']:.3f}/{m['rtt_avg']:.3f}/{m['rtt_max']:.3f}/{m['rtt_mdev']:.3f}"
        print(f"{k:14s} {rtt:>30s} {m['gbps']:8.2f} {m['rtt_avg'] / b['rtt_avg']:10.3f} "
              f"{m['gbps'] / b['gbps']:10.3f}")
    print(f"(median of {args.rounds} interleaved rounds, {args.pings} pings and "
          f"{args.seconds}s iperf3 each; tvd-same vs baseline, tvd-vxlan vs plain-l2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": runs, "median": med}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
