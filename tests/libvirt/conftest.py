from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.libvirt.lv_fakeproxy import FakeProxy
from tests.libvirt.lv_helpers import EXAMPLE, FAKE_TVDS, HOOK, REPO


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
def example() -> bytes:
    """xl-configs/libvirt-domain.xml: web-frontend, NICs in alpha (metadata) and gamma (network)."""
    with open(EXAMPLE, "rb") as f:
        return f.read()


@pytest.fixture
def fake_proxy(tmp_path):
    """lv_fakeproxy.FakeProxy (the toy rule of lv_helpers.FAKE_TVDS) on a temporary socket."""
    p = FakeProxy(str(tmp_path / "proxy.sock"), FAKE_TVDS)
    yield p
    p.close()


@pytest.fixture
def make_libvirtd(tmp_path):
    """make_libvirtd(hooks=False, record=False) -> a private, real libvirtd (see lv_libvirtd),
    started; with hooks=True our domain and network hooks are installed (tvdctl libvirt
    install-hook) before it starts, as libvirtd only looks for hooks at start; record=True adds
    a recorder after them (Libvirtd.record_hooks). Skipped, naming the missing piece, where it
    cannot run (it runs in CI on Debian 12 as root)."""
    from tests.libvirt import lv_libvirtd
    why = lv_libvirtd.missing()
    if why:
        pytest.skip(f"real libvirtd: {why}")
    made = []
    # the private daemon's mount points live on overlays in its own namespace: the host must
    # neither need nor get them (a fresh Debian 12 machine has no /etc/libvirt)
    host_dirs = {d: os.path.exists(d) for d in ("/etc/libvirt", "/var/lib/libvirt")}

    def make(hooks: bool = False, record: bool = False):
        d = lv_libvirtd.Libvirtd(str(tmp_path / f"libvirtd{len(made)}"))
        made.append(d)
        if hooks:
            from xen_tvd.cli.tvdctl import main
            assert main(["libvirt", "install-hook", "--hooks-dir",
                         os.path.join(d.etc, "hooks")]) == 0
        if record:
            d.record_hooks()
        return d.start()
    yield make
    for d in made:
        d.stop()
    assert {d: os.path.exists(d) for d in host_dirs} == host_dirs, "the private libvirtd changed the host's directories"


@pytest.fixture
def libvirtd(make_libvirtd):
    return make_libvirtd()
