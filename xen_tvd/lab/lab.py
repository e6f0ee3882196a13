"""Bring a lab up, take it down, run things in it. State: /run/xen-tvd/lab/NAME.json (state.py).

`up` builds what Xen and the physical network would provide (world.py), lets the spec's
control plane attach every vif (direct.py, or master.py with `control: master`), starts the
VMs' TCP listeners (processes.py) and records it all. The status and verify of a running
lab are status.py, verify.py and verify_admissions.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import threading
import time

from xen_tvd.lab import master, nsutil, processes, state, world
from xen_tvd.lab.common import STATE_DIR, LabError, Log
from xen_tvd.lab.ports import LAB_TCP_PORT, listen_ports
from xen_tvd.lab.spec import LabSpec
from xen_tvd.lab.topology import build
from xen_tvd.policy.model import Policy

TCP_PORT = LAB_TCP_PORT


@dataclasses.dataclass
class UpReport:
    timings: dict[str, float]
    errors: list[str]
    changes: int = 0


def up(spec: LabSpec, policy: Policy, log: Log = lambda s: None) -> UpReport:
    """Build (or repair) the lab; idempotent. Errors of single VMs are collected, not fatal."""
    from xen_tvd.lab.direct import Direct
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    errors: list[str] = []
    topo = build(spec, policy)
    with state.locked(spec.name), nsutil.handles():
        old = state.load_state(spec.name)
        # Record intent first: a crash from here on still leaves down() a complete list.
        st = {"name": spec.name, "spec": spec.path, "policy": spec.policy_path,
              "status": "building", "tcp_port": TCP_PORT,
              "namespaces": sorted(set(topo.namespaces()) | set((old or {}).get("namespaces", []))),
              "topology": state.topology_to_json(topo), "listeners": (old or {}).get("listeners", {})}
        state.save_state(spec.name, st)
        if _mode_switched(spec, old):
            master.down(spec.name, log)   # the other mode's daemons and their state go whole

        world.namespaces(spec.name, topo, state.lab_namespaces(spec.name, old), log)
        timings["namespaces"] = time.monotonic() - t0

        t = time.monotonic()
        world.fabric(topo)
        timings["fabric"] = time.monotonic() - t

        # direct mode: the hosts' tvd-proxies start while the VMs are built
        direct = None if spec.control == "master" else Direct(spec, policy, topo, log)
        if direct is not None:
            direct.start()

        t = time.monotonic()
        for vm in topo.vms.values():
            if vm.host not in topo.hosts:
                errors.append(f"VM {vm.name}: host {vm.host} has no namespace")
                continue
            world.vm(topo, vm, policy)
        timings["vms"] = time.monotonic() - t

        # the listeners start while the control plane attaches the vifs
        t = time.monotonic()
        ports = listen_ports(policy)
        old_listeners = st.get("listeners", {})
        if (old or {}).get("listen_ports", [TCP_PORT]) != ports:
            old_listeners = {}     # the policy's ports changed: restart every listener
        listener_errors: list[str] = []
        listening = _in_background(lambda: processes.listeners(topo, old_listeners,
                                                               listener_errors, ports))

        t = time.monotonic()
        if direct is not None:
            direct.join(errors)
            direct.attach(errors)
            st["control"] = direct.entry()
        else:
            st["control"] = master.up(spec, policy, topo, errors, log)
        # vifs of VMs the spec no longer has: the proxies took them offline; the devices go
        for hname, names in world.gone_vifs(topo).items():
            for ifname in names:
                world.destroy_vif(topo.hosts[hname], ifname)
        timings["control"] = time.monotonic() - t

        t = time.monotonic()
        st["listen_ports"] = ports
        st["listeners"] = listening()
        errors.extend(listener_errors)
        timings["listeners"] = time.monotonic() - t

        st["namespaces"] = topo.namespaces()
        st["status"] = "up" if not errors else "degraded"
        st["errors"] = errors
        state.save_state(spec.name, st)
    timings["total"] = time.monotonic() - t0
    return UpReport(timings, errors)


def _mode_switched(spec: LabSpec, old: dict | None) -> bool:
    """The lab ran with the other control mode (or, its state lost, a master is there)."""
    was = ((old or {}).get("control") or {}).get("mode")
    if was is None:
        return spec.control == "direct" and os.path.isdir(state.Paths(spec.name).master)
    return was != spec.control


def _in_background(fn):
    """Run fn() on a thread; returns a function that waits for and returns its result."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:   # re-raised by the waiter, on the calling thread
            box["error"] = e
    th = threading.Thread(target=run)
    th.start()

    def wait():
        th.join()
        if "error" in box:
            raise box["error"]
        return box["value"]
    return wait


def down(name: str, log: Log = lambda s: None) -> list[str]:
    """Remove every namespace, device and process of lab `name`. Idempotent."""
    with state.locked(name):
        try:
            old = state.load_state(name)
        except LabError:
            old = None
        nss = state.lab_namespaces(name, old)
        master.down(name, log)   # master and proxies first, with SIGTERM: they stop cleanly
        pids = set(nsutil.pids_in_ns(nss)) | set(processes.stray_listeners(name))
        nsutil.kill_pids(pids)
        for ns in nss:
            nsutil.remove_ns(ns)   # its devices (veths, bridges, VXLAN) go with it
        state.remove_state(name)
        left = state.lab_namespaces(name)
        if left:
            raise LabError(f"lab {name}: namespaces still present after down: {', '.join(left)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(STATE_DIR, f"{name}.lock"))
    for ns in nss:
        log(f"removed {ns}")
    if pids:
        log(f"killed {len(pids)} process(es)")
    return nss


def exec_in(name: str, vm: str, cmd: list[str]) -> int:
    st = state.require_state(name)
    topo = state.topology_from_json(st["topology"])
    if vm not in topo.vms:
        raise LabError(f"lab {name} has no VM {vm!r} (VMs: {', '.join(sorted(topo.vms))})")
    if not cmd:
        raise LabError("exec: no command given (tvdctl lab exec SPEC VM -- CMD...)")
    try:
        return subprocess.call(["ip", "netns", "exec", topo.vms[vm].ns, *cmd])
    except OSError as e:
        raise LabError(f"exec: {e}") from None
