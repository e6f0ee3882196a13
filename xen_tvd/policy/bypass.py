"""Indirect flows in groups: every closed pair information can still cross, counted per group
of pairs bypassed the same way, without building a chain per pair (docs/policy.md, "Verifier
output"). flows.find_indirect_flows lists the same pairs one by one, each with its chain.

Kinds, as the verifier reports them: "open" (an error: a chain of open edges crosses the
pair), "reply" (a warning: the pair has no entry and the open reverse flow's replies cross it
in one hop), "guarded" (a warning: every chain passes a controlled edge or a shared-membership
VM).

Reachability comes from the strongly connected components (SCCs) of the open graph and of the
whole information graph: inside an SCC every node reaches every other, and an SCC reaches what
its successors reach (one OR of node bitsets per edge between SCCs). Groups, per kind:
- the pairs inside one SCC (its nodes all reach each other);
- the pairs between SCCs, as bicliques: the source SCCs with the same set of destinations, or
  the destination SCCs reached from the same sources, whichever makes fewer groups.
Every pair of a kind lies in exactly one group, and a group's count is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

from xen_tvd.policy.flows import Edge, IndirectFlow, InformationGraph, _Graph
from xen_tvd.policy.model import FlowKind

OPEN, REPLY, GUARDED = "open", "reply", "guarded"


def bits(mask: int):
    """The indices of the set bits of mask, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Condensation:
    """The SCCs of a bitset graph (Tarjan's algorithm, iterative) and, per SCC, the nodes it
    reaches and the nodes that reach it (both including its own)."""

    def __init__(self, g: _Graph) -> None:
        n = len(g.succ)
        adj = [list(bits(s)) for s in g.succ]
        index, low = [-1] * n, [0] * n
        on_stack = [False] * n
        stack: list[int] = []
        self.comp = comp = [-1] * n
        self.members: list[int] = []          # node bitmask per SCC
        counter = 0
        for root in range(n):
            if index[root] != -1:
                continue
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack[root] = True
            work = [(root, iter(adj[root]))]
            while work:
                v, it = work[-1]
                for w in it:
                    if index[w] == -1:
                        index[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack[w] = True
                        work.append((w, iter(adj[w])))
                        break
                    if on_stack[w] and index[w] < low[v]:
                        low[v] = index[w]
                else:
                    work.pop()
                    if work and low[v] < low[work[-1][0]]:
                        low[work[-1][0]] = low[v]
                    if low[v] == index[v]:
                        c, m = len(self.members), 0
                        while True:
                            w = stack.pop()
                            on_stack[w] = False
                            comp[w] = c
                            m |= 1 << w
                            if w == v:
                                break
                        self.members.append(m)
        # Tarjan emits an SCC after every SCC it reaches: successors come first
        k = len(self.members)
        self.reach = self._closure(g.succ, range(k))
        self.coreach = self._closure(g.pred, range(k - 1, -1, -1))

    def _closure(self, adj: list[int], order) -> list[int]:
        out = [0] * len(self.members)
        for c in order:
            r = self.members[c]
            nxt = 0
            for v in bits(r):
                nxt |= adj[v]
            nxt &= ~r
            while nxt:
                r |= out[self.comp[(nxt & -nxt).bit_length() - 1]]
                nxt &= ~r
            out[c] = r
        return out


@dataclass
class BypassGroup:
    """Closed pairs of one kind bypassed the same way: (x, y) for x in sources and y in
    pairs_of[x] & dests."""
    kind: str
    graph: InformationGraph
    cond: Condensation        # of the open graph (open, reply) or the whole graph (guarded)
    pairs_of: list[int]       # per node: the destinations of all its pairs of this kind
    sources: int
    dests: int
    count: int
    within: bool              # all pairs inside one SCC

    def pairs(self):
        for x in bits(self.sources):
            for y in bits(self.pairs_of[x] & self.dests):
                yield x, y

    def _levels(self, x: int) -> list[int]:
        return (self.graph.all if self.kind == GUARDED else self.graph.open).levels(x)[1]

    def example(self) -> IndirectFlow:
        """A shortest chain of the group from its first source to the nearest destination or,
        when it has fewer destinations than sources, into its first destination from the
        nearest source."""
        g = self.graph.all if self.kind == GUARDED else self.graph.open
        if self.sources.bit_count() <= self.dests.bit_count():
            x = next(bits(self.sources))
            ends = self.pairs_of[x] & self.dests
            y = next(bits(next(lv & ends for lv in g.levels(x)[1] if lv & ends)))
        else:
            y = next(bits(self.dests))
            ends = sum(1 << x for x in bits(self.sources) if self.pairs_of[x] >> y & 1)
            x = next(bits(next(lv & ends for lv in g.levels(y, backward=True)[1] if lv & ends)))
        return self.graph.chain(x, y, self.kind != GUARDED, g.levels(x)[1])

    def findings(self) -> list[IndirectFlow]:
        """One chain per pair, as flows.find_indirect_flows gives them."""
        out = []
        for x in bits(self.sources):
            levels = self._levels(x)
            for y in bits(self.pairs_of[x] & self.dests):
                out.append(self.graph.chain(x, y, self.kind != GUARDED, levels))
        return out

    def links(self) -> list[Edge]:
        """The information edges that make the group's chains: for replies, the reply edges
        themselves; inside an SCC, its open edges (open pairs) or its controlled and
        shared-membership edges, the guards (guarded pairs); between SCCs, the edges from
        one SCC to another that lie on a chain from a source to a destination."""
        g, comp = self.graph, self.cond.comp
        if self.kind == REPLY:
            return [g.edge_of[p] for p in self.pairs()]
        if self.within:
            c = comp[next(bits(self.sources))]
            want = FlowKind.OPEN if self.kind == OPEN else FlowKind.CONTROLLED
            return [e for a, b, e in g.edges if comp[a] == c == comp[b] and e.kind is want]
        fwd = back = 0
        for x in bits(self.sources):
            fwd |= self.cond.reach[comp[x]]
        for y in bits(self.dests):
            back |= self.cond.coreach[comp[y]]
        return [e for a, b, e in g.edges
                if comp[a] != comp[b] and fwd >> a & 1 and back >> b & 1
                and (self.kind == GUARDED or e.kind is FlowKind.OPEN)]


def bypass_groups(g: InformationGraph) -> list[BypassGroup]:
    """Every closed pair information can cross, in groups (see the module docstring)."""
    c_open, c_all = Condensation(g.open), Condensation(g.all)
    n = g.n
    reply, open_, guarded = [0] * n, [0] * n, [0] * n
    for x in range(n):
        closed = g.closed(x)
        reach_open = c_open.reach[c_open.comp[x]]
        # a one-hop open edge onto a closed pair can only be the replies of the reverse flow
        reply[x] = g.open.succ[x] & closed & ~g.listed[x]
        open_[x] = reach_open & closed & ~reply[x]
        guarded[x] = c_all.reach[c_all.comp[x]] & closed & ~reach_open
    return (_groups(REPLY, g, c_open, reply) + _groups(OPEN, g, c_open, open_)
            + _groups(GUARDED, g, c_all, guarded))


def _groups(kind: str, g: InformationGraph, cond: Condensation,
            pairs_of: list[int]) -> list[BypassGroup]:
    def make(srcmask: int, dstmask: int, within: bool) -> BypassGroup:
        sources = dests = count = 0
        for x in bits(srcmask):
            p = pairs_of[x] & dstmask
            if p:
                sources |= 1 << x
                dests |= p
                count += p.bit_count()
        return BypassGroup(kind, g, cond, pairs_of, sources, dests, count, within)

    inside: dict[int, int] = {}       # SCC -> its nodes with a pair inside it
    across: dict[int, int] = {}       # source SCC -> the destinations of its pairs outside it
    for x in range(g.n):
        p = pairs_of[x]
        if not p:
            continue
        c = cond.comp[x]
        m = cond.members[c]
        if p & m:
            inside[c] = inside.get(c, 0) | 1 << x
        if p & ~m:
            across[c] = across.get(c, 0) | p & ~m
    groups = [make(srcs, cond.members[c], True) for c, srcs in inside.items()]

    by_dests: dict[int, int] = {}     # destinations -> the source SCCs' nodes
    for c, dests in across.items():
        by_dests[dests] = by_dests.get(dests, 0) | cond.members[c]
    all_sources = 0
    for c in across:
        all_sources |= cond.members[c]
    by_sources: dict[int, int] = {}   # sources -> the destination SCCs' nodes
    left = 0
    for dests in across.values():
        left |= dests
    while left:
        d = cond.comp[(left & -left).bit_length() - 1]
        key = cond.coreach[d] & all_sources & ~cond.members[d]
        by_sources[key] = by_sources.get(key, 0) | cond.members[d]
        left &= ~cond.members[d]
    if len(by_sources) < len(by_dests):
        groups += [make(srcs, dsts, False) for srcs, dsts in by_sources.items()]
    else:
        groups += [make(srcs, dsts, False) for dsts, srcs in by_dests.items()]
    return groups
