"""Bring a lab up, look at it, run things in it, take it down. State: /run/xen-tvd/lab/NAME.json.

Every VM NIC is attached through xen_tvd.dataplane.plug_vif, the same code path the Xen vif
hotplug handler uses; every host namespace is reconciled with dataplane.apply() from the
planner's desired state. The lab adds only what Xen and the physical network would provide:
namespaces, veth "wires", the fabric switches and the WAN router.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import subprocess
import sys
import time
from typing import Callable

from xen_tvd.lab import nsutil
from xen_tvd.lab.spec import LabSpec
from xen_tvd.lab.topology import LabHost, LabNic, LabVm, Topology, Wire, build, ns_names
from xen_tvd.policy.model import Policy

STATE_DIR = os.environ.get("XEN_TVD_LAB_STATE_DIR", "/run/xen-tvd/lab")
TCP_PORT = 7777
VM_TABLE_BASE = 100       # per-NIC routing table in multi-NIC VMs
VM_RULE_PRIO_BASE = 1000

Log = Callable[[str], None]


class LabError(Exception):
    """One line (or one line per problem) for the user; never a traceback."""


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


# ---- state ------------------------------------------------------------------------------------

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


def topology_to_json(t: Topology) -> dict:
    return dataclasses.asdict(t)


def topology_from_json(d: dict) -> Topology:
    hosts = {k: LabHost(h["name"], h["ns"], tuple(Wire(**w) for w in h["wires"]),
                        tuple(_route(r) for r in h["routes"]), h.get("router_ns"))
             for k, h in d["hosts"].items()}
    vms = {k: LabVm(v["name"], v["host"], v["domid"], v["ns"],
                    tuple(LabNic(**n) for n in v["nics"])) for k, v in d["vms"].items()}
    return Topology(d["name"], d["fabric_ns"], d["router_ns"], d["bridges"], d["bridge_mtu"],
                    tuple(Wire(**w) for w in d["router_wires"]), hosts, vms)


def _route(r: dict):
    from xen_tvd.lab.topology import HostRoute
    return HostRoute(**r)


# ---- which namespaces belong to a lab ---------------------------------------------------------

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


# ---- up ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class UpReport:
    timings: dict[str, float]
    errors: list[str]
    changes: int = 0


def up(spec: LabSpec, policy: Policy, log: Log = lambda s: None) -> UpReport:
    """Build (or repair) the lab; idempotent. Errors of single VMs are collected, not fatal."""
    from xen_tvd.dataplane import DataplaneError, apply, plug_vif
    from xen_tvd.dataplane.model import HostState
    from xen_tvd.planner import PlanError, plan

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    errors: list[str] = []
    topo = build(spec, policy)
    with locked(spec.name), nsutil.handles():
        old = load_state(spec.name)
        # Record intent first: a crash from here on still leaves down() a complete list.
        state = {"name": spec.name, "spec": spec.path, "policy": spec.policy_path,
                 "status": "building", "tcp_port": TCP_PORT,
                 "namespaces": sorted(set(topo.namespaces()) | set((old or {}).get("namespaces", []))),
                 "topology": topology_to_json(topo), "listeners": (old or {}).get("listeners", {})}
        save_state(spec.name, state)

        stale = [ns for ns in lab_namespaces(spec.name, old) if ns not in topo.namespaces()]
        if stale:
            nsutil.kill_pids(nsutil.pids_in_ns(stale))
            for ns in stale:
                nsutil.remove_ns(ns)
                log(f"removed stale namespace {ns}")
        for ns in topo.namespaces():
            nsutil.ensure_ns(ns, spec.name)
        timings["namespaces"] = time.monotonic() - t0

        t = time.monotonic()
        _fabric(topo)
        timings["fabric"] = time.monotonic() - t

        t = time.monotonic()
        # master mode: each tvd-proxy plans and applies from the master's bundle (control.py)
        master = spec.control == "master"
        ports = {h: [] for h in topo.hosts}
        for vm in topo.vms.values():
            ports.setdefault(vm.host, []).extend(_vif_port(n) for n in vm.nics
                                                 if n.tvd not in policy.externals)
        try:
            states = {} if master else plan(policy, ports)
        except PlanError as e:  # the planner refuses: the lab cannot be built as asked
            raise LabError(f"{spec.path}: error: planner refused the lab: {e}") from None
        timings["plan"] = time.monotonic() - t

        t = time.monotonic()
        for hname, host in topo.hosts.items() if not master else ():
            hs = states.get(hname) or HostState(hname)
            try:
                apply(hs, netns=host.ns)
            except DataplaneError as e:
                errors.append(f"host {hname}: apply failed: {e}")
        timings["apply"] = time.monotonic() - t

        t = time.monotonic()
        for vm in topo.vms.values():
            host = topo.hosts.get(vm.host)
            if host is None:
                errors.append(f"VM {vm.name}: host {vm.host} has no namespace")
                continue
            _vm_base(vm)
            hs = states.get(vm.host) or HostState(vm.host)
            for nic in vm.nics:
                if nic.tvd in policy.externals:
                    _external_machine(topo, vm, nic, policy)
                    continue
                _vm_nic(vm, nic, host)
                _vm_gateway(vm, nic, policy)
                if master:
                    continue    # attached through the proxy: register + vif-online
                seg = hs.segment(nic.tvd)
                if seg is None:
                    errors.append(f"VM {vm.name} {nic.eth}: the plan for host {vm.host} has no "
                                  f"segment for TVD {nic.tvd}; {nic.vif} left unattached")
                    continue
                cb = _mtu_cb(vm.ns, nic.eth)
                try:
                    plug_vif(_vif_port(nic), seg, netns=host.ns, frontend_mtu_cb=cb)
                except DataplaneError as e:
                    errors.append(f"VM {vm.name} {nic.eth}: plug_vif failed: {e}")
            _prune_vm_nics(vm)
        _prune_host_vifs(topo)
        timings["vms"] = time.monotonic() - t

        t = time.monotonic()
        from xen_tvd.lab import control
        if master:
            state["control"] = control.up(spec, policy, topo, errors, log)
            timings["control"] = time.monotonic() - t
        elif control.down(spec.name, log):   # switched back to direct mode
            state.pop("control", None)

        t = time.monotonic()
        from xen_tvd.lab.ports import listen_ports
        ports = listen_ports(policy)
        old_listeners = state.get("listeners", {})
        if (old or {}).get("listen_ports", [TCP_PORT]) != ports:
            old_listeners = {}     # the policy's ports changed: restart every listener
        state["listen_ports"] = ports
        state["listeners"] = _listeners(topo, old_listeners, errors, ports)
        timings["listeners"] = time.monotonic() - t

        state["namespaces"] = topo.namespaces()
        state["status"] = "up" if not errors else "degraded"
        state["errors"] = errors
        save_state(spec.name, state)
    timings["total"] = time.monotonic() - t0
    return UpReport(timings, errors)


def _fabric(topo: Topology) -> None:
    fab = topo.fabric_ns
    for net, br in topo.bridges.items():
        nsutil.ensure_bridge(fab, br, topo.bridge_mtu.get(net))
    wires = list(topo.router_wires) + [w for h in topo.hosts.values() for w in h.wires]
    for w in wires:
        nsutil.ensure_veth(w.ns, w.ifname, fab, w.fabric_port)
        nsutil.set_link(fab, w.fabric_port, mtu=w.mtu, master=topo.bridges[w.network], up=True)
        nsutil.set_link(w.ns, w.ifname, mtu=w.mtu, up=True)
        nsutil.ensure_addresses(w.ns, w.ifname, [w.address] if w.address else [])
    if topo.router_ns:
        nsutil.sysctl(topo.router_ns, "net/ipv4/ip_forward", "1")
        # the WAN router forwards unicast only: no multicast routing daemon, no mroute table
    for h in topo.hosts.values():
        nsutil.sysctl(h.ns, "net/ipv4/ip_forward", "0")
        for r in h.routes:
            nsutil.ensure_route(h.ns, r.dst, gateway=r.gateway, dev=r.dev)


def _vm_base(vm: LabVm) -> None:
    for key, val in (("net/ipv4/ip_forward", "0"),
                     # strong host model: a VM answers ARP only on the NIC owning the address,
                     # so a multi-TVD VM cannot make one TVD's address reachable from another
                     ("net/ipv4/conf/all/arp_ignore", "1"),
                     ("net/ipv4/conf/default/arp_ignore", "1"),
                     ("net/ipv4/conf/all/arp_announce", "2"),
                     ("net/ipv4/conf/default/arp_announce", "2")):
        nsutil.sysctl(vm.ns, key, val)


def _vm_nic(vm: LabVm, nic: LabNic, host: LabHost) -> None:
    nsutil.ensure_veth(host.ns, nic.vif, vm.ns, nic.eth)
    nsutil.set_link(vm.ns, nic.eth, address=nic.mac, up=True)
    nsutil.ensure_addresses(vm.ns, nic.eth, [nic.address])
    if len(vm.nics) > 1:
        # Several NICs in one IP subnet: answer from the NIC that owns the address.
        table = VM_TABLE_BASE + nic.devid
        net = ipaddress.ip_interface(nic.address).network
        nsutil.ensure_route(vm.ns, str(net), dev=nic.eth, table=table, prefsrc=nic.ip)
        nsutil.ensure_rule(vm.ns, nic.ip, table, VM_RULE_PRIO_BASE + nic.devid)


def _vm_gateway(vm: LabVm, nic: LabNic, policy: Policy) -> None:
    """A VM with one NIC in a TVD that has subnets routes everything else via its gateway
    (as DHCP would tell it), closed TVDs included: what stops it is the network, not the VM.
    Multi-NIC VMs (shared membership) keep their per-NIC tables and get no gateway."""
    tvd = policy.tvds.get(nic.tvd)
    gws = [g for g in (tvd.gateways if tvd else ()) if ipaddress.ip_interface(g).version == 4]
    if len(vm.nics) == 1 and gws:
        nsutil.ensure_route(vm.ns, "0.0.0.0/0", gateway=str(ipaddress.ip_interface(gws[0]).ip),
                            dev=nic.eth)


def _external_machine(topo: Topology, vm: LabVm, nic: LabNic, policy: Policy) -> None:
    """A machine on an external network: plugged into that network's switch, and routing the
    TVD subnets to its host's external leg, as the external network's own router would be
    told to (no NAT: TVD addresses are routed). What stops it is the flow policy, not this."""
    from xen_tvd.lab.topology import external_net
    nsutil.ensure_veth(topo.fabric_ns, nic.vif, vm.ns, nic.eth)
    nsutil.set_link(topo.fabric_ns, nic.vif, master=topo.bridges[external_net(nic.tvd)], up=True)
    nsutil.set_link(vm.ns, nic.eth, address=nic.mac, up=True)
    nsutil.ensure_addresses(vm.ns, nic.eth, [nic.address])
    leg = policy.hosts[vm.host].external_on(nic.tvd)
    via = str(ipaddress.ip_interface(leg.address).ip)
    for t in sorted(policy.tvds.values(), key=lambda t: t.name):
        for n in t.subnets:
            if ipaddress.ip_network(n).version == 4:
                nsutil.ensure_route(vm.ns, n, gateway=via, dev=nic.eth)


def _vif_port(nic) -> "VifPort":
    """The vif as Xen would describe it: its MAC and declared address (backend `mac`/`ip`),
    so port security pins the lab's VMs exactly as it pins real ones."""
    from xen_tvd.dataplane.model import VifPort
    return VifPort(nic.vif, nic.tvd, mac=nic.mac, addresses=(nic.ip,))


def _mtu_cb(vm_ns: str, eth: str):
    def cb(mtu: int) -> None:   # what xenstore's frontend `mtu` key does to a real guest
        nsutil.set_link(vm_ns, eth, mtu=int(mtu))
    return cb


def _prune_vm_nics(vm: LabVm) -> None:
    want = {n.eth for n in vm.nics}
    for link in nsutil.links(vm.ns):
        name = link.get_attr("IFLA_IFNAME")
        if nsutil.link_kind(link) == "veth" and name not in want:
            nsutil.delete_link(vm.ns, name)


def _prune_host_vifs(topo: Topology) -> None:
    from xen_tvd.dataplane import unplug_vif
    for hname, host in topo.hosts.items():
        want = {n.vif for vm in topo.vms.values() if vm.host == hname for n in vm.nics}
        for link in nsutil.links(host.ns):
            name = link.get_attr("IFLA_IFNAME") or ""
            if name.startswith("vif") and name not in want:
                with contextlib.suppress(Exception):
                    unplug_vif(name, netns=host.ns)   # the hotplug "offline" path
                nsutil.delete_link(host.ns, name)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _is_listener(pid: int, lab: str, vm: str | None = None) -> bool:
    cl = _cmdline(pid)
    if b"xen_tvd.lab.agent\0listen" not in cl or b"\0--lab\0" + lab.encode() + b"\0" not in cl:
        return False
    return vm is None or b"\0--vm\0" + vm.encode() + b"=" in cl


def stray_listeners(lab: str) -> list[int]:
    """Listeners of lab `lab` wherever they are (also in namespaces deleted behind our back)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_listener(int(p), lab)]


def _listener_alive(pid: int, ns: str, lab: str, vm: str) -> bool:
    return nsutil.pid_in_ns(pid, ns) and _is_listener(pid, lab, vm)


def _listeners(topo: Topology, old: dict, errors: list[str],
               ports: list[int] | None = None) -> dict:
    out = {}
    good = set()
    for vm in topo.vms.values():
        pid = old.get(vm.name)
        if pid and _listener_alive(pid, vm.ns, topo.name, vm.name):
            out[vm.name] = pid
            good.add(pid)
    # listeners of this lab that are not the live one of their VM (namespace recreated, VM
    # removed from the spec): kill them, so nothing runs that the state does not list
    nsutil.kill_pids([p for p in stray_listeners(topo.name) if p not in good])
    todo = [vm for vm in topo.vms.values() if vm.name not in out]
    if not todo:
        return out
    cmd = [sys.executable, "-m", "xen_tvd.lab.agent", "listen-many", "--lab", topo.name]
    for port in ports or [TCP_PORT]:
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


# ---- down -------------------------------------------------------------------------------------

def down(name: str, log: Log = lambda s: None) -> list[str]:
    """Remove every namespace, device and process of lab `name`. Idempotent."""
    with locked(name):
        try:
            state = load_state(name)
        except LabError:
            state = None
        nss = lab_namespaces(name, state)
        from xen_tvd.lab import control
        control.down(name, log)   # master and proxies first, with SIGTERM: they stop cleanly
        pids = set(nsutil.pids_in_ns(nss)) | set(stray_listeners(name))
        nsutil.kill_pids(pids)
        for ns in nss:
            nsutil.remove_ns(ns)   # its devices (veths, bridges, VXLAN) go with it
        for p in (state_path(name), state_path(name) + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        left = lab_namespaces(name)
        if left:
            raise LabError(f"lab {name}: namespaces still present after down: {', '.join(left)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(STATE_DIR, f"{name}.lock"))
    for ns in nss:
        log(f"removed {ns}")
    if pids:
        log(f"killed {len(pids)} process(es)")
    return nss


# ---- status / exec ----------------------------------------------------------------------------

def require_state(name: str) -> dict:
    state = load_state(name)
    if state is None:
        raise LabError(f"lab {name} is not up (no {state_path(name)}); run `tvdctl lab up SPEC`")
    return state


def status(name: str) -> dict:
    """Everything about a running lab, read back from the kernel."""
    with nsutil.handles():
        return _status(name)


def _status(name: str) -> dict:
    from xen_tvd.dataplane.model import OWNER_ALIAS_PREFIX
    state = require_state(name)
    topo = topology_from_json(state["topology"])
    out: dict = {"name": name, "status": state.get("status"), "spec": state.get("spec"),
                 "policy": state.get("policy"), "errors": state.get("errors", []),
                 "namespaces": [], "hosts": {}, "vms": {}}
    for ns in state.get("namespaces", []):
        out["namespaces"].append({"name": ns, "present": nsutil.ns_exists(ns)})
    for hname, host in topo.hosts.items():
        entry: dict = {"namespace": host.ns, "nics": [], "vswitches": [], "vifs": []}
        out["hosts"][hname] = entry
        if not nsutil.ns_exists(host.ns):
            entry["missing"] = True
            continue
        links = nsutil.links(host.ns)
        by_idx = {l["index"]: l for l in links}
        name_of = lambda i: by_idx[i].get_attr("IFLA_IFNAME") if i in by_idx else None  # noqa
        for w in host.wires:
            l = next((x for x in links if x.get_attr("IFLA_IFNAME") == w.ifname), None)
            entry["nics"].append({"name": w.ifname, "network": w.network, "address": w.address,
                                  "mtu": l.get_attr("IFLA_MTU") if l else None,
                                  "present": l is not None})
        for l in links:
            alias = l.get_attr("IFLA_IFALIAS") or ""
            if nsutil.link_kind(l) == "bridge" and alias.startswith(OWNER_ALIAS_PREFIX):
                members = [x for x in links if x.get_attr("IFLA_MASTER") == l["index"]]
                entry["vswitches"].append({
                    "name": l.get_attr("IFLA_IFNAME"), "alias": alias,
                    "mtu": l.get_attr("IFLA_MTU"), "state": l.get("state"),
                    "ports": [_port(x) for x in members]})
        for vm in topo.vms.values():
            if vm.host != hname:
                continue
            for nic in vm.nics:
                if not nic.vif.startswith("vif"):
                    continue   # a machine on an external network: on its LAN, not a vif here
                l = next((x for x in links if x.get_attr("IFLA_IFNAME") == nic.vif), None)
                v = {"name": nic.vif, "vm": vm.name, "domid": vm.domid, "eth": nic.eth,
                     "tvd": nic.tvd, "address": nic.address, "mac": nic.mac,
                     "present": l is not None}
                if l is not None:
                    v.update(bridge=name_of(l.get_attr("IFLA_MASTER")),
                             mtu=l.get_attr("IFLA_MTU"), state=l.get("state"))
                entry["vifs"].append(v)
    for vm in topo.vms.values():
        ve: dict = {"namespace": vm.ns, "host": vm.host, "domid": vm.domid,
                    "listener_pid": state.get("listeners", {}).get(vm.name), "nics": []}
        ve["listener_alive"] = bool(ve["listener_pid"] and
                                    _listener_alive(ve["listener_pid"], vm.ns, name, vm.name))
        links = nsutil.links(vm.ns) if nsutil.ns_exists(vm.ns) else []
        for nic in vm.nics:
            l = next((x for x in links if x.get_attr("IFLA_IFNAME") == nic.eth), None)
            ve["nics"].append({"name": nic.eth, "tvd": nic.tvd, "address": nic.address,
                               "mac": nic.mac, "vif": nic.vif, "present": l is not None,
                               "mtu": l.get_attr("IFLA_MTU") if l else None,
                               "state": l.get("state") if l else None})
        out["vms"][vm.name] = ve
    if state.get("control"):
        from xen_tvd.lab import control
        out["control"] = control.status(name, topo)
    return out


def _port(l) -> dict:
    d = {"name": l.get_attr("IFLA_IFNAME"), "kind": nsutil.link_kind(l) or "",
         "mtu": l.get_attr("IFLA_MTU")}
    info = l.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    if d["kind"] == "vxlan" and data is not None:
        d.update(vni=data.get_attr("IFLA_VXLAN_ID"), group=data.get_attr("IFLA_VXLAN_GROUP"),
                 local=data.get_attr("IFLA_VXLAN_LOCAL"))
    elif d["kind"] == "vlan" and data is not None:
        d.update(vid=data.get_attr("IFLA_VLAN_ID"))
    return d


def exec_in(name: str, vm: str, cmd: list[str]) -> int:
    state = require_state(name)
    topo = topology_from_json(state["topology"])
    if vm not in topo.vms:
        raise LabError(f"lab {name} has no VM {vm!r} (VMs: {', '.join(sorted(topo.vms))})")
    if not cmd:
        raise LabError("exec: no command given (tvdctl lab exec SPEC VM -- CMD...)")
    try:
        return subprocess.call(["ip", "netns", "exec", topo.vms[vm].ns, *cmd])
    except OSError as e:
        raise LabError(f"exec: {e}") from None
