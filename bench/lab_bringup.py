#!/usr/bin/env python3
"""Bring-up / verify / down timings of a generated N-VM lab on the paper policy (3 hosts).

    python3 bench/lab_bringup.py [--vms 50] [--tvds alpha,beta,gamma] [--no-verify]

VMs are spread round-robin over the policy's hosts and TVDs, all in one IP subnet
(10.99.0.0/16). Prints one JSON object: timings in seconds (wall clock, this machine, whatever
else it is running: a measurement, never an assertion). The lab is always taken down.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = os.path.join(REPO, "xl-configs", "lab-paper-policy.yaml")


def gen_spec(path: str, name: str, n: int, tvds: list[str], hosts: list[str]) -> None:
    lines = [f"name: {name}", f"policy: {POLICY}", "vms:"]
    for i in range(n):
        tvd = tvds[i % len(tvds)]
        host = hosts[(i // len(tvds)) % len(hosts)]
        lines.append(f"  vm{i}: {{host: {host}, nics: [{{tvd: {tvd}, "
                     f"address: 10.99.{i // 250}.{i % 250 + 1}/16}}]}}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def run(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "xen_tvd.lab", *args], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return time.monotonic() - t, r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--tvds", default="alpha,beta,gamma")
    ap.add_argument("--no-verify", action="store_true")
    a = ap.parse_args()
    name = f"bench{os.getpid() % 10000}"
    with tempfile.TemporaryDirectory() as d:
        spec = os.path.join(d, f"{name}.yaml")
        gen_spec(spec, name, a.vms, a.tvds.split(","), ["h1", "h2", "h3"])
        out: dict = {"vms": a.vms, "load_avg_1m_before": os.getloadavg()[0]}
        try:
            out["up_s"], r = run("up", spec, "--json")
            if r.returncode != 0:
                print(r.stdout, r.stderr, file=sys.stderr)
                return 1
            out["up_phases_s"] = json.loads(r.stdout)["timings"]
            out["up_again_s"], _ = run("up", spec)
            out["status_s"], _ = run("status", spec, "--json")
            if not a.no_verify:
                out["verify_s"], r = run("verify", spec, "--json")
                m = json.loads(r.stdout)
                out.update(verify_ok=m["ok"], pairs=m["pairs"], probes=m["probes"])
        finally:
            out["down_s"], r = run("down", spec)
        out["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
