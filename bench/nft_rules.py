#!/usr/bin/env python3
"""Port security cost: nftables rule count vs number of vifs, and added per-packet latency.

    sudo python3 bench/nft_rules.py [--pings 300] [--json OUT]

1. Rule count, read back with `nft -j list table bridge xen_tvd` (never nft's text output), for
   3 TVDs / 10 vifs and 100 TVDs / 1000 vifs (every vif with a MAC, one IPv4 and one IPv6
   address); plus the time of a full atomic load and of plug_vif's per-vif element update at
   1000 vifs. Rules must not grow with vifs; set elements do.
2. Added latency: two "VMs" (namespaces, veth peers of host-side vifs; veth stands in for
   netback) on one TVD bridge; ping RTTs with and without the table (holding 1000 vifs'
   elements), in interleaved rounds so machine load hits both alike.
Everything runs in namespaces this script creates and removes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xen_tvd.dataplane import apply, firewall, nftables  # noqa: E402
from xen_tvd.dataplane.model import HostState, Segment, VifPort  # noqa: E402

RUN = f"xtvdb-{uuid.uuid4().hex[:4]}"


def sh(ns, *cmd, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


def port(i: int, tvd: str) -> VifPort:
    return VifPort(f"vif{i}.0", tvd, mac=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
                   addresses=(f"10.{i >> 8}.{i & 255}.1", f"fd00::{i:x}"))


def state(n_tvd: int, n_vif: int, extra: tuple[VifPort, ...] = ()) -> HostState:
    segs = tuple(Segment(f"t{t}", f"tvd-t{t}", None, 1500) for t in range(n_tvd))
    ports = tuple(port(i + 10, f"t{i % n_tvd}") for i in range(n_vif - len(extra))) + extra
    return HostState("bench", segments=segs, ports=ports)


def counts(ns: str) -> dict:
    objs = nftables.list_json(ns, "table", "bridge", "xen_tvd")
    return {"rules": sum(1 for o in objs if "rule" in o),
            "set_elements": sum(len(o["set"].get("elem", [])) for o in objs if "set" in o)}


def rule_counts(ns: str) -> list[dict]:
    out = []
    for n_tvd, n_vif in ((3, 10), (100, 1000)):
        st = state(n_tvd, n_vif)
        sh(ns, "nft", "delete table bridge xen_tvd", check=False)
        t0 = time.perf_counter()
        firewall.sync_ports(st, ns, lambda m: None)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        firewall.plug_port(port(5000, "t0"), ns)
        plug = time.perf_counter() - t0
        out.append({"tvds": n_tvd, "vifs": n_vif, **counts(ns), "full_load_ms": round(load * 1e3, 1),
                    "plug_one_vif_ms": round(plug * 1e3, 1)})
    return out


RTT = re.compile(r"time=([0-9.]+) ms")


def pings(ns: str, ip: str, n: int) -> list[float]:
    out = sh(ns, "ping", "-n", "-c", str(n), "-i", "0.002", "-W", "1", ip, check=False).stdout
    return [float(x) for x in RTT.findall(out)]


def latency(h: str, g1: str, g2: str, total: int) -> dict:
    real = (VifPort("vif1.0", "t0", mac="02:00:00:00:aa:01", addresses=("10.99.0.1",)),
            VifPort("vif2.0", "t0", mac="02:00:00:00:aa:02", addresses=("10.99.0.2",)))
    with_fw = state(1, 1000, real)
    rounds, per = 10, max(1, -(-total // 10))
    res = {"with": [], "without": []}
    pings(g1, "10.99.0.2", 20)  # warm up ARP
    for r in range(rounds):
        for cond in (("with", "without") if r % 2 == 0 else ("without", "with")):
            if cond == "with":
                firewall.sync_ports(with_fw, h, lambda m: None)
            else:
                sh(h, "nft", "delete table bridge xen_tvd", check=False)
            res[cond] += pings(g1, "10.99.0.2", per)
    summ = {}
    for k, v in res.items():
        v.sort()
        summ[k] = {"pings": len(v), "median_ms": round(statistics.median(v), 4),
                   "mean_ms": round(statistics.fmean(v), 4), "p90_ms": round(v[int(len(v) * 0.9)], 4)}
    summ["added_median_us"] = round((summ["with"]["median_ms"] - summ["without"]["median_ms"]) * 1e3, 1)
    return summ


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pings", type=int, default=300, help="pings per condition (>= 300)")
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
        ns = mk("rules")
        rc = rule_counts(ns)
        h, g1, g2 = mk("h"), mk("g1"), mk("g2")
        for g, vif, ip, mac in ((g1, "vif1.0", "10.99.0.1", "02:00:00:00:aa:01"), (g2, "vif2.0", "10.99.0.2", "02:00:00:00:aa:02")):
            sh(h, "ip", "link", "add", vif, "type", "veth", "peer", "name", "eth0", "netns", g)
            sh(g, "ip", "link", "set", "eth0", "address", mac, "up")
            sh(g, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        apply(HostState("bench", segments=(Segment("t0", "tvd-t0", None, 1500),),
                        ports=(VifPort("vif1.0", "t0"), VifPort("vif2.0", "t0"))), netns=h)
        lat = latency(h, g1, g2, max(300, a.pings))
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)
    result = {"rule_counts": rc, "latency": lat, "kernel": os.uname().release}
    print("rule count (nft -j list table bridge xen_tvd):")
    print(f"  {'TVDs':>5} {'vifs':>5} {'rules':>6} {'set elements':>13} {'full load ms':>13} {'plug 1 vif ms':>14}")
    for r in rc:
        print(f"  {r['tvds']:>5} {r['vifs']:>5} {r['rules']:>6} {r['set_elements']:>13} {r['full_load_ms']:>13} {r['plug_one_vif_ms']:>14}")
    print("ping RTT through one bridge, interleaved rounds (table holds 1000 vifs' elements):")
    for k in ("without", "with"):
        s = lat[k]
        print(f"  {k:8} pings={s['pings']} median={s['median_ms']} ms mean={s['mean_ms']} ms p90={s['p90_ms']} ms")
    print(f"  added median: {lat['added_median_us']} us")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
