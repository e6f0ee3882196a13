"""tvdctl install: put what a Dom0 needs where Xen, libvirt, systemd and bash look for it.

    tvdctl install [--destdir DIR] [--prefix DIR] [--unit-dir DIR] [--completion-dir DIR]

Everything comes from this package's own data (xen_tvd/data/, in the wheel and the .deb), one
copy of each file:
- xen_tvd/data/hotplug/*: every script there goes to the absolute paths its `# tvd-install:`
  header line names (vif-tvd to /etc/xen/scripts, the libvirt hook to /etc/libvirt/hooks/...).
  A script with a `# tvd-needs: xen_tvd` line gets its `#!` line rewritten to PREFIX's python3
  (the one that imports xen_tvd); the others (vif-tvd: stdlib only) keep theirs.
- xen_tvd/data/systemd/*.service: to --unit-dir, @BINDIR@ replaced by PREFIX/bin.
- bash completion for tvdctl, generated from its parser (xen_tvd/cli/completion.py).
PREFIX defaults to this interpreter's (a venv's root, /usr for the .deb); --destdir stages
everything under a root (debian/rules builds the .deb's tree with this same command).
Idempotent: identical files are left alone. Exit codes as tvdctl.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import xen_tvd
from xen_tvd.cli import completion
from xen_tvd.errors import UsageError

DATA = Path(xen_tvd.__file__).resolve().parent / "data"
HOTPLUG_DIR = DATA / "hotplug"
SYSTEMD_DIR = DATA / "systemd"
UNIT_DIR = "/etc/systemd/system"             # the admin's; the .deb uses /lib/systemd/system
COMPLETION_DIR = "/etc/bash_completion.d"    # read by bash-completion; the .deb: /usr/share/...
PROGRAMS = ("tvd-proxy", "tvd-master", "python3")   # what the units and hooks run
HEADER_LINES = 40                            # the install header sits in a script's opening
_INSTALL_RE = re.compile(r"^# tvd-install:(.*)$", re.M)
_NEEDS_RE = re.compile(r"^# tvd-needs: xen_tvd\s*$", re.M)


class InstallError(Exception):
    """Nothing (more) is installed; the message says why in one line."""


@dataclass(frozen=True)
class Script:
    src: Path
    targets: tuple[str, ...]          # absolute paths on the Dom0
    needs_xen_tvd: bool               # its #! must be a python that imports xen_tvd

    def text(self, python: str) -> bytes:
        data = self.src.read_bytes()
        if not self.needs_xen_tvd:
            return data
        return f"#!{python}\n".encode() + data.split(b"\n", 1)[1]


def hotplug_scripts() -> list[Script]:
    """Every script of the package's hotplug data directory, with where it goes."""
    scripts = []
    for src in sorted(HOTPLUG_DIR.iterdir()):
        if not src.is_file() or src.name.startswith("."):
            continue
        head = "\n".join(src.read_text(errors="replace").splitlines()[:HEADER_LINES])
        targets = tuple(t for m in _INSTALL_RE.finditer(head) for t in m.group(1).split())
        if not targets or not all(t.startswith("/") for t in targets):
            raise InstallError(f"{src} has no '# tvd-install: /ABSOLUTE/PATH ...' line in its "
                               f"first {HEADER_LINES} lines; the package is broken")
        scripts.append(Script(src, targets, bool(_NEEDS_RE.search(head))))
    if not scripts:
        raise InstallError(f"{HOTPLUG_DIR} holds no scripts; the package is broken")
    return scripts


def staged(destdir: str, path: str) -> str:
    return os.path.join(destdir, path.lstrip("/"))


def install_file(dst: str, data: bytes, mode: int) -> bool:
    """Write `dst` atomically unless it already holds `data` with `mode`; True if written."""
    try:
        with open(dst, "rb") as f:
            same = f.read() == data and (os.stat(dst).st_mode & 0o7777) == mode
    except OSError:
        same = False
    if same:
        return False
    tmp = dst + ".tvd-new"
    try:
        os.makedirs(os.path.dirname(dst), mode=0o755, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.rename(tmp, dst)
    except OSError as e:
        raise InstallError(f"cannot install {dst}: {e.strerror or e}") from None
    return True


def _program(destdir: str, bindir: str, name: str) -> str:
    path = os.path.join(bindir, name)
    if not (os.path.exists(staged(destdir, path)) or os.path.exists(path)):
        raise InstallError(f"{path} does not exist: the units and hooks would run nothing; give "
                           f"--prefix of the installation that has tvd-proxy (e.g. /usr, a venv)")
    return path


def unit_text(src: Path, bindir: str) -> bytes:
    text = src.read_text().replace("@BINDIR@", bindir)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise InstallError(f"{src} has placeholders tvdctl install does not fill: {left}")
    return text.encode()


def plan(destdir: str, prefix: str, unit_dir: str, completion_dir: str,
         completion_script: str) -> list[tuple[str, bytes, int]]:
    """(absolute Dom0 path, content, mode) of every file, or InstallError before writing any."""
    bindir = os.path.join(prefix, "bin")
    for name in PROGRAMS:
        _program(destdir, bindir, name)
    python = os.path.join(bindir, "python3")
    files = []
    for s in hotplug_scripts():
        data = s.text(python)
        files += [(t, data, 0o755) for t in s.targets]
    for unit in sorted(SYSTEMD_DIR.glob("*.service")):
        files.append((os.path.join(unit_dir, unit.name), unit_text(unit, bindir), 0o644))
    files.append((os.path.join(completion_dir, "tvdctl"), completion_script.encode(), 0o644))
    return files


def cmd_install(args) -> int:
    destdir = args.destdir
    for opt in ("prefix", "unit_dir", "completion_dir"):
        if not os.path.isabs(getattr(args, opt)):
            raise UsageError(f"--{opt.replace('_', '-')} must be an absolute path (as on the Dom0)")
    try:
        files = plan(destdir, args.prefix, args.unit_dir, args.completion_dir,
                     completion.bash_script(args.tvdctl_parser))
        changed = [path for path, data, mode in files
                   if install_file(staged(destdir, path), data, mode)]
    except InstallError as e:
        raise UsageError(str(e)) from None
    for path, _, _ in files:
        print(f"{'installed' if path in changed else 'unchanged'} {path}")
    if changed and os.path.abspath(destdir) == "/":
        print("next: set TVD_HOST (and TVD_POLICY) in /etc/default/tvd-proxy, then "
              "systemctl daemon-reload && systemctl enable --now tvd-proxy; restart libvirtd "
              "if it runs (it reads hooks at start)", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    i = sub.add_parser("install", help="install vif-tvd, the libvirt hooks, the systemd units "
                                       "and bash completion")
    i.add_argument("--destdir", default="/", metavar="DIR",
                   help="stage everything under DIR (default /: the live system)")
    i.add_argument("--prefix", default=sys.prefix, metavar="DIR",
                   help="installation whose bin/ holds tvd-proxy, tvd-master and the python3 "
                        f"that imports xen_tvd (default: this one, {sys.prefix})")
    i.add_argument("--unit-dir", default=UNIT_DIR, metavar="DIR",
                   help=f"systemd unit directory (default {UNIT_DIR})")
    i.add_argument("--completion-dir", default=COMPLETION_DIR, metavar="DIR",
                   help=f"bash completion directory (default {COMPLETION_DIR})")
    i.set_defaults(func=cmd_install)
