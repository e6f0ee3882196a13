"""The master's state in SQLite (`DIR/master.db`).

WAL + synchronous=FULL: a committed enrolment, revocation or audit record survives a crash
or SIGKILL of the master (the tests kill it). The schema version lives in PRAGMA user_version;
MIGRATIONS[i] takes a database from version i to i+1, forward only. A database newer than
this code is refused rather than guessed at.

The audit table is append-only twice over: triggers abort any UPDATE or DELETE, and each row
carries SHA-256(previous row's hash + this row's content), so an edit made around SQLite
(another tool, a restored file) shows up in verify_audit_chain().

Thread use: one connection per thread; writers serialise on a process lock plus
BEGIN IMMEDIATE (other processes, e.g. the CLI next to a running server, wait on
busy_timeout). Serials are 159-bit: stored as decimal TEXT.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xen_tvd.master.bundle import canonical, not_after

GENESIS = "0" * 64

MIGRATIONS = [
    # 0 -> 1: the whole protocol-v1 schema
    """
    CREATE TABLE policy_versions (
        version INTEGER PRIMARY KEY AUTOINCREMENT,
        yaml TEXT NOT NULL, name TEXT NOT NULL, pushed_at REAL NOT NULL, pushed_by TEXT NOT NULL);
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY, state TEXT NOT NULL CHECK (state IN ('enrolled', 'revoked')),
        cert_serial TEXT NOT NULL, cert_expires REAL NOT NULL,
        enrolled_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, host TEXT NOT NULL,
        created_at REAL NOT NULL, expires REAL NOT NULL, used_at REAL);
    CREATE TABLE admins (
        name TEXT NOT NULL, cert_serial TEXT PRIMARY KEY, created_at REAL NOT NULL,
        revoked_at REAL);
    CREATE TABLE capability_reports (
        host TEXT PRIMARY KEY, report TEXT NOT NULL, reported_at REAL NOT NULL);
    CREATE TABLE bundle_state (
        host TEXT PRIMARY KEY, generation INTEGER NOT NULL, content_sha256 TEXT NOT NULL);
    CREATE TABLE images (
        digest TEXT PRIMARY KEY, properties TEXT NOT NULL, added_at REAL NOT NULL);
    CREATE TABLE revoked_vms (uuid TEXT PRIMARY KEY, revoked_at REAL NOT NULL);
    CREATE TABLE vm_certs (
        serial TEXT PRIMARY KEY, name TEXT NOT NULL, uuid TEXT NOT NULL,
        properties TEXT NOT NULL, issued_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE admissions (
        host TEXT NOT NULL, vm TEXT NOT NULL, tvd TEXT NOT NULL, ifname TEXT NOT NULL,
        name TEXT, state TEXT NOT NULL, reason TEXT, ts REAL NOT NULL,
        PRIMARY KEY (host, vm, tvd, ifname));
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE, ts REAL NOT NULL,
        actor TEXT NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('epoch', 0);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    """,
    # 1 -> 2: what a token was redeemed for, so that a retried enrolment (its answer was lost)
    # gets the same certificate again instead of a refusal
    """
    ALTER TABLE tokens ADD COLUMN key_sha256 TEXT;
    ALTER TABLE tokens ADD COLUMN cert_pem TEXT;
    ALTER TABLE tokens ADD COLUMN serial TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


MAX_BATCH = 64


class _Batch:
    """Operations sharing one SQLite transaction (see Store.tx)."""
    def __init__(self) -> None:
        self.size = 0
        self.done = False
        self.error = ""


class StoreError(Exception):
    pass


class StoreUnavailable(Exception):
    """The store cannot be reached or has no quorum (etcd): refuse, never guess. Not a
    StoreError, which means "refused on the state" (unknown host, say)."""


class LostLeadership(Exception):
    """A replica's bundles were not published: another replica leads now (replicas.py)."""


class TokenRefused(Exception):
    """Why a token was not accepted (audited; the client only sees a generic 401)."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Store:
    shared = False         # one master process owns it (no replicas, no leader election)

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._pool_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._tx_owner: int | None = None
        self._commit_cond = threading.Condition()
        self._waiting = 0
        self._batch: _Batch | None = None
        new = not os.path.exists(path)
        if new:
            # the DB holds token hashes and the audit log: no one else reads it
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._writer = self._open()
        self._migrate()

    # -- connections and transactions -------------------------------------------------------
    # One writer connection, used under a lock (SQLite has one writer anyway), and reader
    # connections handed to threads from a pool: the server runs a thread per request, and
    # opening a connection per request (inside the write lock, at that) made 50 concurrent
    # audit posts queue for seconds.
    def _open(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                            check_same_thread=False)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA busy_timeout=30000")
        return c

    def conn(self) -> sqlite3.Connection:
        """This thread's connection: the writer inside tx(), else a pooled reader."""
        if self._tx_owner == threading.get_ident():
            return self._writer
        c = getattr(self._local, "conn", None)
        if c is None:
            with self._pool_lock:
                c = self._pool.pop() if self._pool else None
            c = c or self._open()
            self._local.conn = c
        return c

    def release(self) -> None:
        """Give this thread's reader back to the pool (call when a request thread is done)."""
        c = getattr(self._local, "conn", None)
        if c is not None:
            self._local.conn = None
            with self._pool_lock:
                if len(self._pool) < 32:
                    self._pool.append(c)
                    return
            c.close()

    @contextlib.contextmanager
    def tx(self):
        """One atomic operation, durable when the block returns.

        Group commit: operations that queue behind each other for the write lock share one
        SQLite transaction (each in its own SAVEPOINT, so a failing one undoes only itself),
        and the last of them commits for all; everyone returns only after that COMMIT
        (synchronous=FULL). One fsync per burst instead of one per request is what keeps 200
        proxies posting audit events from queueing behind the disk."""
        me = threading.get_ident()
        if self._tx_owner == me:                 # nested: part of the caller's operation
            yield self._writer
            return
        with self._commit_cond:
            self._waiting += 1
        self._write_lock.acquire()
        with self._commit_cond:
            self._waiting -= 1
        c = self._writer
        mine = None
        failed = None
        try:
            if not c.in_transaction:
                c.execute("BEGIN IMMEDIATE")
                self._batch = _Batch()
            mine = self._batch
            c.execute("SAVEPOINT op")
            self._tx_owner = me
            try:
                yield c
            except BaseException as e:
                failed = e
                c.execute("ROLLBACK TO op")
            finally:
                self._tx_owner = None
            c.execute("RELEASE op")
            if failed is None:
                mine.size += 1
            with self._commit_cond:
                last = self._waiting == 0 or mine.size >= MAX_BATCH
            if last:
                self._finish(mine)
        finally:
            self._write_lock.release()
        if failed is not None:
            raise failed
        with self._commit_cond:
            while not mine.done:
                self._commit_cond.wait()
        if mine.error:
            raise StoreError(f"database commit failed: {mine.error}")

    def _finish(self, batch: "_Batch") -> None:
        c = self._writer
        try:
            c.execute("COMMIT" if batch.size else "ROLLBACK")
        except sqlite3.Error as e:
            batch.error = str(e)
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        with self._commit_cond:
            batch.done = True
            self._commit_cond.notify_all()

    def _migrate(self) -> None:
        with self.tx() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this "
                                 f"tvd-master ({SCHEMA_VERSION}); upgrade tvd-master")
            for v in range(version, SCHEMA_VERSION):
                for stmt in _statements(MIGRATIONS[v]):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={v + 1}")

    def schema_version(self) -> int:
        return self.conn().execute("PRAGMA user_version").fetchone()[0]

    def data_version(self) -> int:
        """Changes whenever another connection (e.g. the CLI) committed."""
        return self.conn().execute("PRAGMA data_version").fetchone()[0]

    def _bump(self, c: sqlite3.Connection) -> None:
        # every change to a bundle input bumps the epoch in the same transaction, so a running
        # server notices changes made by the CLI (another process) within its poll interval
        c.execute("UPDATE meta SET value=value+1 WHERE key='epoch'")

    def epoch(self) -> int:
        return self.conn().execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]

    # -- audit -------------------------------------------------------------------------------
    def audit(self, actor: str, event: str, detail: dict | None = None,
              event_id: str | None = None, ts: float | None = None) -> bool:
        """Append one record; False if event_id was recorded before (idempotent posts)."""
        with self.tx() as c:
            if event_id is not None and c.execute(
                    "SELECT 1 FROM audit WHERE event_id=?", (event_id,)).fetchone():
                return False
            row = c.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            ts = time.time() if ts is None else ts
            detail_text = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)
            h = chain_hash(prev, event_id, ts, actor, event, detail_text)
            c.execute("INSERT INTO audit (event_id, ts, actor, event, detail, prev_hash, hash) "
                      "VALUES (?,?,?,?,?,?,?)", (event_id, ts, actor, event, detail_text, prev, h))
            return True

    def audit_events(self, after: int = 0, limit: int = 1000) -> list[dict]:
        rows = self.conn().execute(
            "SELECT seq, event_id, ts, actor, event, detail FROM audit WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [{"seq": r["seq"], "id": r["event_id"], "ts": r["ts"], "actor": r["actor"],
                 "event": r["event"], "detail": json.loads(r["detail"])} for r in rows]

    def verify_audit_chain(self) -> tuple[bool, str]:
        prev = GENESIS
        n = 0
        for r in self.conn().execute("SELECT * FROM audit ORDER BY seq"):
            want = chain_hash(prev, r["event_id"], r["ts"], r["actor"], r["event"], r["detail"])
            if r["prev_hash"] != prev or r["hash"] != want:
                return False, f"audit record {r['seq']} does not chain to its predecessor"
            prev = r["hash"]
            n += 1
        return True, f"{n} audit records, hash chain intact"

    # -- tokens and enrolment ----------------------------------------------------------------
    def add_token(self, token_id: str, secret: str, host: str, ttl: float, actor: str) -> float:
        now = time.time()
        with self.tx() as c:
            c.execute("INSERT INTO tokens (id, secret_sha256, host, created_at, expires) "
                      "VALUES (?,?,?,?,?)", (token_id, sha256_hex(secret), host, now, now + ttl))
            self.audit(actor, "token-issued", {"host": host, "token_id": token_id,
                                               "expires": now + ttl})
        return now + ttl

    def enroll(self, token_id: str, secret: str, host: str, issue,
               key_sha256: str = "") -> object:
        """Redeem a token and record the host's certificate in one transaction.

        issue() -> x509.Certificate is called only once the token checked out; TokenRefused
        carries the reason (which the server audits but does not tell the client).
        key_sha256 names the requested public key: a retry of a redemption whose answer was
        lost (same token, host and key) gets the same certificate again (reanswer)."""
        now = time.time()
        with self.tx() as c:
            row = c.execute("SELECT * FROM tokens WHERE id=?", (token_id,)).fetchone()
            if row is None or not hmac.compare_digest(row["secret_sha256"], sha256_hex(secret)):
                raise TokenRefused("unknown token")
            if row["used_at"] is not None:
                h = c.execute("SELECT state, cert_serial FROM hosts WHERE name=?",
                              (host,)).fetchone()
                again = reanswer(dict(row), host, key_sha256, dict(h) if h else None)
                if again is not None:
                    return x509.load_pem_x509_certificate(again.encode())
                raise TokenRefused(f"token {token_id} was already used")
            if row["expires"] < now:
                raise TokenRefused(f"token {token_id} expired")
            if row["host"] != host:
                raise TokenRefused(f"token {token_id} was issued for host {row['host']}")
            cert = issue()
            c.execute("UPDATE tokens SET used_at=?, key_sha256=?, cert_pem=?, serial=? "
                      "WHERE id=?", (now, key_sha256, pem_of(cert), str(cert.serial_number),
                                     token_id))
            c.execute("INSERT INTO hosts (name, state, cert_serial, cert_expires, enrolled_at) "
                      "VALUES (?, 'enrolled', ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                      "state='enrolled', cert_serial=excluded.cert_serial, "
                      "cert_expires=excluded.cert_expires, enrolled_at=excluded.enrolled_at, "
                      "revoked_at=NULL",
                      (host, str(cert.serial_number), not_after(cert).timestamp(), now))
            # a re-enrolled host reports afresh: an old report must not speak for a new key
            c.execute("DELETE FROM capability_reports WHERE host=?", (host,))
            self._bump(c)
            self.audit(f"host:{host}", "enrolled", {"host": host, "token_id": token_id,
                                                    "serial": str(cert.serial_number)})
        return cert

    def host_cert_ok(self, host: str, serial: int) -> bool:
        row = self.conn().execute("SELECT state, cert_serial FROM hosts WHERE name=?",
                                  (host,)).fetchone()
        return bool(row) and row["state"] == "enrolled" and row["cert_serial"] == str(serial)

    def revoke_host(self, host: str, actor: str) -> bool:
        """True if it was enrolled; idempotent."""
        with self.tx() as c:
            row = c.execute("SELECT state FROM hosts WHERE name=?", (host,)).fetchone()
            if row is None:
                raise StoreError(f"host {host} was never enrolled")
            if row["state"] == "revoked":
                return False
            c.execute("UPDATE hosts SET state='revoked', revoked_at=? WHERE name=?",
                      (time.time(), host))
            self._bump(c)
            self.audit(actor, "host-revoked", {"host": host})
            return True

    def hosts(self) -> list[dict]:
        rows = self.conn().execute(
            "SELECT h.*, r.reported_at, b.generation FROM hosts h "
            "LEFT JOIN capability_reports r ON r.host=h.name "
            "LEFT JOIN bundle_state b ON b.host=h.name ORDER BY h.name").fetchall()
        return [{"host": r["name"], "state": r["state"], "cert_serial": r["cert_serial"],
                 "cert_expires": r["cert_expires"], "enrolled_at": r["enrolled_at"],
                 "revoked_at": r["revoked_at"], "reported_at": r["reported_at"],
                 "generation": r["generation"] or 0} for r in rows]

    def enrolled_hosts(self) -> set[str]:
        return {r[0] for r in self.conn().execute(
            "SELECT name FROM hosts WHERE state='enrolled'")}

    # -- admins ------------------------------------------------------------------------------
    def add_admin(self, name: str, serial: int, actor: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO admins (name, cert_serial, created_at) VALUES (?,?,?)",
                      (name, str(serial), time.time()))
            self.audit(actor, "admin-cert-issued", {"admin": name, "serial": str(serial)})

    def revoke_admin(self, name: str, actor: str) -> int:
        """Revoke every certificate of this admin; returns how many were still valid."""
        with self.tx() as c:
            if not c.execute("SELECT 1 FROM admins WHERE name=?", (name,)).fetchone():
                raise StoreError(f"no admin certificate was issued for {name}")
            n = c.execute("UPDATE admins SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
                          (time.time(), name)).rowcount
            if n:
                self.audit(actor, "admin-revoked", {"admin": name, "certificates": n})
            return n

    def admin_cert_ok(self, name: str, serial: int) -> bool:
        row = self.conn().execute("SELECT name, revoked_at FROM admins WHERE cert_serial=?",
                                  (str(serial),)).fetchone()
        return bool(row) and row["name"] == name and row["revoked_at"] is None

    # -- policy ------------------------------------------------------------------------------
    def add_policy(self, yaml_text: str, name: str, actor: str) -> tuple[int, bool]:
        """(version, created); pushing the text in force again is a no-op (idempotent)."""
        with self.tx() as c:
            cur = self.policy()
            if cur and cur[1] == yaml_text:
                return cur[0], False
            v = c.execute("INSERT INTO policy_versions (yaml, name, pushed_at, pushed_by) "
                          "VALUES (?,?,?,?)", (yaml_text, name, time.time(), actor)).lastrowid
            self._bump(c)
            self.audit(actor, "policy-pushed", {"version": v, "name": name,
                                                "sha256": sha256_hex(yaml_text)})
            return v, True

    def policy(self) -> tuple[int, str, str] | None:
        r = self.conn().execute("SELECT version, yaml, name FROM policy_versions "
                                "ORDER BY version DESC LIMIT 1").fetchone()
        return (r[0], r[1], r[2]) if r else None

    # -- capability reports ------------------------------------------------------------------
    def put_report(self, host: str, report: dict) -> bool:
        """True if it differs from the stored one."""
        text = canonical(report).decode()
        with self.tx() as c:
            row = c.execute("SELECT report FROM capability_reports WHERE host=?",
                            (host,)).fetchone()
            if row and row[0] == text:
                return False
            c.execute("INSERT INTO capability_reports (host, report, reported_at) VALUES (?,?,?)"
                      " ON CONFLICT(host) DO UPDATE SET report=excluded.report, "
                      "reported_at=excluded.reported_at", (host, text, time.time()))
            self._bump(c)
            self.audit(f"host:{host}", "capabilities-reported",
                       {"host": host, "functional": report.get("functional", []),
                        "properties": {s.get("property"): s.get("assurance")
                                       for s in report.get("security", [])}})
            return True

    def reports(self) -> dict[str, dict]:
        return {r[0]: json.loads(r[1]) for r in
                self.conn().execute("SELECT host, report FROM capability_reports")}

    # -- bundles -----------------------------------------------------------------------------
    def bundle_states(self) -> dict[str, tuple[int, str]]:
        return {r[0]: (r[1], r[2]) for r in
                self.conn().execute("SELECT host, generation, content_sha256 FROM bundle_state")}

    def set_bundle_states(self, changes: dict[str, tuple[int, str]]) -> None:
        with self.tx() as c:
            c.executemany("INSERT INTO bundle_state (host, generation, content_sha256) "
                          "VALUES (?,?,?) ON CONFLICT(host) DO UPDATE SET "
                          "generation=excluded.generation, content_sha256=excluded.content_sha256",
                          [(h, g, s) for h, (g, s) in changes.items()])

    # -- evidence rules ----------------------------------------------------------------------
    def allow_image(self, digest: str, properties: dict, actor: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO images (digest, properties, added_at) VALUES (?,?,?) "
                      "ON CONFLICT(digest) DO UPDATE SET properties=excluded.properties",
                      (digest, json.dumps(properties, sort_keys=True), time.time()))
            self._bump(c)
            self.audit(actor, "image-allowed", {"digest": digest, "properties": properties})

    def add_vm_cert(self, serial: int, name: str, vm_uuid: str, properties: dict,
                    actor: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO vm_certs (serial, name, uuid, properties, issued_at) "
                      "VALUES (?,?,?,?,?)", (str(serial), name, vm_uuid,
                                             json.dumps(properties, sort_keys=True), time.time()))
            self.audit(actor, "vm-cert-issued", {"serial": str(serial), "name": name,
                                                 "vm": vm_uuid, "properties": properties})

    def revoke_vm(self, vm_uuid: str, actor: str) -> bool:
        with self.tx() as c:
            if c.execute("SELECT 1 FROM revoked_vms WHERE uuid=?", (vm_uuid,)).fetchone():
                return False
            c.execute("INSERT INTO revoked_vms (uuid, revoked_at) VALUES (?,?)",
                      (vm_uuid, time.time()))
            self._bump(c)
            self.audit(actor, "vm-revoked", {"vm": vm_uuid})
            return True

    def revoke_vm_cert(self, serial: int, actor: str) -> bool:
        with self.tx() as c:
            row = c.execute("SELECT revoked_at FROM vm_certs WHERE serial=?",
                            (str(serial),)).fetchone()
            if row is None:
                raise StoreError(f"no VM certificate with serial {serial} was issued here")
            if row[0] is not None:
                return False
            c.execute("UPDATE vm_certs SET revoked_at=? WHERE serial=?", (time.time(), str(serial)))
            self._bump(c)
            self.audit(actor, "vm-cert-revoked", {"serial": str(serial)})
            return True

    def evidence(self) -> dict:
        c = self.conn()
        return {"images": {r[0]: json.loads(r[1]) for r in
                           c.execute("SELECT digest, properties FROM images ORDER BY digest")},
                "revoked_vm_certs": sorted(int(r[0]) for r in c.execute(
                    "SELECT serial FROM vm_certs WHERE revoked_at IS NOT NULL")),
                "revoked_vms": sorted(r[0] for r in c.execute("SELECT uuid FROM revoked_vms"))}

    # -- admissions (fed by proxies' audit events) ---------------------------------------------
    def record_events(self, host: str, events: list[dict]) -> int:
        """Store proxy audit events (idempotent on their id); returns how many were new."""
        new = 0
        with self.tx() as c:
            for e in events:
                detail = {k: e.get(k) for k in ("vm", "name", "tvd", "ifname", "reason")
                          if e.get(k) is not None}
                detail["host"] = host
                if not self.audit(f"host:{host}", e["event"], detail, e["id"], e.get("ts")):
                    continue
                new += 1
                if e.get("vm") and e.get("tvd"):
                    c.execute("INSERT INTO admissions (host, vm, tvd, ifname, name, state, "
                              "reason, ts) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(host, vm, tvd, "
                              "ifname) DO UPDATE SET state=excluded.state, name=excluded.name, "
                              "reason=excluded.reason, ts=excluded.ts",
                              (host, e["vm"], e["tvd"], e.get("ifname") or "", e.get("name"),
                               e["event"], e.get("reason"), e.get("ts") or time.time()))
        return new

    def admissions(self) -> list[dict]:
        return [dict(r) for r in self.conn().execute(
            "SELECT host, vm, name, tvd, ifname, state, reason, ts FROM admissions "
            "ORDER BY host, tvd, vm, ifname")]


def chain_hash(prev: str, event_id, ts, actor, event, detail_text) -> str:
    body = canonical([prev, event_id, ts, actor, event, detail_text])
    return hashlib.sha256(body).hexdigest()


def pem_of(cert) -> str:
    try:
        return cert.public_bytes(serialization.Encoding.PEM).decode()
    except AttributeError:       # a test's stand-in certificate: nothing to re-answer with
        return ""


def reanswer(token_row: dict, host: str, key_sha256: str, host_row: dict | None) -> str | None:
    """The certificate PEM a used token was redeemed for, if this request is a retry of that
    redemption: same host, same public key, and the host still holds that certificate
    (revoked or re-enrolled since: refused like any used token)."""
    if (not key_sha256 or token_row.get("key_sha256") != key_sha256
            or token_row["host"] != host or not token_row.get("cert_pem")):
        return None
    if not host_row or host_row["state"] != "enrolled" or \
            host_row["cert_serial"] != token_row.get("serial"):
        return None
    return token_row["cert_pem"]


def _statements(script: str) -> list[str]:
    """Split a migration into statements (CREATE TRIGGER bodies contain ';')."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
