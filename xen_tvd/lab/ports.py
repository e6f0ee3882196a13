"""Which TCP ports the lab listens on and probes: its own port, and for every controlled flow
the edges of each TCP rule's range and the ports just outside it (policy-only, pure).

Probing lo-1, lo, hi, hi+1 of every range (of the sender's and the receiver's rules alike)
shows that exactly the intersection passes: a port one side allows and the other does not
lands on an edge of one of those ranges.
"""
from __future__ import annotations

from xen_tvd.planner.routing import permitted_pairs
from xen_tvd.policy.model import FlowKind, Policy

LAB_TCP_PORT = 7777


def controlled_tcp_ports(policy: Policy) -> list[int]:
    ports: set[int] = set()
    for f in permitted_pairs(policy):
        if f.kind is not FlowKind.CONTROLLED:
            continue
        for r in (*f.sender, *f.receiver):
            if r.proto == "tcp" and r.ports is not None:
                lo, hi = r.ports
                ports.update(p for p in (lo - 1, lo, hi, hi + 1) if 1 <= p <= 65535)
    ports.discard(LAB_TCP_PORT)
    return sorted(ports)


def listen_ports(policy: Policy) -> list[int]:
    return [LAB_TCP_PORT, *controlled_tcp_ports(policy)]
