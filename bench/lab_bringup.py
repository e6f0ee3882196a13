#!/usr/bin/env python3
"""Bring-up / verify / down timings of a generated N-VM lab on the paper policy (3 hosts).

    python3 bench/lab_bringup.py [--vms 50] [--tvds alpha,beta,gamma] [--no-verify]
    python3 bench/lab_bringup.py --spec xl-configs/lab-paper.yaml [--runs 5] [--repo DIR]

VMs are spread round-robin over the policy's hosts and TVDs, all in one IP subnet
(10.99.0.0/16). With --spec, a shipped spec instead (under a bench lab name); --runs N brings
it up and down N times and reports each `up`; --repo runs another checkout's `xen_tvd` (a
baseline, e.g. a `git worktree add --detach` of main) with this script, so before and after
are timed alike, taking turns on the same machine state. Prints one JSON object: timings in seconds (wall clock, this machine, whatever
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


def shipped_spec(path: str, out: str, name: str) -> None:
    """The spec under a bench lab name, its policy by absolute path."""
    import yaml
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["name"] = name
    doc["policy"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)),
                                                  doc["policy"]))
    with open(out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


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
    ap.add_argument("--spec", help="a shipped lab spec instead of a generated one")
    ap.add_argument("--runs", type=int, default=1, help="with --spec: up/down this many times")
    ap.add_argument("--repo", help="the checkout whose xen_tvd runs (default: this one)")
    a = ap.parse_args()
    global REPO
    if a.repo:
        REPO = os.path.abspath(a.repo)
    name = f"bench{os.getpid() % 10000}"
    with tempfile.TemporaryDirectory() as d:
        spec = os.path.join(d, f"{name}.yaml")
        if a.spec:
            shipped_spec(a.spec, spec, name)
            return _runs(spec, a.runs)
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


def _runs(spec: str, n: int) -> int:
    """`up` from nothing, then `down`, n times: each up's wall time and phases."""
    out: dict = {"repo": REPO, "spec": spec, "up_s": [], "phases": [],
                 "load_avg_1m_before": os.getloadavg()[0]}
    for _ in range(n):
        try:
            t, r = run("up", spec, "--json")
            if r.returncode != 0:
                print(r.stdout, r.stderr, file=sys.stderr)
                return 1
            out["up_s"].append(round(t, 3))
            out["phases"].append({k: round(v, 3)
                                  for k, v in json.loads(r.stdout)["timings"].items()})
        finally:
            run("down", spec)
    out["up_median_s"] = sorted(out["up_s"])[len(out["up_s"]) // 2]
    out["load_avg_1m_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
