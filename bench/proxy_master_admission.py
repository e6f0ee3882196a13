#!/usr/bin/env python3
"""Admission round-trip of tvd-proxy in master mode (issue #5): vif-online request -> answer.

    sudo .venv/bin/python bench/proxy_master_admission.py [--cycles 40]

Builds the tier-1 lab (tests/hotplug/tvd_harness.py: a Dom0 namespace, veths standing in for
Xen vifs) with a real `tvd-master serve` in the fabric namespace and one enrolled
`tvd-proxy run --master` (tests/proxy/master_lab.py). A "keeper" VM holds each TVD's vSwitch,
so a cycle measures admission and attachment, not vSwitch creation. Per cycle: `vif-online`
over the proxy's socket (timed), then `vif-offline`.
- alpha (session-seconds 30): the VM presents a master-issued certificate; the watch heard from
  the master within the bound, so no extra round trip to the master.
- beta (no session bound, --offline-admission-grace 0): the proxy asks the master (one TLS
  request) before admitting, every time.
Reports p50 / p95 / max per TVD and how many audit events reached the master.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests", "hotplug"), os.path.join(REPO, "tests", "proxy")]
import master_lab  # noqa: E402
import tvd_harness  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=40)
    a = ap.parse_args()
    lab = tvd_harness.Lab(tempfile.mkdtemp(prefix="tvd-bench-admission-"))
    try:
        m, p = master_lab.setup(lab, session=30)
        for i, tvd in enumerate(("alpha", "beta")):
            net = f"10.99.{i}"
            keeper = lab.vm(f"{tvd}-keep", 30 + i, nics={0: (f"tvd:{tvd}", f"{net}.30")})
            vm = lab.vm(f"{tvd}-vm", 10 + i, nics={0: (f"tvd:{tvd}", f"{net}.10")})
            if tvd == "alpha":
                for v in (keeper, vm):
                    cert, _ = m.vm_cert(v.name, v.uuid, "signed-kernel=trust")
                    assert p.register(v, "alpha", cert)["ok"]
            assert lab.hotplug(keeper).returncode == 0
            times = []
            for _ in range(a.cycles):
                t0 = time.perf_counter()
                r = p.request({"op": "vif-online", "uuid": vm.uuid, "domid": vm.domid, "devid": 0,
                               "ifname": vm.vif(), "bridge": f"tvd:{tvd}"})
                times.append((time.perf_counter() - t0) * 1000)
                assert r["ok"], r
                assert p.request({"op": "vif-offline", "ifname": vm.vif()})["ok"]
            print(f"{tvd}: n={len(times)} p50={statistics.median(times):.1f} ms "
                  f"p95={pct(times, 0.95):.1f} ms max={max(times):.1f} ms")
        p.wait_for(lambda: p.status()["master"]["audit_spooled"] == 0, "the spool flushed", 30)
        print("audit events from dom0-a at the master:",
              sum(1 for e in m.audit() if e["actor"] == "host:dom0-a"))
    finally:
        master_lab.close(lab)
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
