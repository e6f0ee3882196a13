"""Whole-policy semantic verification (pure): property order, membership, flows, capability.

Runs on a Policy that passed the schema layer and returns diagnostics; never raises.
"""
from __future__ import annotations

from xen_tvd.desired import transports
from xen_tvd.diagnostics import Collector
from xen_tvd.policy.flows import FlowMatrix
from xen_tvd.policy.indirect_report import check_indirect_flows
from xen_tvd.policy.lattice import PropertyOrder, joint_conflicts
from xen_tvd.policy.model import DUMMY_TVD, FlowKind, Policy


def verify(policy: Policy, diags: Collector, all_pairs: bool = False) -> None:
    """all_pairs: report every bypassed closed pair on its own, not in groups."""
    check_property_order(policy, diags)
    check_membership(policy, diags)
    check_flows(policy, diags, all_pairs)
    check_capabilities(policy, diags)


def check_property_order(policy: Policy, diags: Collector) -> None:
    order = PropertyOrder(policy.properties)
    for cyc in order.cycles():
        first = policy.properties[cyc[0]]
        diags.error(first.pos, "cycle in the property order: " + " > ".join(cyc)
                    + " (dominance must be a partial order)", "property-cycle")
    for p in policy.properties.values():
        if p.name in p.excludes:
            diags.error(p.pos, f"property '{p.name}' excludes itself", "property-conflict")
            continue
        for a, b in order.conflicts([p.name]):
            diags.error(p.pos, f"property '{p.name}' can never be held: it dominates both "
                               f"'{a}' and '{b}', which exclude each other", "property-conflict")


def check_membership(policy: Policy, diags: Collector) -> None:
    for t in policy.tvds.values():
        pairs = joint_conflicts(policy, [t.name])
        for a, b in pairs:
            diags.error(t.pos, f"TVD '{t.name}' can admit no machine: its requirements need "
                               f"both '{a}' and '{b}', which exclude each other",
                        "membership-conflict")
    for group in policy.shared_membership:
        known = [g for g in group if g in policy.tvds]
        if len(known) != len(group):
            continue
        singles = {p for t in group for p in joint_conflicts(policy, [t])}
        for a, b in joint_conflicts(policy, group):
            if (a, b) in singles:
                continue
            pos = policy.tvds[group[0]].pos
            diags.error(pos, "shared membership " + " + ".join(group) + " cannot be met by "
                             f"one VM: it needs both '{a}' and '{b}', which exclude each other",
                        "membership-conflict")


def check_flows(policy: Policy, diags: Collector, all_pairs: bool = False) -> None:
    matrix = FlowMatrix(policy)
    for group in policy.shared_membership:
        for a in group:
            for b in group:
                if a != b and a in policy.tvds and b in policy.tvds \
                        and matrix.kind(a, b) is FlowKind.CONTROLLED:
                    diags.warning(matrix.entry(a, b).pos,
                                  f"controlled flow {a} -> {b} is effectively open for VMs in "
                                  f"both (shared-membership {' + '.join(group)})",
                                  "shared-over-controlled")
    for f in policy.flows:
        if f.kind is FlowKind.CONTROLLED and not matrix.rules(f.src, f.dst):
            diags.warning(f.pos, f"controlled flow {f.src} -> {f.dst} passes nothing: its "
                                 "sender and receiver rules share no service", "empty-controlled")
        ext = [n for n in (f.src, f.dst) if n in policy.externals]
        if ext and f.kind is not FlowKind.CLOSED and (len(ext) == 2 or DUMMY_TVD in (f.src, f.dst)):
            diags.error(f.pos, f"{f.kind.value} flow {f.src} -> {f.dst} has no TVD router to "
                               "carry it: a flow with an external needs a TVD at its other end; "
                               "make it closed or remove it", "external-without-tvd")
        if DUMMY_TVD in (f.src, f.dst) and f.kind is FlowKind.CONTROLLED:
            diags.error(f.pos, "the dummy TVD enforces no policy of its own, so a controlled "
                               "flow with it has no sender/receiver to enforce one side",
                        "dummy-controlled")
    check_routable(policy, diags)
    check_indirect_flows(policy, diags, all_pairs)


def check_routable(policy: Policy, diags: Collector) -> None:
    """An open or controlled pair is carried by the router, which needs both TVDs' subnets.

    Checked once any TVD declares subnets (the policy uses routed flows, so a TVD left
    without them is a mistake). A policy with no subnets at all is the pre-routing form the
    paper's prototype ran and existing deployments use: no TVD gets a router card, so every
    pair is closed by topology whatever the matrix says (fail closed); docs/policy.md says so.
    """
    if not any(t.subnets for t in policy.tvds.values()):
        return
    for f in policy.flows:
        if f.kind is FlowKind.CLOSED:
            continue
        missing = [n for n in (f.src, f.dst)
                   if n in policy.tvds and not policy.tvds[n].subnets]
        if missing:
            names = " and ".join(f"'{n}'" for n in missing)
            diags.error(f.pos, f"{f.kind.value} flow {f.src} -> {f.dst} needs subnets on TVD "
                               f"{names}: add 'subnets: [CIDR, ...]' (disjoint from the other "
                               f"TVDs') under tvds.{missing[0]} so the router can give it a "
                               "gateway", "flow-without-subnets")


def check_capabilities(policy: Policy, diags: Collector) -> None:
    for h in policy.hosts.values():
        if h.nics and not any(t.capability.policy in h.capabilities for t in transports.ORDER):
            words = " nor ".join(sorted(t.capability.policy for t in transports.ORDER))
            diags.warning(h.pos, f"host '{h.name}' has neither {words} capability: it can "
                                 "carry TVD segments only for its own VMs", "host-capability")
    if policy.hosts:
        for t in policy.tvds.values():
            if "confidentiality" not in t.protection:
                continue
            encrypting = [x for x in transports.ORDER if "confidentiality" in x.protects]
            for h in policy.hosts.values():
                if any(not x.missing([h]) for x in encrypting):
                    continue       # it can ride an encrypting transport (WireGuard)
                for nic in h.nics:
                    net = policy.networks.get(nic.network)
                    if net and "confidentiality" not in net.trusted_for:
                        diags.warning(t.pos, f"TVD '{t.name}' requires confidentiality but "
                                             f"host '{h.name}' reaches others over network "
                                             f"'{net.name}', which is not trusted for it: the "
                                             "planner will refuse to place the TVD's segment "
                                             "there unless the host has the wireguard "
                                             "capability and a wireguard-key", "confidentiality")
                        break
