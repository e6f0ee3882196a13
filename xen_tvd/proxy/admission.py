"""Admission (paper 3.2, 4.5, 5.2 step 6): which TVD a vif joins, and may it.

A vif's TVD, first match wins (docs/proxy-protocol.md): the backend `bridge` key `tvd:<name>`;
the VM's registration for that devid, then for any devid; otherwise refused (fail closed).
Then: the TVD exists; this host satisfies M(t) with its capability-model properties (and M of
every TVD routed together with t, whose segment t's router leg pulls in); the VM
satisfies M(t) of every TVD it is in (registered, joined, attached right now, or through a
libvirt network port) together.
"""
from __future__ import annotations

from xen_tvd.planner import carriers
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import Policy

from . import routes
from .protocol import ProtocolError, tvd_from_bridge
from .state import PortRecord, Registration, VifRecord


class Denied(Exception):
    """Admission refused; the message is the one-line hotplug-error."""


def resolve_tvd(ifname: str, devid: int, bridge: str | None, reg: Registration | None) -> str:
    try:
        tvd = tvd_from_bridge(bridge)
    except ProtocolError as e:
        raise Denied(f"{ifname}: {e}") from None
    if tvd is None and reg is not None:
        tvd = reg.tvd_for(devid)
    if tvd is None:
        why = "the VM is not registered" if reg is None else "its registration names no TVD for it"
        raise Denied(f"no TVD for {ifname}: {why}; set bridge=tvd:<name> on the vif or register "
                     f"the VM (tvdctl xl create, tvdctl join)")
    return tvd


def check_tvd(policy: Policy, tvd: str) -> None:
    if tvd not in policy.tvds:
        known = ", ".join(sorted(policy.tvds)) or "none"
        raise Denied(f"unknown TVD '{tvd}': the policy defines {known}")


def check_host(policy: Policy, host: str, tvd: str) -> None:
    why = carriers.refusal(policy, host, tvd)
    if why is not None:
        raise Denied(f"host '{host}' may not carry TVD '{tvd}': {why} "
                     f"(host properties: {_props(policy.hosts[host].properties)})")


def check_routed(policy: Policy, host: str, tvd: str) -> None:
    """Standalone counterpart of the master's refusal (master/decide.py): a TVD routed
    together with one this host may not carry would pull that TVD's segment and router leg
    onto the host, so the TVD is refused here as a whole. An external in the component has
    no segment to carry: whether this host has a NIC on it is the planner's check."""
    for other in sorted(routes.needed(policy, host, {tvd}) - {tvd}):
        if other not in policy.tvds:
            continue
        try:
            check_host(policy, host, other)
        except Denied as e:
            raise Denied(f"TVD '{tvd}' is routed together with '{other}': {e}") from None


def check_plan(bundle, host: str, tvd: str, url: str) -> None:
    """Master mode: the master decided which TVDs this host carries (its plan has a segment)."""
    if tvd not in bundle.segments:
        why = bundle.refused.get(tvd) or "the master's plan for this host has no segment for it"
        raise Denied(f"host '{host}' may not carry TVD '{tvd}': {why} (master {url}, bundle "
                     f"generation {bundle.generation})")


def vm_tvds(uuid: str | None, reg: Registration | None, vifs: dict[str, VifRecord],
            extra: str | None = None, exclude_ifname: str | None = None,
            ports: dict[str, PortRecord] | None = None, exclude_port: str | None = None) -> set[str]:
    """Every TVD the VM is in: registered or joined, a vif attached now, a libvirt port."""
    out = set(reg.tvds()) if reg else set()
    for v in vifs.values():
        if uuid and v.uuid == uuid and v.ifname != exclude_ifname:
            out.add(v.tvd)
    for p in (ports or {}).values():
        if uuid and p.uuid == uuid and p.port != exclude_port:
            out.add(p.tvd)
    if extra:
        out.add(extra)
    return out


def check_vm(policy: Policy, uuid: str | None, reg: Registration | None, tvds: set[str],
             what: str) -> None:
    props = dict(reg.properties) if reg else {}
    if len(tvds) > 1 and not any(set(tvds) <= set(s) for s in policy.shared_membership):
        raise Denied(f"admission denied for {what}: VM {(reg.name if reg else '') or uuid} would be in "
                     f"TVDs {', '.join(sorted(tvds))} together, which no shared-membership set of "
                     f"the policy allows (a VM in several TVDs is an open channel between them)")
    adm = admit(policy, sorted(tvds), props)
    if not adm.admitted:
        who = f"VM {reg.name or uuid}" if reg else f"VM {uuid or '?'} (not registered, no properties)"
        scope = f"TVD {', '.join(sorted(tvds))}" if len(tvds) > 1 else f"TVD {next(iter(tvds))}"
        raise Denied(f"admission denied for {what}: {who} does not satisfy M(t) of {scope}: "
                     f"{adm.reason()} (VM properties: {_props(props)})")


def check_not_left(reg: Registration | None, tvd: str, what: str) -> None:
    if reg is not None and tvd in reg.left:
        raise Denied(f"admission denied for {what}: VM {reg.name or reg.uuid} left TVD '{tvd}' "
                     f"(tvdctl join {reg.uuid} {tvd} to rejoin)")


def _props(props: dict) -> str:
    if not props:
        return "none"
    return ", ".join(f"{p}:{a}" if a else p for p, a in sorted(props.items()))
