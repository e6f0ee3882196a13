"""`tvd-master` with --store: init on etcd (replicas from one CA), the commands that use the
store, `audit --verify` on both backends, and `migrate` SQLite -> etcd."""
import re

import pytest

from xen_tvd.master import ca as camod
from xen_tvd.master import stores

from tests.master.master_helpers import POLICY
from tests.master.master_helpers import cli


@pytest.fixture(params=["sqlite", "etcd"])
def site_dir(request, tmp_path):
    d = str(tmp_path / "m")
    args = []
    if request.param == "etcd":
        args = ["--store", request.getfixturevalue("etcd_one").url(f"cli-{tmp_path.name}")]
    out = cli(d, *args, "init", "--url", "https://127.0.0.1:8443").stdout
    assert f"store {args[1] if args else 'sqlite'}" in out
    return d


def test_commands_use_the_store_init_chose_and_audit_verify_checks_it(site_dir, tmp_path):
    d = site_dir
    (tmp_path / "p.yaml").write_text(POLICY)
    cli(d, "policy", "push", str(tmp_path / "p.yaml"))
    assert re.match(r"tvd1\.", cli(d, "token", "h1").stdout)
    cli(d, "admin-cert", "alice", "--out", str(tmp_path / "alice"))
    r = cli(d, "audit", "--verify")
    assert r.stdout.strip() == "3 audit records, hash chain intact"
    events = cli(d, "audit").stdout
    assert "policy-pushed" in events and "token-issued" in events
    assert cli(d, "revoke", "nohost", check=False).returncode == 1


def test_a_replica_joins_with_the_same_ca_and_a_foreign_ca_is_refused(etcd_one, tmp_path):
    url = etcd_one.url(f"join-{tmp_path.name}")
    a, b, c = (str(tmp_path / n) for n in "abc")
    cli(a, "--store", url, "init", "--url", "https://127.0.0.1:8443")
    cli(b, "--store", url, "init", "--url", "https://127.0.0.1:8444", "--ca-from", a)
    assert camod.ca_pin(camod.Ca.load(a).cert) == camod.ca_pin(camod.Ca.load(b).cert)
    assert stores.open_store(b).meta()["url"] == "https://127.0.0.1:8443"   # bundles' URL
    r = cli(c, "--store", url, "init", "--url", "https://127.0.0.1:8445", check=False)
    assert r.returncode == 1 and "CA pin" in r.stderr


def test_migrate_moves_a_sqlite_master_to_etcd(etcd_one, tmp_path):
    d = str(tmp_path / "m")
    cli(d, "init", "--url", "https://127.0.0.1:8443")
    (tmp_path / "p.yaml").write_text(POLICY)
    cli(d, "policy", "push", str(tmp_path / "p.yaml"))
    cli(d, "token", "h1")
    before = cli(d, "audit", "--json").stdout
    url = etcd_one.url(f"migrate-{tmp_path.name}")
    assert cli(d, "migrate", "--to", "sqlite", check=False).returncode == 2
    out = cli(d, "migrate", "--to", url).stdout
    assert "2 audit records" in out
    assert stores.spec_of(d) == url
    assert cli(d, "audit", "--json").stdout == before
    assert cli(d, "audit", "--verify").stdout.strip() == "2 audit records, hash chain intact"
    assert cli(d, "migrate", "--to", url, check=False).returncode == 1      # already on etcd
