"""What an admin gets from `pip install .`: the wheel is built from a copy of this tree (not
editable), installed into a throwaway venv, and its `tvdctl install` puts vif-tvd, the libvirt
hooks, the units and bash completion in place; then the installed vif-tvd and hooks work against
the wheel's own tvd-proxy (the console script the installed unit names) in the namespace lab.

Speed: the venv has no pip (this test's pip installs into it) and reaches the dependencies
through a .pth naming this venv's site-packages instead of downloading them again; xen_tvd
itself comes only from the wheel (asserted)."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.packaging.pkg_helpers import (DATA, dom0_works, exec_start, installed_files, mode, same_bytes,
                         source_copy, timed)

DOM0_FILES = {"/etc/xen/scripts/vif-tvd", "/etc/libvirt/hooks/libxl.d/50-xen-tvd",
              "/etc/libvirt/hooks/qemu.d/50-xen-tvd", "/etc/libvirt/hooks/network.d/50-xen-tvd",
              "/etc/systemd/system/tvd-proxy.service",
              "/etc/systemd/system/tvd-master.service", "/etc/bash_completion.d/tvdctl"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = source_copy(tmp / "src")
    r, secs = timed([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src),
                     "-w", str(tmp / "dist")], timeout=600)
    assert r.returncode == 0, r.stderr
    print(f"wheel built in {secs:.1f} s")
    [whl] = (tmp / "dist").glob("xen_tvd-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    v = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(v / "bin/python"), "install",
                        "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    def python(code: str) -> str:   # not from this checkout: no PYTHONPATH, cwd elsewhere
        return subprocess.run([str(v / "bin/python"), "-c", code], cwd=v, env={},
                              capture_output=True, text=True, check=True).stdout.strip()
    site = Path(python("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    (site / "zz-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = python("import xen_tvd; print(xen_tvd.__file__)")
    assert where == str(site / "xen_tvd" / "__init__.py")
    return v


def test_wheel_carries_the_dom0_files_and_no_test_harness(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {f"xen_tvd/data/{p.relative_to(DATA)}" for p in DATA.rglob("*") if p.is_file()}
    assert data and data <= names
    assert {"xen_tvd/data/hotplug/vif-tvd", "xen_tvd/data/hotplug/libvirt-hook",
            "xen_tvd/data/systemd/tvd-proxy.service"} <= data
    assert not [n for n in names if n.startswith(("tvd_testing/", "xen_tvd/testing/", "tests/"))]
    [ep] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(ep).decode().split("[console_scripts]")[1]
    assert {ln.split(" =")[0] for ln in scripts.split("\n") if " = " in ln} == {
        "tvdctl", "tvd-proxy", "tvd-master"}


def test_tvdctl_install_from_the_wheel_gives_a_working_dom0(venv, lab, tmp_path):
    root = tmp_path / "root"
    r = subprocess.run([str(venv / "bin/tvdctl"), "install", "--destdir", str(root)],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert installed_files(root) == DOM0_FILES
    assert all(mode(root / f.lstrip("/")) == 0o755 for f in DOM0_FILES if "/hooks/" in f or "/scripts/" in f)
    assert same_bytes(root / "etc/xen/scripts/vif-tvd", DATA / "hotplug/vif-tvd")
    assert (root / "etc/libvirt/hooks/qemu.d/50-xen-tvd").read_text().startswith(
        f"#!{venv}/bin/python3\n")
    proxy = exec_start(root / "etc/systemd/system/tvd-proxy.service")
    assert proxy[:2] == [f"{venv}/bin/tvd-proxy", "run"]
    # the wheel's own tvd-proxy, as the unit starts it (without PYTHONPATH: its own xen_tvd)
    dom0_works(lab, root, [proxy[0]], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    v = subprocess.run([str(venv / "bin/tvdctl"), "--version"], capture_output=True, text=True)
    assert v.stdout.strip() == f"tvdctl {version('xen-tvd')}"
