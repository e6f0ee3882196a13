#!/usr/bin/env python3
"""The underlay filter's per-packet cost at a VXLAN receiver (issue #13, run as root).

A peer namespace sends 64-byte UDP frames in VXLAN (trafgen, one CPU, as fast as it can) over
a veth to a host namespace, whose VXLAN device decapsulates them onto a bridge with one "VM"
(a veth; veth stands in for netback). Packets/s that reach the VM, in interleaved rounds:
  none      no underlay filter (nothing of xen-tvd on the host)
  unsized   the filter as xen-tvd loaded it before its peer sets had a size (rhashtable)
  sized     the filter as underlay_filter.render() writes it now (sized sets: fixed hash)
All three with --peers underlay peers, the sender among them. On a veth the receive runs on
the sender's CPU, so the rate is one CPU's worth of the whole path: what a variant costs more
per packet shows as a lower rate. Never a timed assert.

    sudo python3 bench/underlay_filter.py [--rounds 7] [--seconds 3] [--peers 100] [--json OUT]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench.paper_section7 import Topology, sh  # noqa: E402
from tests.dataplane.dishonest import ETH_IP, eth, udp4, vxlan  # noqa: E402  (the tests' frame builders)
from xen_tvd.dataplane import nftables, underlay_filter  # noqa: E402
from xen_tvd.dataplane.transports.vxlan import PLUGIN  # noqa: E402
from xen_tvd.desired.model import VxlanUplink  # noqa: E402

PEER, HOST, VNI, PORT = "10.9.0.1", "10.9.0.2", 100, 4789
VARIANTS = ("none", "unsized", "sized")
# the inner frame: to the VM's MAC, IPv4/UDP to port 9 (the VM's sink drops it)
INNER_IP = ("192.168.77.9", "192.168.77.1")


def _conf(host_mac: str, peer_mac: str, vm_mac: str) -> str:
    inner = eth(vm_mac, "02:aa:00:00:00:09", ETH_IP, udp4(*INNER_IP, 9, 9, bytes(64)))
    payload = vxlan(VNI, inner)
    return (f"{{ eth(da={host_mac}, sa={peer_mac}, type=0x0800), ipv4(saddr={PEER}, daddr={HOST}, "
            f"ttl=64), udp(sport=49152, dport={PORT}), {', '.join(f'0x{b:02x}' for b in payload)} }}\n")


def _peers(n: int) -> set[str]:
    return {PEER} | {str(ipaddress.ip_address("10.8.0.1") + i) for i in range(n - 1)}


def _filter(variant: str, peers: set[str]) -> str | None:
    if variant == "none":
        return None
    body = underlay_filter.render(peers, set(), [PLUGIN.underlay([VxlanUplink(VNI, HOST, "eth0")])])
    if variant == "unsized":
        body = re.sub(r" size \d+;", "", body)
    return nftables.render([(underlay_filter.FILTER, body)])[0]


def _rx(ns: str) -> int:
    return int(sh("cat", "/sys/class/net/eth0/statistics/rx_packets", ns=ns).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if args.peers < 1:
        ap.error("--peers must be at least 1 (the sender)")
    t = Topology("underlay")
    try:
        peer, host = t.ns("peer"), t.ns("host")
        t.wire(peer, host, f"{PEER}", f"{HOST}")
        vm = t.vm(host, 1)
        for cmd in (("link", "add", "br0", "type", "bridge"),
                    ("link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local", HOST, "dev", "eth0",
                     "dstport", str(PORT)),
                    ("link", "set", "vx0", "master", "br0", "up"),
                    ("link", "set", "vif1.0", "master", "br0", "up"),
                    ("link", "set", "br0", "up")):
            sh("ip", *cmd, ns=host)
        sh("nft", "-f", "-", ns=vm, input="table netdev sink {\n chain in { type filter hook "
           "ingress device eth0 priority 0; udp dport 9 drop; }\n}\n")
        mac = {n: sh("cat", "/sys/class/net/eth0/address", ns=n).stdout.strip() for n in (peer, host, vm)}
        peers = _peers(args.peers)
        runs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as conf:
            conf.write(_conf(mac[host], mac[peer], mac[vm]))
            conf.flush()
            for r in range(args.rounds):
                for v in VARIANTS:
                    script = _filter(v, peers)
                    if script is None:
                        nftables.drop(host, [underlay_filter.FILTER], "removing the filter")
                    else:
                        nftables.run(host, script, f"loading the {v} filter")
                    before, t0 = _rx(vm), time.monotonic()
                    sh("timeout", "-s", "INT", str(args.seconds), "taskset", "-c", "0", "trafgen",
                       "--dev", "eth0", "--conf", conf.name, "--cpus", "1", "-q", ns=peer, check=False)
                    runs[v].append((_rx(vm) - before) / (time.monotonic() - t0) / 1e3)
                    print(f"round {r + 1} {v:8s} {runs[v][-1]:7.0f} kpps", file=sys.stderr)
        med = {v: statistics.median(x) for v, x in runs.items()}
        per_round = [runs["sized"][i] / runs["unsized"][i] for i in range(args.rounds)]
        print(f"{'filter':8s} {'kpps':>7s} {'vs none':>8s}")
        for v in VARIANTS:
            print(f"{v:8s} {med[v]:7.0f} {med[v] / med['none']:8.3f}")
        print(f"sized vs unsized: {med['sized'] / med['unsized']:.3f} (per-round ratios "
              f"{', '.join(f'{x:.3f}' for x in per_round)}); {args.peers} peers, median of "
              f"{args.rounds} interleaved rounds of {args.seconds} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rounds": runs, "median": med, "peers": args.peers}, f, indent=2)
    finally:
        t.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
