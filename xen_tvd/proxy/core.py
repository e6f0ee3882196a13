"""The proxy's one control plane: the writer lock, the tables, converge, segment GC, handlers.

Every change to the Dom0 network happens here under `self.lock`, so parallel hotplug events are
serialised (the scripts are thin clients). What differs between standalone and master mode is
asked of the authority (authority.py); the kernel is reached only through the dataplane port
(dataplane_port.py). Requests arrive parsed (requests.py); handlers answer a body dict and an
optional rollback (run when the client is gone before the answer).

A TVD neither local nor needed by a local one (routes.needed) has no segment here:
`segment_grace` seconds after the last `vif-offline` that made it so, its vSwitch, uplink and
router leg are removed (the grace keeps a rebooting VM from paying for a teardown and rebuild).

libvirt network ports (ports.py): NICs libvirt attaches to a TVD vSwitch itself (qemu taps,
libxl's vif-bridge) are admitted by the network hook before libvirt creates them; the proxy
records them by libvirt's port UUID, counts them among the VM's TVDs and keeps their segment,
but cannot detach them (it never learns their interface name).
"""
from __future__ import annotations

import dataclasses
import threading
import time

from xen_tvd.desired.model import HostState, Router
from xen_tvd.desired.names import bridge_name
from xen_tvd.errors import Refused
from xen_tvd.log import log

from . import admission, answers, explain, observe, requests, routes, vifs as vif_ops
from . import ports as libvirt_ports
from .admission import Denied
from .authority import Authority
from .dataplane_port import DataplaneError, DataplanePort
from .protocol import VERSION, ProtocolError, decode_request
from .state import PortRecord, Registration, StateStore, VifRecord


class ProxyCore:
    def __init__(self, authority: Authority, dataplane: DataplanePort, state_dir: str,
                 segment_grace: float = 30.0, vif_drivers: frozenset[str] = frozenset()) -> None:
        self.authority = authority
        self.dataplane = dataplane
        self.host = authority.host
        self.store = StateStore(state_dir)
        self.lock = threading.Lock()
        self.regs: dict[str, Registration] = {}
        self.vifs: dict[str, VifRecord] = {}
        self.ports: dict[str, PortRecord] = {}   # libvirt network ports, by libvirt's port UUID
        self.checked: dict[str, float] = {}      # ifname -> when its membership was last checked
        self.applied: HostState | None = None    # what the kernel was last made to match
        self.segment_grace = segment_grace
        self.lingering: set[str] = set()         # TVDs with no local vif, kept until the GC
        self._gc_timer: threading.Timer | None = None
        # drivers accepted as vifs besides Xen's (devices.py): "veth" for the labs only
        self.vif_drivers = frozenset(vif_drivers)
        # --netns (one proxy per host namespace, the lab): the router namespace is named after
        # the host namespace, so two hosts on one machine never share one (main.py sets it)
        self.router_netns: str | None = None
        self.log_drops = 0                   # --log-drops: kernel log lines per second per rule
        self.counters = observe.Counters()       # status and metrics (observe.py)
        self.probes = explain.Probes()           # tvdctl explain --probe (explain.py)

    @property
    def policy(self):
        return self.authority.policy

    # what observe.py reports of master mode (None standalone)
    @property
    def link(self):
        return self.authority.link

    @property
    def bundle(self):
        return self.authority.bundle

    @property
    def revoked_msg(self) -> str | None:
        return self.authority.revoked_msg

    # ---- desired state -----------------------------------------------------------------------

    def needed(self, local: set[str]) -> set[str]:
        """Local TVDs plus what their routed components need here (routes.needed)."""
        return routes.needed(self.policy, self.host, local) if self.policy else set(local)

    def port_tvds(self) -> set[str]:
        """TVDs with an admitted libvirt port here: libvirt's tap sits on their vSwitch."""
        return {p.tvd for p in self.ports.values()}

    def desired(self, vifs, extra_local: set[str] = frozenset()) -> HostState:
        vifs = list(vifs)
        local = {v.tvd for v in vifs} | self.port_tvds() | set(extra_local)
        state = self.authority.desired([v.port() for v in vifs], local, set(self.lingering))
        if self.log_drops:
            state = dataclasses.replace(state, log_drops=self.log_drops)
        if self.router_netns is None:
            return state
        # a Router without legs still names the namespace, so apply() deletes this one
        r = state.router or Router(self.router_netns)
        return dataclasses.replace(state, router=dataclasses.replace(r, netns=self.router_netns))

    def converge(self, state: HostState, force: bool = False) -> None:
        """apply() when the desired state differs from what we last applied (or when forced).
        Ports are left out of the comparison: vifs are plugged one by one (plug_vif); every
        other field (segments, router legs, flow pairs, …) changes the kernel."""
        if not force and self.applied is not None \
                and dataclasses.replace(self.applied, ports=()) == dataclasses.replace(state, ports=()):
            return
        t0 = time.monotonic()
        try:
            report = self.dataplane.apply(state)
        except DataplaneError as e:
            self.applied = None
            self.counters.applied(time.monotonic() - t0, ok=False)
            raise Refused(str(e)) from None
        self.counters.applied(time.monotonic() - t0, ok=True)
        self.applied = state
        for w in report.warnings:
            log("warning", "apply-warning", detail=w)
        if report.changes:
            log("info", "apply", changes=len(report.changes), detail="; ".join(report.changes),
                ms=(time.monotonic() - t0) * 1000)

    def reconcile(self, force: bool = False) -> None:
        """Under the lock: converge on the current tables; a failure is logged, not raised."""
        try:
            self.converge(self.desired(self.vifs.values()), force=force)
        except Refused as e:
            log("error", "reconcile-failed", error=str(e))

    def release_segments(self) -> None:
        """Called under the lock after vifs went away: drop unused segments after the grace."""
        # a VM-less segment a remaining vif's routed component needs is in use, not lingering
        in_use = self.needed({v.tvd for v in self.vifs.values()} | self.port_tvds())
        if self.applied is not None:
            self.lingering |= {s.tvd for s in self.applied.segments} - in_use
        self.lingering -= in_use
        if not self.lingering:
            return
        if self.segment_grace <= 0:
            self._collect()
        elif self._gc_timer is None:
            self._gc_timer = threading.Timer(self.segment_grace, self._gc)
            self._gc_timer.daemon = True
            self._gc_timer.start()

    def keep_lingering(self, tvds: set[str]) -> None:
        """Under the lock: lingering TVDs outside `tvds` go at the next converge."""
        self.lingering &= tvds

    def _gc(self) -> None:
        with self.lock:
            self._gc_timer = None
            self._collect()

    def _collect(self) -> None:
        gone = sorted(self.lingering - self.needed({v.tvd for v in self.vifs.values()}
                                                   | self.port_tvds()))
        self.lingering = set()
        self.reconcile()
        if gone:
            log("info", "segments-released", tvds=",".join(gone))

    def save(self) -> None:
        try:
            self.store.save(self.regs, self.vifs, self.ports)
        except OSError as e:
            log("error", "state-save-failed", path=self.store.path, error=e.strerror or str(e))

    # ---- start: re-learn and reconcile without touching running VMs -------------------------

    def kernel_ports(self) -> dict[str, str]:
        """ifname -> TVD of every non-owned interface enslaved to one of our TVD bridges."""
        by_bridge = {bridge_name(t): t for t in (self.policy.tvds if self.policy else ())}
        out = {}
        for br, ports in self.dataplane.bridge_ports().items():
            tvd = by_bridge.get(br)
            if tvd is None:
                continue   # TVD gone from the policy: apply() removes the bridge
            for name in ports:
                out[name] = tvd
        return out

    def startup(self) -> None:
        # master mode: verify and parse the stored bundle before taking the lock; a big
        # policy takes seconds to read and requests must not wait for it (issue #16.5)
        loaded = self.authority.load()
        with self.lock:
            self.authority.install(loaded)
            self._relearn()

    def reload(self, policy) -> None:
        """Standalone SIGHUP: switch policy and reconcile in one critical section, so no
        hotplug is admitted against one policy and attached against the other."""
        with self.lock:
            self.authority.install(policy)
            self._relearn()

    def _relearn(self) -> None:
        self.regs, saved, self.ports, notes = self.store.load()
        for n in notes:
            log("info", "state", detail=n)
        attached = self.kernel_ports()
        vifs: dict[str, VifRecord] = {}
        for name, tvd in sorted(attached.items()):
            rec = saved.get(name)
            if rec is not None and rec.tvd == tvd:
                vifs[name] = rec
            else:
                vifs[name] = VifRecord(ifname=name, tvd=tvd)
                log("warning", "adopted", ifname=name, tvd=tvd,
                    detail="attached to a TVD vSwitch but not in the state file; kept")
        for name, rec in saved.items():
            if name not in vifs:
                log("info", "forgot", ifname=name, tvd=rec.tvd,
                    detail="no longer attached to its vSwitch")
        # Re-admit every kept vif under the (possibly new) policy; denied ones are left out
        # of the desired state, so apply() detaches them (fail closed).
        for name, rec in sorted(vifs.items()):
            try:
                self.admit(name, rec.tvd, rec.uuid, vifs, exclude=name)
            except Denied as e:
                log("warning", "revoked", ifname=name, tvd=rec.tvd, error=str(e))
                self.audit("detached", rec, str(e))
                del vifs[name]
        self.vifs = vifs
        self.recheck_ports()
        self.checked = {name: time.monotonic() for name in vifs}
        self.lingering = set()
        self.reconcile(force=True)
        self.save()
        log("info", "reconciled", host=self.host, vifs=len(vifs), registrations=len(self.regs),
            segments=",".join(s.tvd for s in (self.applied.segments if self.applied else ())))

    # ---- admission (callers hold the lock) ---------------------------------------------------

    def admit(self, what: str, tvd: str, uuid: str | None, vifs=None, exclude: str | None = None,
              new: bool = False, exclude_port: str | None = None, also: set[str] = frozenset()):
        """May VM `uuid` be in `tvd` now, with all its other TVDs (and `also`)? Denied if not.
        `exclude` (an ifname) / `exclude_port` (a libvirt port UUID) is the NIC being
        (re)admitted; `vifs` the vif table to count (default: the current one)."""
        vifs = self.vifs if vifs is None else vifs
        reg = self.regs.get(uuid) if uuid else None
        vm_tvds = admission.vm_tvds(uuid, reg, vifs, extra=tvd, exclude_ifname=exclude,
                                    ports=self.ports, exclude_port=exclude_port) | set(also)
        self.authority.admit(what, tvd, uuid, reg, vm_tvds, new)

    def readmit(self, ifname: str) -> None:
        """Admit an attached vif again (continual membership); Denied if it no longer passes."""
        rec = self.vifs[ifname]
        self.admit(ifname, rec.tvd, rec.uuid, exclude=ifname)
        self.checked[ifname] = time.monotonic()

    def detach(self, ifname: str, event: str, reason: str) -> VifRecord | None:
        """Detach a vif the proxy attached, forget it and audit `event`."""
        rec = self.vifs.get(ifname)
        self.fail_closed(ifname)
        self.checked.pop(ifname, None)
        if rec is not None:
            self.audit(event, rec, reason)
        return rec

    def detach_all(self, event: str, reason: str) -> None:
        for name, rec in sorted(self.vifs.items()):
            self.fail_closed(name)
            self.audit(event, rec, reason)
        self.vifs, self.lingering, self.checked = {}, set(), {}

    def fail_closed(self, ifname: str) -> None:
        """Detach a vif of this proxy's (or one just verified as the request's, devices.py)."""
        self.vifs.pop(ifname, None)
        try:
            self.dataplane.unplug(ifname)
        except DataplaneError as e:
            log("error", "detach-failed", ifname=ifname, error=str(e))

    def recheck_ports(self) -> None:
        libvirt_ports.recheck_logged(self)

    def audit(self, event: str, rec: VifRecord | None, reason: str = "", **extra) -> None:
        self.counters.event(event, rec.tvd if rec else extra.get("tvd"), reason,
                            rec.ifname if rec else None)
        reg = self.regs.get(rec.uuid) if rec is not None and rec.uuid else None
        fields = {"vm": rec.uuid if rec else None, "tvd": rec.tvd if rec else None,
                  "ifname": rec.ifname if rec else None, "name": reg.name if reg else None,
                  "reason": reason or None}
        fields.update(extra)
        self.authority.audit(event, **fields)

    # ---- operations --------------------------------------------------------------------------

    def op_ping(self, req: requests.Ping):
        return {"version": VERSION, "host": self.host}, None

    def op_status(self, req: requests.Status):
        return answers.status(self), None      # takes the lock for its copy only

    def op_register(self, req: requests.Register):
        reg = Registration(uuid=req.uuid, name=req.name.removesuffix("--incoming"),
                           properties=dict(req.properties), cert=req.cert, images=list(req.images),
                           tx_checksum_offload=req.tx_checksum_offload)
        for n in req.nics:
            if n.devid is None:
                reg.any_tvd = n.tvd
            else:
                reg.nics[n.devid] = n.tvd
        with self.lock:
            self.authority.check_registration(
                reg, f"VM {reg.name or reg.uuid}", sorted(reg.tvds()),
                admission.vm_tvds(reg.uuid, reg, self.vifs, ports=self.ports))
            self.regs[reg.uuid] = reg
            self.save()
            mtus = self._vm_mtus(reg.tvds())
        log("info", "register", uuid=reg.uuid, name=reg.name, tvds=",".join(sorted(reg.tvds())))
        return ({"mtu": mtus} if mtus else {}), None

    def _vm_mtus(self, tvds) -> dict[str, int]:
        """Each TVD's VM-facing MTU on this host as a vif would get it now (tvdctl xl create
        lowers a vif's mtu= above it, and says so). Empty when it cannot be planned now."""
        if not tvds:
            return {}
        try:
            state = self.desired(list(self.vifs.values()), extra_local=set(tvds))
        except Refused:
            return {}
        return {t: s.mtu for t in sorted(tvds) if (s := state.segment(t)) is not None}

    def op_unregister(self, req: requests.Unregister):
        with self.lock:
            found = self.regs.pop(req.uuid, None) is not None
            if found:
                self.save()
        log("info", "unregister", uuid=req.uuid, found=found)
        return {}, None

    def op_join(self, req: requests.Join):
        uuid, tvd = req.uuid, req.tvd
        with self.lock:
            reg = self.regs.get(uuid) or Registration(uuid=uuid)
            trial = Registration.from_json(reg.to_json())
            trial.left = [t for t in trial.left if t != tvd]
            trial.joined[tvd] = req.devid
            self.authority.check_registration(
                trial, f"VM {reg.name or uuid} joining {tvd}", [tvd],
                admission.vm_tvds(uuid, trial, self.vifs, ports=self.ports))
            self.regs[uuid] = trial
            self.save()
        log("info", "join", uuid=uuid, tvd=tvd, devid=req.devid)
        return {}, None

    def op_leave(self, req: requests.Leave):
        return vif_ops.leave(self, req.uuid, req.tvd)

    def op_vif_online(self, req: requests.VifOnline):
        return vif_ops.online(self, req)

    def op_vif_offline(self, req: requests.VifOffline):
        return vif_ops.offline(self, req.ifname)

    def op_port_online(self, req: requests.PortOnline):
        rec = PortRecord(port=req.port, uuid=req.uuid, tvd=req.tvd or "", name=req.name,
                         mac=req.mac, network=req.network)
        return libvirt_ports.online(self, rec, req.bridge)

    def op_port_offline(self, req: requests.PortOffline):
        return libvirt_ports.offline(self, req.port)

    def op_check(self, req: requests.Check):
        return libvirt_ports.check(self, req.uuid, list(req.tvds), req.name)

    def op_inspect(self, req: requests.Inspect):
        return explain.inspect(self, req), None

    def op_probe(self, req: requests.Probe):
        return (explain.arm(self, req) if req.phase == "arm" else explain.collect(self, req)), None

    HANDLERS = {requests.Ping: op_ping, requests.Status: op_status,
                requests.Register: op_register, requests.Unregister: op_unregister,
                requests.Join: op_join, requests.Leave: op_leave,
                requests.VifOnline: op_vif_online, requests.VifOffline: op_vif_offline,
                requests.PortOnline: op_port_online, requests.PortOffline: op_port_offline,
                requests.Check: op_check, requests.Inspect: op_inspect,
                requests.Probe: op_probe}

    def handle(self, data: bytes):
        """(response dict, rollback or None). Never raises."""
        op = "?"
        t0 = time.monotonic()
        try:
            obj = decode_request(data)
            op = obj["op"]
            req = requests.parse(obj)
            body, rollback = self.HANDLERS[type(req)](self, req)
            return {"v": VERSION, "ok": True, **body}, rollback
        except (ProtocolError, Denied, Refused) as e:
            msg = str(e).replace("\n", " ")
            log("warning", "refused", op=op, error=msg, ms=(time.monotonic() - t0) * 1000)
            return {"v": VERSION, "ok": False, "error": msg}, None
        except Exception as e:  # a bug must not kill the daemon or leave the client hanging
            log("error", "internal-error", op=op, error=f"{type(e).__name__}: {e}")
            return {"v": VERSION, "ok": False, "error": f"tvd-proxy internal error in {op}: "
                                                       f"{type(e).__name__}: {e}"}, None
