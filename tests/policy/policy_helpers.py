"""Helpers shared by the policy tests: build Policy objects directly, or check YAML text."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from xen_tvd.policy import check_file
from xen_tvd.policy.model import (DUMMY_TVD, Flow, FlowKind, MembershipRequirement, Policy,
                                  Property, Rule, Tvd)

TCP443 = (Rule("tcp", (443, 443)),)


def prop(name, dominates=(), excludes=()):
    return Property(name, tuple(dominates), tuple(excludes))


def req(p, *assurance):
    return MembershipRequirement(p, frozenset(assurance))


def tvd(name, i, membership=()):
    return Tvd(name, 100 + i, 10100 + i,
               membership=tuple(m if isinstance(m, MembershipRequirement) else req(m)
                                for m in membership))


def flow(src, dst, kind="open", replies=True, sender=TCP443, receiver=TCP443):
    kind = FlowKind(kind)
    if kind is not FlowKind.CONTROLLED:
        sender = receiver = ()
    return Flow(src, dst, kind, tuple(sender), tuple(receiver), replies)


def mk_policy(tvds, flows=(), properties=(), shared=(), dummy="closed", memberships=None):
    memberships = memberships or {}
    names = [t for t in tvds]
    return Policy(
        version=1,
        properties={p.name: p for p in properties},
        tvds={n: tvd(n, i, memberships.get(n, ())) for i, n in enumerate(names)},
        flows=tuple(flows),
        dummy_policy=FlowKind(dummy),
        shared_membership=tuple(tuple(g) for g in shared),
    )


def check_text(tmp_path: Path, text: str, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    policy, diags = check_file(str(path))
    return policy, diags


def errors(diags):
    return [d for d in diags if d.severity == "error"]


def warnings(diags):
    return [d for d in diags if d.severity == "warning"]


def where(d):
    return (d.pos.line, d.pos.col)


__all__ = ["DUMMY_TVD", "FlowKind", "Rule", "TCP443", "prop", "req", "tvd", "flow",
           "mk_policy", "check_text", "errors", "warnings", "where", "pairs_reported"]


GROUP_COUNT = re.compile(r"^(\d+) (?:closed|unlisted) pairs ")
HIDDEN_COUNTS = re.compile(r"(\d+) (closed pairs bypassed by open paths|closed pairs reachable "
                           r"through guarded paths|unlisted pairs crossed by replies)")


def pairs_reported(diags) -> dict[str, int]:
    """How many bypassed closed pairs the indirect-flow diagnostics stand for, by kind (open:
    errors, guarded and reply: warnings): a group's count, 1 for a pair of its own, and the
    sums of the summary of groups not shown."""
    out = {"open": 0, "guarded": 0, "reply": 0}
    for d in diags:
        if d.code not in ("indirect-flow", "reply-flow"):
            continue
        if " more groups of indirect flows are not shown " in d.message:
            for n, what in HIDDEN_COUNTS.findall(d.message):
                kind = "open" if "open" in what else "guarded" if "guarded" in what else "reply"
                out[kind] += int(n)
            continue
        m = GROUP_COUNT.match(d.message)
        kind = "reply" if d.code == "reply-flow" else "open" if d.is_error else "guarded"
        out[kind] += int(m[1]) if m else 1
    return out
