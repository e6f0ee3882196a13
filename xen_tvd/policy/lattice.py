"""The partial order of security properties and TVD membership (paper section 3.2).

A machine m with properties p_m may join TVD t iff every requirement p in M(t) is dominated
(reflexively, transitively) by some p' in p_m. A VM in several TVDs must satisfy all of them,
and the TVDs must lie in one `shared-membership` set (such a VM is an open channel between
them, which the flow verifier accounts for only for the listed sets).

Conflicts are expressed with `excludes`: `p excludes q` means no machine can hold p and q
together. Because holding p' >= p means holding p, exclusions are inherited upwards; so a set
of TVDs can be joined together iff the down-closure of the union of their requirements holds
no excluded pair (choosing the requirements themselves is always the least-conflicting way
to satisfy them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from xen_tvd.policy.model import MembershipRequirement, Policy, Property


class PropertyOrder:
    def __init__(self, properties: dict[str, Property]) -> None:
        self.properties = properties
        self._down: dict[str, frozenset[str]] = {}

    def down(self, p: str) -> frozenset[str]:
        """Everything p dominates, p included (terminates on cyclic input too)."""
        if p in self._down:
            return self._down[p]
        seen = {p}
        stack = [p]
        while stack:
            q = stack.pop()
            prop = self.properties.get(q)
            for r in (prop.dominates if prop else ()):
                if r not in seen:
                    seen.add(r)
                    stack.append(r)
        out = frozenset(seen)
        self._down[p] = out
        return out

    def dominates(self, p: str, q: str) -> bool:
        return q in self.down(p)

    def closure(self, props) -> frozenset[str]:
        out: set[str] = set()
        for p in props:
            out |= self.down(p)
        return frozenset(out)

    def cycles(self) -> list[list[str]]:
        """Each elementary cycle reachable in the `dominates` graph, reported once."""
        color: dict[str, int] = {}
        found: list[list[str]] = []
        seen_sets: set[frozenset[str]] = set()
        for start in self.properties:
            if color.get(start):
                continue
            # iterative DFS keeping the current path to print the cycle
            path: list[str] = []
            stack: list[tuple[str, int]] = [(start, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    color[node] = 1
                    path.append(node)
                succ = self.properties[node].dominates if node in self.properties else ()
                if i < len(succ):
                    stack.append((node, i + 1))
                    nxt = succ[i]
                    if color.get(nxt) == 1:
                        cyc = path[path.index(nxt):] + [nxt]
                        key = frozenset(cyc)
                        if key not in seen_sets:
                            seen_sets.add(key)
                            found.append(cyc)
                    elif not color.get(nxt) and nxt in self.properties:
                        stack.append((nxt, 0))
                else:
                    color[node] = 2
                    path.pop()
        return found

    def conflicts(self, props) -> list[tuple[str, str]]:
        """Excluded pairs (a, b), a < b by name, inside the down-closure of props."""
        held = self.closure(props)
        out = set()
        for a in held:
            prop = self.properties.get(a)
            for b in (prop.excludes if prop else ()):
                if b in held:
                    out.add(tuple(sorted((a, b))))
        return sorted(out)


@dataclass
class Admission:
    """The outcome of checking a machine against M(t) of one or more TVDs."""
    admitted: bool
    unmet: dict[str, list[MembershipRequirement]] = field(default_factory=dict)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    unknown_tvds: list[str] = field(default_factory=list)
    not_shared: list[str] = field(default_factory=list)  # several TVDs not allowed together

    def reason(self) -> str:
        if self.admitted:
            return "admitted"
        parts = []
        if self.unknown_tvds:
            parts.append("unknown TVD " + ", ".join(self.unknown_tvds))
        for tvd, reqs in self.unmet.items():
            parts.append(f"TVD {tvd} requires " + ", ".join(str(r) for r in reqs))
        if self.not_shared:
            parts.append(" + ".join(self.not_shared) + " are not a shared-membership set "
                         "(one VM may join several TVDs only as listed there)")
        for a, b in self.conflicts:
            parts.append(f"properties {a} and {b} exclude each other")
        return "; ".join(parts)


def requirement_met(order: PropertyOrder, req: MembershipRequirement,
                    machine: dict[str, str | None]) -> bool:
    """machine: property -> assurance kind it is backed by (None: unknown assurance)."""
    for p, kind in machine.items():
        if order.dominates(p, req.property) and (not req.assurance or kind in req.assurance):
            return True
    return False


def admit(policy: Policy, tvds, machine: dict[str, str | None]) -> Admission:
    """May a machine with these properties join all of `tvds` together?"""
    order = PropertyOrder(policy.properties)
    result = Admission(True)
    for name in tvds:
        tvd = policy.tvds.get(name)
        if tvd is None:
            result.unknown_tvds.append(name)
            continue
        unmet = [r for r in tvd.membership if not requirement_met(order, r, machine)]
        if unmet:
            result.unmet[name] = unmet
    # a VM in several TVDs is an open channel between them; the verifier only knows of the
    # sets listed under shared-membership, so only those may be joined together
    joined = list(dict.fromkeys(t for t in tvds if t in policy.tvds))
    if len(joined) > 1 and not any(set(joined) <= set(g) for g in policy.shared_membership):
        result.not_shared = joined
    result.conflicts = order.conflicts(machine)
    result.admitted = not (result.unknown_tvds or result.unmet or result.conflicts
                           or result.not_shared)
    return result


def joint_conflicts(policy: Policy, tvds) -> list[tuple[str, str]]:
    """Excluded property pairs that make it impossible to satisfy all of `tvds` at once."""
    order = PropertyOrder(policy.properties)
    reqs = [r.property for t in tvds if t in policy.tvds for r in policy.tvds[t].membership]
    return order.conflicts(reqs)
