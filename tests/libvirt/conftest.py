from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lv_helpers import HOOK, REPO


@pytest.fixture
def run_hook(tmp_path):
    """run_hook(args, xml, sock=None) -> CompletedProcess of the real hook script, run by this
    interpreter (the one with xen_tvd) the way libvirtd runs it: argv + XML on stdin."""
    def run(args, xml: str | bytes = b"", sock: str | None = None, hook: str = HOOK,
            interpreter: bool = True):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": REPO,
               "TVD_PROXY_SOCKET": sock or str(tmp_path / "no-proxy.sock")}
        cmd = ([sys.executable] if interpreter else []) + [hook, *args]
        data = xml.encode() if isinstance(xml, str) else xml
        return subprocess.run(cmd, input=data, capture_output=True, env=env, timeout=60)
    return run


@pytest.fixture
def make_libvirtd(tmp_path):
    """make_libvirtd(hooks=False) -> a private, real libvirtd (see lv_libvirtd), started; with
    hooks=True our domain hook is installed (tvdctl libvirt install-hook) before it starts,
    as libvirtd only looks for hooks at start. Skipped, naming the missing piece, where it
    cannot run (it runs in CI on Debian 12 as root)."""
    import lv_libvirtd
    why = lv_libvirtd.missing()
    if why:
        pytest.skip(f"real libvirtd: {why}")
    made = []

    def make(hooks: bool = False):
        d = lv_libvirtd.Libvirtd(str(tmp_path / f"libvirtd{len(made)}"))
        made.append(d)
        if hooks:
            from xen_tvd.cli.tvdctl import main
            assert main(["libvirt", "install-hook", "--hooks-dir",
                         os.path.join(d.etc, "hooks")]) == 0
        return d.start()
    yield make
    for d in made:
        d.stop()


@pytest.fixture
def libvirtd(make_libvirtd):
    return make_libvirtd()
