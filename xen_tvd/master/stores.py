"""Which store a master directory uses, and the one-way migration SQLite -> etcd.

`tvd-master init --store etcd://...` writes the store URL to DIR/store, so every later command
run with that --dir (token, policy push, audit, serve) uses it; without the file the store is
DIR/master.db (SQLite, the embedded default). Both backends offer the same operations
(store.Store, store_etcd.EtcdStore).
"""
from __future__ import annotations

import json
import os

from xen_tvd.master.store import GENESIS, Store, StoreError

STORE_FILE = "store"
SQLITE = "sqlite"


def spec_of(directory: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    try:
        with open(os.path.join(directory, STORE_FILE)) as f:
            return f.read().strip() or SQLITE
    except FileNotFoundError:
        return SQLITE


def open_store(directory: str, spec: str | None = None, create: bool = False,
               meta: dict | None = None):
    spec = spec_of(directory, spec)
    if spec == SQLITE:
        return Store(os.path.join(directory, "master.db"))
    if spec.startswith(("etcd://", "etcds://")):
        from xen_tvd.master.store_etcd import EtcdStore
        return EtcdStore(spec, create=create, meta=meta, tls_dir=directory)
    raise StoreError(f"store {spec!r}: use 'sqlite' or etcd[s]://HOST:PORT[,HOST:PORT...]"
                     "[/PREFIX]")


def migrate(src: Store, dst) -> dict[str, int]:
    """Copy everything from a SQLite store into an empty etcd store, the audit log record by
    record (same sequence numbers and hashes, so the chain still verifies and stays the same
    chain) and the bundle generations (proxies' rollback protection stays valid). Idempotent
    until the last step, which writes the chain head; a store that has one is refused."""
    from xen_tvd.master import etcd_kv
    if dst.kv.get(dst.k("audit", "head"))[0] is not None:
        raise StoreError(f"{dst.url} already holds an audit log; migrate into an empty prefix")
    ok, msg = src.verify_audit_chain()
    if not ok:
        raise StoreError(f"the SQLite audit log does not verify ({msg}); nothing migrated")
    c = src.conn()
    counts: dict[str, int] = {}
    puts: list[tuple[bytes, object]] = []

    def put(key: bytes, obj) -> None:
        puts.append((key, obj))

    for r in c.execute("SELECT * FROM hosts"):
        put(dst.k("hosts", r["name"]), {k: r[k] for k in ("state", "cert_serial", "cert_expires",
                                                          "enrolled_at", "revoked_at")})
    for r in c.execute("SELECT * FROM tokens"):
        put(dst.k("tokens", r["id"]), {k: r[k] for k in (
            "secret_sha256", "host", "created_at", "expires", "used_at", "key_sha256",
            "cert_pem", "serial")})
    for r in c.execute("SELECT * FROM admins"):
        put(dst.k("admins", r["cert_serial"]), {"name": r["name"], "created_at": r["created_at"],
                                                "revoked_at": r["revoked_at"]})
    cur = None
    for r in c.execute("SELECT * FROM policy_versions ORDER BY version"):
        cur = {k: r[k] for k in ("version", "yaml", "name", "pushed_at", "pushed_by")}
        put(dst.k("policy", "v", f"{r['version']:012d}"), cur)
    if cur:
        put(dst.k("policy", "current"), cur)
    for r in c.execute("SELECT * FROM capability_reports"):
        put(dst.k("reports", r["host"]), {"report": r["report"], "reported_at": r["reported_at"]})
    for r in c.execute("SELECT * FROM bundle_state"):
        put(dst.k("bundle_state", r["host"]), [r["generation"], r["content_sha256"]])
    for r in c.execute("SELECT * FROM images"):
        put(dst.k("images", r["digest"]), {"properties": json.loads(r["properties"]),
                                           "added_at": r["added_at"]})
    for r in c.execute("SELECT * FROM revoked_vms"):
        put(dst.k("revoked_vms", r["uuid"]), {"revoked_at": r["revoked_at"]})
    for r in c.execute("SELECT * FROM vm_certs"):
        put(dst.k("vm_certs", r["serial"]), {"name": r["name"], "uuid": r["uuid"],
                                            "properties": json.loads(r["properties"]),
                                            "issued_at": r["issued_at"],
                                            "revoked_at": r["revoked_at"]})
    for r in c.execute("SELECT * FROM admissions"):
        key = json.dumps([r["host"], r["vm"], r["tvd"], r["ifname"]])
        put(dst.k("admissions", key), {k: r[k] for k in ("host", "vm", "name", "tvd", "ifname",
                                                         "state", "reason", "ts")})
    counts["rows"] = len(puts)
    head = {"seq": 0, "hash": GENESIS}
    n = 0
    for r in c.execute("SELECT * FROM audit ORDER BY seq"):
        put(dst.k("audit", "r", f"{r['seq']:012d}"),
            {k: r[k] for k in ("seq", "event_id", "ts", "actor", "event", "detail",
                               "prev_hash", "hash")})
        if r["event_id"] is not None:
            puts.append((dst.k("audit", "id", r["event_id"]), r["seq"]))
        head = {"seq": r["seq"], "hash": r["hash"]}
        n += 1
    counts["audit"] = n
    put(dst.k("epoch"), src.epoch() + 1)
    batch, size = [], 0
    for key, obj in puts:
        value = json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()
        if batch and (size + len(value) * 2 > etcd_kv.MAX_TXN_BYTES // 2 or len(batch) >= 100):
            dst.kv.txn([], batch)
            batch, size = [], 0
        batch.append(etcd_kv.op_put(key, value))
        size += len(value) * 2 + len(key)
    if batch:
        dst.kv.txn([], batch)
    ok, _ = dst.kv.txn([etcd_kv.cmp_create(dst.k("audit", "head"), 0)],
                       [etcd_kv.op_put(dst.k("audit", "head"), json.dumps(head).encode())])
    if not ok:
        raise StoreError(f"{dst.url} got an audit log while migrating; it is not the copy")
    return counts
