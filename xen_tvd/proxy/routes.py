"""Which routed inter-TVD state a proxy instantiates: one rule for standalone and master mode.

A host gets a router leg (and, VM-less if need be, a segment) for every TVD of the routed
component (xen_tvd.planner.routing.components) of each TVD it carries locally: a VM's anycast
gateway on this host must be able to route every pair its TVD may use, replies included
(docs/flow-control-design.md). Standalone, the planner applies this rule itself once it is
given the local TVDs; the proxy also needs the set to pick the other hosts' segment peers.
In master mode the master planned the host for every TVD it may carry, so the proxy narrows
the bundle's router and flow plan to the same set (`narrow`).
"""
from __future__ import annotations

import dataclasses

from xen_tvd.desired.model import FlowPlan, Router
from xen_tvd.planner import routing
from xen_tvd.policy.model import Policy


def needed(policy: Policy, host: str, local: set[str]) -> set[str]:
    """The TVDs this host must carry a segment for: its local TVDs and their components."""
    local = {t for t in local if t in policy.tvds}
    return local | routing.routed_tvds(policy, {host: local})[host]


def narrow(router: Router | None, flows: FlowPlan | None,
           tvds: set[str]) -> tuple[Router | None, FlowPlan | None]:
    """The master's router/flow plan for this host cut down to legs of `tvds`. The result
    equals what the planner gives a host carrying exactly `tvds`: every TVD with subnets
    stays known to the filter (traffic claiming a closed TVD's addresses is recognised), but
    only routed TVDs keep their bridge, and only pairs between routed TVDs stay permitted."""
    if router is None or flows is None:
        return None, None      # fail closed: legs never go in without their filter
    legs = tuple(leg for leg in router.legs if leg.tvd in tvds)
    if not legs:
        return None, None
    routed = {leg.tvd for leg in legs}
    subnets = tuple(dataclasses.replace(s, bridge=s.bridge if s.tvd in routed else None)
                    for s in flows.tvds)
    pairs = tuple(p for p in flows.pairs if p.src in routed and p.dst in routed)
    return dataclasses.replace(router, legs=legs), FlowPlan(subnets, pairs)
