"""The proxy's side of `tvdctl explain` (docs/explain.md, docs/proxy-protocol.md):

- `inspect`: what this host's kernel does for one exchange — the TVDs' segments as applied
  (the live plan) with their health, the endpoints' vifs and the vSwitch each is on, the
  destination MAC's forwarding entries, the flow filter's chains for the pair (compared with
  the plan) and the vifs' port security rules, all with their counters. Read-only; the
  proxy's lock is held only to copy its tables, never while the kernel is read.
- `probe`: one real packet (dataplane/probe.py), armed on every host involved, sent from the
  source vif by its host, collected on each: where it was dropped (nftables trace) or that it
  arrived. At most MAX_PROBES at a time; one that is never collected is removed after its
  timeout plus EXPIRE_GRACE.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field

from xen_tvd.desired.model import HostState
from xen_tvd.errors import Refused
from xen_tvd.log import log

from . import observe, requests
from .dataplane_port import DataplaneError

MAX_PROBES = 4
EXPIRE_GRACE = 30.0


# ---- inspect -------------------------------------------------------------------------------

def inspect(core, req: requests.Inspect) -> dict:
    with core.lock:
        state = core.applied or HostState(core.host)
        recs = {n: core.vifs.get(n) for n in req.vifs}
        names = {n: (core.regs[r.uuid].name if r and r.uuid in core.regs else None)
                 for n, r in recs.items()}
    try:
        k = core.dataplane.inspect(state, req.tvds, [(n, r.tvd if r else "")
                                                     for n, r in recs.items()], req.mac)
    except DataplaneError as e:
        raise Refused(f"reading the kernel failed: {e}") from None
    segs = {s.tvd: observe.segment_view(s, k["segments"].get(s.tvd, []))
            for s in state.segments if s.tvd in req.tvds}
    legs = {leg.tvd: list(leg.gateways)
            for leg in (state.router.legs if state.router else ()) if leg.tvd in req.tvds}
    vifs = {}
    for n, rec in recs.items():
        kv = k["vifs"].get(n) or {}
        vifs[n] = {"tvd": rec.tvd if rec else None, "vm": names[n],
                   "mac": rec.mac if rec else None,
                   "addresses": rec.addresses if rec else None,
                   "bridge": kv.get("bridge"), "up": kv.get("up", False),
                   "problem": kv.get("problem") if rec else
                   f"{n} is not a vif this proxy attached"}
    return {"host": core.host, "segments": segs,
            "missing": [t for t in req.tvds if t not in segs], "router": legs, "vifs": vifs,
            "fdb": k["fdb"], "flows": k["flows"], "rules": k["rules"]}


# ---- probe ---------------------------------------------------------------------------------

@dataclass
class _Entry:
    probe: object
    deadline: float
    spec: object
    state: HostState
    lock: threading.Lock = field(default_factory=threading.Lock)
    result: dict | None = None
    timer: threading.Timer | None = None


class Probes:
    """The armed probes of one proxy."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, _Entry] = {}

    def ids(self) -> set[str]:
        with self.lock:
            return {i[:8] for i in self.active}


def _subnets(state: HostState, tvd: str) -> list | None:
    """The TVD's subnets as this host's plan knows them; None: it has none (one segment)."""
    for t in (state.flows.tvds if state.flows else ()):
        if t.tvd == tvd:
            return [ipaddress.ip_network(n) for n in t.subnets]
    return None


def _next_hop(core, state: HostState, tvd: str, dst: str, dst_mac: str | None) -> str:
    """The MAC the source VM would send to: the destination's in its own TVD, else its
    gateway (this host's router leg of the TVD)."""
    nets = _subnets(state, tvd)
    if not nets or any(ipaddress.ip_address(dst) in n for n in nets):
        if dst_mac is None:
            raise Refused(f"probe: {dst} is in TVD {tvd}'s own segment: give the destination "
                          "NIC's MAC (dst_mac)")
        return dst_mac
    leg = next((l for l in (state.router.legs if state.router else ()) if l.tvd == tvd), None)
    if leg is None:
        raise Refused(f"probe: TVD {tvd} has no router leg on host {core.host}, so nothing "
                      f"routes {dst} from it (no-route)")
    return leg.mac


def arm(core, req: requests.Probe) -> dict:
    from xen_tvd.dataplane import ProbeSpec
    with core.lock:
        state = core.applied or HostState(core.host)
        recs = {n: core.vifs.get(n) for n in (*req.watch, *((req.inject,) if req.inject else ()))}
    for n, rec in recs.items():
        if rec is None:
            raise Refused(f"probe: {n} is not a vif this proxy attached; a probe sends from "
                          "and watches only those")
    src_mac = dst_mac = None
    if req.inject:
        rec = recs[req.inject]
        if rec.mac is None:
            raise Refused(f"probe: {req.inject} has no declared MAC (the backend mac key), so "
                          "the probe cannot be sent as its VM would send it")
        own = [a.split("/")[0] for a in rec.addresses or ()]
        if rec.addresses is not None and req.src not in own:
            raise Refused(f"probe: {req.src} is not an address of {req.inject} "
                          f"({', '.join(own) or 'none declared'})")
        src_mac = rec.mac
        dst_mac = _next_hop(core, state, rec.tvd, req.dst, req.dst_mac)
    try:
        spec = ProbeSpec(id=req.id, ip_id=req.ip_id, src_ip=req.src, dst_ip=req.dst,
                         proto=req.proto, port=req.port, inject=req.inject, src_mac=src_mac,
                         dst_mac=dst_mac, watch=req.watch,
                         router_netns=state.router.netns if state.router else None)
    except DataplaneError as e:
        raise Refused(f"probe: {e}") from None
    probes: Probes = core.probes
    with probes.lock:
        now = time.monotonic()
        if req.id in probes.active:
            raise Refused(f"probe {req.id} is already armed here")
        if len(probes.active) >= MAX_PROBES:
            raise Refused(f"probe: {MAX_PROBES} probes are running on host {core.host}; "
                          "try again in a few seconds")
        entry = _Entry(probe=None, deadline=now + req.timeout, spec=spec, state=state)
        probes.active[req.id] = entry
    try:
        entry.probe = core.dataplane.probe(spec)
        entry.probe.arm()
        entry.probe.send()
    except DataplaneError as e:
        if entry.probe is not None:
            entry.probe.close()
        with probes.lock:
            probes.active.pop(req.id, None)
        raise Refused(str(e)) from None
    entry.deadline = time.monotonic() + req.timeout
    entry.timer = threading.Timer(req.timeout + EXPIRE_GRACE, _expire, (probes, req.id))
    entry.timer.daemon = True
    entry.timer.start()
    log("info", "probe", id=req.id, phase="arm", src=req.src, dst=req.dst, proto=req.proto,
        port=req.port, inject=req.inject, watch=",".join(req.watch))
    return {"id": req.id, "armed": True, "sent": bool(req.inject), "dst_mac": dst_mac}


def _expire(probes: Probes, pid: str) -> None:
    with probes.lock:
        entry = probes.active.pop(pid, None)
    if entry is not None and entry.probe is not None:
        with entry.lock:
            entry.probe.close()
        log("warning", "probe-expired", id=pid)


def collect(core, req: requests.Probe) -> dict:
    probes: Probes = core.probes
    with probes.lock:
        entry = probes.active.get(req.id)
    if entry is None:
        raise Refused(f"no probe {req.id} armed here (never armed, collected, or expired)")
    with entry.lock:
        if entry.result is None:
            try:
                r = entry.probe.collect(entry.deadline)
            except (DataplaneError, OSError) as e:
                r = {"events": [], "arrived": [], "answered": None, "dropped": None,
                     "sent": entry.spec.inject is not None, "error": str(e)}
            problems = entry.probe.close()
            if entry.timer is not None:
                entry.timer.cancel()
            entry.result = dict(r, host=core.host, problems=problems,
                                drop=_drop(entry.state, entry.spec, r.get("dropped")))
    with probes.lock:
        probes.active.pop(req.id, None)
    return entry.result


def _drop(state: HostState, spec, dropped: dict | None) -> dict | None:
    """A traced drop in explain's words: {where, reason, from, to} (TVD names of the flow
    filter's pair; the side a rule judges by address, from the packet's address)."""
    if not dropped:
        return None
    c = dropped.get("as") or {}
    names = {t.tvd_id: t.tvd for t in (state.flows.tvds if state.flows else ())}

    def by_addr(ip: str) -> str:
        for t in (state.flows.tvds if state.flows else ()):
            if any(ipaddress.ip_address(ip) in ipaddress.ip_network(n) for n in t.subnets):
                return t.tvd
        return ip
    frm = names.get(c.get("src_id"), str(c.get("src_id"))) if c.get("src_id") is not None \
        else by_addr(spec.src_ip)
    to = names.get(c.get("dst_id"), str(c.get("dst_id"))) if c.get("dst_id") is not None \
        else by_addr(spec.dst_ip)
    out = {"where": c.get("where", "nftables"), "reason": c.get("reason"),
           "from": c.get("vif") or "", "to": ""}
    if out["where"] == "flow filter":
        out.update({"from": frm, "to": to})
    rule = dropped.get("rule") or {}
    out["rule"] = (f"{dropped.get('family')} {dropped.get('table')} {dropped.get('chain')} "
                   f"handle {dropped.get('handle')}"
                   + (f": {rule['rule']}" if rule.get("rule") else "")
                   + (f" (policy {dropped.get('policy')})" if dropped.get("type") == "policy"
                      else ""))
    return out
