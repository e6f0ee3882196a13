"""The inter-TVD information flow matrix (paper section 3.3) and the indirect-flow finder.

Semantics (documented in docs/policy.md):
- Inside a TVD traffic is always open. An ordered pair (x, y) with no entry is closed.
- A permitted connection x -> y (open or controlled) carries information both ways: its replies
  flow y -> x, unless the entry says `replies: false` (a one-way, data-diode style flow).
- A shared-membership set {x, y}: a VM in both TVDs can copy anything across. It is a channel
  both ways, but one guarded like a controlled flow: only VMs that satisfied both TVDs'
  membership requirements are in it, and they are trusted not to relay.
- The dummy TVD (VLANs outside every TVD) with policy open is an open channel to and from
  every TVD, as the paper defines it, except for pairs that have an entry of their own
  (explicit entries override the default, as in FlowMatrix.kind); entries naming the dummy
  TVD carry information like any other, whatever the dummy policy.

The verifier is conservative: for every closed ordered pair (x, y) it looks for any chain of
information-carrying edges from x to y: an error when a chain of open edges exists, a warning
when every chain passes a controlled edge or a shared-membership VM. (The report softens one
case to a warning: the replies of an open flow y -> x onto an unlisted pair x -> y, which the
admin has not stated as closed.) find_indirect_flows gives one shortest chain per pair (what
`tvdctl check --all` prints); bypass.py counts the same pairs in groups, without a chain each.
"""
from __future__ import annotations

from dataclasses import dataclass

from xen_tvd.policy.model import DUMMY_TVD, Flow, FlowKind, Policy, Rule


class FlowMatrix:
    """Who may initiate what to whom: kind(x, y) and the effective rules of controlled pairs."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.tvds = sorted(policy.tvds)
        self._flows: dict[tuple[str, str], Flow] = {(f.src, f.dst): f for f in policy.flows}

    def entry(self, src: str, dst: str) -> Flow | None:
        return self._flows.get((src, dst))

    def kind(self, src: str, dst: str) -> FlowKind:
        if src == dst:
            return FlowKind.OPEN
        if DUMMY_TVD in (src, dst) and (src, dst) not in self._flows:
            # the dummy TVD's default covers TVDs only (as in information_edges): an external
            # network is not a VLAN of any Dom0, so nothing connects it to the dummy's VLANs
            if src in self.policy.externals or dst in self.policy.externals:
                return FlowKind.CLOSED
            return self.policy.dummy_policy
        f = self._flows.get((src, dst))
        return f.kind if f else FlowKind.CLOSED

    def rules(self, src: str, dst: str) -> tuple[Rule, ...]:
        """What passes a controlled pair: the intersection of sender and receiver rules."""
        f = self._flows.get((src, dst))
        if f is None or f.kind is not FlowKind.CONTROLLED:
            return ()
        return intersect_rules(f.sender, f.receiver)


def _rule_sets(r: Rule):
    protos = ("tcp", "udp", "icmp", "icmpv6") if r.proto == "any" else (r.proto,)
    return protos, r.ports


def intersect_rules(a: tuple[Rule, ...], b: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """Rules allowed by both sides (sender and receiver must each agree)."""
    out: list[Rule] = []
    for ra in a:
        pa, porta = _rule_sets(ra)
        for rb in b:
            pb, portb = _rule_sets(rb)
            for proto in (p for p in pa if p in pb):
                if ra.proto == rb.proto == "any":
                    cand = Rule("any")
                elif proto not in ("tcp", "udp"):
                    cand = Rule(proto)
                elif porta is None:
                    cand = Rule(proto, portb)
                elif portb is None:
                    cand = Rule(proto, porta)
                else:
                    lo, hi = max(porta[0], portb[0]), min(porta[1], portb[1])
                    if lo > hi:
                        continue
                    cand = Rule(proto, (lo, hi))
                if cand not in out:
                    out.append(cand)
                if cand.proto == "any":
                    break
    return tuple(out)


# --- indirect flows ----------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: FlowKind         # OPEN or CONTROLLED
    why: str               # "flow", "reply", "shared", "dummy"
    flow: Flow | None = None

    def describe(self) -> str:
        if self.why == "reply":
            return f"{self.src} -> {self.dst} rides on replies of {self.dst} -> {self.src}"
        if self.why == "shared":
            return f"{self.src} -> {self.dst} through a VM in both (shared-membership)"
        if self.why == "dummy":
            return f"{self.src} -> {self.dst} through the open dummy TVD"
        return f"{self.src} -> {self.dst} is {self.kind.value}"


@dataclass(frozen=True)
class IndirectFlow:
    src: str
    dst: str
    path: tuple[str, ...]
    edges: tuple[Edge, ...]
    all_open: bool

    def path_text(self) -> str:
        return " -> ".join(self.path)


def information_edges(policy: Policy) -> list[Edge]:
    edges: list[Edge] = []
    for f in policy.flows:
        if f.kind is FlowKind.CLOSED:
            continue
        edges.append(Edge(f.src, f.dst, f.kind, "flow", f))
        if f.replies:
            edges.append(Edge(f.dst, f.src, f.kind, "reply", f))
    for group in policy.shared_membership:
        for a in group:
            for b in group:
                if a != b:
                    # guarded by admission, like a controlled edge (see module docstring)
                    edges.append(Edge(a, b, FlowKind.CONTROLLED, "shared"))
    if policy.dummy_policy is FlowKind.OPEN:
        # the default covers only pairs without an entry of their own (as in FlowMatrix.kind);
        # a default pair is an open flow with replies: an edge each way
        listed = {(f.src, f.dst) for f in policy.flows}
        for t in policy.tvds:
            pairs = {p for p in ((t, DUMMY_TVD), (DUMMY_TVD, t)) if p not in listed}
            for a, b in pairs | {(b, a) for a, b in pairs}:
                edges.append(Edge(a, b, FlowKind.OPEN, "dummy"))
    return edges


class _Graph:
    """Adjacency as Python-int bitsets: one BFS level costs one OR per frontier node."""

    def __init__(self, n: int) -> None:
        self.succ = [0] * n
        self.pred = [0] * n

    def add(self, a: int, b: int) -> None:
        self.succ[a] |= 1 << b
        self.pred[b] |= 1 << a

    def levels(self, src: int, backward: bool = False) -> tuple[int, list[int]]:
        """BFS from src (towards src, if backward): all nodes seen, and each level's nodes."""
        seen = frontier = 1 << src
        levels = [frontier]
        succ = self.pred if backward else self.succ
        while frontier:
            nxt = 0
            f = frontier
            while f:
                low = f & -f
                nxt |= succ[low.bit_length() - 1]
                f ^= low
            nxt &= ~seen
            if not nxt:
                break
            seen |= nxt
            levels.append(nxt)
            frontier = nxt
        return seen, levels

    def path(self, dst: int, levels: list[int]) -> list[int]:
        bit = 1 << dst
        k = next(i for i, lv in enumerate(levels) if lv & bit)
        path = [dst]
        cur = dst
        for j in range(k - 1, -1, -1):
            cand = self.pred[cur] & levels[j]
            cur = (cand & -cand).bit_length() - 1
            path.append(cur)
        path.reverse()
        return path


class InformationGraph:
    """The information edges of a policy over its nodes (TVDs, externals, the dummy TVD) as
    bitsets, with which ordered pairs are permitted (an entry or the open dummy default) and
    which are listed (have an entry at all)."""

    def __init__(self, policy: Policy) -> None:
        # an external network is a node like a TVD: TVD a -> corp -> TVD b is a chain, since
        # anything the external receives it may send on wherever the policy lets it
        names = sorted(policy.tvds) + sorted(policy.externals)
        if policy.dummy_policy is FlowKind.OPEN or any(DUMMY_TVD in (f.src, f.dst)
                                                       for f in policy.flows):
            names.append(DUMMY_TVD)
        self.names = names
        self.idx = idx = {n: i for i, n in enumerate(names)}
        self.n = n = len(names)
        self.open, self.all = g_open, g_all = _Graph(n), _Graph(n)
        self.edge_of: dict[tuple[int, int], Edge] = {}   # the edge that describes a hop
        self.edges: list[tuple[int, int, Edge]] = []       # every edge, for grouping
        edge_of = self.edge_of
        for e in information_edges(policy):
            if e.src not in idx or e.dst not in idx:
                continue  # unknown names are reported by the schema layer
            a, b = idx[e.src], idx[e.dst]
            self.edges.append((a, b, e))
            g_all.add(a, b)
            prev = edge_of.get((a, b))
            # prefer a direct flow over a reply, and open over controlled, when describing a hop
            if e.kind is FlowKind.OPEN:
                g_open.add(a, b)
                if prev is None or prev.kind is not FlowKind.OPEN or prev.why == "reply":
                    edge_of[(a, b)] = e
            elif prev is None:
                edge_of[(a, b)] = e

        self.permitted = permitted = [0] * n
        self.listed = listed = [0] * n
        for f in policy.flows:
            if f.src in idx and f.dst in idx:
                listed[idx[f.src]] |= 1 << idx[f.dst]
                if f.kind is not FlowKind.CLOSED:
                    permitted[idx[f.src]] |= 1 << idx[f.dst]
        if policy.dummy_policy is FlowKind.OPEN:
            d = idx[DUMMY_TVD]
            for t in policy.tvds:
                i = idx[t]
                if not listed[i] >> d & 1:
                    permitted[i] |= 1 << d
                if not listed[d] >> i & 1:
                    permitted[d] |= 1 << i

    def closed(self, x: int) -> int:
        """The nodes y for which (x, y) is a closed ordered pair."""
        return ((1 << self.n) - 1) & ~self.permitted[x] & ~(1 << x)

    def chain(self, x: int, y: int, all_open: bool, levels: list[int]) -> IndirectFlow:
        """The finding for pair (x, y) from the BFS levels of x in the open or full graph."""
        hops = (self.open if all_open else self.all).path(y, levels)
        edges = tuple(self.edge_of[(hops[i], hops[i + 1])] for i in range(len(hops) - 1))
        return IndirectFlow(self.names[x], self.names[y], tuple(self.names[i] for i in hops),
                            edges, all_open)


def find_indirect_flows(policy: Policy,
                        graph: InformationGraph | None = None) -> list[IndirectFlow]:
    """One shortest chain per closed ordered pair that information can still cross."""
    g = graph or InformationGraph(policy)
    found: list[IndirectFlow] = []
    for x in range(g.n):
        reach_all, levels_all = g.all.levels(x)
        problems = reach_all & g.closed(x)
        if not problems:
            continue
        reach_open, levels_open = g.open.levels(x)
        while problems:
            low = problems & -problems
            y = low.bit_length() - 1
            problems ^= low
            all_open = bool(reach_open & low)
            found.append(g.chain(x, y, all_open, levels_open if all_open else levels_all))
    return found
