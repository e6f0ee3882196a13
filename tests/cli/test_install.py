"""tvdctl install (xen_tvd/cli/install.py) from this checkout's install: where each file goes,
what is rewritten, idempotence, refusals, and that the units name only what Debian 12 has.
The same command from a wheel and in the .deb: tests/packaging."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from xen_tvd.cli import install
from xen_tvd.cli.tvdctl import main

from tests.cli.cli_helpers import REPO, no_traceback, tvdctl

DATA = REPO / "xen_tvd" / "data"
BIN = Path(sys.prefix) / "bin"
INSTALLED = {   # path on the Dom0 -> (source in xen_tvd/data, mode)
    "/etc/xen/scripts/vif-tvd": ("hotplug/vif-tvd", 0o755),
    "/etc/libvirt/hooks/libxl.d/50-xen-tvd": ("hotplug/libvirt-hook", 0o755),
    "/etc/libvirt/hooks/qemu.d/50-xen-tvd": ("hotplug/libvirt-hook", 0o755),
    "/etc/libvirt/hooks/network.d/50-xen-tvd": ("hotplug/libvirt-network-hook", 0o755),
    "/etc/systemd/system/tvd-proxy.service": ("systemd/tvd-proxy.service", 0o644),
    "/etc/systemd/system/tvd-master.service": ("systemd/tvd-master.service", 0o644),
    "/etc/bash_completion.d/tvdctl": (None, 0o644),
}


def files_under(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_install_puts_each_file_where_xen_libvirt_systemd_and_bash_look(tmp_path):
    p = tvdctl("install", "--destdir", tmp_path)
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == sorted(f"installed {d}" for d in INSTALLED)
    assert files_under(tmp_path) == set(INSTALLED)
    for dst, (src, mode) in INSTALLED.items():
        assert stat.S_IMODE((tmp_path / dst.lstrip("/")).stat().st_mode) == mode, dst
    # vif-tvd: byte for byte (stdlib only, its own #!/usr/bin/python3 -IS)
    assert (tmp_path / "etc/xen/scripts/vif-tvd").read_bytes() == (DATA / "hotplug/vif-tvd").read_bytes()
    # the libvirt hook: only its #! changes, to the python3 that imports xen_tvd
    src = (DATA / "hotplug/libvirt-hook").read_text().split("\n", 1)[1]
    for drv in ("libxl", "qemu"):
        first, rest = (tmp_path / f"etc/libvirt/hooks/{drv}.d/50-xen-tvd").read_text().split("\n", 1)
        assert first == f"#!{BIN}/python3" and rest == src
    # units: ExecStart names this installation's console scripts, nothing left to fill
    for name, prog in (("tvd-proxy", "tvd-proxy run --policy"), ("tvd-master", "tvd-master --dir")):
        unit = (tmp_path / f"etc/systemd/system/{name}.service").read_text()
        assert re.search(rf"^ExecStart={re.escape(str(BIN))}/{prog} ", unit, re.M), unit
        assert not re.search(r"@[A-Z_]+@", unit)
    completion = tvdctl("completion", "bash")
    assert (tmp_path / "etc/bash_completion.d/tvdctl").read_text() == completion.stdout


def test_install_is_idempotent_and_repairs_a_changed_file(tmp_path):
    assert tvdctl("install", "--destdir", tmp_path).returncode == 0
    p = tvdctl("install", "--destdir", tmp_path)
    assert p.returncode == 0 and sorted(p.stdout.splitlines()) == sorted(f"unchanged {d}" for d in INSTALLED)
    script = tmp_path / "etc/xen/scripts/vif-tvd"
    script.chmod(0o644)
    (tmp_path / "etc/systemd/system/tvd-proxy.service").write_text("edited\n")
    p = tvdctl("install", "--destdir", tmp_path)
    assert {ln for ln in p.stdout.splitlines() if ln.startswith("installed")} == {
        "installed /etc/xen/scripts/vif-tvd", "installed /etc/systemd/system/tvd-proxy.service"}
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_install_takes_debian_directories(tmp_path):
    p = tvdctl("install", "--destdir", tmp_path, "--unit-dir", "/lib/systemd/system",
               "--completion-dir", "/usr/share/bash-completion/completions")
    assert p.returncode == 0, p.stderr
    assert {"/lib/systemd/system/tvd-proxy.service", "/lib/systemd/system/tvd-master.service",
            "/usr/share/bash-completion/completions/tvdctl"} <= files_under(tmp_path)


def test_install_refuses_a_prefix_without_the_programs_and_writes_nothing(tmp_path):
    p = tvdctl("install", "--destdir", tmp_path / "root", "--prefix", tmp_path / "nowhere")
    no_traceback(p)
    assert p.returncode == 2
    assert p.stderr.strip() == (
        f"tvdctl: {tmp_path}/nowhere/bin/tvd-proxy does not exist: the units and hooks would "
        f"run nothing; give --prefix of the installation that has tvd-proxy (e.g. /usr, a venv)")
    assert not (tmp_path / "root").exists()


def test_install_refuses_relative_directories(tmp_path):
    p = tvdctl("install", "--destdir", tmp_path, "--unit-dir", "etc/systemd")
    assert p.returncode == 2 and p.stderr.strip() == (
        "tvdctl: --unit-dir must be an absolute path (as on the Dom0)")
    assert not any(tmp_path.iterdir())


def test_install_reports_an_unwritable_target(tmp_path):
    (tmp_path / "etc").write_text("a file where a directory must be")
    p = tvdctl("install", "--destdir", tmp_path)
    no_traceback(p)
    assert p.returncode == 2 and p.stderr.startswith(f"tvdctl: cannot install {tmp_path}/etc/")


def test_every_script_in_the_hotplug_dir_is_installed_by_its_header(tmp_path, monkeypatch, capsys):
    """A script added to xen_tvd/data/hotplug is installed without touching tvdctl: its
    `# tvd-install:` line says where; a script without one stops the install."""
    hotplug = tmp_path / "hotplug"
    hotplug.mkdir()
    for name in ("vif-tvd", "libvirt-hook"):
        (hotplug / name).write_bytes((DATA / "hotplug" / name).read_bytes())
    (hotplug / "libvirt-network-hook").write_text(
        "#!/usr/bin/python3\n# tvd-install: /etc/libvirt/hooks/network.d/50-xen-tvd\n"
        "# tvd-needs: xen_tvd\nimport xen_tvd\n")
    monkeypatch.setattr(install, "HOTPLUG_DIR", hotplug)
    root = tmp_path / "root"
    assert main(["install", "--destdir", str(root)]) == 0
    net = root / "etc/libvirt/hooks/network.d/50-xen-tvd"
    assert net.read_text() == (f"#!{BIN}/python3\n# tvd-install: /etc/libvirt/hooks/network.d/"
                               "50-xen-tvd\n# tvd-needs: xen_tvd\nimport xen_tvd\n")
    assert stat.S_IMODE(net.stat().st_mode) == 0o755
    # tvdctl libvirt install-hook takes every hook under /etc/libvirt/hooks, the new one too
    hooks = tmp_path / "hooks"
    assert main(["libvirt", "install-hook", "--hooks-dir", str(hooks)]) == 0
    assert files_under(hooks) == {"/libxl.d/50-xen-tvd", "/qemu.d/50-xen-tvd",
                                  "/network.d/50-xen-tvd"}
    (hotplug / "stray").write_text("#!/bin/sh\necho no header\n")
    capsys.readouterr()
    assert main(["install", "--destdir", str(tmp_path / "root2")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"tvdctl: {hotplug}/stray has no '# tvd-install: /ABSOLUTE/PATH ...' line in its first "
        f"40 lines; the package is broken")
    assert not (tmp_path / "root2").exists()


# Units other packages of Debian 12 ship that ours may name: systemd's own targets are checked on
# this machine; these two come from packages scripts/bootstrap does not (always) install.
OTHER_PACKAGES = {
    # systemd-sysv-generator makes it from xen-utils-common's /etc/init.d/xendomains (4.17)
    "xendomains.service": ("xen-utils-common", "/etc/init.d/xendomains"),
    # libvirt-daemon-system 9.0.0 (dpkg -c): /lib/systemd/system/libvirtd.service; not installed
    # here on purpose (it would start the host's daemons: scripts/bootstrap)
    "libvirtd.service": None,
}


def test_units_name_only_units_debian12_has(tmp_path):
    assert tvdctl("install", "--destdir", tmp_path).returncode == 0
    named = set()
    for unit in (tmp_path / "etc/systemd/system").glob("*.service"):
        for m in re.finditer(r"^(?:After|Before|Wants|Requires|WantedBy|BindsTo)=(.*)$",
                             unit.read_text(), re.M):
            named.update(m.group(1).split())
        for m in re.finditer(r"^Exec\w+=(\S+)", unit.read_text(), re.M):
            assert os.access(m.group(1), os.X_OK), f"{unit.name}: {m.group(0)}"
    assert "xenstored.service" not in named   # upstream Xen's; Debian 12 starts it from init.d/xen
    for name in sorted(named):
        if name in OTHER_PACKAGES:
            owner = OTHER_PACKAGES[name]
            if owner is not None:
                r = subprocess.run(["dpkg", "-L", owner[0]], capture_output=True, text=True)
                if r.returncode != 0:
                    pytest.skip(f"{owner[0]} is not installed (TVD_TIER3=0 bootstrap); "
                                "CI's bootstrap installs it")
                assert owner[1] in r.stdout.split("\n"), f"{name}: {owner}"
            continue
        assert any(os.path.exists(f"{d}/{name}") for d in ("/lib/systemd/system",
                                                          "/usr/lib/systemd/system")), name
