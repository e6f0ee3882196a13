"""The policy's and the plan's half of `tvdctl explain` (issue #17.1): may a packet of this protocol and port
go from a NIC in TVD src to a NIC in TVD dst, and which rule decides? Pure.

The answer names the rule of the dataplane that must drop what the policy forbids, by the
reasons the flow filter counts under (dataplane/flowfilter.py drops()): `closed` (no permitted
pair), `sender` / `receiver` (a controlled pair's half has no rule for it), `reply` (the pair's
replies are not allowed), plus `no-route` where nothing carries the packet at all (a TVD
without a router card: its VMs' gateway does not exist, so no rule ever sees the packet).
"""
from __future__ import annotations

from xen_tvd.planner.routing import components, permitted_pairs
from xen_tvd.policy.flows import FlowMatrix, find_indirect_flows
from xen_tvd.policy.model import FlowKind, Policy, Rule

PROTOCOLS = ("icmp", "tcp", "udp")


def _matches(rules: tuple[Rule, ...], proto: str, port: int | None) -> Rule | None:
    for r in rules:
        if r.proto == "any" or (r.proto == proto and (
                port is None or r.ports is None or r.ports[0] <= port <= r.ports[1])):
            return r
    return None


def _routed(policy: Policy) -> tuple[set[str], list]:
    """(TVDs with a router card, the permitted pairs), as the planner decides them."""
    return set(components(policy)), permitted_pairs(policy)


def _rules_text(rules) -> list[str]:
    return [str(r) for r in rules]


def explain(policy: Policy, src_tvd: str, dst_tvd: str, proto: str = "icmp",
            port: int | None = None) -> dict:
    """{flow, allowed, replies, decided_by, drop, entry, indirect}: `allowed` is whether the
    exchange completes (for icmp and tcp that includes the answer), `drop` the dropping rule's
    reason (None when allowed)."""
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    what = proto if port is None else f"{proto}/{port}"
    needs_reply = proto in ("icmp", "tcp")
    out: dict = {"src_tvd": src_tvd, "dst_tvd": dst_tvd, "what": what, "entry": None,
                 "indirect": []}
    if src_tvd == dst_tvd:
        return dict(out, flow="same-tvd", allowed=True, drop=None, decided_by=(
            f"both NICs are in TVD {src_tvd}: one vSwitch (one broadcast domain), no filter "
            "between them beyond port security"))
    m = FlowMatrix(policy)
    kind = m.kind(src_tvd, dst_tvd)
    f = m.entry(src_tvd, dst_tvd)
    if f is not None:
        out["entry"] = {"from": f.src, "to": f.dst, "policy": f.kind.value,
                        "sender": _rules_text(f.sender), "receiver": _rules_text(f.receiver),
                        "passes": _rules_text(m.rules(src_tvd, dst_tvd)), "replies": f.replies,
                        "where": (f"{policy.source}:{f.pos.line}"
                                  if f.pos is not None and policy.source else None)}
    out["indirect"] = [x.path_text() for x in find_indirect_flows(policy)
                       if (x.src, x.dst) == (src_tvd, dst_tvd)]
    cards, pairs = _routed(policy)
    out["flow"] = kind.value
    if src_tvd not in cards:
        return dict(out, allowed=False, drop="no-route", decided_by=(
            f"TVD {src_tvd} has no router card (no permitted pair with subnets on both ends): "
            f"its VMs' packets to other subnets have no gateway to go to"
            + ("" if kind is FlowKind.CLOSED else f"; the {kind.value} entry needs subnets on "
               "both TVDs to be routed")))
    if kind is FlowKind.CLOSED or not any((p.src, p.dst) == (src_tvd, dst_tvd) for p in pairs):
        why = (f"the flow matrix says {src_tvd} -> {dst_tvd} is closed"
               + (" (an explicit entry)" if f is not None else " (no entry: closed by default)")
               if kind is FlowKind.CLOSED else
               f"{src_tvd} -> {dst_tvd} is {kind.value} but not routed (a TVD without subnets)")
        return dict(out, allowed=False, drop="closed", decided_by=why)
    if kind is FlowKind.OPEN:
        ok = f.replies or not needs_reply
        return dict(out, allowed=ok, drop=None if ok else "reply", decided_by=(
            f"{src_tvd} -> {dst_tvd} is open" + ("" if ok else
                                                 "; replies: false drops the answer")))
    s = _matches(f.sender, proto, port)
    if s is None:
        return dict(out, allowed=False, drop="sender", decided_by=(
            f"the sender half ({src_tvd}'s confidentiality) allows only "
            f"{', '.join(_rules_text(f.sender)) or 'nothing'}; no rule for {what}"))
    r = _matches(f.receiver, proto, port)
    if r is None:
        return dict(out, allowed=False, drop="receiver", decided_by=(
            f"the sender half allows {what} (rule {s}), the receiver half "
            f"({dst_tvd}'s integrity) allows only "
            f"{', '.join(_rules_text(f.receiver)) or 'nothing'}; no rule for {what}"))
    if needs_reply and not f.replies:
        return dict(out, allowed=False, drop="reply", decided_by=(
            f"both halves allow {what} (sender rule {s}, receiver rule {r}) but the pair has "
            f"replies: false, so the answer is dropped"))
    return dict(out, allowed=True, drop=None, decided_by=(
        f"sender half rule {s} and receiver half rule {r} both allow {what}"))
