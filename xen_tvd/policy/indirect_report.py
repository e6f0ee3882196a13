"""The indirect-flow diagnostics: closed pairs that information can still cross.

By default one diagnostic per group of pairs bypassed the same way (bypass.py), with its count,
the entries that make its chains and one example chain; a group of at most EXPAND_UP_TO pairs
is printed pair by pair, and at most MAX_LINES lines in all, the rest summed up in one more.
With all_pairs, one diagnostic per pair (what `tvdctl check --all` prints).
"""
from __future__ import annotations

from xen_tvd.diagnostics import Collector
from xen_tvd.policy.bypass import GUARDED, OPEN, REPLY, BypassGroup, bits, bypass_groups
from xen_tvd.policy.flows import Edge, IndirectFlow, InformationGraph, find_indirect_flows
from xen_tvd.policy.model import Policy, Pos

EXPAND_UP_TO = 3      # a group this small reads better as its pairs
MAX_LINES = 40        # indirect-flow lines per policy file without --all
NAMES_SHOWN = 4       # names and entries quoted per group
ALL_HINT = "tvdctl check --all lists every pair"


def check_indirect_flows(policy: Policy, diags: Collector, all_pairs: bool = False) -> None:
    graph = InformationGraph(policy)
    listed = {(f.src, f.dst) for f in policy.flows}
    if all_pairs:
        for ind in find_indirect_flows(policy, graph):
            report_pair(policy, listed, ind, diags)
        return
    order = {OPEN: 0, GUARDED: 1, REPLY: 2}
    groups = sorted(bypass_groups(graph), key=lambda gr: (order[gr.kind], -gr.count))
    budget = MAX_LINES
    hidden: list[BypassGroup] = []
    for i, gr in enumerate(groups):
        lines = gr.count if gr.count <= EXPAND_UP_TO else 1
        # keep a line for the summary of the rest if there is a rest
        if hidden or lines > budget - (i + 1 < len(groups)):
            hidden.append(gr)
            continue
        budget -= lines
        if gr.count <= EXPAND_UP_TO:
            for ind in gr.findings():
                report_pair(policy, listed, ind, diags)
        else:
            report_group(policy, gr, diags)
    if hidden:
        report_hidden(policy, hidden, diags)


def anchor(policy: Policy, ind: IndirectFlow) -> Pos:
    """The first hop's entry, else the source TVD, else the target (the dummy TVD has no node
    of its own), else the file."""
    anchors = (ind.edges[0].flow, policy.tvds.get(ind.src), policy.externals.get(ind.src),
               policy.tvds.get(ind.dst), policy.externals.get(ind.dst))
    return next((a.pos for a in anchors if a is not None and a.pos is not None),
                Pos(policy.source, 1, 1))


def report_pair(policy: Policy, listed: set, ind: IndirectFlow, diags: Collector) -> None:
    pos = anchor(policy, ind)
    hops = "; ".join(e.describe() for e in ind.edges)
    if ind.all_open and len(ind.edges) == 1 and ind.edges[0].why == "reply" \
            and (ind.src, ind.dst) not in listed:
        # closed only by default: stateful replies of the reverse open flow cross it
        diags.warning(pos, f"unlisted pair {ind.src} -> {ind.dst} is closed, but replies of "
                           f"the open flow {ind.dst} -> {ind.src} carry data {ind.src} -> "
                           f"{ind.dst}; state the pair (open/controlled), or set 'replies: "
                           f"false' on {ind.dst} -> {ind.src} for a one-way flow",
                      "reply-flow")
    elif ind.all_open:
        diags.error(pos, f"closed pair {ind.src} -> {ind.dst} is bypassed by open path "
                         f"{ind.path_text()} ({hops})", "indirect-flow")
    else:
        diags.warning(pos, f"closed pair {ind.src} -> {ind.dst} is reachable through "
                           f"guarded path {ind.path_text()} ({hops}); make sure the "
                           "controlled rules and shared-membership VMs cannot relay it",
                      "indirect-flow")


def report_group(policy: Policy, gr: BypassGroup, diags: Collector) -> None:
    ex = gr.example()
    links = _distinct(gr.links())
    pos = next((e.flow.pos for e in links if e.flow is not None and e.flow.pos is not None),
               None) or anchor(policy, ex)
    hops = "; ".join(e.describe() for e in ex.edges)
    if gr.kind == REPLY:
        diags.warning(pos, f"{gr.count} unlisted pairs are closed, but replies of "
                           f"{_entries(links, 'open flow')} carry data across them; e.g. "
                           f"replies of the open flow {ex.dst} -> {ex.src} carry data "
                           f"{ex.src} -> {ex.dst}; state the pairs (open/controlled), or set "
                           f"'replies: false' on those flows for one-way flows; {ALL_HINT}",
                      "reply-flow")
    elif gr.kind == OPEN:
        how = (f"with their replies, {_entries(links, 'open entry', 'open entries')} connect "
               "each of them to every other" if gr.within else
               f"through {_entries(links, 'open entry', 'open entries')}")
        diags.error(pos, f"{gr.count} closed pairs {_where(policy, gr)} are bypassed by open "
                         f"paths: {how}; e.g. closed pair {ex.src} -> {ex.dst} is bypassed by "
                         f"open path {ex.path_text()} ({hops}); {ALL_HINT}", "indirect-flow")
    else:
        how = (f"{_entries(links, 'guarded link', kinds=True)} connect them" if gr.within
               else f"through {_entries(links, 'link', kinds=True)}")
        diags.warning(pos, f"{gr.count} closed pairs {_where(policy, gr)} are reachable through "
                           f"guarded paths: {how}; e.g. closed pair {ex.src} -> {ex.dst} is "
                           f"reachable through guarded path {ex.path_text()} ({hops}); make "
                           "sure the controlled rules and shared-membership VMs cannot relay "
                           f"them; {ALL_HINT}", "indirect-flow")


def report_hidden(policy: Policy, hidden: list[BypassGroup], diags: Collector) -> None:
    sums = {kind: sum(g.count for g in hidden if g.kind == kind) for kind in (OPEN, GUARDED, REPLY)}
    parts = [text.format(sums[kind]) for kind, text in (
        (OPEN, "{} closed pairs bypassed by open paths"),
        (GUARDED, "{} closed pairs reachable through guarded paths"),
        (REPLY, "{} unlisted pairs crossed by replies")) if sums[kind]]
    pos = anchor(policy, hidden[0].example())
    text = (f"{len(hidden)} more groups of indirect flows are not shown ({', '.join(parts)}); "
            f"{ALL_HINT}")
    if sums[OPEN]:
        diags.error(pos, text, "indirect-flow")
    else:
        diags.warning(pos, text, "indirect-flow")


def _where(policy: Policy, gr: BypassGroup) -> str:
    if gr.within:
        return "among " + _names(policy, gr.graph, gr.sources | gr.dests)
    return f"from {_names(policy, gr.graph, gr.sources)} to {_names(policy, gr.graph, gr.dests)}"


def _names(policy: Policy, graph: InformationGraph, mask: int) -> str:
    picked = [graph.names[i] for i in bits(mask)]
    total = len(picked)
    noun = "TVD" if total == 1 else "TVDs"
    if any(n in policy.externals for n in picked):
        noun += " and externals"
    more = f" and {total - NAMES_SHOWN} more" if total > NAMES_SHOWN else ""
    return f"{total} {noun} ({', '.join(picked[:NAMES_SHOWN])}{more})"


def _distinct(edges: list[Edge]) -> list[Edge]:
    """One edge per flow entry (a flow and its replies are one entry), per shared-membership
    pair and for the open dummy TVD: entries in file order, then the others."""
    seen: dict[object, Edge] = {}
    for e in edges:
        key = (e.flow.src, e.flow.dst) if e.flow is not None else \
            ("shared", *sorted((e.src, e.dst))) if e.why == "shared" else ("dummy",)
        seen.setdefault(key, e)
    flows = sorted((e for e in seen.values() if e.flow is not None),
                   key=lambda e: (e.flow.pos.line, e.flow.pos.col) if e.flow.pos else (0, 0))
    return flows + [e for e in seen.values() if e.flow is None]


def _entry(e: Edge, kinds: bool) -> str:
    if e.flow is not None:
        what = f"{e.flow.kind.value} " if kinds else ""
        at = f" at line {e.flow.pos.line}" if e.flow.pos else ""
        return f"{what}{e.flow.src} -> {e.flow.dst}{at}"
    if e.why == "shared":
        return f"a VM in both {e.src} and {e.dst} (shared-membership)"
    return "the open dummy TVD"


def _entries(links: list[Edge], one: str, many: str = "", kinds: bool = False) -> str:
    """'3 open entries (a -> b at line 7, ...)': how many, and the first few."""
    shown = ", ".join(_entry(e, kinds) for e in links[:NAMES_SHOWN])
    more = f" and {len(links) - NAMES_SHOWN} more" if len(links) > NAMES_SHOWN else ""
    noun = one if len(links) == 1 else (many or one + "s")
    return f"{len(links)} {noun} ({shown}{more})"
