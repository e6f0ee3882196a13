"""The proxy proper: request handlers, the writer lock, reconcile on start, the socket server.

Every change to the Dom0 network happens in `Proxy` under `self.lock`, so parallel hotplug
events are serialised here (the scripts are thin clients). Desired state for this host, in
standalone mode:

    plan(policy, {me: admitted ports}, extra={me: local TVDs,
                                              every other policy host: the TVDs it may carry
                                              of those this host needs})

where "needs" (routes.needed) is the local TVDs plus their routed components, whose router
legs and VM-less segments the planner adds; so each such TVD's VXLAN/VLAN uplink points at the
other hosts of the capability model. A TVD neither local nor needed by a local one has no
segment here: `segment_grace` seconds after the last `vif-offline` that made it so, its
vSwitch, uplink and router leg are removed (the grace keeps a rebooting VM from paying for a
teardown and rebuild).

Master mode (`link` set, docs/master-protocol.md): policy, segments, underlay peers, router
legs and flow pairs come from the master's signed bundle (the master decided the mechanisms,
the proxy keeps what its local TVDs need by the same routes.needed rule); VM properties come from
evidence the proxy checks itself (evidence.py); every decision is audited through the link's
spool; sessions.py re-checks members. No bundle in force = no segments and every admission
refused (fail closed).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import socketserver
import struct
import threading
import time

from xen_tvd.dataplane import DataplaneError, apply, plug_vif, unplug_vif
from xen_tvd.dataplane.model import HostState, Router
from xen_tvd.dataplane.netlink import BRIDGE_PREFIX, Links, open_ipr
from xen_tvd.planner import PlanError, bridge_name, plan
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import Policy

from . import admission
from . import routes
from . import sessions
from .admission import Denied
from .evidence import DigestCache, EvidenceError, vm_properties
from .log import log
from .protocol import (IFNAME_RE, MAX_REQUEST, TVD_RE, UUID_RE, VERSION, ProtocolError,
                       decode_request, encode)
from .state import Registration, StateStore, VifRecord


class Refused(Exception):
    """Any refusal with a one-line message (bad request, denied, plan or dataplane failure)."""


def _int(req: dict, key: str, required: bool = True) -> int | None:
    v = req.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProtocolError(f"'{key}' must be a non-negative integer, got {v!r}")
    return v


MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def _mac(value) -> str | None:
    """The backend `mac` key, lower-cased; None when libxl wrote none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise ProtocolError(f"'mac' must be a MAC address like 00:16:3e:00:00:01, got {value!r}")
    return value.lower()


def _addresses(value) -> list[str] | None:
    """The backend `ip` key (xl.cfg ip=): space-separated addresses; None when not declared."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"'ip' must be a string of space-separated addresses, got {value!r}")
    out = []
    for item in value.split():
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ProtocolError(f"backend ip key {value!r}: {item!r} is not an IP address; fix "
                                "ip= in the VM's vif config") from None
    return out or None


def _str(req: dict, key: str, pattern=None, required: bool = True) -> str | None:
    v = req.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
        raise ProtocolError(f"'{key}' is missing or malformed: {v!r}")
    return v


class Proxy:
    def __init__(self, policy: Policy | None, host: str, state_dir: str, segment_grace: float = 30.0,
                 link=None) -> None:
        if link is None and host not in policy.hosts:
            raise RuntimeError(f"host '{host}' is not in the policy's capability model "
                               f"(hosts: {', '.join(sorted(policy.hosts)) or 'none'})")
        self.policy = policy
        self.link = link                 # MasterLink in master mode, None standalone
        self.bundle = None               # master mode: the verified Bundle in force
        self.revoked_msg: str | None = None
        self.checked: dict[str, float] = {}   # ifname -> when its membership was last checked
        self.digests = DigestCache()          # image digests (sessions.py re-hashes them)
        self.host = host
        self.store = StateStore(state_dir)
        self.lock = threading.Lock()
        self.regs: dict[str, Registration] = {}
        self.vifs: dict[str, VifRecord] = {}
        self.applied: HostState | None = None   # what the kernel was last made to match
        self.segment_grace = segment_grace
        self.lingering: set[str] = set()         # TVDs with no local vif, kept until the GC
        self._gc_timer: threading.Timer | None = None
        # --netns (one proxy per host namespace, the lab): the router namespace is named after
        # the host namespace, so two hosts on one machine never share one (main.py sets it)
        self.router_netns: str | None = None

    # ---- desired state -----------------------------------------------------------------------

    def _host_carries(self, host: str, tvd: str) -> bool:
        return admit(self.policy, [tvd], dict(self.policy.hosts[host].properties)).admitted

    def _needed(self, local: set[str]) -> set[str]:
        """Local TVDs plus what their routed components need here (routes.needed)."""
        return routes.needed(self.policy, self.host, local) if self.policy else set(local)

    def desired(self, vifs, extra_local: set[str] = frozenset()) -> HostState:
        if self.link is not None:
            state = self._desired_master(list(vifs), extra_local)
        else:
            state = self._desired_standalone(list(vifs), extra_local)
        if self.router_netns is None:
            return state
        # a Router without legs still names the namespace, so apply() deletes this one
        r = state.router or Router(self.router_netns)
        return dataclasses.replace(state, router=dataclasses.replace(r, netns=self.router_netns))

    def _desired_standalone(self, vifs, extra_local) -> HostState:
        ports = [v.port() for v in vifs]
        local = {v.tvd for v in vifs} | set(extra_local) | {t for t in self.lingering
                                                           if t in self.policy.tvds}
        extra = {self.host: local}
        # the other hosts are segment peers for every TVD this host carries, VM-less routed
        # ones included: a beta VM elsewhere is reached over beta's segment even from a host
        # that only has alpha VMs (and peers that may carry beta but not alpha count too)
        need = self._needed(local)
        for h in self.policy.hosts:
            if h != self.host:
                extra[h] = {t for t in need if self._host_carries(h, t)}
        try:
            states = plan(self.policy, {self.host: ports}, extra)
        except PlanError as e:
            raise Refused(str(e)) from None
        return states.get(self.host, HostState(host=self.host))

    def _desired_master(self, vifs, extra_local) -> HostState:
        """The master's segments for the TVDs with a local vif (plus lingering / about to be),
        the admitted ports, the master's underlay peers; NIC settings only for NICs a local
        segment uses, as the planner does in standalone mode."""
        b = self.bundle
        if b is None:
            return HostState(host=self.host, underlay_peers=())
        local = {v.tvd for v in vifs} | set(extra_local) | self.lingering
        # the master planned every TVD this host may carry; keep what the local ones need,
        # by the same rule the planner applies in standalone mode
        segs = tuple(b.segments[t] for t in sorted(self._needed(local)) if t in b.segments)
        router, flows = routes.narrow(b.router, b.flows, {s.tvd for s in segs})
        nics = {getattr(s.uplink, "underlay_dev", None) or getattr(s.uplink, "phys_dev", None)
                for s in segs if s.uplink is not None}
        return HostState(host=self.host, segments=segs,
                         ports=tuple(sorted((v.port() for v in vifs if v.tvd in b.segments),
                                            key=lambda p: p.ifname)),
                         vlan_offload_off=tuple(n for n in b.vlan_offload_off if n in nics),
                         underlay_mtu={n: m for n, m in b.underlay_mtu.items() if n in nics},
                         underlay_peers=b.underlay_peers, router=router, flows=flows)

    def converge(self, state: HostState, force: bool = False) -> None:
        """apply() when the desired state differs from what we last applied (or when forced).
        Ports are left out of the comparison: vifs are plugged one by one (plug_vif); every
        other field (segments, router legs, flow pairs, …) changes the kernel."""
        if not force and self.applied is not None \
                and dataclasses.replace(self.applied, ports=()) == dataclasses.replace(state, ports=()):
            return
        t0 = time.monotonic()
        try:
            report = apply(state)
        except DataplaneError as e:
            self.applied = None
            raise Refused(str(e)) from None
        self.applied = state
        for w in report.warnings:
            log("warning", "apply-warning", detail=w)
        if report.changes:
            log("info", "apply", changes=len(report.changes), detail="; ".join(report.changes),
                ms=(time.monotonic() - t0) * 1000)

    def release_segments(self) -> None:
        """Called under the lock after vifs went away: drop unused segments after the grace."""
        # a VM-less segment a remaining vif's routed component needs is in use, not lingering
        in_use = self._needed({v.tvd for v in self.vifs.values()})
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

    def _gc(self) -> None:
        with self.lock:
            self._gc_timer = None
            self._collect()

    def _collect(self) -> None:
        gone = sorted(self.lingering - self._needed({v.tvd for v in self.vifs.values()}))
        self.lingering = set()
        try:
            self.converge(self.desired(self.vifs.values()))
        except Refused as e:
            log("error", "reconcile-failed", error=str(e))
        if gone:
            log("info", "segments-released", tvds=",".join(gone))

    def save(self) -> None:
        try:
            self.store.save(self.regs, self.vifs)
        except OSError as e:
            log("error", "state-save-failed", path=self.store.path, error=e.strerror or str(e))

    # ---- start: re-learn and reconcile without touching running VMs -------------------------

    def kernel_ports(self) -> dict[str, str]:
        """ifname -> TVD of every non-owned interface enslaved to one of our TVD bridges."""
        by_bridge = {bridge_name(t): t for t in (self.policy.tvds if self.policy else ())}
        out = {}
        with open_ipr(None) as ipr:
            links = Links(ipr)
            for br in list(links.by_name.values()):
                if br.owned and br.kind == "bridge" and br.name.startswith(BRIDGE_PREFIX):
                    tvd = by_bridge.get(br.name)
                    if tvd is None:
                        continue   # TVD gone from the policy: apply() removes the bridge
                    for m in links.members(br.index):
                        if not m.owned:
                            out[m.name] = tvd
        return out

    def reload(self, policy: Policy) -> None:
        """SIGHUP: switch policy and reconcile in one critical section, so no hotplug is
        admitted against one policy and attached against the other."""
        with self.lock:
            self.policy = policy
            self._startup_locked()

    def startup(self) -> None:
        with self.lock:
            self._startup_locked()

    def _startup_locked(self) -> None:
        if self.link is not None:
            # the stored bundle is verified again: a tampered one is none at all (fail closed)
            self.bundle = None if self.revoked_msg else self.link.load_stored()
            self.policy = self.bundle.policy if self.bundle else None
        self.regs, saved, notes = self.store.load()
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
                self._admit(name, rec.tvd, rec.uuid, vifs, exclude=name)
            except Denied as e:
                log("warning", "revoked", ifname=name, tvd=rec.tvd, error=str(e))
                self.audit("detached", rec, str(e))
                del vifs[name]
        self.vifs = vifs
        self.checked = {name: time.monotonic() for name in vifs}
        self.lingering = set()
        try:
            self.converge(self.desired(vifs.values()), force=True)
        except Refused as e:
            log("error", "reconcile-failed", error=str(e))
        self.save()
        log("info", "reconciled", host=self.host, vifs=len(vifs), registrations=len(self.regs),
            segments=",".join(s.tvd for s in (self.applied.segments if self.applied else ())))

    # ---- admission ---------------------------------------------------------------------------

    def _admit(self, what: str, tvd: str, uuid: str | None, vifs, exclude: str | None = None,
               new: bool = False):
        if self.link is not None:
            return self._admit_master(what, tvd, uuid, vifs, exclude, new)
        reg = self.regs.get(uuid) if uuid else None
        admission.check_tvd(self.policy, tvd)
        admission.check_not_left(reg, tvd, what)
        admission.check_host(self.policy, self.host, tvd)
        admission.check_routed(self.policy, self.host, tvd)
        if uuid is not None:   # adopted vifs with no record: the VM was admitted before
            tvds = admission.vm_tvds(uuid, reg, vifs, extra=tvd, exclude_ifname=exclude)
            tvds = {t for t in tvds if t in self.policy.tvds} | {tvd}
            admission.check_vm(self.policy, uuid, reg, tvds, what)

    # ---- master mode: bundle, evidence, audit -----------------------------------------------

    def _bundle_or_refuse(self):
        if self.bundle is None:
            if self.revoked_msg:
                raise Denied(self.revoked_msg)
            err = f" (last error: {self.link.last_error})" if self.link.last_error else ""
            raise Denied(f"no valid policy bundle from master {self.link.url} yet{err}; check the "
                         "master and 'journalctl -u tvd-proxy' (event=bundle-refused)")
        return self.bundle

    def vm_evidence(self, uuid: str, reg: Registration | None) -> tuple[dict, list[str]]:
        """The VM's properties from the evidence it presented (certificate, image digests)."""
        b = self._bundle_or_refuse()
        try:
            return vm_properties(uuid, reg.cert if reg else None, reg.images if reg else [],
                                 self.link.ca, b.evidence, self.digests)
        except EvidenceError as e:
            raise Denied(f"VM {(reg.name if reg else '') or uuid}: {e}") from None

    def _admit_master(self, what, tvd, uuid, vifs, exclude, new):
        b = self._bundle_or_refuse()
        reg = self.regs.get(uuid) if uuid else None
        admission.check_tvd(b.policy, tvd)
        admission.check_not_left(reg, tvd, what)
        admission.check_plan(b, self.host, tvd, self.link.url)
        t = b.policy.tvds[tvd]
        if uuid is None:
            if t.membership:   # adopted, no record: nothing to check its evidence against
                raise Denied(f"{what}: no record of the VM behind it, so its evidence for "
                             f"TVD '{tvd}' cannot be checked")
        else:
            props, notes = self.vm_evidence(uuid, reg)
            trial = Registration.from_json(reg.to_json()) if reg else Registration(uuid=uuid)
            trial.properties = dict(props)
            tvds = admission.vm_tvds(uuid, reg, vifs, extra=tvd, exclude_ifname=exclude)
            tvds = {x for x in tvds if x in b.policy.tvds} | {tvd}
            try:
                admission.check_vm(b.policy, uuid, trial if reg else None, tvds, what)
            except Denied as e:
                raise Denied(f"{e}{'; ' + '; '.join(notes) if notes else ''}") from None
        if new:
            self._check_master_contact(tvd, t)

    def _check_master_contact(self, tvd: str, t) -> None:
        """The offline rule: new admissions only while the master was heard from within the
        TVD's session bound (or --offline-admission-grace); else ask it now, briefly."""
        bound = t.session_seconds or self.link.offline_grace
        age = self.link.contact_age()
        if age is not None and age <= bound:
            return
        if self.link.probe():
            return
        raise Denied(self.link.offline_message(tvd, bound, bool(t.session_seconds)))

    def audit(self, event: str, rec: VifRecord | None, reason: str = "", **extra) -> None:
        if self.link is None:
            return
        reg = self.regs.get(rec.uuid) if rec is not None and rec.uuid else None
        fields = {"vm": rec.uuid if rec else None, "tvd": rec.tvd if rec else None,
                  "ifname": rec.ifname if rec else None, "name": reg.name if reg else None,
                  "reason": reason or None}
        fields.update(extra)
        self.link.audit(event, **fields)

    def on_bundle(self, bundle) -> None:
        """A new verified bundle (already stored): re-check every vif against it, detach what
        fails, reconcile. apply() compares before writing, so segments and vifs of TVDs the
        bundle did not change are not touched."""
        with self.lock:
            old = self.bundle.generation if self.bundle else None
            self.bundle, self.policy, self.revoked_msg = bundle, bundle.policy, None
            sessions.recheck(self, sorted(self.vifs), "policy-change")
            self.lingering &= set(bundle.segments)
            try:
                self.converge(self.desired(self.vifs.values()))
            except Refused as e:
                log("error", "reconcile-failed", error=str(e))
            self.save()
        log("info", "bundle-applied", generation=bundle.generation, previous=old,
            tvds=",".join(sorted(bundle.segments)), vifs=len(self.vifs))

    def on_revoked(self, msg: str) -> None:
        """Host revoked: no bundle, no vif, no segment; everything refused until re-enrolled."""
        with self.lock:
            self.bundle, self.policy, self.revoked_msg = None, None, msg
            for name, rec in sorted(self.vifs.items()):
                self._fail_closed(name)
                self.audit("revoked", rec, "host revoked by the master")
            self.vifs, self.lingering, self.checked = {}, set(), {}
            try:
                self.converge(self.desired(()), force=True)
            except Refused as e:
                log("error", "reconcile-failed", error=str(e))
            self.save()

    # ---- operations --------------------------------------------------------------------------

    def op_ping(self, req):
        return {"version": VERSION, "host": self.host}, None

    def op_status(self, req):
        with self.lock:
            segs = []
            for s in (self.applied.segments if self.applied else ()):
                up = s.uplink
                segs.append({"tvd": s.tvd, "bridge": s.bridge, "mtu": s.mtu,
                             "uplink": None if up is None else type(up).__name__})
            out = {"host": self.host,
                   "vifs": [vars(self.vifs[k]) for k in sorted(self.vifs)],
                   "registrations": [self._reg_json(self.regs[k]) for k in sorted(self.regs)],
                   "segments": segs,
                   # routed inter-TVD flows: the TVDs with a card in this host's router
                   "router": [leg.tvd for leg in (self.applied.router.legs
                                                  if self.applied and self.applied.router else ())]}
            if self.link is not None:
                out["master"] = {"url": self.link.url,
                                 "generation": self.bundle.generation if self.bundle else None,
                                 "contact_age": self.link.contact_age(),
                                 "unreachable_since": self.link.unreachable_since,
                                 "revoked": self.revoked_msg is not None,
                                 "audit_spooled": self.link.spool.size()}
            return out, None

    @staticmethod
    def _reg_json(reg: Registration) -> dict:
        d = reg.to_json()
        if d.get("cert"):
            d["cert"] = "(PEM, %d bytes)" % len(d["cert"])   # status output stays readable
        return d

    def op_register(self, req):
        uuid = _str(req, "uuid", UUID_RE)
        name = req.get("name") or ""
        if not isinstance(name, str):
            raise ProtocolError("'name' must be a string")
        nics = req.get("nics") or []
        props = req.get("properties") or {}
        if not isinstance(nics, list) or not isinstance(props, dict):
            raise ProtocolError("'nics' must be a list and 'properties' an object")
        reg = Registration(uuid=uuid, name=name.removesuffix("--incoming"))
        for n in nics:
            if not isinstance(n, dict):
                raise ProtocolError("each nic must be an object {devid, tvd}")
            tvd = _str(n, "tvd", TVD_RE)
            devid = _int(n, "devid", required=False)
            if devid is None:
                reg.any_tvd = tvd
            else:
                reg.nics[devid] = tvd
        for p, a in props.items():
            if not isinstance(p, str) or not (a is None or isinstance(a, str)):
                raise ProtocolError("'properties' maps property names to an assurance kind or null")
            reg.properties[p] = a
        reg.cert, reg.images = _evidence_fields(req)
        with self.lock:
            what = f"VM {reg.name or uuid}"
            if self.link is not None:
                self._register_master(reg, what)
            else:
                for tvd in sorted(reg.tvds()):
                    admission.check_tvd(self.policy, tvd)
                    admission.check_host(self.policy, self.host, tvd)
                if reg.tvds():
                    vm = admission.vm_tvds(uuid, reg, self.vifs)
                    admission.check_vm(self.policy, uuid, reg, vm, what)
            self.regs[uuid] = reg
            self.save()
        log("info", "register", uuid=uuid, name=reg.name, tvds=",".join(sorted(reg.tvds())))
        return {}, None

    def _register_master(self, reg: Registration, what: str) -> None:
        """Master mode: self-asserted properties are ignored (kept for standalone only); the
        evidence must hold now and give M(t) of the TVDs the VM names."""
        b = self._bundle_or_refuse()
        if reg.properties:
            log("info", "register-properties-ignored", uuid=reg.uuid,
                detail="master mode: properties come from the VM certificate and image digests")
        try:
            for tvd in sorted(reg.tvds()):
                admission.check_tvd(b.policy, tvd)
                admission.check_plan(b, self.host, tvd, self.link.url)
            props, notes = self.vm_evidence(reg.uuid, reg)
            if reg.tvds():
                trial = Registration.from_json(reg.to_json())
                trial.properties = props
                try:
                    admission.check_vm(b.policy, reg.uuid, trial,
                                       admission.vm_tvds(reg.uuid, reg, self.vifs), what)
                except Denied as e:
                    raise Denied(f"{e}{'; ' + '; '.join(notes) if notes else ''}") from None
        except Denied as e:
            self.link.audit("denied", vm=reg.uuid, name=reg.name or None, reason=str(e))
            raise

    def op_unregister(self, req):
        uuid = _str(req, "uuid", UUID_RE)
        with self.lock:
            found = self.regs.pop(uuid, None) is not None
            if found:
                self.save()
        log("info", "unregister", uuid=uuid, found=found)
        return {}, None

    def op_join(self, req):
        uuid = _str(req, "uuid", UUID_RE)
        tvd = _str(req, "tvd", TVD_RE)
        devid = _int(req, "devid", required=False)
        with self.lock:
            reg = self.regs.get(uuid) or Registration(uuid=uuid)
            what = f"VM {reg.name or uuid} joining {tvd}"
            trial = Registration.from_json(reg.to_json())
            trial.left = [t for t in trial.left if t != tvd]
            trial.joined[tvd] = devid
            if self.link is not None:
                self._register_master(trial, what)
            else:
                admission.check_tvd(self.policy, tvd)
                admission.check_host(self.policy, self.host, tvd)
                admission.check_vm(self.policy, uuid, trial,
                                   admission.vm_tvds(uuid, trial, self.vifs), what)
            self.regs[uuid] = trial
            self.save()
        log("info", "join", uuid=uuid, tvd=tvd, devid=devid)
        return {}, None

    def op_leave(self, req):
        uuid = _str(req, "uuid", UUID_RE)
        tvd = _str(req, "tvd", TVD_RE)
        with self.lock:
            reg = self.regs.get(uuid) or Registration(uuid=uuid)
            reg.joined.pop(tvd, None)
            if tvd not in reg.left:
                reg.left.append(tvd)
            self.regs[uuid] = reg
            gone = sorted(v.ifname for v in self.vifs.values() if v.uuid == uuid and v.tvd == tvd)
            errors = []
            for name in gone:
                try:
                    unplug_vif(name)
                except DataplaneError as e:
                    errors.append(str(e))
                self.audit("detached", self.vifs[name], f"VM left TVD {tvd}")
                del self.vifs[name]
            self.release_segments()
            self.save()
        log("info", "leave", uuid=uuid, tvd=tvd, detached=",".join(gone))
        if errors:
            raise Refused("; ".join(errors))
        return {"detached": gone}, None

    def op_vif_online(self, req):
        ifname = _str(req, "ifname", IFNAME_RE)
        uuid = _str(req, "uuid", UUID_RE)
        _int(req, "domid")
        devid = _int(req, "devid")
        bridge = req.get("bridge")
        if bridge is not None and not isinstance(bridge, str):
            raise ProtocolError("'bridge' must be a string")
        vtype = req.get("type") or "vif"
        if vtype not in ("vif", "tap"):
            raise ProtocolError(f"'type' must be vif or tap, got {vtype!r}")
        mac = _mac(req.get("mac"))
        addresses = _addresses(req.get("ip"))
        record = VifRecord(ifname=ifname, tvd="", uuid=uuid, domid=req["domid"], devid=devid,
                           type=vtype, mac=mac, addresses=addresses)
        with self.lock:
            try:
                reg = self.regs.get(uuid)
                tvd = None
                tvd = admission.resolve_tvd(ifname, devid, bridge, reg)
                self._admit(ifname, tvd, uuid, self.vifs, exclude=ifname, new=True)
                others = [v for v in self.vifs.values() if v.ifname != ifname]
                state = self.desired(others, extra_local={tvd})
                self.converge(state)
                seg = state.segment(tvd)
                try:
                    record.tvd = tvd
                    plug_vif(record.port(), seg)
                except DataplaneError as e:
                    self.applied = None   # re-check the kernel on the next event
                    raise Refused(str(e)) from None
            except (Denied, Refused) as e:
                self._fail_closed(ifname)
                record.tvd = tvd or ""
                self.audit("denied", record, str(e))
                raise Refused(str(e)) from None
            self.vifs[ifname] = record
            self.checked[ifname] = time.monotonic()
            self.audit("admitted", record)
            self.save()
        name = reg.name if reg else ""
        log("info", "vif-online", ifname=ifname, tvd=tvd, uuid=uuid, vm=name, bridge=seg.bridge,
            mtu=seg.mtu)

        def rollback():
            with self.lock:
                if self.vifs.get(ifname) is not None and self.vifs[ifname].uuid == uuid:
                    self._fail_closed(ifname)
                    self.vifs.pop(ifname, None)
                    self.audit("detached", record, "the hotplug script went away before the answer")
                    self.save()
            log("warning", "vif-online-rolled-back", ifname=ifname,
                detail="the hotplug script went away before the answer; vif detached")
        return {"tvd": tvd, "bridge": seg.bridge, "mtu": seg.mtu}, rollback

    def _fail_closed(self, ifname: str) -> None:
        self.vifs.pop(ifname, None)
        try:
            unplug_vif(ifname)
        except DataplaneError as e:
            log("error", "detach-failed", ifname=ifname, error=str(e))

    def op_vif_offline(self, req):
        ifname = _str(req, "ifname", IFNAME_RE)
        with self.lock:
            rec = self.vifs.pop(ifname, None)
            err = None
            try:
                unplug_vif(ifname)
            except DataplaneError as e:
                err = str(e)
            if rec is not None:
                self.checked.pop(ifname, None)
                self.audit("detached", rec, "vif-offline (the domain's vif went away)")
                self.release_segments()
                self.save()
        log("info", "vif-offline", ifname=ifname, tvd=rec.tvd if rec else None, known=rec is not None)
        if err:
            raise Refused(err)
        return {}, None

    HANDLERS = {"ping": op_ping, "status": op_status, "register": op_register,
                "unregister": op_unregister, "join": op_join, "leave": op_leave,
                "vif-online": op_vif_online, "vif-offline": op_vif_offline}

    def handle(self, data: bytes):
        """(response dict, rollback or None). Never raises."""
        op = "?"
        t0 = time.monotonic()
        try:
            req = decode_request(data)
            op = req["op"]
            body, rollback = self.HANDLERS[op](self, req)
            return {"v": VERSION, "ok": True, **body}, rollback
        except (ProtocolError, Denied, Refused) as e:
            msg = str(e).replace("\n", " ")
            log("warning", "refused", op=op, error=msg, ms=(time.monotonic() - t0) * 1000)
            return {"v": VERSION, "ok": False, "error": msg}, None
        except Exception as e:  # a bug must not kill the daemon or leave the client hanging
            log("error", "internal-error", op=op, error=f"{type(e).__name__}: {e}")
            return {"v": VERSION, "ok": False, "error": f"tvd-proxy internal error in {op}: "
                                                       f"{type(e).__name__}: {e}"}, None


def _evidence_fields(req: dict) -> tuple[str | None, list[str]]:
    """`cert` (PEM text) and `images` (absolute paths) of a register request."""
    cert = req.get("cert")
    if cert is not None and (not isinstance(cert, str) or "BEGIN CERTIFICATE" not in cert):
        raise ProtocolError("'cert' must be the VM certificate as PEM text (xl.cfg tvd_cert names its file)")
    images = req.get("images") or []
    if not isinstance(images, list) or len(images) > 16 or not all(
            isinstance(p, str) and p.startswith("/") for p in images):
        raise ProtocolError("'images' must be a list of at most 16 absolute paths (kernel, ramdisk, disks)")
    return cert or None, list(images)


# ---- the socket server ---------------------------------------------------------------------------

def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        proxy: Proxy = self.server.proxy
        sock.settimeout(self.server.client_timeout)
        try:
            uid = peer_uid(sock)
            # read the request before answering even a refused peer: closing an AF_UNIX socket
            # with unread data makes the peer's recv fail with ECONNRESET instead of our answer
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REQUEST:
                    break
            if uid not in self.server.allowed_uids:
                log("warning", "refused-peer", uid=uid)
                sock.sendall(encode({"v": VERSION, "ok": False,
                                     "error": f"permission denied: tvd-proxy accepts root only (peer uid {uid})"}))
                return
            if not data:
                return
            resp, rollback = proxy.handle(data)
            try:
                sock.sendall(encode(resp))
            except OSError:
                if rollback is not None:
                    rollback()
        except OSError:
            pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 256   # a host boot plugs dozens of vifs at once

    def __init__(self, path: str, proxy: Proxy, allowed_uids=(0,), client_timeout: float = 30.0):
        self.proxy = proxy
        self.allowed_uids = set(allowed_uids)
        self.client_timeout = client_timeout
        self.sock_path = path
        _prepare_socket_path(path)
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass


def _prepare_socket_path(path: str) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, mode=0o755, exist_ok=True)
    if os.path.exists(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            os.unlink(path)   # stale socket of a dead proxy
        else:
            raise RuntimeError(f"another tvd-proxy is already listening on {path}")
        finally:
            s.close()
