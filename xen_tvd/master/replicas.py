"""Master replicas on one etcd cluster (docs/master.md, "Replicas on etcd").

Any replica serves every request; exactly one, the leader, signs bundles. Leadership is the key
PREFIX/leader, created only if absent and bound to a lease this replica keeps alive; when the
replica dies the lease expires after LEASE_TTL seconds and another one takes the key. The
leader publishes each host's signed envelope under PREFIX/bundles/HOST together with its
generation (PREFIX/bundle_state/HOST) in transactions that also compare the leader key's
create revision with the one this replica created, and each generation's stored mod revision
with the one it read: a replica that lost the lease (paused, partitioned) can sign but never
publish, so a generation is issued once and never rolled back.

Every replica (leader included) follows PREFIX/bundles/ with an etcd watch and serves what it
sees: a push on any replica wakes the bundle watches of proxies on all of them. Changes to
bundle inputs bump PREFIX/epoch, which every replica watches too.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import zlib

from xen_tvd.log import log
from xen_tvd.master import etcd_kv
from xen_tvd.master.etcd_kv import StoreUnavailable, Tx
from xen_tvd.master.store import LostLeadership

LEASE_TTL = int(os.environ.get("TVD_MASTER_LEASE_TTL", "3"))   # seconds; etcd's minimum is 2
HOSTS_PER_TXN = (etcd_kv.MAX_TXN_OPS - 8) // 2   # a generation and an envelope each
FOLLOW_POLL = 0.2        # a follower looks for a vacant leader key this often


class Replica:
    def __init__(self, master, ttl: int = LEASE_TTL) -> None:
        self.master = master
        self.store = master.store
        self.kv = master.store.kv
        self.ttl = ttl
        self.name = f"{socket.gethostname()}:{os.getpid()}:{master.url_here}"
        self.stop_event = threading.Event()
        self._lease: int | None = None
        self._leader_rev: int | None = None
        self._valid_until = 0.0
        self._mod: dict[str, int] = {}       # bundle_state key mod revisions the leader read
        self.ready = threading.Event()        # the first full read of the bundles is done

    # -- leadership ----------------------------------------------------------------------------
    def is_leader(self) -> bool:
        # the lease may be gone already; publish() is what makes this safe, this only keeps a
        # replica that lost contact from signing in vain
        return self._leader_rev is not None and time.monotonic() < self._valid_until

    def guard(self) -> list[dict]:
        return [etcd_kv.cmp_create(self.store.k("leader"), self._leader_rev or -1)]

    def start(self) -> None:
        for name, fn in (("leader", self._campaign),
                         ("bundles", lambda: self._follow("bundles", self._on_bundle,
                                                          self._load_bundles)),
                         ("epoch", lambda: self._follow("epoch", self._on_epoch, None))):
            threading.Thread(target=fn, name=f"replica-{name}", daemon=True).start()

    def stop(self) -> None:
        self.stop_event.set()
        lease, self._lease, self._leader_rev = self._lease, None, None
        if lease is not None:
            try:
                self.kv.revoke(lease)      # the next leader need not wait for the TTL
            except StoreUnavailable:
                pass

    def _campaign(self) -> None:
        key = self.store.k("leader")
        while not self.stop_event.is_set():
            try:
                if self._leader_rev is not None:
                    self._keep_leading()
                    continue
                value, _ = self.kv.get(key)
                if value is None:
                    self._try_lead(key)
            except StoreUnavailable as e:
                if self._leader_rev is not None and time.monotonic() >= self._valid_until:
                    self._step_down(f"store unreachable: {e}")
            self.stop_event.wait(FOLLOW_POLL)

    def _try_lead(self, key: bytes) -> None:
        sent = time.monotonic()
        lease = self.kv.grant(self.ttl)
        ok, r = self.kv.txn([etcd_kv.cmp_create(key, 0)],
                            [etcd_kv.op_put(key, self.name.encode(), lease)])
        if not ok:
            self.kv.revoke(lease)
            return
        self._lease = lease
        self._leader_rev = int(r["header"]["revision"])
        self._valid_until = sent + self.ttl - 0.5
        log("info", "leader-elected", replica=self.name, revision=self._leader_rev)
        self.master.changed()          # sign what the previous leader left unsigned

    def _keep_leading(self) -> None:
        self.stop_event.wait(self.ttl / 4)
        if self.stop_event.is_set() or self._lease is None:
            return
        sent = time.monotonic()
        left = self.kv.keepalive(self._lease)
        if left <= 0:
            self._step_down("lease expired")
            return
        self._valid_until = sent + left - 0.5

    def _step_down(self, why: str) -> None:
        if self._leader_rev is not None:
            log("warning", "leader-lost", replica=self.name, reason=why)
        self._leader_rev, self._lease = None, None

    # -- publishing (leader) -------------------------------------------------------------------
    def bundle_states(self) -> dict[str, tuple[int, str]]:
        p = self.store.k("bundle_state") + b"/"
        rows, _ = self.kv.get_prefix(p)
        self._mod = {k.decode(): rev for k, _, rev in rows}
        return {k[len(p):].decode(): tuple(json.loads(v)) for k, v, _ in rows}

    def publish(self, changes: dict[str, tuple[int, str]], fresh: dict[str, tuple[int, dict]],
                gone: set[str]) -> None:
        """Write new generations with their envelopes (and remove revoked hosts' envelopes)
        in guarded transactions of at most about MAX_TXN_BYTES; LostLeadership if the guard
        failed, StoreUnavailable if etcd could not be reached."""
        items = sorted(fresh.items())
        chunk, size = [], 0
        rows = {host: pack(gen, env) for host, (gen, env) in items}
        for host, (gen, env) in items:
            n = len(rows[host]) * 4 // 3 + 512
            if chunk and (size + n > etcd_kv.MAX_TXN_BYTES or len(chunk) >= HOSTS_PER_TXN):
                self._publish_chunk(chunk, changes, [])
                chunk, size = [], 0
            chunk.append((host, gen, rows[host]))
            size += n
        self._publish_chunk(chunk, changes, [])
        gone = sorted(gone)
        for i in range(0, len(gone), etcd_kv.MAX_TXN_OPS - 8):
            self._publish_chunk([], changes, gone[i:i + etcd_kv.MAX_TXN_OPS - 8])

    def _publish_chunk(self, chunk, changes, gone) -> None:
        if not chunk and not gone:
            return
        tx = Tx(self.kv, self.guard())
        for host, gen, row in chunk:
            if host in changes:
                skey = self.store.k("bundle_state", host)
                tx.reads[skey] = (None, self._mod.get(skey.decode(), 0))
                tx.put_json(skey, list(changes[host]))
            tx.put(self.store.k("bundles", host), row)
        for host in gone:
            tx.delete(self.store.k("bundles", host))
        try:
            tx.commit()
        except etcd_kv.Conflict:
            leader, _ = self.kv.get(self.store.k("leader"))
            if leader != self.name.encode():
                self._step_down("another replica leads")
                raise LostLeadership() from None
            raise LostLeadership("bundle generations changed under the leader") from None
        for host, _, _ in chunk:
            skey = self.store.k("bundle_state", host)
            self._mod[skey.decode()] = -1      # unknown until read again: never reuse

    # -- following (every replica) -------------------------------------------------------------
    def _follow(self, name: str, on_event, on_resync) -> None:
        prefix = self.store.k(name) + (b"/" if name == "bundles" else b"")
        rev = None
        while not self.stop_event.is_set():
            try:
                if rev is None:
                    rev = (on_resync() if on_resync else self.kv.revision()) + 1
                rev = self.kv.watch_prefix(prefix, rev, on_event, self.stop_event)
            except StoreUnavailable as e:
                log("warning", "watch-restart", what=name, error=str(e)[:200])
                rev = None
                self.stop_event.wait(0.5)

    def _load_bundles(self) -> int:
        p = self.store.k("bundles") + b"/"
        rows, rev = self.kv.get_prefix(p)
        seen = set()
        for key, value, mod in rows:
            self._on_bundle(key, value, mod)
            seen.add(key[len(p):].decode())
        with self.master.cond:
            for host in set(self.master.envelopes) - seen:
                del self.master.envelopes[host]
        self.ready.set()
        return rev

    def _on_bundle(self, key: bytes, value: bytes | None, _rev: int) -> None:
        host = key[len(self.store.k("bundles")) + 1:].decode()
        m = self.master
        with m.cond:
            if value is None:
                m.envelopes.pop(host, None)
            else:
                gen, env = unpack(value)
                if gen > m.envelopes.get(host, (0,))[0]:
                    m.envelopes[host] = (gen, env)
            m.cond.notify_all()

    def _on_epoch(self, _key: bytes, _value, _rev: int) -> None:
        self.master.changed()


def pack(generation: int, envelope: dict) -> bytes:
    """An envelope as stored under bundles/HOST: its payload decoded and the row deflated.
    Every host's payload carries the whole policy text; stored as base64 in JSON in etcd's
    base64 it made 200 hosts' bundles ~10 MB per publish, sent again to every replica."""
    return zlib.compress(json.dumps({
        "generation": generation, "payload": base64.b64decode(envelope["payload"]).decode(),
        "signature": envelope["signature"], "signer": envelope["signer"]}).encode())


def unpack(value: bytes) -> tuple[int, dict]:
    row = json.loads(zlib.decompress(value))
    return row["generation"], {"payload": base64.b64encode(row["payload"].encode()).decode(),
                               "signature": row["signature"], "signer": row["signer"]}
