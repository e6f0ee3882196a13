#!/usr/bin/env python3
"""Port security cost, both backends (eBPF: a program per vif, the default; nftables: netdev
xen_tvd_ports, a chain per vif): load times and per-packet rate.

    sudo python3 bench/nft_rules.py [--vifs 1000] [--seconds 3] [--rounds 5] [--json OUT]

1. Management, per backend: with N vifs (veth devices; veth stands in for netback) the time of
   a full load (apply), of a converged rerun, of plug_vif's update of one vif; for nftables the
   chain/rule counts read back with `nft -j` (never nft's text output).
2. Per packet: two "VMs" (namespaces, veth peers of host-side vifs) on one TVD bridge; 64-byte
   UDP from trafgen (netsniff-ng) at one CPU's full speed, packets/s that reached the other VM,
   in interleaved rounds without port security, and per backend with it for the two vifs only
   and for the two vifs plus N other vifs: a vif's frames meet only its own chain or program,
   so each backend's two must be alike.
Everything runs in namespaces this script creates and removes. Never a timed assert.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xen_tvd.dataplane import apply, nftables, plug_vif  # noqa: E402
from xen_tvd.desired.model import HostState, Segment, VifPort  # noqa: E402

RUN = f"xtvdb-{uuid.uuid4().hex[:4]}"
SEG = Segment("t0", "tvd-t0", None, 1500)
REAL = (VifPort("vif1.0", "t0", mac="02:00:00:00:aa:01", addresses=("10.99.0.1",)),
        VifPort("vif2.0", "t0", mac="02:00:00:00:aa:02", addresses=("10.99.0.2",)))


def sh(ns, *cmd, check=True, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          check=check, **kw)


def port(i: int) -> VifPort:
    return VifPort(f"vif{i}.0", "t0", mac=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
                   addresses=(f"10.{i >> 8}.{i & 255}.1", f"fd00::{i:x}"))


def others(ns: str, n: int) -> tuple[VifPort, ...]:
    batch = "".join(f"link add vif{i}.0 type veth peer name o{i}\n" for i in range(10, 10 + n))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
    return tuple(port(i) for i in range(10, 10 + n))


def counts(ns: str) -> dict:
    objs = nftables.list_json(ns, "table", "netdev", "xen_tvd_ports") or []
    return {"chains": sum(1 for o in objs if "chain" in o),
            "base_chains": sum(1 for o in objs if "chain" in o and o["chain"].get("hook")),
            "rules": sum(1 for o in objs if "rule" in o)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return round((time.perf_counter() - t0) * 1e3, 1)


def management(ns: str, n: int, backend: str) -> dict:
    many = others(ns, n)
    st = HostState("bench", segments=(SEG,), ports=many, port_security=backend)
    out = {"vifs": n, "full_load_ms": timed(lambda: apply(st, netns=ns)),
           "converged_rerun_ms": timed(lambda: apply(st, netns=ns))}
    moved = VifPort(many[0].ifname, "t0", mac=many[0].mac, addresses=("10.250.0.1",))
    out["plug_one_vif_ms"] = timed(lambda: plug_vif(moved, SEG, netns=ns, port_security=backend))
    if backend == "nftables":
        out.update(counts(ns))
    return out


TRAFGEN = ("{ eth(da=02:00:00:00:aa:02, sa=02:00:00:00:aa:01, type=0x0800), "
           "ipv4(saddr=10.99.0.1, daddr=10.99.0.2, ttl=64), udp(sport=9, dport=9), fill(0x00, 64) }\n")


def pps(g1: str, g2: str, seconds: int) -> float:
    # the bridge must know g2's MAC, or every probe floods to all ports (with N other vifs
    # attached that measured the flood, not port security)
    sh(g2, "ping", "-c", "1", "-W", "1", REAL[0].addresses[0], check=False)
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
        f.write(TRAFGEN)
        f.flush()
        rx = lambda: int(sh(g2, "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)  # noqa: E731
        before, t0 = rx(), time.monotonic()
        sh(g1, "timeout", "-s", "INT", str(seconds), "trafgen", "--dev", "eth0", "--conf", f.name,
           "--cpus", "1", "-q", check=False)
        return (rx() - before) / (time.monotonic() - t0)


def per_packet(h: str, g1: str, g2: str, n: int, rounds: int, seconds: int) -> dict:
    many = others(h, n)
    states = {"none": None}
    for b in ("ebpf", "nftables"):
        states[f"{b}: two vifs"] = HostState("bench", segments=(SEG,), ports=REAL, port_security=b)
        states[f"{b}: two + {n} others"] = HostState("bench", segments=(SEG,), ports=REAL + many,
                                                     port_security=b)
    res: dict[str, list[float]] = {k: [] for k in states}
    for r in range(rounds):
        for k in (list(states) if r % 2 == 0 else list(reversed(states))):
            if states[k] is None:   # the bridge and attachments stay; only port security goes
                sh(h, "nft", "delete table netdev xen_tvd_ports", check=False)
                for p in REAL:
                    sh(h, "tc", "qdisc", "del", "dev", p.ifname, "clsact", check=False)
            else:
                apply(states[k], netns=h)
            res[k].append(pps(g1, g2, seconds))
    med = {k: statistics.median(v) for k, v in res.items()}
    return {k: {"kpps_median": round(med[k] / 1e3, 1), "ratio_to_none": round(med[k] / med["none"], 3),
                "rounds": [round(x / 1e3, 1) for x in v]} for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vifs", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    made = []

    def mk(tag):
        name = f"{RUN}-{tag}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        sh(name, "ip", "link", "set", "lo", "up")
        return name

    try:
        mgmt = {b: management(mk(f"mgmt-{b}"), a.vifs, b) for b in ("ebpf", "nftables")}
        h, g1, g2 = mk("h"), mk("g1"), mk("g2")
        for g, p in ((g1, REAL[0]), (g2, REAL[1])):
            sh(h, "ip", "link", "add", p.ifname, "type", "veth", "peer", "name", "eth0", "netns", g)
            sh(g, "ip", "link", "set", "eth0", "address", p.mac, "up")
            sh(g, "ip", "addr", "add", f"{p.addresses[0]}/24", "dev", "eth0")
        # the receiver drops the probes at its NIC (counted by then), so its UDP stack costs nothing
        sh(g2, "nft", "-f", "-", input="table netdev sink {\n chain in { type filter hook ingress "
           "device eth0 priority 0; udp dport 9 drop; }\n}\n")
        apply(HostState("bench", segments=(SEG,), ports=REAL), netns=h)
        pkt = per_packet(h, g1, g2, a.vifs, a.rounds, a.seconds)
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)
    result = {"management": mgmt, "per_packet": pkt, "kernel": os.uname().release}
    for b, m in mgmt.items():
        shape = (f"{m['base_chains']} base chains, {m['chains']} chains, {m['rules']} rules"
                 if b == "nftables" else f"{m['vifs']} programs")
        print(f"{b}, {m['vifs']} vifs: {shape}; full load {m['full_load_ms']} ms, converged rerun "
              f"{m['converged_rerun_ms']} ms, plug one vif {m['plug_one_vif_ms']} ms")
    print(f"64-byte UDP through one bridge, median of {a.rounds} interleaved rounds of {a.seconds} s:")
    for k, v in pkt.items():
        print(f"  {k:28} {v['kpps_median']:8.1f} kpps  {v['ratio_to_none']:.3f} x none   {v['rounds']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
