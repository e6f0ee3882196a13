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
def libvirtd(tmp_path):
    """A private, real libvirtd (see lv_libvirtd); skipped, naming the missing piece, where it
    cannot run (it runs in CI on Debian 12 as root)."""
    import lv_libvirtd
    why = lv_libvirtd.missing()
    if why:
        pytest.skip(f"real libvirtd: {why}")
    d = lv_libvirtd.Libvirtd(str(tmp_path / "libvirtd"))
    try:
        yield d.start()
    finally:
        d.stop()
