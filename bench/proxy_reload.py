"""Bench: tvd-proxy's memory and request stall while it reloads a big policy (issue #16.5).

Starts a real standalone `tvd-proxy run` (from this tree, or --src another checkout) in a
network namespace of its own with the example policy, then writes a big policy
(tests/proxy/reload_helpers.py: the example plus generated hosts, --bytes of it), sends
SIGHUP and, until the reload ends (event=reloaded / reload-failed) or --max-wait passes,
sends `status` requests back to back (they take the proxy's lock). Reports: reload outcome
and wall time, the slowest status answer during it, the proxy's RSS before and its peak
(VmHWM) after.

    .venv/bin/python bench/proxy_reload.py [--bytes 14000000] [--src DIR] [--max-wait 300]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "proxy"))

from reload_helpers import big_policy                 # noqa: E402
from xen_tvd.proxy import protocol                    # noqa: E402

POLICY = os.path.join(ROOT, "xl-configs", "tvd-hosts-policy.yaml")


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=14_000_000)
    ap.add_argument("--src", default=ROOT, help="the checkout whose tvd-proxy is measured")
    ap.add_argument("--max-wait", type=float, default=300)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tvd-reload-")
    ns = f"tvdbench-reload-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    policy, sock, log_path = (os.path.join(tmp, n) for n in ("policy.yaml", "proxy.sock", "log"))
    with open(POLICY) as f, open(policy, "w") as g:
        g.write(f.read())
    logf = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "xen_tvd.proxy.main", "run", "--policy", policy,
                             "--host", "dom0-a", "--socket", sock, "--state-dir",
                             os.path.join(tmp, "state"), "--netns", ns], cwd=a.src,
                            env=dict(os.environ, PYTHONPATH=a.src), stdout=logf, stderr=logf)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if protocol.request({"op": "ping"}, sock, 2)["ok"]:
                    break
            except protocol.ProxyUnreachable:
                assert time.monotonic() < deadline, open(log_path).read()
                time.sleep(0.1)
        rss0 = status_kib(proc.pid, "VmRSS") / 1024
        with open(policy, "w") as f:
            f.write(big_policy(POLICY, a.bytes))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        worst, n, unanswered, outcome = 0.0, 0, 0, "still reloading"
        while time.monotonic() - t0 < a.max_wait:
            text = open(log_path).read()
            if "event=reloaded" in text or "event=reload-failed" in text:
                outcome = "loaded" if "event=reloaded" in text else "refused"
                break
            t = time.monotonic()
            try:
                protocol.request({"op": "status"}, sock, 60)
                n += 1
            except protocol.ProxyUnreachable:
                unanswered += 1
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.05)
        took = time.monotonic() - t0
        peak = status_kib(proc.pid, "VmHWM") / 1024
        after = status_kib(proc.pid, "VmRSS") / 1024
        why = [l for l in open(log_path).read().splitlines() if "reload-failed" in l]
    finally:
        proc.terminate()
        proc.wait(10)
        logf.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"src {a.src}; policy {a.bytes / 1e6:.1f} MB")
    print(f"reload: {outcome} after {took:.1f} s{(': ' + why[0][-160:]) if why else ''}")
    print(f"status during the reload: {n} answered, {unanswered} not, slowest {worst * 1000:.0f} ms")
    print(f"proxy RSS: {rss0:.0f} MiB before, peak {peak:.0f} MiB, {after:.0f} MiB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
