"""The lab's processes: the VMs' TCP listeners and the daemons of the control plane
(tvd-master, one tvd-proxy per host). Every pid is cross-checked against /proc/PID/cmdline
(pids are reused: a pid file alone is never trusted), and a /proc scan finds strays a crash
left without a pid file."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from xen_tvd.lab import nsutil
from xen_tvd.lab.common import agent_env, cmdline
from xen_tvd.lab.ports import LAB_TCP_PORT
from xen_tvd.lab.state import run_dir
from xen_tvd.lab.topology import Topology

MASTER_MODULE = "xen_tvd.master"
PROXY_MODULE = "xen_tvd.proxy.main"


def cmdline_args(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in cmdline(pid).split(b"\0") if a]


# ---- the VMs' TCP listeners -------------------------------------------------------------------

def _is_listener(pid: int, lab: str, vm: str | None = None) -> bool:
    cl = cmdline(pid)
    if b"xen_tvd.lab.agent\0listen" not in cl or b"\0--lab\0" + lab.encode() + b"\0" not in cl:
        return False
    return vm is None or b"\0--vm\0" + vm.encode() + b"=" in cl


def stray_listeners(lab: str) -> list[int]:
    """Listeners of lab `lab` wherever they are (also in namespaces deleted behind our back)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_listener(int(p), lab)]


def listener_alive(pid: int, ns: str, lab: str, vm: str) -> bool:
    return nsutil.pid_in_ns(pid, ns) and _is_listener(pid, lab, vm)


def listeners(topo: Topology, old: dict, errors: list[str], ports: list[int] | None = None) -> dict:
    """VM name -> pid of its live listener; starts the missing ones, kills the rest."""
    out = {}
    good = set()
    for vm in topo.vms.values():
        pid = old.get(vm.name)
        if pid and listener_alive(pid, vm.ns, topo.name, vm.name):
            out[vm.name] = pid
            good.add(pid)
    # listeners of this lab that are not the live one of their VM (namespace recreated, VM
    # removed from the spec): kill them, so nothing runs that the state does not list
    nsutil.kill_pids([p for p in stray_listeners(topo.name) if p not in good])
    todo = [vm for vm in topo.vms.values() if vm.name not in out]
    if not todo:
        return out
    cmd = [sys.executable, "-m", "xen_tvd.lab.agent", "listen-many", "--lab", topo.name]
    for port in ports or [LAB_TCP_PORT]:
        cmd += ["--port", str(port)]
    for vm in todo:
        cmd += ["--vm", f"{vm.name}={vm.ns}"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=agent_env())
    try:
        got = json.loads(r.stdout)
    except ValueError:
        got = {}
    for vm in todo:
        pid = got.get(vm.name)
        if isinstance(pid, int):
            out[vm.name] = pid
        else:
            errors.append(f"VM {vm.name}: TCP listener did not start: "
                          f"{pid or (r.stderr.strip().splitlines() or ['no output'])[-1]}")
    return out


# ---- daemons ----------------------------------------------------------------------------------

def _is_daemon(pid: int, module: str, path: str) -> bool:
    """The pid is `python -m MODULE ... PATH ...`."""
    cl = cmdline_args(pid)
    return module in cl and path in cl


def running(pid_file: str, module: str, path: str) -> int | None:
    """The pid in `pid_file` if that process is `python -m MODULE ... PATH ...`."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_daemon(pid, module, path) else None


def strays(name: str) -> list[int]:
    """Masters and proxies of this lab wherever they are, pid file or not (crash leftovers)."""
    prefix = run_dir(name) + os.sep
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        cl = cmdline_args(int(p))
        if (MASTER_MODULE in cl or PROXY_MODULE in cl) and any(a.startswith(prefix) for a in cl):
            out.append(int(p))
    return out


def spawn(cmd: list[str], log_path: str, pid_file: str) -> subprocess.Popen:
    with open(log_path, "a") as logf:
        # own session: the daemon outlives `tvdctl lab up` and its terminal's signals
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             env=agent_env(), start_new_session=True)
    write_file(pid_file, f"{p.pid}\n")
    return p


def stop(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM (the daemons stop cleanly), SIGKILL whatever is still there after `timeout`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if not cmdline_args(pid):
                left.remove(pid)
        time.sleep(0.05)
    nsutil.kill_pids(left)


def last_line(text: str, default: str = "no output") -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else default


def log_tail(path: str) -> str:
    try:
        with open(path) as f:
            return last_line(f.read()[-4000:])
    except OSError:
        return "no log"


def write_file(path: str, text: str, mode: int = 0o600) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
