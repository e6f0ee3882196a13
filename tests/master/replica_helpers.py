"""A tvd-master site for the replica tests and bench/master_replicas.py: N `tvd-master serve`
processes on one etcd cluster (or one on SQLite), and hosts that talk to them through the
proxy's real master link (xen_tvd.proxy.master_link: enrolment over a URL list, failover,
bundle verification with rollback refusal, the audit spool)."""
from __future__ import annotations

import base64
import json
import os
import threading
import time

from xen_tvd.master import replicas, stores
from xen_tvd.master.cli import main as master_cli
from xen_tvd.proxy import master_link

from tests.master.etcd_helpers import EtcdCluster
from tests.master.master_helpers import POLICY, REPORT, MasterProcess, free_port, token

LEASE_TTL = "2"          # etcd's minimum; failover within about 2-3 s


class Site:
    def __init__(self, base: str, backend: str = "etcd", replicas: int = 3,
                 members: int = 3) -> None:
        self.base = base
        self.backend = backend
        self.etcd = EtcdCluster(members).start() if backend == "etcd" else None
        n = replicas if backend == "etcd" else 1
        self.urls = [f"https://127.0.0.1:{free_port()}" for _ in range(n)]
        self.dirs = [os.path.join(base, f"r{i}") for i in range(n)]
        store = ["--store", self.etcd.url()] if self.etcd else []
        for i, (d, u) in enumerate(zip(self.dirs, self.urls)):
            extra = ["--ca-from", self.dirs[0]] if i else []
            assert master_cli(["--dir", d, *store, "init", "--url", u, *extra]) == 0
        self.policy_file = os.path.join(base, "policy.yaml")
        self.push(POLICY)
        self.masters: list[MasterProcess | None] = [None] * n
        for i in range(n):
            self.start_master(i)

    def start_master(self, i: int) -> None:
        log = os.path.join(self.base, f"master{i}.log")
        if self.masters[i] is None:
            self.masters[i] = MasterProcess(self.dirs[i], self.urls[i], log,
                                            env={"TVD_MASTER_LEASE_TTL": LEASE_TTL})
        else:
            self.masters[i].start()

    def push(self, text: str) -> None:
        with open(self.policy_file, "w") as f:
            f.write(text)
        import contextlib
        import io
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert master_cli(["--dir", self.dirs[0], "policy", "push", self.policy_file]) == 0

    def store(self):
        return stores.open_store(self.dirs[0])

    def leader(self) -> int | None:
        """Index of the replica holding the leader key (etcd), 0 on SQLite."""
        if self.etcd is None:
            return 0
        s = self.store()
        value, _ = s.kv.get(s.k("leader"))
        if value is None:
            return None
        for i, u in enumerate(self.urls):
            if value.decode().endswith(":" + u):
                return i
        raise AssertionError(f"leader key {value!r} names no replica")

    def wait_leader(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = self.leader()
            if i is not None and self.masters[i].proc.poll() is None:
                return i
            time.sleep(0.1)
        raise AssertionError("no replica became leader")

    def bundle_history(self) -> dict[str, list[tuple[int, float]]]:
        """Every envelope the leaders ever published, per host in etcd revision order, from
        the store's history (a watch from revision 1 replays it): (generation, issued)."""
        s = self.store()
        out: dict[str, list[tuple[int, float]]] = {}
        p = s.k("bundles") + b"/"
        stop = threading.Event()

        def on_event(key, value, rev):
            if value is not None:
                gen, env = replicas.unpack(value)
                payload = json.loads(base64.b64decode(env["payload"]))
                out.setdefault(key[len(p):].decode(), []).append((gen, payload["issued"]))
        rev = 1
        while True:          # until a watch from where the last one ended has nothing more
            nxt = s.kv.watch_prefix(p, rev, on_event, stop, idle=1.0)
            if nxt == rev:
                break
            rev = nxt
        return out

    def close(self) -> None:
        for m in self.masters:
            if m is not None:
                m.kill()
        if self.etcd is not None:
            self.etcd.close()


class RecordingDaemon:
    """Stands in for the proxy daemon behind a real MasterLink: keeps the bundles the link
    accepted (the link verified them and refused rollbacks) instead of applying them."""

    def __init__(self) -> None:
        self.bundle = None
        self.received: list[tuple[int, float]] = []
        self.revoked = ""

    def on_bundle(self, b) -> None:
        self.bundle = b
        self.received.append((b.generation, b.issued))

    def on_revoked(self, why: str) -> None:
        self.revoked = why


def report_for(host: str) -> dict:
    addr = {"h1": "10.0.0.1", "h2": "10.0.0.2", "h3": "10.0.0.3"}.get(host, "10.0.0.9")
    return dict(REPORT, nics=[dict(REPORT["nics"][0], address=addr)])


class Host:
    """One Dom0's master link: enrolled over the site's URL list, watching, spooling audit."""

    def __init__(self, site: Site, name: str, state_dir: str, start: bool = True) -> None:
        self.name = name
        master_link.enroll_host(",".join(site.urls), token(site.dirs[-1], name), name,
                                state_dir)
        self.link = master_link.MasterLink(state_dir, name, lambda: report_for(name))
        self.daemon = RecordingDaemon()
        self.sent: list[str] = []
        if start:
            self.link.start(self.daemon)

    def admit(self, n: int) -> None:
        """n admission events into the spool (the link drains it to whichever replica
        answers)."""
        for i in range(n):
            e = self.link.spool.append("admitted", vm=f"00000000-0000-0000-0000-{i:012d}",
                                       name=f"vm{i}", tvd="alpha", ifname=f"vif{i}.0")
            self.sent.append(e["id"])
        self.link.spool.pending.set()

    def stop(self) -> None:
        self.link.stop.set()
        self.link.spool.pending.set()


