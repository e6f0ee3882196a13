"""Routed inter-TVD flows (pure): which TVDs get a card in which host's router, and the flow
filter plan. Design: docs/flow-control-design.md.

- A TVD gets a card ("leg") only if it has subnets and a permitted (open or controlled) pair
  with another TVD that has subnets. A TVD whose every pair is closed gets none: closed stays
  closed by topology.
- Cards come in connected components of the permitted-pair graph: a host whose VMs are in a
  TVD of a component gets a leg (and, if needed, a VM-less segment) for every TVD of that
  component. The reason is the anycast gateway: a router's own ARP request for a remote VM
  carries the gateway address, so that VM may start using this host's router for any
  destination; that router must then be able to route every pair the VM's TVD may use,
  replies included.
- The flow filter of a host knows every TVD with subnets (closed ones included, so traffic
  claiming their addresses is recognised) and the permitted pairs among its routed TVDs.
"""
from __future__ import annotations

import hashlib

from xen_tvd.dataplane.model import (FlowPlan, FlowRule, PairFilter, Router, RouterLeg,
                                     TvdSubnets)
from xen_tvd.policy.model import DUMMY_TVD, FlowKind, Policy

ROUTER_NS_PREFIX = "tvd-rtr-"
LEG_PORT_PREFIX = "tvr-"      # host side, a port of the TVD's vSwitch
LEG_PEER_PREFIX = "leg-"      # router side


def permitted_pairs(policy: Policy) -> list:
    """Open/controlled flows whose two TVDs both have subnets (only those can be routed)."""
    out = []
    for f in policy.flows:
        if f.kind is FlowKind.CLOSED or DUMMY_TVD in (f.src, f.dst):
            continue
        a, b = policy.tvds.get(f.src), policy.tvds.get(f.dst)
        if a is not None and b is not None and a.subnets and b.subnets:
            out.append(f)
    return sorted(out, key=lambda f: (f.src, f.dst))


def components(policy: Policy) -> dict[str, frozenset[str]]:
    """TVD with a card -> its connected component of the permitted-pair graph."""
    adj: dict[str, set[str]] = {}
    for f in permitted_pairs(policy):
        adj.setdefault(f.src, set()).add(f.dst)
        adj.setdefault(f.dst, set()).add(f.src)
    out: dict[str, frozenset[str]] = {}
    for start in sorted(adj):
        if start in out:
            continue
        seen, todo = {start}, [start]
        while todo:
            for n in adj[todo.pop()]:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        comp = frozenset(seen)
        for n in comp:
            out[n] = comp
    return out


def routed_tvds(policy: Policy, carried: dict[str, set[str]]) -> dict[str, set[str]]:
    """host -> the TVDs its router gets a leg for (empty set: no router)."""
    comp = components(policy)
    return {h: set().union(*(comp[t] for t in tvds if t in comp)) if tvds else set()
            for h, tvds in carried.items()}


def leg_mac(host: str, tvd: str) -> str:
    """Deterministic, locally administered unicast MAC, different on every host."""
    h = hashlib.sha256(f"xen-tvd-leg/{host}/{tvd}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def router(policy: Policy, host: str, tvds: set[str], bridge_of) -> Router | None:
    if not tvds:
        return None
    legs = []
    for name in sorted(tvds):
        t = policy.tvds[name]
        legs.append(RouterLeg(tvd=name, tvd_id=t.vlan, bridge=bridge_of(name),
                              port=f"{LEG_PORT_PREFIX}{t.vlan}", peer=f"{LEG_PEER_PREFIX}{t.vlan}",
                              mac=leg_mac(host, name), gateways=t.gateways, subnets=t.subnets))
    return Router(netns=ROUTER_NS_PREFIX + host, legs=tuple(legs))


def _rules(rules) -> tuple[FlowRule, ...]:
    return tuple(FlowRule(r.proto, r.ports) for r in rules)


def flow_plan(policy: Policy, tvds: set[str], bridge_of) -> FlowPlan | None:
    if not tvds:
        return None
    subnets = tuple(TvdSubnets(t.name, t.vlan, t.subnets,
                               bridge_of(t.name) if t.name in tvds else None)
                    for t in sorted(policy.tvds.values(), key=lambda t: t.name) if t.subnets)
    pairs = tuple(PairFilter(f.src, f.dst, policy.tvds[f.src].vlan, policy.tvds[f.dst].vlan,
                             f.kind is FlowKind.OPEN, _rules(f.sender), _rules(f.receiver),
                             f.replies)
                  for f in permitted_pairs(policy) if f.src in tvds and f.dst in tvds)
    return FlowPlan(subnets, pairs)
