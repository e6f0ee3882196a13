"""`tvdctl master …` against a real master over TLS."""
import os
import re

import pytest

from xen_tvd.cli.tvdctl import main as tvdctl
from xen_tvd.master import server
from xen_tvd.master.cli import main as master_cli
from xen_tvd.master.store import Store

from tests.master.master_helpers import POLICY, REPORT, Enrolled, init_dir


@pytest.fixture
def env(tmp_path, monkeypatch):
    d = str(tmp_path / "m")
    url = init_dir(d)
    Store(os.path.join(d, "master.db")).add_policy(POLICY, "p.yaml", "test")
    m, srv, _ = server.start_in_thread(d, "127.0.0.1", int(url.rsplit(":", 1)[1]))
    assert master_cli(["--dir", d, "admin-cert", "bob", "--out", str(tmp_path / "bob")]) == 0
    monkeypatch.setenv("TVD_MASTER_URL", url)
    monkeypatch.setenv("TVD_MASTER_CA", os.path.join(d, "ca.pem"))
    monkeypatch.setenv("TVD_MASTER_CERT", str(tmp_path / "bob.pem"))
    monkeypatch.setenv("TVD_MASTER_KEY", str(tmp_path / "bob.key"))
    yield d, url, tmp_path
    server.stop(srv, m)


def test_lists_push_and_revocations(env, capsys):
    d, url, tmp = env
    h1 = Enrolled(d, url, "h1", str(tmp / "h1"))
    h1.client.put_capabilities("h1", REPORT)
    h1.client.bundle("h1", 0, 10)
    capsys.readouterr()
    assert tvdctl(["master", "hosts"]) == 0
    assert re.search(r"^h1\s+enrolled", capsys.readouterr().out, re.M)
    assert tvdctl(["master", "tvds"]) == 0
    out = capsys.readouterr().out
    assert f"{url}#alpha" in out and "hosts h1" in out
    bad = tmp / "bad.yaml"
    bad.write_text(POLICY.replace("vlan: 200", "vlan: 99999"))
    assert tvdctl(["master", "push", str(bad)]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"^{re.escape(str(bad))}:\d+:\d+: error:", err, re.M)
    good = tmp / "good.yaml"
    good.write_text(POLICY + "\n# comment\n")
    assert tvdctl(["master", "push", str(good)]) == 0
    assert "policy version 2 pushed" in capsys.readouterr().out
    assert tvdctl(["master", "revoke-vm", "00000000-0000-4000-8000-000000000007"]) == 0
    assert tvdctl(["master", "revoke-host", "h1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "host h1 revoked"
    assert tvdctl(["master", "revoke-host", "h1"]) == 0
    assert "already revoked" in capsys.readouterr().out
    assert tvdctl(["master", "revoke-host", "nobody"]) == 1
    assert "never enrolled" in capsys.readouterr().err
    assert tvdctl(["master", "audit"]) == 0
    audit = capsys.readouterr().out
    for ev in ("enrolled", "policy-pushed", "vm-revoked", "host-revoked"):
        assert ev in audit
    assert tvdctl(["master", "--json", "admissions"]) == 0


def test_missing_settings_and_unreachable_master_are_usage_errors(env, capsys, monkeypatch):
    monkeypatch.delenv("TVD_MASTER_KEY")
    assert tvdctl(["master", "hosts"]) == 2
    assert "missing --key" in capsys.readouterr().err
    monkeypatch.setenv("TVD_MASTER_KEY", str(env[2] / "bob.key"))
    assert tvdctl(["master", "--url", "https://127.0.0.1:1", "hosts"]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and "Traceback" not in err


def test_a_host_certificate_cannot_act_as_admin(env, capsys, monkeypatch):
    d, url, tmp = env
    h1 = Enrolled(d, url, "h1", str(tmp / "h1"))
    monkeypatch.setenv("TVD_MASTER_CERT", h1.cert)
    monkeypatch.setenv("TVD_MASTER_KEY", h1.key)
    assert tvdctl(["master", "revoke-host", "h1"]) == 1
    assert "admin certificate" in capsys.readouterr().err


def test_a_revoked_admin_is_refused_from_the_next_request(env, capsys):
    d = env[0]
    assert tvdctl(["master", "hosts"]) == 0
    assert master_cli(["--dir", d, "revoke-admin", "bob"]) == 0
    assert master_cli(["--dir", d, "revoke-admin", "bob"]) == 0
    assert "already revoked" in capsys.readouterr().out
    assert tvdctl(["master", "hosts"]) == 1
    assert "admin bob: certificate revoked or not on record" in capsys.readouterr().err
