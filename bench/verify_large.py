#!/usr/bin/env python3
"""Time `check_file` (parse + schema + verify) on large generated policies.

Two variants, both 1,000 TVDs, 20 properties (a partial order with excludes), 5,000 flows:

- realistic: 100 departments of 10 TVDs; dense open flows inside a department (both ways, so
  no closed pair inside), a few controlled links between departments (one-way, replies on),
  some explicit closed pairs. Goal: under 1 s.
- adversarial: the same TVDs with 5,000 random open/controlled flows, which join everything
  into one giant component: nearly every closed pair has a chain, so the verifier emits on
  the order of n^2 indirect-flow findings. Reported, not a goal.

Usage: python bench/verify_large.py [--profile] [--seed N]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import resource
import sys
import tempfile
import time
import tracemalloc

from xen_tvd.policy import check_file

N_TVDS = 1000
N_FLOWS = 5000
DEPT = 10

PROPERTIES = """\
properties:
  tpm-measured-boot: {dominates: [signed-kernel, measured-initrd]}
  signed-kernel: {dominates: [secure-boot]}
  measured-initrd: {}
  secure-boot: {}
  hw-root-of-trust: {dominates: [tpm-measured-boot]}
  sev-snp: {dominates: [memory-encryption, hw-root-of-trust]}
  memory-encryption: {}
  disk-encryption: {}
  fips-140: {dominates: [disk-encryption]}
  pci-dss: {dominates: [fips-140, audit-logging], excludes: [internet-facing]}
  audit-logging: {}
  internet-facing: {excludes: [handles-card-data]}
  handles-card-data: {}
  dmz-hardened: {dominates: [internet-facing, signed-kernel]}
  patched-30d: {}
  patched-7d: {dominates: [patched-30d]}
  edr-agent: {}
  edr-plus-ids: {dominates: [edr-agent]}
  air-gapped: {excludes: [internet-facing]}
  lab-only: {}
"""
MEMBERSHIPS = [
    "[signed-kernel]",
    "[{property: tpm-measured-boot, assurance: [immutable-log, trust]}, disk-encryption]",
    "[patched-30d, edr-agent]",
    "[pci-dss, patched-7d]",
    "[dmz-hardened]",
    "[lab-only]",
]


def tvd_lines(n: int) -> list[str]:
    out = ["tvds:"]
    for i in range(n):
        out.append(f"  t{i:04d}: {{vlan: {i + 2}, protection: [isolation, integrity], "
                   f"membership: {MEMBERSHIPS[i % len(MEMBERSHIPS)]}}}")
    return out


def rule(kind: str) -> str:
    if kind == "controlled-oneway":                      # syslog push: no replies
        return ", allow: [{proto: udp, port: 514}], replies: false"
    return (", allow: [{proto: tcp, port: 443}, {proto: udp, port: \"5000-5100\"}]"
            if kind == "controlled" else "")


def realistic(rng: random.Random) -> str:
    """100 departments of 10 TVDs. In each, 7 TVDs form a fully meshed core (42 open entries,
    so no closed pair inside it); the other 3 (lab, quarantine, backup) are on their own. TVD
    t0009 is a central log collector: 81 departments send to it from every core TVD, 19 only
    from a gateway (the other core TVDs reach the collector through it: warnings). Two sloppy
    open links between departments (errors), and stated closed pairs fill up to 5,000."""
    flows: dict[tuple[int, int], str] = {}
    collector = 9
    for d in range(N_TVDS // DEPT):
        core = [d * DEPT + i for i in range(7)]
        for a in core:
            for b in core:
                if a != b:
                    flows[(a, b)] = "open"
        senders = core if d < 81 else core[:1]
        for a in senders:
            flows[(a, collector)] = "controlled-oneway"
    flows[(3 * DEPT, 4 * DEPT)] = "open"                    # sloppy: replies on, both depts
    flows[(50 * DEPT + 1, 70 * DEPT + 2)] = "open"          # now reach each other
    while len(flows) < N_FLOWS:
        a, b = rng.sample(range(N_TVDS), 2)
        if a // DEPT != b // DEPT:
            flows.setdefault((a, b), "closed")
    return render(flows)


def adversarial(rng: random.Random) -> str:
    flows: dict[tuple[int, int], str] = {}
    while len(flows) < N_FLOWS:
        a, b = rng.sample(range(N_TVDS), 2)
        flows.setdefault((a, b), rng.choice(["open", "open", "controlled"]))
    return render(flows)


def render(flows: dict[tuple[int, int], str]) -> str:
    lines = ["version: 1", PROPERTIES.rstrip("\n"), *tvd_lines(N_TVDS), "flows:"]
    for (a, b), kind in flows.items():
        lines.append(f"  - {{from: t{a:04d}, to: t{b:04d}, policy: {kind.split('-')[0]}"
                     f"{rule(kind)}}}")
    lines += ["dummy: {policy: closed, vlans: [1]}", "shared-membership:",
              "  - [t0000, t0001]", "  - [t0010, t0011, t0012]"]
    return "\n".join(lines) + "\n"


def measure(path: str) -> dict:
    tracemalloc.start()
    t0 = time.perf_counter()
    _, diags = check_file(path)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # untraced timing too: tracemalloc slows allocation-heavy code noticeably
    t0 = time.perf_counter()
    check_file(path)
    plain = time.perf_counter() - t0
    ind = [d for d in diags if d.code == "indirect-flow"]
    return {"time": plain, "time_traced": elapsed, "peak": peak,
            "errors": sum(d.is_error for d in diags),
            "warnings": sum(not d.is_error for d in diags),
            "indirect": len(ind), "indirect_err": sum(d.is_error for d in ind)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="cProfile the realistic variant")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, gen in (("realistic", realistic), ("adversarial", adversarial)):
            path = os.path.join(d, f"{name}.yaml")
            text = gen(rng)
            with open(path, "w") as f:
                f.write(text)
            if args.profile and name == "realistic":
                cProfile.runctx("check_file(path)", globals(), {"path": path}, "/tmp/vl.prof")
                pstats.Stats("/tmp/vl.prof").sort_stats("cumulative").print_stats(18)
            r = measure(path)
            r.update(name=name, kib=len(text) // 1024, flows=text.count("\n  - {from:"))
            rows.append(r)
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'variant':<12} {'file KiB':>8} {'flows':>6} {'check s':>8} {'traced s':>8} "
          f"{'peak MiB':>8} {'errors':>7} {'warnings':>8} {'indirect (err)':>15}")
    for r in rows:
        print(f"{r['name']:<12} {r['kib']:>8} {r['flows']:>6} {r['time']:>8.3f} "
              f"{r['time_traced']:>8.3f} {r['peak'] / 2**20:>8.1f} {r['errors']:>7} "
              f"{r['warnings']:>8} {r['indirect']:>8} ({r['indirect_err']})")
    print(f"process ru_maxrss: {maxrss_mib:.1f} MiB (python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
