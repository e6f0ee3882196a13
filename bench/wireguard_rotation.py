#!/usr/bin/env python3
"""Traffic lost while a host rotates its WireGuard key: the overlap design vs a plain re-key.

    sudo python3 bench/wireguard_rotation.py [--rounds 3] [--interval 0.01]

Needs the wireguard module: run it in the stock-kernel VM tier, where pytest collects it
(`scripts/tvdctl-vmtest -- bench/wireguard_rotation.py -s`; figures only, no timed asserts).
Two host namespaces on a veth underlay, TVD alpha encrypted (WireGuard + VXLAN), one VM on
each, everything through the planner and apply() with key pairs made by tvd-proxy's key code.
A ping from a1 to a2 every --interval seconds runs across each rotation; lost = requests
without a reply, counted per rotation, and the replies' timestamps give the longest gap.

- overlap (what xen-tvd does, docs/wireguard.md "Key rotation"): A) next key in both plans,
  h2 applied, then h1; B) h1 switches (h2 unchanged: it accepts both keys) and promotes the
  key file; C) the old key dropped, h2 then h1. One second between the steps.
- re-key (what was there before): h1 makes a new pair and applies (its peer does not know the
  key yet), then h2 learns it one second later, as the next plan would bring it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
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

RUN = f"xtvdr-{uuid.uuid4().hex[:4]}"
POLICY = """
version: 1
tvds:
  alpha: {vlan: 100, protection: [isolation, integrity, confidentiality]}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true, mtu: 1500}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip, wireguard], %(h1)s,
       nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip, wireguard], wireguard-key: %(h2)s,
       nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""
VM_IP = {"h1": "192.168.70.1", "h2": "192.168.70.2"}


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Lab:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.ns = {t: f"{RUN}-{t}" for t in ("h1", "h2", "a1", "a2")}
        for n in self.ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "link", "set", "lo", "up", ns=n)
        sh("ip", "link", "add", "ul0", "netns", self.ns["h1"], "type", "veth", "peer", "ul0",
           "netns", self.ns["h2"])
        for i, h in enumerate(("h1", "h2"), 1):
            sh("ip", "addr", "add", f"10.0.0.{i}/24", "dev", "ul0", ns=self.ns[h])
            sh("ip", "link", "set", "ul0", "up", ns=self.ns[h])
            vm = self.ns[f"a{i}"]
            sh("ip", "link", "add", "vif1.0", "netns", self.ns[h], "type", "veth", "peer",
               "eth0", "netns", vm)
            sh("ip", "addr", "add", f"{VM_IP[h]}/24", "dev", "eth0", ns=vm)
            sh("ip", "link", "set", "eth0", "mtu", "1370", "up", ns=vm)
        # static neighbours: a request is never held back by ARP, so every one is counted
        for i, h in enumerate(("h1", "h2"), 1):
            other = 3 - i
            mac = re.search(r"link/ether (\S+)", sh("ip", "link", "show", "eth0",
                                                    ns=self.ns[f"a{other}"]).stdout).group(1)
            sh("ip", "neigh", "replace", VM_IP[f"h{other}"], "lladdr", mac, "dev", "eth0", "nud",
               "permanent", ns=self.ns[f"a{i}"])
        self.dirs = {h: os.path.join(tmp, h) for h in ("h1", "h2")}
        self.k2 = wgkey.ensure(self.dirs["h2"])
        self.key = wgkey.ensure(self.dirs["h1"])

    def states(self, h1_keys: str) -> dict:
        path = os.path.join(self.tmp, "policy.yaml")
        with open(path, "w") as f:
            f.write(POLICY % {"h1": h1_keys, "h2": self.k2})
        return plan(load_policy(path), {h: [VifPort("vif1.0", "alpha")] for h in ("h1", "h2")})

    def put(self, h: str, st: dict) -> None:
        apply(st[h], netns=self.ns[h], wireguard_key=wgkey.path_in(self.dirs[h]))

    def close(self) -> None:
        for n in self.ns.values():
            subprocess.run(["ip", "netns", "del", n], check=False)


class Marks:
    """Wall-clock start and end of each step, to place the lost requests in the timeline."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float, float]] = []

    def put(self, lab: Lab, name: str, h: str, st: dict) -> None:
        t0 = time.time()
        lab.put(h, st)
        self.steps.append((name, t0, time.time()))

    def at(self, t: float) -> str:
        """The step running at t, or the one t follows."""
        before = "start"
        for name, a, b in self.steps:
            if a <= t <= b:
                return name
            if b < t:
                before = f"after {name}"
        return before


def overlap(lab: Lab, pause: float, marks: Marks) -> None:
    k0 = lab.key
    k1 = wgkey.rotate(lab.dirs["h1"])
    a = lab.states(f"wireguard-key: {k0}, wireguard-next-key: {k1}")
    marks.put(lab, "A_h2", "h2", a)
    marks.put(lab, "A_h1", "h1", a)
    time.sleep(pause)
    b = lab.states(f"wireguard-key: {k1}, wireguard-next-key: {k0}")
    marks.put(lab, "B_h1_switch", "h1", b)
    assert wgkey.promote(lab.dirs["h1"], k1)
    marks.put(lab, "B_h2", "h2", b)
    time.sleep(pause)
    c = lab.states(f"wireguard-key: {k1}")
    marks.put(lab, "C_h2", "h2", c)
    marks.put(lab, "C_h1", "h1", c)
    lab.key = k1


def rekey(lab: Lab, pause: float, marks: Marks) -> None:
    os.unlink(wgkey.path_in(lab.dirs["h1"]))
    lab.key = wgkey.ensure(lab.dirs["h1"])
    st = lab.states(f"wireguard-key: {lab.key}")
    marks.put(lab, "h1_rekey", "h1", st)
    time.sleep(pause)
    marks.put(lab, "h2_learns", "h2", st)
    t0 = time.time()
    while time.time() - t0 < 60 and sh("ping", "-n", "-q", "-c", "1", "-W", "1", VM_IP["h2"],
                                       ns=lab.ns["a1"], check=False).returncode != 0:
        pass
    marks.steps.append(("until_traffic_is_back", t0, time.time()))


def handshakes(lab: Lab) -> dict:
    """Seconds since each side's last handshake with each peer key (None: never)."""
    from pyroute2 import WireGuard
    out = {}
    now = time.time()
    for h in ("h1", "h2"):
        with WireGuard(netns=lab.ns[h], flags=0) as wg:
            for m in wg.info("tvw-wg0"):
                for p in m.get_attr("WGDEVICE_A_PEERS") or []:
                    t = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
                    sec = t.get("tv_sec", 0)
                    out[f"{h}->{p.get_attr('WGPEER_A_PUBLIC_KEY').decode()[:8]}"] = \
                        round(now - sec, 1) if sec else None
    return out


def streamed(lab: Lab, interval: float, step, pause: float) -> dict:
    """Run `step` under a ping stream: loss, duplicates, where the lost requests fell."""
    log = tempfile.TemporaryFile("w+")     # a pipe nobody reads would stop ping when full
    p = subprocess.Popen(["ip", "netns", "exec", lab.ns["a1"], "ping", "-D", "-O", "-n", "-i",
                          str(interval), "-W", "2", VM_IP["h2"]], stdout=log, text=True)
    time.sleep(1.0)
    marks = Marks()
    step(lab, pause, marks)
    time.sleep(3.0)          # the last requests' replies
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    log.seek(0)
    out = log.read()
    s = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", out)
    sent, got, dup = int(s.group(1)), int(s.group(2)), int(s.group(3) or 0)
    answered = {int(m.group(1)) for m in re.finditer(r"bytes from \S+ icmp_seq=(\d+)", out)}
    # -O: "no answer yet for icmp_seq=N", stamped when the next request goes out
    asked = {int(m.group(2)): float(m.group(1)) for m in re.finditer(
        r"^\[([\d.]+)\] no answer yet for icmp_seq=(\d+)", out, re.M)}
    lost = sorted(q for q in asked if q not in answered and q < sent - 3)  # the last: in flight
    where: dict[str, int] = {}
    for q in lost:
        k = marks.at(asked[q])
        where[k] = where.get(k, 0) + 1
    stamps = sorted(float(m.group(1)) for m in re.finditer(r"^\[([\d.]+)\] \d+ bytes", out, re.M))
    gap = max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0)
    return {"sent": sent, "answered": got, "lost": len(lost), "duplicates": dup,
            "lost_during": where, "longest_gap_s": round(gap, 3),
            "apply_s": {n: round(b - a, 3) for n, a, b in marks.steps},
            "after": {"ping_ok": sh("ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2",
                                    VM_IP["h2"], ns=lab.ns["a1"], check=False).returncode == 0,
                      "handshake_age_s": handshakes(lab)}}


def measure(rounds: int, interval: float, pause: float = 1.0) -> dict:
    tmp = tempfile.mkdtemp(prefix="wgrot-")
    lab = None
    try:
        lab = Lab(tmp)
        st = lab.states(f"wireguard-key: {lab.key}")
        lab.put("h1", st)
        lab.put("h2", st)
        sh("ping", "-c", "3", "-i", "0.2", VM_IP["h2"], ns=lab.ns["a1"])    # ARP, handshake
        got = {"overlap": [], "rekey": []}
        for kind, step in (("overlap", overlap), ("rekey", rekey)):
            for _ in range(rounds):
                got[kind].append(streamed(lab, interval, step, pause))
                time.sleep(6)    # a re-keyed pair's next handshake retry (WireGuard: 5 s)
        med = {k: {"lost": statistics.median(r["lost"] for r in v),
                   "longest_gap_s": statistics.median(r["longest_gap_s"] for r in v)}
               for k, v in got.items()}
        return {"interval_s": interval, "runs": got, "median": med}
    finally:
        if lab is not None:
            lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_wireguard_rotation_figures():
    """pytest entry (tier 2): prints the figures; asserts only that the stream ran."""
    r = measure(rounds=3, interval=0.01)
    print("\n" + json.dumps(r, indent=1))
    assert all(run["answered"] > 0 for v in r["runs"].values() for run in v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.01)
    a = ap.parse_args()
    print(json.dumps(measure(a.rounds, a.interval), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
