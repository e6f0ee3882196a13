"""The master's state in etcd (`--store etcd://HOST:PORT,.../PREFIX`): the same operations as
the SQLite Store (store.py), for several master replicas sharing one cluster.

Every operation that changes state runs in an etcd transaction (etcd_kv.Tx): it reads what
it depends on, and commits only if none of that changed since — otherwise it runs again;
operations queued behind a replica's writer share one transaction (_commit_queued). The
audit log is append-only and hash-chained like SQLite's: a record is written together with the
chain head `audit/head` ({seq, hash}) and compared against the head it chained to, so two
replicas appending at once can never fork the chain or reuse a sequence number; an event id
is claimed under `audit/id/ID` in the same transaction (idempotent posts across replicas).

Keys under PREFIX: meta, epoch, audit/head, audit/r/SEQ, audit/id/ID, hosts/NAME, tokens/ID,
admins/SERIAL, policy/current, policy/v/N, reports/HOST, bundle_state/HOST, images/DIGEST,
revoked_vms/UUID, vm_certs/SERIAL, admissions/[host,vm,tvd,ifname], bundles/HOST (the signed
envelopes the leader publishes, replicas.py), leader. Private keys are never stored here.
"""
from __future__ import annotations

import hmac
import os
import random
import json
import threading
import time
import uuid as uuidlib

from cryptography import x509

from xen_tvd.master import etcd_kv
from xen_tvd.master.bundle import canonical, not_after
from xen_tvd.master.etcd_kv import Kv, Tx
from xen_tvd.master.store import (GENESIS, StoreError, StoreUnavailable, TokenRefused,
                                  chain_hash, pem_of, reanswer, sha256_hex)

SCHEMA_VERSION = 1
MAX_BATCH = 32           # operations per group commit (etcd's operation limit applies too)
SEQ_DIGITS = 12


class EtcdStore:
    shared = True          # several master processes use it at once (replicas.py)

    def __init__(self, url: str, create: bool = False, meta: dict | None = None,
                 tls_dir: str | None = None) -> None:
        try:
            endpoints, prefix = etcd_kv.parse_url(url)
        except ValueError as e:
            raise StoreError(str(e)) from None
        self.url = url
        self.prefix = prefix.encode()
        tls = None
        if url.startswith("etcds://"):
            tls = tuple(os.path.join(tls_dir or ".", n) for n in etcd_kv.TLS_FILES)
            missing = [f for f in tls if not os.path.exists(f)]
            if missing:
                raise StoreError(f"{url}: TLS to etcd needs {', '.join(missing)} (the etcd "
                                 "cluster's CA, this replica's client certificate and key)")
        self.kv = Kv(endpoints, tls=tls)
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        found = self.meta()
        if found is None:
            if not create:
                raise StoreError(f"{url} holds no tvd-master state; run 'tvd-master init "
                                 f"--store {url}' first")
            self._init_meta(meta or {})
        elif found.get("schema", 0) > SCHEMA_VERSION:
            raise StoreError(f"{url} has schema version {found['schema']}, newer than this "
                             f"tvd-master ({SCHEMA_VERSION}); upgrade tvd-master")

    def k(self, *parts: str) -> bytes:
        return self.prefix + "/".join(parts).encode()

    def _run(self, fn):
        """fn(tx) -> result, committed atomically (see _commit_queued)."""
        p = _Pending(fn)
        with self._queue_lock:
            self._queue.append(p)
        while not p.done.is_set():
            with self._lock:
                if not p.done.is_set():
                    self._commit_queued()
        if p.error is not None:
            raise p.error
        return p.result

    def _commit_queued(self) -> None:
        """Under self._lock: group commit. The operations queued behind this process's
        writer run in one transaction, each undone alone if it raises (a refused token, say),
        and the transaction is committed once; a lost race runs them all again. Every change
        appends to the audit chain, whose head all of them compare: one transaction each
        made 200 proxies enrolling and posting through three replicas race for that key."""
        with self._queue_lock:
            batch = self._queue[:MAX_BATCH]
        known: dict = {}
        for attempt in range(etcd_kv.CONFLICT_RETRIES):
            tx = Tx(self.kv, known=known)
            done: list[tuple[_Pending, object, Exception | None]] = []
            for p in batch:
                before = (dict(tx.writes), dict(tx.reads))
                try:
                    result, error = p.fn(tx), None
                except Exception as e:          # this operation's refusal, not the batch's
                    tx.writes, result, error = before[0], None, e
                if done and max(len(tx.writes), len(tx.reads)) > etcd_kv.MAX_TXN_OPS - 8:
                    tx.writes, tx.reads = before   # no room: it goes in the next transaction
                    break
                done.append((p, result, error))
            try:
                tx.commit()
                break
            except etcd_kv.Conflict as c:
                known = c.args[0] if c.args else {}
                time.sleep(random.uniform(0, min(0.02, 0.001 * (attempt + 1))))
            except Exception as e:              # etcd unreachable: every operation fails
                done = [(p, None, e) for p, _, _ in done]
                break
        else:
            done = [(p, None, StoreUnavailable(
                f"a write lost its race {etcd_kv.CONFLICT_RETRIES} times; try again"))
                for p, _, _ in done]
        with self._queue_lock:
            for p, _, _ in done:
                self._queue.remove(p)
        for p, result, error in done:
            p.result, p.error = result, error
            p.done.set()

    def _init_meta(self, meta: dict) -> None:
        def fn(tx: Tx):
            if tx.get(self.k("meta")) is None:
                tx.put_json(self.k("meta"), dict(meta, schema=SCHEMA_VERSION))
                tx.put(self.k("epoch"), b"0")
        self._run(fn)

    def meta(self) -> dict | None:
        v, _ = self.kv.get(self.k("meta"))
        return None if v is None else json.loads(v)

    def release(self) -> None:
        pass

    def schema_version(self) -> int:
        return (self.meta() or {}).get("schema", 0)

    def _bump(self, tx: Tx) -> None:
        # a blind write: the epoch is the key's mod revision, so concurrent changes on several
        # replicas do not conflict on it (they would, were it a counter read and written)
        tx.put(self.k("epoch"), b"")

    def epoch(self) -> int:
        _, rev = self.kv.get(self.k("epoch"))
        return rev

    def _json(self, *parts: str):
        v, _ = self.kv.get(self.k(*parts))
        return None if v is None else json.loads(v)

    def _all(self, *parts: str) -> list[tuple[str, object]]:
        p = self.k(*parts) + b"/"
        rows, _ = self.kv.get_prefix(p)
        return [(key[len(p):].decode(), json.loads(v)) for key, v, _ in rows]

    # -- audit -------------------------------------------------------------------------------
    def _append(self, tx: Tx, actor: str, event: str, detail: dict | None, event_id: str | None,
                ts: float | None, claim_id: str | None = None) -> bool:
        """One record in the caller's transaction; False if event_id was recorded before."""
        claim = event_id or claim_id
        if claim is not None and tx.get_unless_new(self.k("audit", "id", claim)) is not None:
            return False
        head = tx.get_json(self.k("audit", "head")) or {"seq": 0, "hash": GENESIS}
        seq = head["seq"] + 1
        ts = time.time() if ts is None else ts
        detail_text = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)
        h = chain_hash(head["hash"], event_id, ts, actor, event, detail_text)
        tx.put_json(self.k("audit", "r", f"{seq:0{SEQ_DIGITS}d}"),
                    {"seq": seq, "event_id": event_id, "ts": ts, "actor": actor,
                     "event": event, "detail": detail_text, "prev_hash": head["hash"],
                     "hash": h})
        tx.put_json(self.k("audit", "head"), {"seq": seq, "hash": h})
        if claim is not None:
            tx.put(self.k("audit", "id", claim), str(seq).encode())
        return True

    def audit(self, actor: str, event: str, detail: dict | None = None,
              event_id: str | None = None, ts: float | None = None) -> bool:
        # an event of our own gets a claim too: a transaction retried after its answer was
        # lost (it may have committed) must not append the record twice
        claim = None if event_id else "m-" + uuidlib.uuid4().hex
        ts = time.time() if ts is None else ts
        return self._run(lambda tx: self._append(tx, actor, event, detail, event_id, ts, claim))

    def _records(self, after: int, limit: int) -> list[dict]:
        p = self.k("audit", "r") + b"/"
        body = {"key": etcd_kv.b64(p + f"{after + 1:0{SEQ_DIGITS}d}".encode()),
                "range_end": etcd_kv.b64(etcd_kv.prefix_end(p)), "limit": limit,
                "sort_order": 1, "sort_target": 0}
        r = self.kv.post("kv/range", body)
        return [json.loads(etcd_kv.unb64(kv["value"])) for kv in r.get("kvs") or []]

    def audit_events(self, after: int = 0, limit: int = 1000) -> list[dict]:
        return [{"seq": r["seq"], "id": r["event_id"], "ts": r["ts"], "actor": r["actor"],
                 "event": r["event"], "detail": json.loads(r["detail"])}
                for r in self._records(after, limit)]

    def verify_audit_chain(self) -> tuple[bool, str]:
        prev, n, after = GENESIS, 0, 0
        while True:
            batch = self._records(after, 1000)
            for r in batch:
                want = chain_hash(prev, r["event_id"], r["ts"], r["actor"], r["event"],
                                  r["detail"])
                if r["seq"] <= n:
                    return False, f"audit record {r['seq']} is out of order"
                if r["prev_hash"] != prev or r["hash"] != want:
                    return False, f"audit record {r['seq']} does not chain to its predecessor"
                prev, n = r["hash"], r["seq"]
            if len(batch) < 1000:
                break
            after = n
        head = self._json("audit", "head") or {"seq": 0, "hash": GENESIS}
        if head["seq"] != n or head["hash"] != prev:
            return False, f"audit head says record {head['seq']}, the log ends at {n}"
        return True, f"{n} audit records, hash chain intact"

    # -- tokens and enrolment ----------------------------------------------------------------
    def add_token(self, token_id: str, secret: str, host: str, ttl: float, actor: str) -> float:
        now = time.time()
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            if tx.get(self.k("tokens", token_id)) is not None:
                raise StoreError(f"token {token_id} exists")
            tx.put_json(self.k("tokens", token_id),
                        {"secret_sha256": sha256_hex(secret), "host": host, "created_at": now,
                         "expires": now + ttl, "used_at": None})
            self._append(tx, actor, "token-issued", {"host": host, "token_id": token_id,
                                                     "expires": now + ttl}, None, None, claim)
        self._run(fn)
        return now + ttl

    def enroll(self, token_id: str, secret: str, host: str, issue,
               key_sha256: str = "") -> object:
        """As Store.enroll: redeem a token and record the certificate in one transaction.
        A retry with the token already used for the same public key (the answer was lost,
        maybe with the replica that gave it) gets the same certificate again."""
        now = time.time()
        issued: list = []       # issue() once, even if the transaction runs again
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            row = tx.get_json(self.k("tokens", token_id))
            if row is None or not hmac.compare_digest(row["secret_sha256"], sha256_hex(secret)):
                raise TokenRefused("unknown token")
            if row["used_at"] is not None:
                again = reanswer(row, host, key_sha256, tx.get_json(self.k("hosts", host)))
                if again is not None:
                    return ("again", again)
                raise TokenRefused(f"token {token_id} was already used")
            if row["expires"] < now:
                raise TokenRefused(f"token {token_id} expired")
            if row["host"] != host:
                raise TokenRefused(f"token {token_id} was issued for host {row['host']}")
            if not issued:
                issued.append(issue())
            cert = issued[0]
            tx.put_json(self.k("tokens", token_id),
                        dict(row, used_at=now, key_sha256=key_sha256,
                             cert_pem=pem_of(cert), serial=str(cert.serial_number)))
            tx.put_json(self.k("hosts", host),
                        {"state": "enrolled", "cert_serial": str(cert.serial_number),
                         "cert_expires": not_after(cert).timestamp(), "enrolled_at": now,
                         "revoked_at": None})
            # a re-enrolled host reports afresh: an old report must not speak for a new key
            tx.delete(self.k("reports", host))
            self._bump(tx)
            self._append(tx, f"host:{host}", "enrolled",
                         {"host": host, "token_id": token_id, "serial": str(cert.serial_number)},
                         None, None, claim)
            return ("new", cert)
        kind, value = self._run(fn)
        return x509.load_pem_x509_certificate(value.encode()) if kind == "again" else value

    def host_cert_ok(self, host: str, serial: int) -> bool:
        row = self._json("hosts", host)
        return bool(row) and row["state"] == "enrolled" and row["cert_serial"] == str(serial)

    def revoke_host(self, host: str, actor: str) -> bool:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            row = tx.get_json(self.k("hosts", host))
            if row is None:
                raise StoreError(f"host {host} was never enrolled")
            if row["state"] == "revoked":
                return False
            tx.put_json(self.k("hosts", host), dict(row, state="revoked", revoked_at=time.time()))
            self._bump(tx)
            self._append(tx, actor, "host-revoked", {"host": host}, None, None, claim)
            return True
        return self._run(fn)

    def hosts(self) -> list[dict]:
        reports = {h: r["reported_at"] for h, r in self._all("reports")}
        gens = {h: g[0] for h, g in self._all("bundle_state")}
        return [{"host": name, "state": r["state"], "cert_serial": r["cert_serial"],
                 "cert_expires": r["cert_expires"], "enrolled_at": r["enrolled_at"],
                 "revoked_at": r["revoked_at"], "reported_at": reports.get(name),
                 "generation": gens.get(name, 0)} for name, r in self._all("hosts")]

    def enrolled_hosts(self) -> set[str]:
        return {name for name, r in self._all("hosts") if r["state"] == "enrolled"}

    # -- admins ------------------------------------------------------------------------------
    def add_admin(self, name: str, serial: int, actor: str) -> None:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            tx.put_json(self.k("admins", str(serial)),
                        {"name": name, "created_at": time.time(), "revoked_at": None})
            self._append(tx, actor, "admin-cert-issued", {"admin": name, "serial": str(serial)},
                         None, None, claim)
        self._run(fn)

    def revoke_admin(self, name: str, actor: str) -> int:
        serials = [s for s, r in self._all("admins") if r["name"] == name]
        if not serials:
            raise StoreError(f"no admin certificate was issued for {name}")
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            n = 0
            for s in serials:
                row = tx.get_json(self.k("admins", s))
                if row["revoked_at"] is None:
                    tx.put_json(self.k("admins", s), dict(row, revoked_at=time.time()))
                    n += 1
            if n:
                self._append(tx, actor, "admin-revoked", {"admin": name, "certificates": n},
                             None, None, claim)
            return n
        return self._run(fn)

    def admin_cert_ok(self, name: str, serial: int) -> bool:
        row = self._json("admins", str(serial))
        return bool(row) and row["name"] == name and row["revoked_at"] is None

    # -- policy ------------------------------------------------------------------------------
    def add_policy(self, yaml_text: str, name: str, actor: str) -> tuple[int, bool]:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            cur = tx.get_json(self.k("policy", "current"))
            if cur and cur["yaml"] == yaml_text:
                return cur["version"], False
            v = (cur["version"] if cur else 0) + 1
            row = {"version": v, "yaml": yaml_text, "name": name, "pushed_at": time.time(),
                   "pushed_by": actor}
            tx.put_json(self.k("policy", "v", f"{v:0{SEQ_DIGITS}d}"), row)
            tx.put_json(self.k("policy", "current"), row)
            self._bump(tx)
            self._append(tx, actor, "policy-pushed", {"version": v, "name": name,
                                                      "sha256": sha256_hex(yaml_text)},
                         None, None, claim)
            return v, True
        return self._run(fn)

    def policy(self) -> tuple[int, str, str] | None:
        cur = self._json("policy", "current")
        return (cur["version"], cur["yaml"], cur["name"]) if cur else None

    # -- capability reports ------------------------------------------------------------------
    def put_report(self, host: str, report: dict) -> bool:
        text = canonical(report).decode()
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            row = tx.get_json(self.k("reports", host))
            if row and row["report"] == text:
                return False
            tx.put_json(self.k("reports", host), {"report": text, "reported_at": time.time()})
            self._bump(tx)
            self._append(tx, f"host:{host}", "capabilities-reported",
                         {"host": host, "functional": report.get("functional", []),
                          "properties": {s.get("property"): s.get("assurance")
                                         for s in report.get("security", [])}},
                         None, None, claim)
            return True
        return self._run(fn)

    def reports(self) -> dict[str, dict]:
        return {h: json.loads(r["report"]) for h, r in self._all("reports")}

    # -- bundles -----------------------------------------------------------------------------
    def bundle_states(self) -> dict[str, tuple[int, str]]:
        return {h: (g[0], g[1]) for h, g in self._all("bundle_state")}

    def set_bundle_states(self, changes: dict[str, tuple[int, str]]) -> None:
        def fn(tx: Tx):
            for h, (g, s) in changes.items():
                tx.put_json(self.k("bundle_state", h), [g, s])
        self._run(fn)

    # -- evidence rules ----------------------------------------------------------------------
    def allow_image(self, digest: str, properties: dict, actor: str) -> None:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            old = tx.get_json(self.k("images", digest))
            tx.put_json(self.k("images", digest),
                        {"properties": properties,
                         "added_at": old["added_at"] if old else time.time()})
            self._bump(tx)
            self._append(tx, actor, "image-allowed", {"digest": digest, "properties": properties},
                         None, None, claim)
        self._run(fn)

    def add_vm_cert(self, serial: int, name: str, vm_uuid: str, properties: dict,
                    actor: str) -> None:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            tx.put_json(self.k("vm_certs", str(serial)),
                        {"name": name, "uuid": vm_uuid, "properties": properties,
                         "issued_at": time.time(), "revoked_at": None})
            self._append(tx, actor, "vm-cert-issued", {"serial": str(serial), "name": name,
                                                       "vm": vm_uuid, "properties": properties},
                         None, None, claim)
        self._run(fn)

    def revoke_vm(self, vm_uuid: str, actor: str) -> bool:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            if tx.get(self.k("revoked_vms", vm_uuid)) is not None:
                return False
            tx.put_json(self.k("revoked_vms", vm_uuid), {"revoked_at": time.time()})
            self._bump(tx)
            self._append(tx, actor, "vm-revoked", {"vm": vm_uuid}, None, None, claim)
            return True
        return self._run(fn)

    def revoke_vm_cert(self, serial: int, actor: str) -> bool:
        claim = "m-" + uuidlib.uuid4().hex

        def fn(tx: Tx):
            row = tx.get_json(self.k("vm_certs", str(serial)))
            if row is None:
                raise StoreError(f"no VM certificate with serial {serial} was issued here")
            if row["revoked_at"] is not None:
                return False
            tx.put_json(self.k("vm_certs", str(serial)), dict(row, revoked_at=time.time()))
            self._bump(tx)
            self._append(tx, actor, "vm-cert-revoked", {"serial": str(serial)}, None, None, claim)
            return True
        return self._run(fn)

    def evidence(self) -> dict:
        return {"images": {d: r["properties"] for d, r in self._all("images")},
                "revoked_vm_certs": sorted(int(s) for s, r in self._all("vm_certs")
                                           if r["revoked_at"] is not None),
                "revoked_vms": sorted(u for u, _ in self._all("revoked_vms"))}

    # -- admissions (fed by proxies' audit events) ---------------------------------------------
    def record_events(self, host: str, events: list[dict]) -> int:
        """Store proxy audit events (idempotent on their id, across replicas); returns how
        many were new. Chunks within etcd's limits, group-committed with whatever else
        this replica is writing (_commit_queued)."""
        return sum(self._run(lambda tx, chunk=chunk: self._record(tx, host, chunk))
                   for chunk in _chunks(events))

    def _record(self, tx: Tx, host: str, events: list[dict]) -> int:
        new = 0
        for e in events:
            detail = {k: e.get(k) for k in ("vm", "name", "tvd", "ifname", "reason")
                      if e.get(k) is not None}
            detail["host"] = host
            if not self._append(tx, f"host:{host}", e["event"], detail, e["id"], e.get("ts")):
                continue
            new += 1
            if e.get("vm") and e.get("tvd"):
                key = json.dumps([host, e["vm"], e["tvd"], e.get("ifname") or ""])
                tx.put_json(self.k("admissions", key),
                            {"host": host, "vm": e["vm"], "name": e.get("name"), "tvd": e["tvd"],
                             "ifname": e.get("ifname") or "", "state": e["event"],
                             "reason": e.get("reason"), "ts": e.get("ts") or time.time()})
        return new

    def admissions(self) -> list[dict]:
        rows = [r for _, r in self._all("admissions")]
        keys = ("host", "vm", "name", "tvd", "ifname", "state", "reason", "ts")
        return sorted(({k: r[k] for k in keys} for r in rows),
                      key=lambda r: (r["host"], r["tvd"], r["vm"], r["ifname"]))


class _Pending:
    """One operation waiting for a group commit."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result = 0
        self.error: Exception | None = None


EVENTS_PER_TXN = (etcd_kv.MAX_TXN_OPS - 2) // 3     # record, id claim, admission each


def _chunks(events: list[dict]):
    chunk, size = [], 0
    for e in events:
        n = len(json.dumps(e)) * 3 + 400      # record, id claim, admission; base64 and keys
        if chunk and (size + n > etcd_kv.MAX_TXN_BYTES // 2 or len(chunk) >= EVENTS_PER_TXN):
            yield chunk
            chunk, size = [], 0
        chunk.append(e)
        size += n
    if chunk:
        yield chunk

