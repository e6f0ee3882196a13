"""What the lab's modules share: where lab state lives, the lab's error type, and running
this package's own Python in a namespace."""
from __future__ import annotations

import os
import sys
from typing import Callable

STATE_DIR = os.environ.get("XEN_TVD_LAB_STATE_DIR", "/run/xen-tvd/lab")

Log = Callable[[str], None]


class LabError(Exception):
    """One line (or one line per problem) for the user; never a traceback."""


START_TIMEOUT_DEFAULT = 30.0
START_TIMEOUT_MAX = 3600.0


def start_timeout() -> float:
    """Seconds the lab waits for a daemon it started (tvd-proxy, tvd-master, etcd) to answer:
    30, or XEN_TVD_LAB_START_TIMEOUT where interpreters start slowly (emulated CPUs: tier 2)."""
    raw = os.environ.get("XEN_TVD_LAB_START_TIMEOUT", "").strip()
    if not raw:
        return START_TIMEOUT_DEFAULT
    try:
        t = float(raw)
    except ValueError:
        t = 0.0
    if not 0 < t <= START_TIMEOUT_MAX:
        raise LabError(f"XEN_TVD_LAB_START_TIMEOUT={raw!r}: give seconds, more than 0 and at most "
                       f"{START_TIMEOUT_MAX:g}")
    return t


def _pkg_root() -> str:
    import xen_tvd
    return os.path.dirname(os.path.dirname(os.path.abspath(xen_tvd.__file__)))


def agent_cmd(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "xen_tvd.lab.agent", *args]


def agent_env() -> dict:
    env = dict(os.environ)
    root = _pkg_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cmdline(pid: int) -> bytes:
    """/proc/PID/cmdline (NUL-separated), or b"" if the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
