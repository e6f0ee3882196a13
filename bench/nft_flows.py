#!/usr/bin/env python3
"""Inter-TVD flow filter cost: rule count vs TVD pairs, and added per-packet latency.

    sudo python3 bench/nft_flows.py [--pings 100] [--rounds 5] [--json OUT]

Two policies, every TVD with its own /24, every ordered pair listed (a full matrix): a pair
(i, j) is controlled when i + j is odd (sender: tcp 22 + icmp; receiver: tcp 22, tcp 443 +
icmp, so each side gets its own chain) and open otherwise. 3 TVDs vs 100 TVDs (9,900 pairs).
All TVDs are carried by ONE host (the worst case: 100 router legs and vSwitches there).

1. Rule count, read back with `nft -j list` (never nft's text output) from the host's
   `inet xen_tvd_flows` + `bridge xen_tvd_gw` tables, and map/set elements; time of the full
   apply() and of a converged rerun.
2. Added latency: two VMs (namespaces behind vifs) in TVDs t0 and t1 (a controlled pair, the
   longest rule path: map lookup + jump + rules), ping RTT through the router with the flow
   filter and with the flow filter table removed, in interleaved rounds so machine load hits
   both alike. Everything runs in namespaces this script creates and removes.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xen_tvd.dataplane import apply, flowfilter, nftables  # noqa: E402
from xen_tvd.desired.model import HostState, VifPort  # noqa: E402
from xen_tvd.planner import plan  # noqa: E402
from xen_tvd.policy.model import (Flow, FlowKind, Host, HostNic, Network, Policy,  # noqa: E402
                                  Rule, Tvd)

RUN = f"xtvdf-{uuid.uuid4().hex[:4]}"
SENDER = (Rule("tcp", (22, 22)), Rule("icmp"))
RECEIVER = (Rule("tcp", (22, 22)), Rule("tcp", (443, 443)), Rule("icmp"))


def sh(ns, *cmd, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          check=check)


def subnet(i: int) -> str:
    return f"10.{100 + i // 256}.{i % 256}.0/24"


def policy(n: int) -> Policy:
    tvds = {}
    for i in range(n):
        net = ipaddress.ip_network(subnet(i))
        tvds[f"t{i}"] = Tvd(f"t{i}", 100 + i, 10100 + i, subnets=(str(net),),
                            gateways=(f"{next(net.hosts())}/24",))
    flows = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if (i + j) % 2:
                flows.append(Flow(f"t{i}", f"t{j}", FlowKind.CONTROLLED, SENDER, RECEIVER))
            else:
                flows.append(Flow(f"t{i}", f"t{j}", FlowKind.OPEN))
    host = Host("bench", "10.77.0.1", frozenset({"ethernet", "ip"}),
                nics=(HostNic("lan", "eth0", "10.77.0.1"),))
    return Policy(1, {}, tvds, tuple(flows),
                  networks={"lan": Network("lan", "10.77.0.0/24")}, hosts={"bench": host})


def vm_ip(i: int) -> str:
    return str(ipaddress.ip_network(subnet(i)).network_address + 10)


def counts(ns: str) -> dict:
    out = {"rules": 0, "chains": 0, "elements": 0}
    for fam, table in ((flowfilter.FAMILY, flowfilter.TABLE),
                       (flowfilter.GW_FAMILY, flowfilter.GW_TABLE)):
        for o in nftables.list_json(ns, "table", fam, table) or []:
            out["rules"] += "rule" in o
            out["chains"] += "chain" in o
            for k in ("set", "map"):
                if k in o:
                    out["elements"] += len(o[k].get("elem", []))
    return out


def rtts(ns: str, dst: str, n: int) -> list[float]:
    r = sh(ns, "ping", "-n", "-i", "0.005", "-c", str(n), "-W", "1", dst, check=False)
    return [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", r.stdout)]   # µs


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(n: int, pings: int, rounds: int) -> dict:
    host = f"{RUN}-h{n}"
    vms = [f"{RUN}-v{n}-{k}" for k in (0, 1)]
    for ns in [host, *vms]:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        sh(ns, "ip", "link", "set", "lo", "up")
    try:
        ports = []
        for k, vm in enumerate(vms):
            vif = f"vif{k + 1}.0"
            subprocess.run(["ip", "-n", host, "link", "add", vif, "type", "veth", "peer", "eth0",
                            "netns", vm], check=True)
            sh(vm, "ip", "addr", "add", f"{vm_ip(k)}/24", "dev", "eth0")
            sh(vm, "ip", "link", "set", "eth0", "up")
            gw = str(next(ipaddress.ip_network(subnet(k)).hosts()))
            sh(vm, "ip", "route", "add", "default", "via", gw)
            ports.append(VifPort(vif, f"t{k}", addresses=(vm_ip(k),)))
        pol = policy(n)
        states = plan(pol, {"bench": ports}, extra={"bench": set(pol.tvds)})
        st: HostState = states["bench"]
        t0 = time.perf_counter()
        apply(st, netns=host)
        t_apply = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = apply(st, netns=host).changes
        t_rerun = time.perf_counter() - t0
        c = counts(host)
        script, _ = flowfilter.script(st, [])
        t0 = time.perf_counter()
        nftables.run(host, script, "bench reload")
        t_reload = time.perf_counter() - t0
        assert rtts(vms[0], vm_ip(1), 3), "t0 -> t1 (controlled, icmp allowed) must answer"
        with_f, without_f = [], []
        for _ in range(rounds):
            with_f += rtts(vms[0], vm_ip(1), pings)
            nftables.run(host, f"delete table {flowfilter.FAMILY} {flowfilter.TABLE}\n", "bench")
            without_f += rtts(vms[0], vm_ip(1), pings)
            nftables.run(host, script, "bench reload")
        apply(HostState("bench"), netns=host)     # cleanup path: router namespace goes too
        return {"tvds": n, "pairs": len(pol.flows), "legs": len(st.router.legs), **c,
                "apply_s": round(t_apply, 2), "rerun_s": round(t_rerun, 2),
                "rerun_changes": len(again), "full_reload_s": round(t_reload, 3),
                "rtt_us_with": {"median": round(statistics.median(with_f), 1),
                                "p95": round(pct(with_f, 0.95), 1), "n": len(with_f)},
                "rtt_us_without": {"median": round(statistics.median(without_f), 1),
                                   "p95": round(pct(without_f, 0.95), 1), "n": len(without_f)}}
    finally:
        for ns in [host, *vms, f"{host}-rtr"]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--sizes", default="3,100", help="TVD counts to measure (default 3,100)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    res = [run(int(n), a.pings, a.rounds) for n in a.sizes.split(",")]
    print(f"{'TVDs':>5} {'pairs':>6} {'legs':>5} {'rules':>6} {'chains':>6} {'elements':>8} "
          f"{'apply':>7} {'rerun':>6} {'reload':>7}  RTT µs median/p95 with | without filter")
    for r in res:
        w, wo = r["rtt_us_with"], r["rtt_us_without"]
        print(f"{r['tvds']:>5} {r['pairs']:>6} {r['legs']:>5} {r['rules']:>6} {r['chains']:>6} "
              f"{r['elements']:>8} {r['apply_s']:>6}s {r['rerun_s']:>5}s {r['full_reload_s']:>6}s"
              f"  {w['median']}/{w['p95']} | {wo['median']}/{wo['p95']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
