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
- External networks (policy `externals:`, paper 4.2) are nodes of that graph like TVDs. A
  host's router gets an external leg for every external of its components, on the Dom0 NIC
  the host lists for it. A host whose router serves a component with an external but has no
  NIC on it is refused (PlanError): by the anycast argument above, any VM of the component
  may end up using this host's router, which could then not reach the external. Routing it
  through another host's router instead would need per-host leg addresses and an inter-router
  path that the design does not have; refusing keeps "what reaches the external" explicit.
"""
from __future__ import annotations

import hashlib

from xen_tvd.desired.model import (ExternalLeg, FlowPlan, FlowRule, PairFilter, Router,
                                   RouterLeg, TvdSubnets)
from xen_tvd.desired.names import (bridge_name, external_ifname, leg_peer, leg_port,
                                   router_netns)
from xen_tvd.policy.model import DUMMY_TVD, FlowKind, Policy

# External ids (chain names) start above every TVD id (VLAN 1..4094) and every conntrack zone
# flowfilter gives a TVD without subnets (4096 + n, n < 4094).
EXTERNAL_ID_BASE = 8192


class RoutingError(Exception):
    """A routed flow cannot be carried on these hosts; the message says what to change."""


def _subnets_of(policy: Policy, name: str) -> tuple[str, ...]:
    t = policy.tvds.get(name) or policy.externals.get(name)
    return t.subnets if t is not None else ()


def node_id(policy: Policy, name: str) -> int:
    """A TVD's id is its VLAN id; an external's is EXTERNAL_ID_BASE + its sorted position."""
    if name in policy.tvds:
        return policy.tvds[name].vlan
    return EXTERNAL_ID_BASE + sorted(policy.externals).index(name)


def permitted_pairs(policy: Policy) -> list:
    """Open/controlled flows whose two ends (TVDs, or a TVD and an external) both have subnets
    (only those can be routed)."""
    out = []
    for f in policy.flows:
        if f.kind is FlowKind.CLOSED or DUMMY_TVD in (f.src, f.dst):
            continue
        if f.src in policy.externals and f.dst in policy.externals:
            continue   # the verifier refuses these: no TVD router between two externals
        if _subnets_of(policy, f.src) and _subnets_of(policy, f.dst):
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
    """host -> the TVDs and externals its router gets a leg for (empty set: no router).
    Raises RoutingError for a host that would serve an external it has no NIC on."""
    comp = components(policy)
    out = {h: set().union(*(comp[t] for t in tvds if t in comp)) if tvds else set()
           for h, tvds in carried.items()}
    for h, names in sorted(out.items()):
        host = policy.hosts.get(h)
        for e in sorted(n for n in names if n in policy.externals):
            if host is not None and host.external_on(e) is not None:
                continue
            near = sorted(n for n in comp[e] if n in policy.tvds and n in carried[h])
            raise RoutingError(
                f"host '{h}' carries TVD {', '.join(near)}, which can reach external '{e}' "
                f"(flows in its component: {', '.join(sorted(n for n in comp[e] if n != e))}),"
                f" but has no NIC on '{e}': its router may serve any VM of those TVDs (anycast "
                f"gateway) and could not reach '{e}'; add hosts.{h}.externals: [{{external: "
                f"{e}, nic: NIC, address: ADDR/LEN}}] or place those VMs on a host that has one")
    return out


def leg_mac(host: str, tvd: str) -> str:
    """Deterministic, locally administered unicast MAC, different on every host."""
    h = hashlib.sha256(f"xen-tvd-leg/{host}/{tvd}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


def router(policy: Policy, host: str, tvds: set[str]) -> Router | None:
    if not tvds:
        return None
    exts = []
    for name in sorted(n for n in tvds if n in policy.externals):
        nic = policy.hosts[host].external_on(name)
        exts.append(ExternalLeg(external=name, ext_id=node_id(policy, name), nic=nic.nic,
                                ifname=external_ifname(name), mac=leg_mac(host, "ext/" + name),
                                address=nic.address, subnets=policy.externals[name].subnets,
                                gateway=nic.gateway))
    legs = []
    for name in sorted(n for n in tvds if n in policy.tvds):
        t = policy.tvds[name]
        legs.append(RouterLeg(tvd=name, tvd_id=t.vlan, bridge=bridge_name(name),
                              port=leg_port(t.vlan), peer=leg_peer(t.vlan),
                              mac=leg_mac(host, name), gateways=t.gateways, subnets=t.subnets))
    return Router(netns=router_netns(host), legs=tuple(legs), externals=tuple(exts))


def _rules(rules) -> tuple[FlowRule, ...]:
    return tuple(FlowRule(r.proto, r.ports) for r in rules)


def flow_plan(policy: Policy, tvds: set[str]) -> FlowPlan | None:
    if not tvds:
        return None
    subnets = tuple(TvdSubnets(t.name, t.vlan, t.subnets,
                               bridge_name(t.name) if t.name in tvds else None)
                    for t in sorted(policy.tvds.values(), key=lambda t: t.name) if t.subnets)
    # externals are recognised by address everywhere (so a closed TVD's traffic to them is
    # dropped on its vSwitch), whether or not this host has a leg on them
    subnets += tuple(TvdSubnets(e.name, node_id(policy, e.name), e.subnets, external=True)
                     for e in sorted(policy.externals.values(), key=lambda e: e.name))
    pairs = tuple(PairFilter(f.src, f.dst, node_id(policy, f.src), node_id(policy, f.dst),
                             f.kind is FlowKind.OPEN, _rules(f.sender), _rules(f.receiver),
                             f.replies)
                  for f in permitted_pairs(policy) if f.src in tvds and f.dst in tvds)
    return FlowPlan(subnets, pairs)
