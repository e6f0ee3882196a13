"""Shared by the wheel and .deb tests: a clean copy of the source tree to build from, and the
checks both make of an installed Dom0 layout."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.hotplug import tvd_harness
from tests.common import paths

REPO = Path(paths.REPO)
DATA = REPO / "xen_tvd" / "data"
# development artefacts a build must not see (and must not write into this checkout)
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", ".pybuild", "results")
# what Debian's tools see on a Debian 12 machine (not a developer's pyenv or venv first in PATH)
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
EXAMPLE_DOMAIN = REPO / "xl-configs" / "libvirt-domain.xml"   # alpha + gamma, for the lab policy
EXAMPLE_UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def source_copy(dst: Path) -> Path:
    shutil.copytree(REPO, dst, ignore=NOT_SOURCE)
    return dst


def timed(argv, **kw) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    return r, time.monotonic() - t0


def exec_start(unit: Path) -> list[str]:
    m = re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M)
    assert m, unit
    return m.group(1).split()


def dom0_works(lab, root: Path, command: list[str], env: dict) -> None:
    """The Dom0 files installed under `root` work with the tvd-proxy `command` (run, as the
    hooks are, with `env`):
    - vif-tvd admits two VMs: both vifs land on the TVD's vSwitch, libxl is told `connected`,
      and the VMs reach each other;
    - the libvirt hooks, run through their own #! as libvirtd runs them, import xen_tvd and
      register the example domain with that proxy, then unregister it."""
    proxy = lab.proxy(command=command, env=env)
    script = str(root / "etc/xen/scripts/vif-tvd")
    a = lab.vm("a", 3, nics={0: ("tvd:beta", "10.99.0.3")})
    b = lab.vm("b", 4, nics={0: ("tvd:beta", "10.99.0.4")})
    for vm in (a, b):
        r = lab.hotplug(vm, script=script)
        assert r.returncode == 0, r.stderr
        assert lab.xs.get(f"{vm.backend()}/hotplug-status") == "connected"
        assert tvd_harness.link_info(lab.host_ns["dom0-a"], vm.vif())["master"] == "tvd-beta"
    assert lab.ping(a, "10.99.0.4", count=2)
    hook_env = dict(env, TVD_PROXY_SOCKET=proxy.socket)
    for drv in ("libxl", "qemu"):
        hook = str(root / f"etc/libvirt/hooks/{drv}.d/50-xen-tvd")
        for op, sub, registered in (("prepare", "begin", True), ("stopped", "end", False)):
            r = subprocess.run([hook, "web-frontend", op, sub, "-"], env=hook_env, timeout=60,
                               input=EXAMPLE_DOMAIN.read_bytes(), capture_output=True)
            assert r.returncode == 0, r.stderr
            regs = {g["uuid"]: g for g in proxy.client.status()["registrations"]}
            assert (EXAMPLE_UUID in regs) == registered, (drv, op)
            if registered:
                assert regs[EXAMPLE_UUID]["nics"] == {"0": "alpha", "1": "gamma"}


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def installed_files(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777
