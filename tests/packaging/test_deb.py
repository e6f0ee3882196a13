"""The .deb (debian/: debhelper 13 + pybuild), built with dpkg-buildpackage from a copy of this
tree: its contents (dpkg -c), its dependencies resolved against Debian 12 (apt-get --simulate),
and, unpacked into a throwaway root (dpkg -x), its vif-tvd, libvirt hooks and tvd-proxy working
in the namespace lab on Debian's own python3 and python3-pyroute2/-lxml/-yaml/-cryptography.
scripts/bootstrap installs the build tools and those libraries."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.pkg_helpers import (DATA, SYSTEM_ENV, dom0_works, exec_start, installed_files, mode,
                         same_bytes, source_copy, timed)

DIST = "/usr/lib/python3/dist-packages"
DOM0_FILES = {"/etc/xen/scripts/vif-tvd", "/etc/libvirt/hooks/libxl.d/50-xen-tvd",
              "/etc/libvirt/hooks/qemu.d/50-xen-tvd", "/etc/libvirt/hooks/network.d/50-xen-tvd",
              "/lib/systemd/system/tvd-proxy.service",
              "/lib/systemd/system/tvd-master.service",
              "/usr/share/bash-completion/completions/tvdctl",
              "/usr/bin/tvdctl", "/usr/bin/tvd-proxy", "/usr/bin/tvd-master"}
DEBIAN_LIBRARIES = {"python3-cryptography", "python3-libvirt", "python3-lxml", "python3-pyroute2",
                    "python3-yaml"}


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    missing = [t for t in ("dpkg-buildpackage", "dh", "pybuild") if not shutil.which(t)]
    assert not missing, f"{missing} missing: scripts/bootstrap installs the .deb build tools"
    tmp = tmp_path_factory.mktemp("deb")
    src = source_copy(tmp / "xen-tvd")
    r, secs = timed(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=SYSTEM_ENV,
                    timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"dpkg-buildpackage took {secs:.1f} s")
    [deb] = tmp.glob("xen-tvd_*_all.deb")
    return deb


@pytest.fixture(scope="module")
def root(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def contents(deb: Path) -> dict[str, str]:
    """{path: mode string} from dpkg -c."""
    out = subprocess.run(["dpkg", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    rows = (ln.split(None, 5) for ln in out.splitlines())
    return {r[5].split(" -> ")[0].removeprefix("."): r[0] for r in rows}


def test_deb_contents(deb):
    c = contents(deb)
    for f in DOM0_FILES:
        assert f in c, f
    for f in ("/etc/xen/scripts/vif-tvd", "/etc/libvirt/hooks/qemu.d/50-xen-tvd", "/usr/bin/tvdctl"):
        assert c[f] == "-rwxr-xr-x", (f, c[f])
    assert c["/lib/systemd/system/tvd-proxy.service"] == "-rw-r--r--"
    for p in DATA.rglob("*"):
        if p.is_file():
            assert f"{DIST}/xen_tvd/data/{p.relative_to(DATA)}" in c, p
    assert f"{DIST}/xen_tvd/cli/install.py" in c
    assert not [f for f in c if "tvd_testing" in f or "/xen_tvd/testing" in f or "/tests/" in f]
    # the units' Documentation= pages, uncompressed as named
    assert {"/usr/share/doc/xen-tvd/proxy-protocol.md", "/usr/share/doc/xen-tvd/master.md"} <= set(c)
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True,
                               text=True, check=True).stdout.split()
    assert set(conffiles) == {f for f in DOM0_FILES if f.startswith("/etc/")}


def test_deb_depends_on_debian12s_libraries_and_installs_there(deb):
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    names = {d.strip().split()[0] for d in depends.split(",")}
    assert DEBIAN_LIBRARIES <= names, depends
    # apt resolves them from this machine's Debian 12 archive lists (a simulation: changes nothing)
    r = subprocess.run(["apt-get", "--simulate", "install", str(deb)], capture_output=True,
                       text=True, env=SYSTEM_ENV, timeout=300)
    assert r.returncode == 0 and re.search(r"^Inst xen-tvd ", r.stdout, re.M), r.stdout + r.stderr


def test_unpacked_deb_layout_names_usr_bin(root):
    assert DOM0_FILES <= installed_files(root)
    assert exec_start(root / "lib/systemd/system/tvd-proxy.service")[:2] == ["/usr/bin/tvd-proxy", "run"]
    assert exec_start(root / "lib/systemd/system/tvd-master.service")[0] == "/usr/bin/tvd-master"
    assert same_bytes(root / "etc/xen/scripts/vif-tvd", DATA / "hotplug/vif-tvd")
    for f in ("etc/libvirt/hooks/libxl.d/50-xen-tvd", "usr/bin/tvd-proxy"):
        assert (root / f).read_text().startswith("#!/usr/bin/python3\n"), f
        assert mode(root / f) == 0o755


def test_unpacked_deb_works_on_debians_python_and_libraries(root, lab):
    """Debian's /usr/bin/python3 with its dist-packages, plus the unpacked xen_tvd (the one
    PYTHONPATH entry a real install does not need)."""
    env = dict(SYSTEM_ENV, PYTHONPATH=str(root / DIST.lstrip("/")))
    libs = subprocess.run(["/usr/bin/python3", "-c", "import pyroute2, lxml, yaml, cryptography, "
                           "xen_tvd; print(xen_tvd.__file__, pyroute2.__file__)"], env=env,
                          capture_output=True, text=True, cwd=root)
    assert libs.returncode == 0, f"{libs.stderr} (scripts/bootstrap installs {DEBIAN_LIBRARIES})"
    ours, pyroute2 = libs.stdout.split()
    assert ours.startswith(str(root)) and pyroute2.startswith(DIST), libs.stdout
    dom0_works(lab, root, ["/usr/bin/python3", str(root / "usr/bin/tvd-proxy")], env)
