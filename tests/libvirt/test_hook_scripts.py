"""What the two hook scripts share: hotplug/libvirt-hook (domains: libxl.d, qemu.d) and
hotplug/libvirt-network-hook (network.d). Light imports, `tvdctl libvirt install-hook`, and a
Python that cannot import xen_tvd, each run as libvirtd runs them (argv + XML on stdin)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.libvirt.lv_helpers import HOOK, NETWORK_HOOK, REPO, hook_data

# (hook script, the event that admits, the event that only cleans up)
DOMAIN = (HOOK, ["web-frontend", "prepare", "begin", "-"], ["web-frontend", "stopped", "end", "-"])
NETWORK = (NETWORK_HOOK, ["tvd-alpha", "port-created", "begin", "-"],
           ["tvd-alpha", "port-deleted", "begin", "-"])


@pytest.fixture
def stdin_for(example):
    return {HOOK: example, NETWORK_HOOK: hook_data().encode()}


@pytest.mark.parametrize("hook,admit,cleanup", [DOMAIN, NETWORK], ids=["domain", "network"])
def test_hook_imports_stay_light(fake_proxy, stdin_for, hook, admit, cleanup):
    """The hooks run for every domain event and every port: no lxml, libvirt, yaml, pyroute2,
    policy or dataplane code."""
    probe = (f"import runpy, sys; sys.argv = ['hook', *{admit!r}];\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit as e:\n"
             "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('lxml', 'libvirt', 'yaml', 'pyroute2') or m.startswith('xen_tvd.policy') "
             "or m.startswith('xen_tvd.dataplane') or m.startswith('xen_tvd.planner'))\n"
             "    print(e.code, heavy)\n" % hook)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": REPO, "TVD_PROXY_SOCKET": fake_proxy.path}
    r = subprocess.run([sys.executable, "-c", probe], input=stdin_for[hook], capture_output=True,
                       env=env)
    assert r.stdout.decode().strip() == "0 []", r.stderr


def test_install_hook_writes_runnable_hooks(tmp_path, fake_proxy, stdin_for, run_hook, capsys):
    from xen_tvd.cli.tvdctl import main
    hooks = tmp_path / "hooks"
    assert main(["libvirt", "install-hook", "--hooks-dir", str(hooks)]) == 0
    assert capsys.readouterr().out.count("installed ") == 3
    for drv, (hook, admit, _) in (("libxl", DOMAIN), ("qemu", DOMAIN), ("network", NETWORK)):
        path = hooks / f"{drv}.d" / "50-xen-tvd"
        assert os.access(path, os.X_OK)
        text = path.read_text()
        assert text.splitlines()[0] == f"#!{sys.executable}"
        with open(hook) as f:
            assert text.split("\n", 1)[1] == f.read().split("\n", 1)[1]   # one copy of each
        # executed directly through its shebang, as libvirtd does
        r = run_hook(admit, stdin_for[hook], fake_proxy.path, hook=str(path), interpreter=False)
        assert r.returncode == 0, r.stderr
    assert [r["op"] for r in fake_proxy.requests] == ["register", "register", "port-online"]


@pytest.mark.parametrize("hook,admit,cleanup", [DOMAIN, NETWORK], ids=["domain", "network"])
def test_hook_without_xen_tvd_fails_closed_only_for_admission(tmp_path, stdin_for, hook, admit,
                                                              cleanup):
    """An interpreter that cannot import xen_tvd must not let a TVD domain or port in unchecked."""
    env = {"PATH": os.environ["PATH"], "PYTHONNOUSERSITE": "1"}
    base = [sys.executable, "-S", hook]
    r = subprocess.run(base + admit, input=stdin_for[hook], capture_output=True, env=env,
                       cwd=str(tmp_path))
    assert r.returncode == 1 and "cannot import xen_tvd" in r.stderr.decode()
    r = subprocess.run(base + cleanup, input=stdin_for[hook], capture_output=True, env=env,
                       cwd=str(tmp_path))
    assert r.returncode == 0
