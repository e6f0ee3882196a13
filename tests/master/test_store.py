"""The master's stores: SQLite (migrations, durability settings, triggers) and, where the
behaviour is the same, both SQLite and etcd (the open_store fixture): append-only hash-chained
audit, idempotent event ids, tokens, retry-safe enrolment, reopening."""
import os
import sqlite3
import time

import pytest

from xen_tvd.master import ca as camod
from xen_tvd.master import etcd_kv
from xen_tvd.master.store import SCHEMA_VERSION, Store, StoreError, TokenRefused


class FakeCert:
    serial_number = 12345678901234567890123456789012345678901234567   # > 64 bits

    class not_valid_after_utc:
        @staticmethod
        def timestamp():
            return time.time() + 86400


def test_new_database_is_migrated_from_version_0_with_wal_and_full_sync(tmp_path):
    path = str(tmp_path / "m.db")
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()  # version 0
    s = Store(path)
    assert s.schema_version() == SCHEMA_VERSION
    c = s.conn()
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"hosts", "tokens", "audit", "policy_versions", "capability_reports", "images",
            "revoked_vms", "vm_certs", "admissions", "bundle_state", "admins"} <= tables


def test_fresh_database_file_is_private(tmp_path):
    Store(str(tmp_path / "m.db"))
    assert os.stat(tmp_path / "m.db").st_mode & 0o077 == 0


def test_a_database_from_a_newer_master_is_refused(tmp_path):
    path = str(tmp_path / "m.db")
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    c.close()
    with pytest.raises(StoreError, match="newer than this tvd-master"):
        Store(path)


def test_audit_rows_cannot_be_updated_or_deleted(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    s.audit("t", "x", {"a": 1})
    c = s.conn()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        c.execute("UPDATE audit SET event='y'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        c.execute("DELETE FROM audit")
    assert s.audit_events()[0]["event"] == "x"


def test_hash_chain_detects_an_edit_made_around_the_triggers(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    for i in range(3):
        s.audit("t", f"e{i}", {"i": i})
    assert s.verify_audit_chain() == (True, "3 audit records, hash chain intact")
    c = s.conn()
    c.execute("DROP TRIGGER audit_no_update")
    c.execute("UPDATE audit SET detail='{\"i\": 9}' WHERE seq=2")
    ok, msg = s.verify_audit_chain()
    assert not ok and "record 2" in msg


def test_audit_event_ids_are_idempotent(open_store):
    s = open_store()
    ev = [{"id": "e-1", "event": "admitted", "vm": "u1", "tvd": "alpha", "ifname": "vif1.0"}]
    assert s.record_events("h1", ev) == 1
    assert s.record_events("h1", ev) == 0
    assert len(s.audit_events()) == 1
    assert s.admissions()[0]["state"] == "admitted"
    s.record_events("h1", [dict(ev[0], id="e-2", event="detached")])
    assert [a["state"] for a in s.admissions()] == ["detached"]


def test_sqlite_tokens_store_only_a_hash(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    s.add_token("id1", "s3cret-value", "h1", 3600, "t")
    raw = open(tmp_path / "m.db", "rb").read() + open(str(tmp_path / "m.db") + "-wal", "rb").read()
    assert b"s3cret-value" not in raw


def test_tokens_refuse_replay_expiry_and_foreign_hosts(open_store):
    s = open_store()
    s.add_token("id1", "s3cret-value", "h1", 3600, "t")
    s.add_token("old", "s3cret-old", "h1", -1, "t")
    with pytest.raises(TokenRefused, match="unknown"):
        s.enroll("id1", "wrong", "h1", lambda: FakeCert)
    with pytest.raises(TokenRefused, match="issued for host h1"):
        s.enroll("id1", "s3cret-value", "h2", lambda: FakeCert)
    with pytest.raises(TokenRefused, match="expired"):
        s.enroll("old", "s3cret-old", "h1", lambda: FakeCert)
    s.enroll("id1", "s3cret-value", "h1", lambda: FakeCert)
    assert s.host_cert_ok("h1", FakeCert.serial_number)
    with pytest.raises(TokenRefused, match="already used"):
        s.enroll("id1", "s3cret-value", "h1", lambda: FakeCert)


def test_a_failed_issue_leaves_the_token_unused(open_store):
    s = open_store()
    s.add_token("id1", "sec", "h1", 3600, "t")

    def boom():
        raise ValueError("bad csr")
    with pytest.raises(ValueError):
        s.enroll("id1", "sec", "h1", boom)
    s.enroll("id1", "sec", "h1", lambda: FakeCert)     # still redeemable


def test_revocation_and_everything_else_survive_reopening(open_store):
    s = open_store()
    s.add_token("id1", "sec", "h1", 3600, "t")
    s.enroll("id1", "sec", "h1", lambda: FakeCert)
    s.add_policy("version: 1\n", "p.yaml", "t")
    s.set_bundle_states({"h1": (4, "abc")})
    assert s.revoke_host("h1", "t") is True
    assert s.revoke_host("h1", "t") is False          # idempotent
    n = len(s.audit_events())
    s2 = open_store()
    assert not s2.host_cert_ok("h1", FakeCert.serial_number)
    assert s2.hosts()[0]["state"] == "revoked"
    assert s2.bundle_states() == {"h1": (4, "abc")}
    assert s2.policy()[0] == 1 and len(s2.audit_events()) == n
    assert s2.add_policy("version: 1\n", "p.yaml", "t") == (1, False)


def test_bundle_inputs_bump_the_epoch_other_writes_do_not(open_store):
    s = open_store()
    e0 = s.epoch()
    s.audit("t", "x")
    assert s.epoch() == e0
    s.allow_image("sha256:" + "a" * 64, {"web": "trust"}, "t")
    assert s.epoch() > e0          # SQLite counts; etcd uses the key's mod revision


def test_a_retried_enrolment_gets_the_same_certificate_a_different_key_does_not(
        open_store, the_ca):
    """The answer to an enrolment can be lost with the replica that gave it: the proxy asks
    again (maybe another replica) with the same token and key and must get that certificate,
    not a refusal; another key with the same token is a replay and refused."""
    s = open_store()
    s.add_token("id1", "sec", "h1", 3600, "t")
    key, other = camod.new_ec_key(), camod.new_ec_key()
    kid = _key_id(key)
    first = s.enroll("id1", "sec", "h1", lambda: the_ca.issue_client(key.public_key(), "h1",
                                                                     camod.HOST_OU), kid)
    again = s.enroll("id1", "sec", "h1", lambda: pytest.fail("issued twice"), kid)
    assert again.serial_number == first.serial_number
    with pytest.raises(TokenRefused, match="already used"):
        s.enroll("id1", "sec", "h1", lambda: pytest.fail("issued"), _key_id(other))
    assert [e["event"] for e in s.audit_events()].count("enrolled") == 1
    s.revoke_host("h1", "t")
    with pytest.raises(TokenRefused, match="already used"):     # revoked: no re-answer
        s.enroll("id1", "sec", "h1", lambda: pytest.fail("issued"), kid)


def _key_id(key) -> str:
    import hashlib
    from cryptography.hazmat.primitives import serialization
    return hashlib.sha256(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def test_concurrent_writers_keep_one_chain_and_each_event_once(open_store):
    """Writers racing (on etcd: separate store objects, as separate replicas are) append
    every event exactly once, with contiguous sequence numbers and an intact chain, even when
    the same events are posted to several of them at once (a spool draining to two replicas)."""
    import threading
    stores = [open_store() for _ in range(3)]
    events = [{"id": f"e-{i}", "event": "admitted", "vm": f"u{i}", "tvd": "alpha",
               "ifname": f"vif{i}.0"} for i in range(60)]
    counts = []

    def post(s, part):
        counts.append(sum(s.record_events("h1", [e]) for e in part))
    threads = [threading.Thread(target=post, args=(stores[k % 3], events[k::2]))
               for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 60
    log = stores[0].audit_events(limit=10000)
    assert sorted(e["id"] for e in log) == sorted(e["id"] for e in events)
    assert [e["seq"] for e in log] == list(range(1, 61))
    assert stores[1].verify_audit_chain() == (True, "60 audit records, hash chain intact")


def test_etcd_audit_chain_detects_an_edited_or_removed_record(tmp_path, etcd_one):
    from xen_tvd.master.store_etcd import EtcdStore
    s = EtcdStore(etcd_one.url(f"tamper-{tmp_path.name}"), create=True, meta={"url": "u"})
    for i in range(3):
        s.audit("t", f"e{i}", {"i": i})
    assert s.verify_audit_chain()[0]
    key = s.k("audit", "r", "000000000002")
    value, _ = s.kv.get(key)
    edited = value.replace(b'\\"i\\": 1', b'\\"i\\": 9')
    assert edited != value
    s.kv.txn([], [etcd_kv.op_put(key, edited)])
    ok, msg = s.verify_audit_chain()
    assert not ok and "record 2" in msg
    s.kv.txn([], [etcd_kv.op_put(key, value)])
    s.kv.txn([], [etcd_kv.op_delete(s.k("audit", "r", "000000000003"))])
    ok, msg = s.verify_audit_chain()
    assert not ok and "ends at 2" in msg


def test_migration_from_sqlite_keeps_the_chain_the_generations_and_the_state(
        tmp_path, etcd_one):
    from xen_tvd.master import stores
    from xen_tvd.master.store_etcd import EtcdStore
    src = Store(str(tmp_path / "m.db"))
    src.add_token("id1", "sec", "h1", 3600, "t")
    src.enroll("id1", "sec", "h1", lambda: FakeCert)
    src.add_policy("version: 1\n", "p.yaml", "t")
    src.set_bundle_states({"h1": (7, "abc")})
    src.record_events("h1", [{"id": "e-1", "event": "admitted", "vm": "u1", "tvd": "alpha"}])
    src.revoke_vm("11111111-2222-3333-4444-555555555555", "t")
    dst = EtcdStore(etcd_one.url(f"mig-{tmp_path.name}"), create=True, meta={"url": "u"})
    counts = stores.migrate(src, dst)
    assert counts["audit"] == len(src.audit_events())
    assert dst.verify_audit_chain() == src.verify_audit_chain()
    assert dst.audit_events(limit=10000) == src.audit_events(limit=10000)
    assert dst.bundle_states() == {"h1": (7, "abc")}
    assert dst.host_cert_ok("h1", FakeCert.serial_number)
    assert dst.policy() == src.policy() and dst.evidence() == src.evidence()
    assert dst.admissions() == src.admissions()
    assert dst.record_events("h1", [{"id": "e-1", "event": "admitted"}]) == 0  # ids carried
    dst.audit("t", "after-migration")
    assert dst.verify_audit_chain()[0]
    with pytest.raises(StoreError, match="already holds an audit log"):
        stores.migrate(src, dst)


def test_a_large_audit_post_is_recorded_whole_and_once(open_store):
    """1,000 events in one post (a spool drained after a long outage): on etcd that is more
    than one transaction may hold (etcd's limit is 128 operations), so it goes in several,
    each idempotent on the event ids; posted again, nothing is recorded twice."""
    s = open_store()
    events = [{"id": f"big-{i}", "event": "admitted", "vm": f"u{i}", "tvd": "alpha",
               "ifname": "vif1.0"} for i in range(1000)]
    assert s.record_events("h1", events) == 1000
    assert s.record_events("h1", events) == 0
    assert len(s.audit_events(limit=5000)) == 1000
    assert s.verify_audit_chain() == (True, "1000 audit records, hash chain intact")


def test_etcd_over_tls_with_a_client_certificate_and_nothing_without_one(tmp_path):
    """etcds://: the store talks TLS to etcd with the replica's client certificate
    (DIR/etcd-ca.pem, etcd-client.pem, etcd-client.key); a client without those files is
    refused before it connects, and etcd refuses a connection without a certificate."""
    from tests.master import etcd_helpers
    from xen_tvd.master import stores
    from xen_tvd.master.store import StoreUnavailable
    from xen_tvd.master.store_etcd import EtcdStore
    if not etcd_helpers.available():
        pytest.skip(etcd_helpers.SKIP_REASON)
    cluster = etcd_helpers.EtcdCluster(1, tls=True).start()
    try:
        d = os.path.dirname(cluster.tls["client"])      # the files a master directory holds
        s = stores.open_store(d, cluster.url("tls"), create=True, meta={"url": "u"})
        s.audit("t", "over-tls")
        assert s.verify_audit_chain() == (True, "1 audit records, hash chain intact")
        with pytest.raises(StoreError, match="etcd-client.pem"):
            EtcdStore(cluster.url("tls"), tls_dir=str(tmp_path))
        with pytest.raises(StoreUnavailable):       # plain HTTP to the TLS port
            etcd_kv.Kv(s.kv.endpoints).get(b"tls/meta")
        no_cert = etcd_kv.Kv(s.kv.endpoints)
        no_cert.tls = (cluster.tls["ca"], None, None)   # TLS, but no client certificate
        with pytest.raises(StoreUnavailable):
            no_cert.get(b"tls/meta")
    finally:
        cluster.close()
