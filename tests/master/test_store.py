"""The master's SQLite store: migrations, durability settings, append-only audit, tokens."""
import os
import sqlite3
import time

import pytest

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


def test_audit_event_ids_are_idempotent(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    ev = [{"id": "e-1", "event": "admitted", "vm": "u1", "tvd": "alpha", "ifname": "vif1.0"}]
    assert s.record_events("h1", ev) == 1
    assert s.record_events("h1", ev) == 0
    assert len(s.audit_events()) == 1
    assert s.admissions()[0]["state"] == "admitted"
    s.record_events("h1", [dict(ev[0], id="e-2", event="detached")])
    assert [a["state"] for a in s.admissions()] == ["detached"]


def test_tokens_store_only_a_hash_and_refuse_replay_expiry_and_foreign_hosts(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    s.add_token("id1", "s3cret-value", "h1", 3600, "t")
    s.add_token("old", "s3cret-old", "h1", -1, "t")
    raw = open(tmp_path / "m.db", "rb").read() + open(str(tmp_path / "m.db") + "-wal", "rb").read()
    assert b"s3cret-value" not in raw
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


def test_a_failed_issue_leaves_the_token_unused(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    s.add_token("id1", "sec", "h1", 3600, "t")

    def boom():
        raise ValueError("bad csr")
    with pytest.raises(ValueError):
        s.enroll("id1", "sec", "h1", boom)
    s.enroll("id1", "sec", "h1", lambda: FakeCert)     # still redeemable


def test_revocation_and_everything_else_survive_reopening(tmp_path):
    path = str(tmp_path / "m.db")
    s = Store(path)
    s.add_token("id1", "sec", "h1", 3600, "t")
    s.enroll("id1", "sec", "h1", lambda: FakeCert)
    s.add_policy("version: 1\n", "p.yaml", "t")
    s.set_bundle_states({"h1": (4, "abc")})
    assert s.revoke_host("h1", "t") is True
    assert s.revoke_host("h1", "t") is False          # idempotent
    n = len(s.audit_events())
    s.conn().close()
    s2 = Store(path)
    assert not s2.host_cert_ok("h1", FakeCert.serial_number)
    assert s2.hosts()[0]["state"] == "revoked"
    assert s2.bundle_states() == {"h1": (4, "abc")}
    assert s2.policy()[0] == 1 and len(s2.audit_events()) == n
    assert s2.add_policy("version: 1\n", "p.yaml", "t") == (1, False)


def test_bundle_inputs_bump_the_epoch_other_writes_do_not(tmp_path):
    s = Store(str(tmp_path / "m.db"))
    e0 = s.epoch()
    s.audit("t", "x")
    assert s.epoch() == e0
    s.allow_image("sha256:" + "a" * 64, {"web": "trust"}, "t")
    assert s.epoch() == e0 + 1
