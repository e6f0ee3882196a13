"""Bench: a legitimate request's latency while 5,000 hostile connections are open (#16.4).

Starts a real `tvd-master serve` on loopback (from this tree, or --src another checkout, to
measure the code before a change), enrols a host and makes an admin certificate, then opens
--connections hostile connections from 127.0.0.2... (tests/master/flood_helpers.py: idle
TCP, idle TLS without a certificate, half ClientHellos, slowloris heads, a quarter each),
reopened whenever the server closes one. Meanwhile the host polls its bundle and the admin
lists hosts, alternating, --requests times. Reports: hostile connections open, how many the
server refused or dropped, legit requests answered and their latency p50 / p95 / max, the
master's RSS before and during the flood. Goal: every legit request answered within 1 s.

    .venv/bin/python bench/master_flood.py [--connections 5000] [--requests 40] [--src DIR]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "master"))

from flood_helpers import KINDS, Flood                                   # noqa: E402
from master_helpers import POLICY, REPORT, Enrolled, admin_client, init_dir  # noqa: E402
from xen_tvd.master import client as mc                                 # noqa: E402
from xen_tvd.master.store import Store                                  # noqa: E402


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_master(src: str, d: str, url: str, log_path: str) -> subprocess.Popen:
    port = url.rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "xen_tvd.master", "--dir", d, "serve",
                             "--listen", f"127.0.0.1:{port}"], cwd=src,
                            env=dict(os.environ, PYTHONPATH=src),
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            mc.MasterClient(url, open(os.path.join(d, "ca.pem")).read()).call("GET", "/v1/ca")
            return proc
        except mc.MasterError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("tvd-master did not start")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--src", default=ROOT, help="the checkout whose tvd-master is attacked")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="tvd-flood-")
    d = os.path.join(tmp, "m")
    url = init_dir(d)
    Store(os.path.join(d, "master.db")).add_policy(POLICY, "p.yaml", "bench")
    proc = start_master(a.src, d, url, os.path.join(tmp, "master.log"))
    try:
        host = Enrolled(d, url, "h1", os.path.join(tmp, "h1"))
        host.client.put_capabilities("h1", REPORT)
        admin = admin_client(d, url, tmp)
        rss0 = rss_mib(proc.pid)
        per_kind = a.connections // len(KINDS)
        flood = Flood(int(url.rsplit(":", 1)[1]), {k: per_kind for k in KINDS},
                      sources=200, reconnect=True)
        t0 = time.monotonic()
        flood.open_all()
        opened_in = time.monotonic() - t0
        rss1 = rss_mib(proc.pid)
        took, failed = [], 0
        for i in range(a.requests):
            t = time.monotonic()
            try:
                if i % 2:
                    admin.call("GET", "/v1/hosts", timeout=10)
                else:
                    host.client.call("GET", "/v1/hosts/h1/bundle?after=0&wait=0", timeout=10)
                took.append(time.monotonic() - t)
            except mc.MasterError:
                failed += 1
            time.sleep(0.1)
        still_open = flood.open_count()
        flood.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"src {a.src}")
    print(f"hostile: {flood.opened} opened ({opened_in:.1f} s; {flood.failed} refused at "
          f"once), {flood.closed_by_server} dropped by the server and reopened, "
          f"{still_open} open at the end")
    if took:
        took.sort()
        print(f"legit: {len(took)}/{a.requests} answered, p50 {statistics.median(took)*1000:.0f} ms, "
              f"p95 {took[int(len(took) * 0.95) - 1]*1000:.0f} ms, max {took[-1]*1000:.0f} ms; "
              f"{failed} not answered")
    else:
        print(f"legit: 0/{a.requests} answered")
    print(f"master RSS: {rss0:.0f} MiB idle, {rss1:.0f} MiB with the flood open")
    return 0 if not failed and took and took[-1] < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
