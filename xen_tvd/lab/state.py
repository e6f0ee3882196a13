"""Where a lab's state lives, and which namespaces belong to it.

    STATE_DIR/<name>.json   the lab's state: spec, policy, namespaces, topology, listener pids,
                            the control plane's entry (written before anything is built)
    STATE_DIR/<name>.lock   one lab operation at a time (flock, released by the kernel on crash)
    STATE_DIR/<name>/       the control plane's directory: daemons' state, sockets, pid files,
                            logs (Paths)
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os

from xen_tvd.lab import nsutil
from xen_tvd.lab.common import STATE_DIR, LabError
from xen_tvd.lab.topology import HostRoute, LabHost, LabNic, LabVm, Topology, Wire, ns_names


def state_path(name: str) -> str:
    return os.path.join(STATE_DIR, f"{name}.json")


@contextlib.contextmanager
def locked(name: str):
    """One lab operation at a time per lab name (released by the kernel if we crash)."""
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(STATE_DIR, f"{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_state(name: str) -> dict | None:
    try:
        with open(state_path(name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LabError(f"{state_path(name)}: unreadable lab state ({e}); "
                       f"`tvdctl lab down` removes the lab anyway") from None


def save_state(name: str, state: dict) -> None:
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    tmp = state_path(name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path(name))


def remove_state(name: str) -> None:
    for p in (state_path(name), state_path(name) + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def require_state(name: str) -> dict:
    state = load_state(name)
    if state is None:
        raise LabError(f"lab {name} is not up (no {state_path(name)}); run `tvdctl lab up SPEC`")
    return state


def topology_to_json(t: Topology) -> dict:
    return dataclasses.asdict(t)


def topology_from_json(d: dict) -> Topology:
    hosts = {k: LabHost(h["name"], h["ns"], tuple(Wire(**w) for w in h["wires"]),
                        tuple(HostRoute(**r) for r in h["routes"]), h.get("router_ns"))
             for k, h in d["hosts"].items()}
    vms = {k: LabVm(v["name"], v["host"], v["domid"], v["ns"],
                    tuple(LabNic(**n) for n in v["nics"])) for k, v in d["vms"].items()}
    return Topology(d["name"], d["fabric_ns"], d["router_ns"], d["bridges"], d["bridge_mtu"],
                    tuple(Wire(**w) for w in d["router_wires"]), hosts, vms)


def lab_namespaces(name: str, state: dict | None = None) -> list[str]:
    """Namespaces of lab `name`: from its state, plus any found by name pattern and mark."""
    out = set()
    if state:
        out.update(state.get("namespaces", []))
    n = ns_names(name)
    for ns in nsutil.list_ns():
        if not (ns in (n["fabric"], n["router"]) or ns.startswith(n["host"])
                or ns.startswith(n["vm"])):
            continue
        mark = nsutil.ns_mark(ns)
        # another lab whose name extends ours ("lab" vs "lab-vm-x") marks its namespaces
        if mark in (name, "") or (mark is None and ns in out):
            out.add(ns)
    return sorted(out)


# ---- the control plane's directory ------------------------------------------------------------

def run_dir(name: str) -> str:
    return os.path.join(STATE_DIR, name)


class Paths:
    """Files of the lab's daemons (tvd-master, one tvd-proxy per host) under run_dir()."""

    def __init__(self, name: str) -> None:
        self.root = run_dir(name)
        self.master = os.path.join(self.root, "master")
        self.master_pid = os.path.join(self.root, "master.pid")
        self.master_log = os.path.join(self.root, "master.log")

    def proxy_dir(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}")

    def proxy_pid(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}.pid")

    def proxy_log(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}.log")

    def socket(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}.sock")

    def caps(self, host: str) -> str:
        return os.path.join(self.root, f"caps-{host}.json")

    def vm_cert(self, vm: str) -> str:
        """Prefix: tvd-master vm-cert writes PREFIX.pem and PREFIX.key."""
        return os.path.join(self.root, f"vm-{vm}")
