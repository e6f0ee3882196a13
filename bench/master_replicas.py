"""tvd-master replicas on etcd (issue #18): enrolment across replicas, leader failover,
audit post latency on etcd vs SQLite. Figures in bench/README.md.

    python bench/master_replicas.py [--hosts 200] [--replicas 3] [--backend etcd|sqlite]

etcd: a 3-member cluster on loopback (data on tmpfs, like the tests) and N `tvd-master serve`
replicas; sqlite: one `tvd-master serve`. Then:
1. every proxy (a client thread, xen_tvd.master.client as tvd-proxy uses it) enrols over the
   replicas' URL list (host i starts at replica i mod N), reports, waits for and verifies its
   bundle; wall time for all (goal < 10 s);
2. every proxy posts 5 audit events at once, then one proxy posts 50 alone: p50/p95;
3. (etcd) the leader is SIGKILLed, a policy change is pushed at the same moment, and a proxy
   long-polling the replicas measures how long until the new generation reaches it
   (goal < 5 s; bound by the lease TTL, TVD_MASTER_LEASE_TTL, default 3 s).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "master"))

from master_enrol import policy_text                         # noqa: E402
from xen_tvd.master import client as mc                      # noqa: E402
from xen_tvd.master import stores                            # noqa: E402
from xen_tvd.master.bundle import verify_bundle              # noqa: E402
from xen_tvd.master.cli import main as master_cli            # noqa: E402

from etcd_helpers import EtcdCluster                         # noqa: E402
from master_helpers import MasterProcess, free_port, token   # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def retried(fn, *args):
    """As the proxy's link does: a refused or reset connection is tried again. All clients
    share 127.0.0.1 here, and a master admits 64 unauthenticated connections per source
    address at once (listener.Limits.per_source); real proxies each have their own."""
    for _ in range(100):
        try:
            return fn(*args)
        except mc.MasterError as e:
            if e.status != 0:
                raise
            time.sleep(0.2)
    return fn(*args)


def quiet(fn, *args):
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--backend", choices=["etcd", "sqlite"], default="etcd")
    a = ap.parse_args()
    # SIGTERM (timeout(1)) unwinds like Ctrl-C, so the finally below stops what it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="tvd-replicas-bench-")
    etcd = EtcdCluster(3).start() if a.backend == "etcd" else None
    n = a.replicas if etcd else 1
    urls = [f"https://127.0.0.1:{free_port()}" for _ in range(n)]
    dirs = [os.path.join(work, f"r{i}") for i in range(n)]
    store_args = ["--store", etcd.url()] if etcd else []
    masters = []
    errors: list[str] = []
    try:
        for i in range(n):
            extra = ["--ca-from", dirs[0]] if i else []
            assert quiet(master_cli, ["--dir", dirs[i], *store_args, "init", "--url", urls[i],
                                      *extra]) == 0
        pol = os.path.join(work, "p.yaml")
        with open(pol, "w") as f:
            f.write(policy_text(a.hosts))
        assert quiet(master_cli, ["--dir", dirs[0], "policy", "push", pol]) == 0
        tokens = {f"h{i:03d}": token(dirs[0], f"h{i:03d}") for i in range(a.hosts)}
        masters = [MasterProcess(dirs[i], urls[i], os.path.join(work, f"master{i}.log"))
                   for i in range(n)]
        cluster_url = urls[0]
        clients: dict[str, mc.MasterPool] = {}
        start = threading.Barrier(a.hosts + 1)

        def proxy(host: str) -> None:
            try:
                start.wait()
                k = int(host[1:]) % n
                mine = urls[k:] + urls[:k]
                sd = os.path.join(work, host)
                res = mc.enroll(mine, tokens[host], host, os.path.join(sd, "host.key"), 60)
                with open(os.path.join(sd, "host.pem"), "w") as f:
                    f.write(res.certificate)
                c = mc.MasterPool(mine, res.ca, os.path.join(sd, "host.pem"),
                                  os.path.join(sd, "host.key"), timeout=60)
                i = int(host[1:])
                retried(c.put_capabilities, host, {
                    "functional": ["bridge", "vxlan", "nftables"],
                    "nics": [{"network": "lan", "nic": "eth0",
                              "address": f"10.50.{i // 250}.{i % 250 + 1}"}],
                    "security": [{"property": "hv-integrity", "assurance": "immutable-log",
                                  "evidence": "bench"}]})
                verify_bundle(retried(c.bundle, host, 0, 30), res.ca, host, cluster_url, 0)
                clients[host] = c
            except Exception as e:   # counted and reported
                errors.append(f"{host}: {e}")
        threads = [threading.Thread(target=proxy, args=(h,)) for h in tokens]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join()
        enrol_wall = time.monotonic() - t0
        load = os.getloadavg()[0]

        lat, solo = [], []
        lock = threading.Lock()

        def poster(host: str, c) -> None:
            for _ in range(5):
                ev = {"id": str(uuid.uuid4()), "ts": time.time(), "event": "admitted",
                      "vm": str(uuid.uuid4()), "tvd": "alpha", "ifname": "vif1.0"}
                t1 = time.monotonic()
                try:
                    retried(c.post_audit, [ev])
                except mc.MasterError as e:
                    errors.append(f"{host} audit: {e}")
                    continue
                with lock:
                    lat.append(time.monotonic() - t1)
        posters = [threading.Thread(target=poster, args=hc) for hc in clients.items()]
        for t in posters:
            t.start()
        for t in posters:
            t.join()
        if clients:
            c = next(iter(clients.values()))
            for _ in range(50):
                t1 = time.monotonic()
                c.post_audit([{"id": str(uuid.uuid4()), "event": "admitted"}])
                solo.append(time.monotonic() - t1)

        failover = None
        if etcd and clients:
            s = stores.open_store(dirs[0])
            leader = s.kv.get(s.k("leader"))[0].decode()
            li = next(i for i, u in enumerate(urls) if leader.endswith(":" + u))
            host = next(h for h in sorted(clients) if int(h[1:]) % n != li)
            c = clients[host]
            with open(os.path.join(dirs[0], "ca.pem")) as f:
                ca_pem = f.read()
            gen = verify_bundle(c.bundle(host, 0, 0), ca_pem, host, cluster_url,
                                0)["generation"]
            with open(pol, "a") as f:
                f.write("# changed: every host's bundle (it carries the policy text) changes\n")
            got: list[float] = []

            def watch():
                while True:
                    env = c.bundle(host, gen, 30)
                    if env is not None:
                        got.append(time.monotonic())
                        return
            w = threading.Thread(target=watch)
            w.start()
            time.sleep(0.5)
            tk = time.monotonic()
            masters[li].kill()
            quiet(master_cli, ["--dir", dirs[(li + 1) % n], "policy", "push", pol])
            w.join(60)
            failover = got[0] - tk if got else None
    finally:
        for m in masters:
            m.kill()
        if etcd:
            etcd.close()
        shutil.rmtree(work, ignore_errors=True)     # keys, tokens: nothing left behind
    print(f"backend {a.backend}, replicas {n}, hosts {a.hosts}: enrolled+reported+verified "
          f"{len(clients)}, errors {len(errors)}")
    for e in errors[:5]:
        print(f"  error: {e}")
    print(f"enrol + report + bundle wall: {enrol_wall:.2f} s (load average {load:.1f} on "
          f"{os.cpu_count()} CPUs, clients included)")
    print(f"audit post, {len(clients)} proxies x 5 at once: p50 {pct(lat, .5) * 1000:.0f} ms, "
          f"p95 {pct(lat, .95) * 1000:.0f} ms; alone: p50 {statistics.median(solo) * 1000:.1f} ms, "
          f"p95 {pct(solo, .95) * 1000:.1f} ms")
    if etcd:
        print("leader failover until a proxy has the new bundle: "
              + (f"{failover:.2f} s" if failover is not None else "never (within 60 s)"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
