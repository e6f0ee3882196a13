#!/usr/bin/env python3
"""WireGuard through the master, end to end: key rotation loss and revocation time-to-effect.

    sudo python3 bench/wireguard_master.py [--interval 0.01]

Needs the wireguard module: run it in the stock-kernel VM tier, where pytest collects it
(`scripts/tvdctl-vmtest -- bench/wireguard_master.py -s`; figures only, no timed asserts).
The WireGuard lab (xl-configs/lab-wireguard.yaml: alpha encrypted on h1, h2, h3) with
`control: master`: a real tvd-master, one tvd-proxy per host, keys made by the proxies and
reported, bundles signed and watched. Two ping streams run from a1 (on h1), to a2 (h2) and
to a3 (h3), one request every --interval seconds.

1. Rotation of h1: `tvd-proxy wireguard-key --rotate` and SIGHUP to h1's proxy (what an
   administrator does). The proxy reports the next key, the master gives both keys to h2 and
   h3, they apply and report accepting it, the master lets h1 switch, h1 switches, promotes
   its key file and reports the new key, and the old one leaves every bundle. Measured: the
   streams' loss and duplicates, and the time until h2's and h3's devices hold only the new
   key (`done_s`).
2. Revocation of h1 with its proxy stopped (SIGSTOP: a compromised host that ignores the
   master, so its VMs and tunnel stay up): `tvd-master revoke h1`, then the time from the
   command's start to the last reply each stream got (h2 and h3 dropping h1's key with their
   next bundle), and until each device no longer holds the key.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from xen_tvd.lab.master import master_cli  # noqa: E402
from xen_tvd.lab.state import Paths  # noqa: E402
from xen_tvd.proxy import wgkey  # noqa: E402

SPEC = os.path.join(REPO, "xl-configs", "lab-wireguard.yaml")
POLICY = os.path.join(REPO, "xl-configs", "lab-wireguard-policy.yaml")
TO = {"a2": "192.168.62.12", "a3": "192.168.62.13"}


def lab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "xen_tvd.lab", *args], cwd=REPO,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"lab {' '.join(args)}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def device_keys(ns: str) -> set[str]:
    from pyroute2 import WireGuard
    with WireGuard(netns=ns, flags=0) as wg:
        return {p.get_attr("WGPEER_A_PUBLIC_KEY").decode() for m in wg.info("tvw-wg0")
                for p in m.get_attr("WGDEVICE_A_PEERS") or []}


class Streams:
    def __init__(self, name: str, interval: float) -> None:
        # into files: a pipe nobody reads would stop ping once full (~700 lines)
        self.logs = {vm: tempfile.TemporaryFile("w+") for vm in TO}
        self.procs = {vm: subprocess.Popen(
            ["ip", "netns", "exec", f"{name}-vm-a1", "ping", "-D", "-n", "-i", str(interval),
             "-W", "2", ip], stdout=self.logs[vm], text=True) for vm, ip in TO.items()}

    def stop(self) -> dict:
        out = {}
        for vm, p in self.procs.items():
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
            self.logs[vm].seek(0)
            text = self.logs[vm].read()
            s = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?",
                          text)
            stamps = sorted(float(m.group(1)) for m in
                            re.finditer(r"^\[([\d.]+)\] \d+ bytes", text, re.M))
            gap = max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0)
            out[vm] = {"sent": int(s.group(1)), "answered": int(s.group(2)),
                       "duplicates": int(s.group(3) or 0), "longest_gap_s": round(gap, 3),
                       "last_reply": stamps[-1] if stamps else None}
        return out


def wait_for(what, timeout: float, step: float = 0.05) -> float | None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if what():
            return time.time()
        time.sleep(step)
    return None


def rotation(name: str, interval: float) -> dict:
    paths = Paths(name)
    d = paths.proxy_dir("h1")
    old = wgkey.public_key(d)
    streams = Streams(name, interval)
    time.sleep(2)
    t0 = time.time()
    new = subprocess.run([sys.executable, "-m", "xen_tvd.proxy.main", "wireguard-key",
                          "--state-dir", d, "--rotate"], capture_output=True, text=True,
                         check=True).stdout.strip()
    os.kill(int(open(paths.proxy_pid("h1")).read()), signal.SIGHUP)
    peers = {h: f"{name}-h-{h}" for h in ("h2", "h3")}
    both = wait_for(lambda: all({old, new} <= device_keys(ns) for ns in peers.values()), 300)
    switched = wait_for(lambda: wgkey.keys(d) == (new, None), 300)
    done = wait_for(lambda: all(device_keys(ns) & {old, new} == {new}
                                for ns in peers.values()), 300)
    time.sleep(3)
    got = streams.stop()
    for r in got.values():
        r["lost"] = r["sent"] - r["answered"]
        del r["last_reply"]
    return {"streams": got,
            "peers_accept_both_s": round(both - t0, 2) if both else None,
            "h1_switched_s": round(switched - t0, 2) if switched else None,
            "done_s": round(done - t0, 2) if done else None}


def revocation(name: str, interval: float) -> dict:
    paths = Paths(name)
    key = wgkey.public_key(paths.proxy_dir("h1"))
    pid = int(open(paths.proxy_pid("h1")).read())
    streams = Streams(name, interval)
    time.sleep(2)
    os.kill(pid, signal.SIGSTOP)          # h1 ignores the master from now on
    try:
        t0 = time.time()
        master_cli(name, "revoke", "h1")
        t_cmd = time.time()
        gone = {h: wait_for(lambda h=h: key not in device_keys(f"{name}-h-{h}"), 300)
                for h in ("h2", "h3")}
        time.sleep(3)
        got = streams.stop()
    finally:
        os.kill(pid, signal.SIGCONT)
    return {"revoke_command_s": round(t_cmd - t0, 2),
            "key_gone_s": {h: round(t - t0, 2) if t else None for h, t in gone.items()},
            "last_reply_after_revoke_s": {vm: round(r["last_reply"] - t0, 2)
                                          for vm, r in got.items() if r["last_reply"]},
            "streams": {vm: {k: v for k, v in r.items() if k != "last_reply"}
                        for vm, r in got.items()}}


def measure(interval: float) -> dict:
    name = f"wm{uuid.uuid4().hex[:4]}"
    with open(SPEC) as f:
        doc = yaml.safe_load(f)
    doc.update(name=name, policy=POLICY, control="master")
    tmp = tempfile.mkdtemp(prefix="wgmaster-")
    spec = os.path.join(tmp, f"{name}.yaml")
    with open(spec, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    t0 = time.time()
    try:
        lab("up", spec)
        up_s = time.time() - t0
        for vm, ip in TO.items():     # warm: handshakes; static neighbours (no ARP stalls)
            subprocess.run(["ip", "netns", "exec", f"{name}-vm-a1", "ping", "-c", "3", "-W", "5",
                            ip], capture_output=True, check=True)
            neigh = subprocess.run(["ip", "netns", "exec", f"{name}-vm-a1", "ip", "neigh", "show",
                                    ip], capture_output=True, text=True, check=True).stdout
            dev, mac = re.search(r"dev (\S+) lladdr (\S+)", neigh).groups()
            subprocess.run(["ip", "netns", "exec", f"{name}-vm-a1", "ip", "neigh", "replace", ip,
                            "lladdr", mac, "dev", dev, "nud", "permanent"], check=True)
        return {"interval_s": interval, "lab_up_s": round(up_s, 1),
                "rotation": rotation(name, interval), "revocation": revocation(name, interval)}
    finally:
        lab("down", "--name", name, check=False)


def test_wireguard_master_figures():
    """pytest entry (tier 2): prints the figures; asserts only that the streams ran."""
    r = measure(0.01)
    print("\n" + json.dumps(r, indent=1))
    assert all(s["answered"] > 0 for s in r["rotation"]["streams"].values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interval", type=float, default=0.01)
    print(json.dumps(measure(ap.parse_args().interval), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
