#!/usr/bin/env python3
"""Hotplug latency: vif-tvd (+ tvd-proxy) vs Xen's own vif-bridge, same stand-ins, same Dom0.

    sudo python3 bench/hotplug_latency.py [--cycles 100] [--json OUT]

Each cycle runs `online` then `offline` (type_if=vif, libxl's environment) for one vif. Both
scripts run inside the same Dom0 namespace through `ip netns exec`, over the same xenstore
stand-ins (tests/hotplug/xenstore-stubs: the real xenstore tools need Xen), and the cycles of
the two scripts are interleaved so machine load hits both alike. vif-bridge comes from Debian's
xen-utils-common (/etc/xen/scripts/vif-bridge) and gets the bridge named in its `bridge` key;
vif-tvd talks to a real tvd-proxy process managing that namespace. Goal: p95 <= 1.5x vif-bridge.
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "hotplug"))
import tvd_harness as h  # noqa: E402

VIF_BRIDGE = "/etc/xen/scripts/vif-bridge"
XS_TOOLS = ("xenstore-read", "xenstore-write", "xenstore-rm", "xenstore-exists")


def private_stub_mounts() -> None:
    """vif-bridge puts /usr/bin first on its PATH (xen-hotplug-common.sh), so with Debian's
    xenstore-utils installed it would run the real tools, which need xenstored. In a private
    mount namespace for this process and its children, bind the stand-ins over them. Both
    scripts run under this same namespace, so neither pays for it alone."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:   # CLONE_NEWNS
        raise SystemExit(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for tool in XS_TOOLS:
        for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin"):
            real = os.path.join(d, tool)
            if os.path.exists(real) and not os.path.islink(real):
                subprocess.run(["mount", "--bind", os.path.join(h.STUBS, "xenstore-stub"), real], check=True)


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def timed(lab, vm, cmd, script):
    t0 = time.perf_counter()
    r = lab.hotplug(vm, cmd, script=script)
    dt = (time.perf_counter() - t0) * 1000
    if r.returncode != 0:
        raise SystemExit(f"{os.path.basename(script)} {cmd} failed: {r.stderr.strip()}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not os.access(VIF_BRIDGE, os.X_OK):
        raise SystemExit(f"{VIF_BRIDGE} missing: apt-get install xen-utils-common")
    os.makedirs("/var/log/xen", exist_ok=True)   # vif-bridge appends its stderr there
    private_stub_mounts()
    tmp = tempfile.mkdtemp(prefix="tvd-bench-")
    lab = h.Lab(tmp)
    try:
        lab.proxy("dom0-a")
        ns = lab.host_ns["dom0-a"]
        h.ip("link", "add", "name", "xenbr0", "type", "bridge", ns=ns)
        h.ip("link", "set", "xenbr0", "up", ns=ns)
        tvd_vm = lab.vm("bench-tvd", 1, nics={0: ("tvd:beta", "10.99.0.1")})
        br_vm = lab.vm("bench-br", 2, nics={0: ("xenbr0", "10.98.0.2")})
        res = {"vif-tvd": {"online": [], "offline": []}, "vif-bridge": {"online": [], "offline": []}}
        runs = (("vif-tvd", tvd_vm, h.VIF_TVD), ("vif-bridge", br_vm, VIF_BRIDGE))
        for name, vm, script in runs:      # warm-up (first vSwitch creation, page cache)
            timed(lab, vm, "online", script)
            timed(lab, vm, "offline", script)
        for i in range(args.cycles):
            for name, vm, script in (runs if i % 2 == 0 else runs[::-1]):
                res[name]["online"].append(timed(lab, vm, "online", script))
                res[name]["offline"].append(timed(lab, vm, "offline", script))
        # sanity: the vif-tvd path really did the job
        timed(lab, tvd_vm, "online", h.VIF_TVD)
        assert h.link_info(ns, tvd_vm.vif())["master"] == "tvd-beta"
        assert lab.xs.get(f"{tvd_vm.backend()}/hotplug-status") == "connected"
    finally:
        lab.close()
    out = {"cycles": args.cycles, "load_avg": os.getloadavg()}
    print(f"{'script':<11} {'op':<8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, ops in res.items():
        for op, xs in ops.items():
            out[f"{name}.{op}"] = {"p50": round(pct(xs, 50), 1), "p95": round(pct(xs, 95), 1)}
            print(f"{name:<11} {op:<8} {pct(xs, 50):8.1f} {pct(xs, 95):8.1f}")
    ratio = out["vif-tvd.online"]["p95"] / out["vif-bridge.online"]["p95"]
    ratio_off = out["vif-tvd.offline"]["p95"] / out["vif-bridge.offline"]["p95"]
    out["p95_ratio_online"], out["p95_ratio_offline"] = round(ratio, 2), round(ratio_off, 2)
    print(f"p95 vif-tvd / vif-bridge: online {ratio:.2f}x, offline {ratio_off:.2f}x (goal <= 1.5x); "
          f"load average {out['load_avg'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
