"""tvd-master as the operator runs it: CLI commands and a real `serve` process, SIGKILLed and
restarted; its log must never show a token, a key or a CSR."""
import json
import os
import re
import stat
import subprocess
import sys

import pytest

from xen_tvd.master import client as mc
from xen_tvd.master.bundle import verify_bundle

from tests.master.master_helpers import POLICY, REPORT, ROOT, MasterProcess, cli, free_port


def test_the_console_entry_point_runs_as_a_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "xen_tvd.master", "--dir", str(tmp_path / "m"),
                        "init", "--url", "https://127.0.0.1:8443"], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "CA pin" in r.stdout


@pytest.fixture
def site(tmp_path):
    d = str(tmp_path / "m")
    url = f"https://127.0.0.1:{free_port()}"
    out = cli(d, "init", "--url", url).stdout
    assert re.search(r"CA pin [0-9a-f]{32}", out)
    (tmp_path / "p.yaml").write_text(POLICY)
    cli(d, "policy", "push", str(tmp_path / "p.yaml"))
    proc = MasterProcess(d, url, str(tmp_path / "master.log"))
    yield d, url, tmp_path, proc
    proc.stop()


def test_kill_and_restart_keeps_hosts_audit_and_generation_and_logs_hold_no_secrets(site):
    d, url, tmp, proc = site
    tok = cli(d, "token", "h1", "--ttl", "600").stdout.strip()
    assert re.fullmatch(r"tvd1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{32}", tok)
    key = str(tmp / "state" / "host.key")
    res = mc.enroll(url, tok, "h1", key)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    cert = str(tmp / "state" / "host.pem")
    open(cert, "w").write(res.certificate)
    c = mc.MasterClient(url, res.ca, cert, key)
    c.put_capabilities("h1", REPORT)
    gen = verify_bundle(c.bundle("h1", 0, 10), res.ca, "h1", url, 0)["generation"]
    c.post_audit([{"id": "a-1", "event": "admitted", "vm": "u1", "tvd": "alpha",
                   "ifname": "vif1.0"}])
    before = cli(d, "audit", "--json").stdout.splitlines()

    proc.kill()                                            # SIGKILL: no clean shutdown
    with pytest.raises(mc.MasterError):
        c.bundle("h1", gen, 0)
    proc.start()
    hosts = json.loads(cli(d, "hosts", "--json").stdout)
    assert [(h["host"], h["state"], h["generation"]) for h in hosts] == [("h1", "enrolled", gen)]
    after = cli(d, "audit", "--json").stdout.splitlines()
    assert after[:len(before)] == before
    assert "hash chain intact" in cli(d, "audit", "--verify").stdout
    # same content after restart: same generation, and a watch above it waits (204)
    assert verify_bundle(c.bundle("h1", gen - 1, 5), res.ca, "h1", url, gen)["generation"] == gen
    assert c.bundle("h1", gen, 0.3) is None
    assert c.post_audit([{"id": "a-1", "event": "admitted"}])["duplicates"] == 1
    # the token is spent for good
    with pytest.raises(mc.MasterError) as e:
        mc.enroll(url, tok, "h1", str(tmp / "again.key"))
    assert e.value.status == 401

    # revocation from the CLI while serve runs: refused from the next request on
    assert cli(d, "revoke", "h1").stdout.strip() == "host h1 revoked"
    assert cli(d, "revoke", "h1").stdout.strip() == "host h1 was already revoked"
    with pytest.raises(mc.MasterError) as e:
        c.put_capabilities("h1", REPORT)
    assert e.value.status == 403

    logs = proc.logs()
    secret = tok.split(".")[2]
    assert "event=enrolled host=h1" in logs            # the log is not just empty
    for needle in (secret, tok, "CERTIFICATE REQUEST", "PRIVATE KEY", "BEGIN"):
        assert needle not in logs
    assert secret not in cli(d, "audit", "--json").stdout
    db = b"".join(open(os.path.join(d, f), "rb").read() for f in os.listdir(d)
                  if f.startswith("master.db"))
    assert secret.encode() not in db


def test_cli_policy_push_of_a_broken_file_prints_file_line_col_and_exits_2(site):
    d, url, tmp, proc = site
    bad = tmp / "bad.yaml"
    bad.write_text(POLICY.replace("vlan: 200", "vlan: 99999"))
    r = cli(d, "policy", "push", str(bad), check=False)
    assert r.returncode == 2
    assert re.search(rf"^{re.escape(str(bad))}:\d+:\d+: error: ", r.stderr, re.M)
    assert "Traceback" not in r.stderr
    (tmp / "broken.yaml").write_text("version: 1\ntvds: [\n")
    r = cli(d, "policy", "push", str(tmp / "broken.yaml"), check=False)
    assert r.returncode == 2 and "broken.yaml:" in r.stderr and "Traceback" not in r.stderr
    r = cli(d, "policy", "push", str(tmp / "missing.yaml"), check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_cli_refusals_are_one_line_and_idempotent_commands_succeed_twice(site, tmp_path):
    d, url, tmp, proc = site
    r = cli(d, "revoke", "nobody", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "tvd-master: host nobody was never enrolled"
    r = cli(d, "image", "allow", "sha256:xyz", "--property", "web=trust", check=False)
    assert r.returncode == 2 and "64 lowercase hex" in r.stderr
    r = cli(d, "vm-cert", "web", "--uuid", "nope", "--property", "w=trust", "--out", "x",
            check=False)
    assert r.returncode == 2 and "not a UUID" in r.stderr
    vm = "8d1d5c2e-6f0a-4e55-9d8f-0a1b2c3d4e5f"
    out = str(tmp_path / "web")
    r = cli(d, "vm-cert", "web", "--uuid", vm, "--property", "web-server=introspection",
            "--out", out)
    assert stat.S_IMODE(os.stat(out + ".key").st_mode) == 0o600
    serial = re.search(r"serial (\d+)", r.stdout).group(1)
    assert cli(d, "revoke-vm", "--serial", serial).stdout.strip().endswith("revoked")
    assert "already" in cli(d, "revoke-vm", "--serial", serial).stdout
    assert "already" not in cli(d, "revoke-vm", vm).stdout
    assert "already" in cli(d, "revoke-vm", vm).stdout
    r = cli(d, "init", "--url", "https://10.1.1.1:8443", check=False)
    assert r.returncode == 2 and "initialised for" in r.stderr
    r = cli(str(tmp_path / "nowhere"), "hosts", check=False)
    assert r.returncode == 2 and "not a tvd-master directory" in r.stderr


def test_everything_the_cli_writes_is_private_and_the_umask_is_restored(tmp_path):
    old = os.umask(0o022)
    try:
        d = str(tmp_path / "m")
        cli(d, "init", "--url", "https://127.0.0.1:8443")
        cli(d, "admin-cert", "eve", "--out", str(tmp_path / "eve"))
        cli(d, "token", "h1")
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)
    for f in os.listdir(d) + ["../eve.pem", "../eve.key"]:
        mode = stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode)
        assert mode & 0o077 == 0, f"{f} is {oct(mode)}"
