#!/usr/bin/env python3
"""Encrypted (WireGuard + VXLAN) vs plain VXLAN segment: TCP throughput and RTT ratios.

    sudo python3 bench/wireguard_vs_vxlan.py [--rounds 3] [--seconds 5] [--pings 50]

Needs the wireguard module: run it in the stock-kernel VM tier, where pytest collects it
(`scripts/tvdctl-vmtest -- bench/wireguard_vs_vxlan.py -s`; figures only, no timed asserts;
under qemu TCG only the ratios mean anything). Two host namespaces on a veth underlay (MTU
1500), TVD alpha requiring integrity and confidentiality (planned onto WireGuard, VM MTU 1370)
and beta (plain VXLAN, VM MTU 1450), one VM namespace per TVD and host, everything through the
planner and apply() with key pairs made by tvd-proxy's key code. Per round, interleaved so load
hits both alike: iperf3 TCP for --seconds, then --pings pings, alpha and beta in turn.

Then revocation at the host: h1 is revoked, so h2's next plan has alpha on h2 alone (no peer,
no tunnel); with a 10 ms ping running a1 -> a2, the time from the start of h2's apply() of
that plan to the last reply (what the master's bundle push adds before it is not measured).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xen_tvd.dataplane import apply  # noqa: E402
from xen_tvd.desired.model import VifPort  # noqa: E402
from xen_tvd.planner import plan  # noqa: E402
from xen_tvd.policy import load_policy  # noqa: E402
from xen_tvd.proxy import wgkey  # noqa: E402

RUN = f"xtvdw-{uuid.uuid4().hex[:4]}"
POLICY = """
version: 1
tvds:
  alpha: {vlan: 100, protection: [isolation, integrity, confidentiality]}
  beta: {vlan: 200}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true, mtu: 1500}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip, wireguard], wireguard-key: %s,
       nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip, wireguard], wireguard-key: %s,
       nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""
VM_IP = {("alpha", "h1"): "192.168.70.1", ("alpha", "h2"): "192.168.70.2",
         ("beta", "h1"): "192.168.71.1", ("beta", "h2"): "192.168.71.2"}


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def build(tmp: str) -> dict:
    names = {}
    for tag in ("h1", "h2", "a1", "a2", "b1", "b2"):
        names[tag] = f"{RUN}-{tag}"
        sh("ip", "netns", "add", names[tag])
        sh("ip", "link", "set", "lo", "up", ns=names[tag])
    sh("ip", "link", "add", "ul0", "netns", names["h1"], "type", "veth", "peer", "ul0",
       "netns", names["h2"])
    for i, h in enumerate(("h1", "h2"), 1):
        sh("ip", "addr", "add", f"10.0.0.{i}/24", "dev", "ul0", ns=names[h])
        sh("ip", "link", "set", "ul0", "up", ns=names[h])
    keys = {h: wgkey.ensure(os.path.join(tmp, h)) for h in ("h1", "h2")}
    path = os.path.join(tmp, "policy.yaml")
    with open(path, "w") as f:
        f.write(POLICY % (keys["h1"], keys["h2"]))
    ports = {h: [VifPort(f"vif{j}.0", t) for j, t in ((1, "alpha"), (2, "beta"))]
             for h in ("h1", "h2")}
    states = plan(load_policy(path), ports)
    for (tvd, h), ip in VM_IP.items():
        vm = names[f"{tvd[0]}{h[1]}"]
        vif = "vif1.0" if tvd == "alpha" else "vif2.0"
        sh("ip", "link", "add", vif, "netns", names[h], "type", "veth", "peer", "eth0",
           "netns", vm)
        mtu = states[h].segment(tvd).mtu
        sh("ip", "link", "set", "eth0", "mtu", str(mtu), ns=vm)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=vm)
        sh("ip", "link", "set", "eth0", "up", ns=vm)
    for h in ("h1", "h2"):
        apply(states[h], netns=names[h], wireguard_key=wgkey.path_in(os.path.join(tmp, h)))
    names["_revoked_h1"] = plan(load_policy(path), {"h2": ports["h2"]})["h2"]
    return names


def revocation(names: dict, tmp: str) -> dict:
    """Seconds from the start of h2's apply() of the plan without h1 to a1's last reply."""
    pinger = subprocess.Popen(["ip", "netns", "exec", names["a1"], "ping", "-D", "-n", "-i",
                               "0.01", "-W", "1", VM_IP[("alpha", "h2")]],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    t0 = time.time()
    apply(names["_revoked_h1"], netns=names["h2"],
          wireguard_key=wgkey.path_in(os.path.join(tmp, "h2")))
    t1 = time.time()
    time.sleep(1.5)
    pinger.terminate()
    out = pinger.communicate(timeout=10)[0]
    replies = [float(m.group(1)) for m in re.finditer(r"^\[([\d.]+)\] \d+ bytes from", out,
                                                      re.M)]
    before = [r for r in replies if r < t0]
    return {"apply_s": t1 - t0, "last_reply_after_apply_start_s": max(replies) - t0,
            "replies_before": len(before), "replies_after_apply_start": len(replies) - len(before)}


def iperf(names: dict, tvd: str, seconds: int) -> float:
    """Mbit/s received, h1's VM -> h2's VM."""
    server = subprocess.Popen(["ip", "netns", "exec", names[f"{tvd[0]}2"], "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = sh("iperf3", "-c", VM_IP[(tvd, "h2")], "-t", str(seconds), "-J",
                 ns=names[f"{tvd[0]}1"]).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.wait(timeout=30)


def rtt(names: dict, tvd: str, count: int) -> float:
    out = sh("ping", "-n", "-q", "-c", str(count), "-i", "0.05", VM_IP[(tvd, "h2")],
             ns=names[f"{tvd[0]}1"]).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def measure(rounds: int, seconds: int, pings: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="wgbench-")
    names = {}
    try:
        names = build(tmp)
        for tvd in ("alpha", "beta"):     # warm up: ARP, the WireGuard handshake
            rtt(names, tvd, 3)
        got = {t: {"mbit": [], "rtt_ms": []} for t in ("alpha", "beta")}
        for _ in range(rounds):
            for tvd in ("alpha", "beta"):
                got[tvd]["mbit"].append(iperf(names, tvd, seconds))
                got[tvd]["rtt_ms"].append(rtt(names, tvd, pings))
        med = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in got.items()}
        revoked = revocation(names, tmp)
        return {"runs": got, "median": med, "revocation": revoked,
                "throughput_ratio": med["alpha"]["mbit"] / med["beta"]["mbit"],
                "rtt_ratio": med["alpha"]["rtt_ms"] / med["beta"]["rtt_ms"]}
    finally:
        for tag, n in names.items():
            if not tag.startswith("_"):
                subprocess.run(["ip", "netns", "del", n], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def test_wireguard_vs_vxlan_figures():
    """pytest entry (tier 2): prints the figures, asserts only that both segments carried."""
    r = measure(rounds=3, seconds=5, pings=50)
    print("\n" + json.dumps(r, indent=1))
    assert all(v > 0 for d in r["median"].values() for v in d.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--pings", type=int, default=50)
    a = ap.parse_args()
    print(json.dumps(measure(a.rounds, a.seconds, a.pings), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
