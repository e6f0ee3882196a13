"""Bench: N proxies enrol, report and fetch their signed bundle concurrently (issue #5).

Starts a real `tvd-master serve` subprocess on loopback with a policy of N hosts, creates N
one-time tokens, then N client threads (xen_tvd.master.client, as tvd-proxy uses it) each:
enrol (pinned CA, EC P-256 key + CSR), PUT its capability report, GET its bundle (watch with
after=0) and verify the signature. Reports: wall time of that phase (goal < 10 s for 200 on a
2-core machine), the master's peak RSS (VmHWM), and latency of audit posts (each proxy posts
--audit-posts single-event batches concurrently): p50 / p95 / max; then the same post
from one client alone (50 times), i.e. the latency without 200 handshakes competing for
two cores.

    .venv/bin/python bench/master_enrol.py [--hosts 200] [--audit-posts 5]
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from xen_tvd.master import ca as camod                       # noqa: E402
from xen_tvd.master import client as mc                      # noqa: E402
from xen_tvd.master.bundle import verify_bundle              # noqa: E402
from xen_tvd.master.store import Store                       # noqa: E402


def policy_text(n: int) -> str:
    lines = ["version: 1", "properties:", "  hv-integrity: {}", "tvds:",
             "  alpha: {vlan: 100, vni: 10100}",
             "  beta: {vlan: 200, vni: 10200, membership: "
             "[{property: hv-integrity, assurance: [immutable-log]}]}",
             "  gamma: {vlan: 300, vni: 10300}",
             "networks:", "  lan: {subnet: 10.50.0.0/16, multicast: true}", "hosts:"]
    for i in range(n):
        addr = f"10.50.{i // 250}.{i % 250 + 1}"
        props = "{hv-integrity: immutable-log}" if i % 2 == 0 else "{}"
        lines.append(f"  h{i:03d}: {{address: {addr}, capabilities: [ethernet, ip], "
                     f"properties: {props}, nics: [{{network: lan, nic: eth0, "
                     f"address: {addr}}}]}}")
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (what the master itself burnt, apart from the clients)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--audit-posts", type=int, default=5)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tvd-master-bench-")
    d = os.path.join(work, "m")
    url = f"https://127.0.0.1:{free_port()}"
    ca, _ = camod.init_ca(d, url)
    store = Store(os.path.join(d, "master.db"))
    store.add_policy(policy_text(a.hosts), "bench.yaml", "bench")
    pin = camod.ca_pin(ca.cert)
    tokens = {}
    for i in range(a.hosts):
        tid, sec = secrets.token_hex(8), secrets.token_urlsafe(32)
        store.add_token(tid, sec, f"h{i:03d}", 3600, "bench")
        tokens[f"h{i:03d}"] = f"tvd1.{tid}.{sec}.{pin}"
    log = open(os.path.join(work, "master.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "xen_tvd.master", "--dir", d, "serve",
                             "--listen", url[len("https://"):]], stderr=log, cwd=ROOT)
    try:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        clients, errors = {}, []
        start = threading.Barrier(a.hosts + 1)

        def proxy(host: str) -> None:
            try:
                start.wait()
                sd = os.path.join(work, host)
                res = mc.enroll(url, tokens[host], host, os.path.join(sd, "host.key"))
                with open(os.path.join(sd, "host.pem"), "w") as f:
                    f.write(res.certificate)
                c = mc.MasterClient(url, res.ca, os.path.join(sd, "host.pem"),
                                    os.path.join(sd, "host.key"), timeout=60)
                n = int(host[1:])
                addr = f"10.50.{n // 250}.{n % 250 + 1}"
                c.put_capabilities(host, {
                    "functional": ["bridge", "vxlan", "nftables"],
                    "nics": [{"network": "lan", "nic": "eth0", "address": addr}],
                    "security": [{"property": "hv-integrity", "assurance": "immutable-log",
                                  "evidence": "bench"}]})
                verify_bundle(c.bundle(host, 0, 30), res.ca, host, url, 0)
                clients[host] = c
            except Exception as e:   # counted and reported, the bench goes on
                errors.append(f"{host}: {e}")

        threads = [threading.Thread(target=proxy, args=(f"h{i:03d}",)) for i in range(a.hosts)]
        for t in threads:
            t.start()
        cpu0 = cpu_seconds(proc.pid)
        start.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        load = os.getloadavg()[0]

        lat, lat_lock = [], threading.Lock()

        def poster(host: str, c) -> None:
            for _ in range(a.audit_posts):
                ev = {"id": str(uuid.uuid4()), "ts": time.time(), "event": "admitted",
                      "vm": str(uuid.uuid4()), "tvd": "alpha", "ifname": "vif1.0"}
                t1 = time.monotonic()
                try:
                    c.post_audit([ev])
                except mc.MasterError as e:
                    errors.append(f"{host} audit: {e}")
                    continue
                with lat_lock:
                    lat.append(time.monotonic() - t1)
        posters = [threading.Thread(target=poster, args=(h, c)) for h, c in clients.items()]
        t2 = time.monotonic()
        for t in posters:
            t.start()
        for t in posters:
            t.join()
        audit_wall = time.monotonic() - t2
        # the same round trip from one client with nothing else going on
        solo = []
        if clients:
            c = next(iter(clients.values()))
            for _ in range(50):
                ev = {"id": str(uuid.uuid4()), "ts": time.time(), "event": "admitted",
                      "vm": str(uuid.uuid4()), "tvd": "alpha", "ifname": "vif1.0"}
                t1 = time.monotonic()
                c.post_audit([ev])
                solo.append(time.monotonic() - t1)
        rss = rss_peak_kib(proc.pid)
        gens = [h["generation"] for h in store.hosts()]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    lat.sort()
    print(f"hosts: {a.hosts}, enrolled+reported+verified bundle: {len(clients)}, "
          f"errors: {len(errors)}")
    for e in errors[:5]:
        print(f"  error: {e}")
    print(f"enrol + report + bundle wall time: {wall:.2f} s (master CPU {cpu:.1f} s; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs; the clients share them)")
    print(f"master peak RSS (VmHWM): {rss / 1024:.1f} MiB")
    if lat:
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        print(f"audit post round trip ({len(lat)} posts, {a.hosts} concurrent clients, "
              f"{audit_wall:.2f} s): p50 {statistics.median(lat) * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")
    if solo:
        solo.sort()
        print(f"audit post round trip, one client alone ({len(solo)} posts): "
              f"p50 {statistics.median(solo) * 1000:.0f} ms, "
              f"p95 {solo[int(0.95 * len(solo))] * 1000:.0f} ms")
    print(f"bundle generations at the end: min {min(gens)}, max {max(gens)}")
    print(f"work dir (logs): {work}")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
