"""hotplug/libvirt-hook run as libvirtd runs it (argv + domain XML on stdin) against
lv_fakeproxy.FakeProxy, a stand-in for tvd-proxy speaking protocol v1 on a temp UNIX socket.
The same hook against the real `tvd-proxy run` is in test_hook_realproxy.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lv_fakeproxy import FakeProxy
from lv_helpers import EXAMPLE, FAKE_TVDS, HOOK, REPO, domain_xml, membership, nic

UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.fixture
def example():
    with open(EXAMPLE, "rb") as f:
        return f.read()


@pytest.fixture
def proxy(tmp_path):
    p = FakeProxy(str(tmp_path / "proxy.sock"),
                  FAKE_TVDS)
    yield p
    p.close()


@pytest.mark.parametrize("event", [("prepare", "begin"), ("start", "begin")])
def test_admitted_start_registers_the_vm(run_hook, proxy, example, event):
    r = run_hook(["web-frontend", *event, "-"], example, proxy.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    assert proxy.requests == [{"v": 1, "op": "register", "uuid": UUID, "name": "web-frontend",
                               "nics": [{"devid": 0, "tvd": "alpha"}, {"devid": 1, "tvd": "gamma"}],
                               "properties": {"tpm-measured-boot": "immutable-log"}}]
    assert UUID in proxy.registrations


def test_denied_start_fails_with_the_proxys_reason(run_hook, proxy, example):
    xml = example.replace(b"<tvd:property name='tpm-measured-boot' assurance='immutable-log'/>", b"")
    r = run_hook(["web-frontend", "prepare", "begin", "-"], xml, proxy.path)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1
    assert "refusing to prepare domain web-frontend: admission denied" in err
    assert "tpm-measured-boot" in err
    assert UUID not in proxy.registrations


def test_unknown_tvd_fails_the_start(run_hook, proxy):
    xml = domain_xml(nic("network", "tvd-delta", "00:16:3e:00:00:01"))
    r = run_hook(["vm1", "start", "begin", "-"], xml, proxy.path)
    assert r.returncode == 1
    assert "unknown TVD 'delta'" in r.stderr.decode()


def test_unreachable_proxy_fails_closed(run_hook, example, tmp_path):
    r = run_hook(["web-frontend", "prepare", "begin", "-"], example, str(tmp_path / "gone.sock"))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "tvd-proxy is not running" in err


def test_proxy_that_hangs_up_fails_closed(run_hook, example, tmp_path):
    import socket
    import threading
    path = str(tmp_path / "mute.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)

    def hang_up():
        c, _ = s.accept()
        c.recv(65536)
        c.close()
    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    r = run_hook(["web-frontend", "start", "begin", "-"], example, path)
    s.close()
    assert r.returncode == 1
    assert "closed the connection without an answer" in r.stderr.decode()


def test_contradictory_membership_fails_without_asking(run_hook, proxy):
    m = "00:16:3e:00:00:01"
    xml = domain_xml(nic("network", "tvd-alpha", m), membership(f"<tvd:nic mac='{m}' tvd='beta'/>"))
    r = run_hook(["vm1", "prepare", "begin", "-"], xml, proxy.path)
    assert r.returncode == 1 and "metadata puts it in TVD 'beta'" in r.stderr.decode()
    assert proxy.requests == []


def test_domain_in_no_tvd_starts_without_the_proxy(run_hook, tmp_path):
    xml = domain_xml(nic("network", "default", "00:16:3e:00:00:01"))
    r = run_hook(["vm1", "prepare", "begin", "-"], xml, str(tmp_path / "gone.sock"))
    assert r.returncode == 0 and r.stderr == b""


@pytest.mark.parametrize("event", [("stopped", "end"), ("release", "end")])
def test_stop_unregisters(run_hook, proxy, example, event):
    assert run_hook(["web-frontend", "prepare", "begin", "-"], example, proxy.path).returncode == 0
    r = run_hook(["web-frontend", *event, "-"], example, proxy.path)
    assert r.returncode == 0 and r.stderr == b""
    assert proxy.requests[-1] == {"v": 1, "op": "unregister", "uuid": UUID}
    assert UUID not in proxy.registrations


@pytest.mark.parametrize("event", [("stopped", "end"), ("release", "end")])
def test_stop_never_fails(run_hook, example, tmp_path, event):
    r = run_hook(["web-frontend", *event, "-"], example, str(tmp_path / "gone.sock"))
    assert r.returncode == 0
    assert "could not unregister" in r.stderr.decode()
    # even a domain whose membership is contradictory is unregistered by UUID, best effort
    bad = domain_xml(nic("network", "tvd-alpha", "00:16:3e:00:00:01")
                     + nic("network", "default", "00:16:3e:00:00:02"))
    assert run_hook(["vm1", *event, "-"], bad, str(tmp_path / "gone.sock")).returncode == 0
    assert run_hook(["vm1", *event, "-"], b"garbage", str(tmp_path / "gone.sock")).returncode == 0


@pytest.mark.parametrize("event", [("started", "begin"), ("migrate", "begin"), ("restore", "begin"),
                                   ("reconnect", "begin"), ("attach", "begin"), ("stopped", "begin")])
def test_other_events_pass_silently(run_hook, proxy, example, event):
    r = run_hook(["web-frontend", *event, "-"], example, proxy.path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")   # migrate/restore: empty = unchanged XML
    assert proxy.requests == []


def test_bad_arguments_are_a_usage_error(run_hook):
    r = run_hook(["only-one"])
    assert r.returncode == 2 and "usage" in r.stderr.decode()


def test_hook_imports_stay_light(tmp_path, proxy, example):
    """The hook runs for every domain event: no lxml, libvirt, yaml, pyroute2 or policy code."""
    probe = ("import runpy, sys; sys.argv = ['hook', 'web-frontend', 'prepare', 'begin', '-'];\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit as e:\n"
             "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('lxml', 'libvirt', 'yaml', 'pyroute2') or m.startswith('xen_tvd.policy') "
             "or m.startswith('xen_tvd.dataplane'))\n"
             "    print(e.code, heavy)\n" % HOOK)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": REPO, "TVD_PROXY_SOCKET": proxy.path}
    r = subprocess.run([sys.executable, "-c", probe], input=example, capture_output=True, env=env)
    assert r.stdout.decode().strip() == "0 []", r.stderr


def test_install_hook_writes_runnable_hooks_for_libxl_and_qemu(tmp_path, proxy, example, run_hook):
    from xen_tvd.cli.tvdctl import main
    hooks = tmp_path / "hooks"
    assert main(["libvirt", "install-hook", "--hooks-dir", str(hooks)]) == 0
    for drv in ("libxl", "qemu"):
        path = hooks / f"{drv}.d" / "50-xen-tvd"
        assert os.access(path, os.X_OK)
        assert path.read_text().splitlines()[0] == f"#!{sys.executable}"
        # executed directly through its shebang, as libvirtd does
        r = run_hook(["web-frontend", "prepare", "begin", "-"], example, proxy.path,
                      hook=str(path), interpreter=False)
        assert r.returncode == 0, r.stderr


def test_hook_without_xen_tvd_fails_closed_only_for_admission(tmp_path, example):
    """An interpreter that cannot import xen_tvd must not let a TVD domain start unchecked."""
    env = {"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"}
    base = [sys.executable, "-S", HOOK]
    r = subprocess.run(base + ["web-frontend", "prepare", "begin", "-"], input=example,
                       capture_output=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 1 and "cannot import xen_tvd" in r.stderr.decode()
    r = subprocess.run(base + ["web-frontend", "stopped", "end", "-"], input=example,
                       capture_output=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0
