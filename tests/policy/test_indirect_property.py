"""Property test: find_indirect_flows against an independent brute-force reference.

The reference enumerates every simple path over the information-carrying edges, built from
the semantics stated in docs/policy.md rather than from the library's code:
- a pair (a, b) whose FlowMatrix kind is open/controlled carries information a -> b, and
  b -> a too (replies) unless its entry says `replies: false`; a pair without an entry that
  involves the dummy TVD takes the dummy policy and has replies;
- a shared-membership set is a guarded (non-open) edge both ways between each two of its
  TVDs: its VMs passed both TVDs' admission and are trusted not to relay;
- for every closed ordered pair (x, y): an all-open chain exists => one finding with a minimal
  all-open chain (error-level, except a one-hop chain on an unlisted pair, which can only be
  the replies of the open reverse flow: warning "reply-flow"); else any chain exists => one
  warning-level finding with a minimal chain; else nothing.

Then the groups the verifier prints by default (bypass.py) against those findings: every pair
in exactly one group of its kind, examples and counts exact, and check_file's grouped output
standing for as many pairs of each kind as its --all output.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xen_tvd.policy import check_file
from xen_tvd.policy.bypass import GUARDED, OPEN, REPLY, bypass_groups
from xen_tvd.policy.flows import InformationGraph, find_indirect_flows
from xen_tvd.policy.model import DUMMY_TVD, Flow, FlowKind, Policy, Rule, Tvd

from tests.policy.policy_helpers import pairs_reported

KINDS = ("open", "controlled", "closed")
RULES = (Rule("tcp", (443, 443)),)


@st.composite
def policies(draw):
    n = draw(st.integers(2, 7))
    names = [f"t{i}" for i in range(n)]
    nodes = names + [DUMMY_TVD]
    with_dummy = draw(st.booleans())
    pairs = [(a, b) for a in (nodes if with_dummy else names)
             for b in (nodes if with_dummy else names) if a != b]
    entries = draw(st.lists(st.tuples(st.sampled_from(pairs), st.sampled_from(KINDS),
                                      st.booleans()),
                            max_size=min(len(pairs), 14), unique_by=lambda e: e[0]))
    flows = tuple(Flow(a, b, FlowKind(k), RULES if k == "controlled" else (),
                       RULES if k == "controlled" else (), replies)
                  for (a, b), k, replies in entries)
    shared = draw(st.lists(st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True),
                           max_size=2))
    dummy = draw(st.sampled_from([FlowKind.CLOSED, FlowKind.CLOSED, FlowKind.OPEN]))
    tvds = {t: Tvd(t, 100 + i, 10100 + i) for i, t in enumerate(names)}
    return Policy(1, {}, tvds, flows, dummy, (), tuple(tuple(g) for g in shared))


# --- the reference -------------------------------------------------------------------------

def reference(policy: Policy):
    nodes = sorted(policy.tvds) + [DUMMY_TVD]
    entry = {(f.src, f.dst): f for f in policy.flows}

    def kind(a, b):
        if a == b:
            return "open"
        if (a, b) in entry:
            return entry[(a, b)].kind.value
        if DUMMY_TVD in (a, b):
            return policy.dummy_policy.value
        return "closed"

    edges: dict[tuple[str, str], set[str]] = {}
    for a in nodes:
        for b in nodes:
            if a == b or kind(a, b) == "closed":
                continue
            k = kind(a, b)
            edges.setdefault((a, b), set()).add(k)
            replies = entry[(a, b)].replies if (a, b) in entry else True
            if replies:
                edges.setdefault((b, a), set()).add(k)
    for group in policy.shared_membership:
        for a in group:
            for b in group:
                if a != b:
                    edges.setdefault((a, b), set()).add("guarded")
    succ = {a: [b for b in nodes if (a, b) in edges] for a in nodes}

    def simple_paths(x):
        out = []
        stack = [(x, [x])]
        while stack:
            node, path = stack.pop()
            for nxt in succ[node]:
                if nxt in path:
                    continue
                p = path + [nxt]
                out.append(p)
                stack.append((nxt, p))
        return out

    def is_open_path(p):
        return all("open" in edges[(p[i], p[i + 1])] for i in range(len(p) - 1))

    expected = {}
    for x in nodes:
        paths = simple_paths(x)
        for y in nodes:
            if x == y or kind(x, y) != "closed":
                continue
            to_y = [p for p in paths if p[-1] == y]
            if not to_y:
                continue
            open_ = [p for p in to_y if is_open_path(p)]
            if open_:
                expected[(x, y)] = (True, min(len(p) for p in open_) - 1)
            else:
                expected[(x, y)] = (False, min(len(p) for p in to_y) - 1)
    return expected, edges


def assert_matches(expected, edges, found):
    """found: list of (src, dst, path tuple, all_open)."""
    pairs = [(s, d) for s, d, _, _ in found]
    assert len(pairs) == len(set(pairs)), "one finding per pair"
    assert set(pairs) == set(expected)
    for s, d, path, all_open in found:
        exp_open, exp_len = expected[(s, d)]
        assert all_open is exp_open, (s, d, path)
        assert path[0] == s and path[-1] == d
        assert len(path) - 1 == exp_len, (s, d, path, exp_len)
        for a, b in zip(path, path[1:]):
            assert (a, b) in edges, f"{a} -> {b} is not an information edge"
            if all_open:
                assert "open" in edges[(a, b)], f"{a} -> {b} is not open"


@settings(max_examples=400, deadline=None)
@given(policies())
def test_find_indirect_flows_matches_brute_force(policy):
    expected, edges = reference(policy)
    found = find_indirect_flows(policy)
    assert_matches(expected, edges, [(f.src, f.dst, f.path, f.all_open) for f in found])
    for f in found:   # the edges the finding quotes are the hops of its path
        assert [(e.src, e.dst) for e in f.edges] == list(zip(f.path, f.path[1:]))
        if f.all_open:
            assert all(e.kind is FlowKind.OPEN for e in f.edges)


# --- the same through YAML text and check_file ----------------------------------------------

def to_yaml(policy: Policy) -> str:
    lines = ["version: 1", "tvds:"]
    for t in policy.tvds.values():
        lines.append(f"  {t.name}: {{vlan: {t.vlan}}}")
    if policy.flows:
        lines.append("flows:")
    for f in policy.flows:
        extra = ", allow: [{proto: tcp, port: 443}]" if f.kind is FlowKind.CONTROLLED else ""
        lines.append(f"  - {{from: {f.src}, to: {f.dst}, policy: {f.kind.value}, "
                     f"replies: {str(f.replies).lower()}{extra}}}")
    lines.append(f"dummy: {{policy: {policy.dummy_policy.value}}}")
    if policy.shared_membership:
        lines.append("shared-membership:")
        lines.extend(f"  - [{', '.join(g)}]" for g in policy.shared_membership)
    return "\n".join(lines) + "\n"


MSG = re.compile(r"^closed pair (\S+) -> (\S+) is (?:bypassed by open|reachable through "
                 r"guarded) path (.+?) \(")
REPLY_MSG = re.compile(r"^unlisted pair (\S+) -> (\S+) is closed, but replies of the open flow "
                       r"(\S+) -> (\S+) carry")


def parse_finding(policy, dg):
    """(src, dst, path, all_open) of an indirect-flow or reply-flow diagnostic, checking its
    severity: errors exactly for all-open chains, except the replies of an open reverse flow
    onto an unlisted pair (warning)."""
    listed = {(f.src, f.dst) for f in policy.flows}
    if dg.code == "reply-flow":
        m = REPLY_MSG.match(dg.message)
        assert m and (m[3], m[4]) == (m[2], m[1]), dg.message
        assert not dg.is_error and (m[1], m[2]) not in listed
        return m[1], m[2], (m[1], m[2]), True
    m = MSG.match(dg.message)
    assert m, dg.message
    path = tuple(m[3].split(" -> "))
    all_open = "bypassed by open path" in dg.message
    assert dg.is_error is all_open
    assert not (all_open and len(path) == 2 and (m[1], m[2]) not in listed), \
        "a one-hop open chain on an unlisted pair must be reported as reply-flow"
    return m[1], m[2], path, all_open


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_check_file_reports_the_same_indirect_flows(policy):
    expected, edges = reference(policy)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.yaml"
        path.write_text(to_yaml(policy))
        _, diags = check_file(str(path), all_pairs=True)
    found = []
    for dg in diags:
        if dg.code not in ("indirect-flow", "reply-flow"):
            continue
        assert dg.pos is not None and dg.pos.file == str(path) and dg.pos.line >= 1
        found.append(parse_finding(policy, dg))
    assert_matches(expected, edges, found)


def test_yaml_examples_explicitly(tmp_path):
    """A few fixed policies through check_file, so the YAML path is covered deterministically."""
    cases = [
        Policy(1, {}, {"a": Tvd("a", 1, 10001), "b": Tvd("b", 2, 10002)},
               (Flow("a", "b", FlowKind.OPEN),), FlowKind.CLOSED, (), ()),
        Policy(1, {}, {"a": Tvd("a", 1, 10001), "b": Tvd("b", 2, 10002), "c": Tvd("c", 3, 10003)},
               (Flow("a", "c", FlowKind.CONTROLLED, RULES, RULES, False),
                Flow("c", "b", FlowKind.OPEN, (), (), False)), FlowKind.CLOSED, (), (("a", "b"),)),
        Policy(1, {}, {"a": Tvd("a", 1, 10001), "b": Tvd("b", 2, 10002)}, (), FlowKind.OPEN, (), ()),
    ]
    for i, pol in enumerate(cases):
        path = tmp_path / f"p{i}.yaml"
        path.write_text(to_yaml(pol))
        _, diags = check_file(str(path), all_pairs=True)
        expected, edges = reference(pol)
        found = [parse_finding(pol, d) for d in diags
                 if d.code in ("indirect-flow", "reply-flow")]
        assert found and len(found) == len(expected)
        assert_matches(expected, edges, found)


# --- the same pairs in groups -----------------------------------------------------------------

def finding_kind(policy, f):
    """The kind the verifier gives a pair's finding (see parse_finding)."""
    listed = {(x.src, x.dst) for x in policy.flows}
    if f.all_open and len(f.edges) == 1 and f.edges[0].why == "reply" \
            and (f.src, f.dst) not in listed:
        return REPLY
    return OPEN if f.all_open else GUARDED


@settings(max_examples=400, deadline=None)
@given(policies())
def test_groups_partition_the_findings(policy):
    graph = InformationGraph(policy)
    per_pair = {(f.src, f.dst): f for f in find_indirect_flows(policy)}
    seen = {}
    for gr in bypass_groups(graph):
        pairs = [(graph.names[x], graph.names[y]) for x, y in gr.pairs()]
        assert gr.count == len(pairs) > 0
        for p in pairs:
            assert p not in seen, f"{p} in two groups"
            seen[p] = gr
            assert finding_kind(policy, per_pair[p]) == gr.kind, p
        # the example is one of the group's findings, with the chain --all prints for it
        ex = gr.example()
        assert ex == per_pair[(ex.src, ex.dst)] and (ex.src, ex.dst) in pairs
        assert [(f.src, f.dst) for f in gr.findings()] == pairs
        assert all(f == per_pair[(f.src, f.dst)] for f in gr.findings())
        # the links named are edges of the example chain's kind that the chain crosses
        links = {(e.src, e.dst) for e in gr.links()}
        assert links & set(zip(ex.path, ex.path[1:])), (gr.kind, ex.path, links)
        if gr.within:
            # inside one SCC: every node of the group reaches every other
            nodes = {a for p in pairs for a in p}
            graph_of = graph.open if gr.kind != GUARDED else graph.all
            for a in nodes:
                reach, _ = graph_of.levels(graph.idx[a])
                assert all(reach >> graph.idx[b] & 1 for b in nodes)
    assert set(seen) == set(per_pair)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_grouped_output_stands_for_every_pair(policy):
    """Default output: the counts of the groups (and of a summary of groups not shown) add up
    to what --all reports pair by pair, kind by kind."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.yaml"
        path.write_text(to_yaml(policy))
        _, grouped = check_file(str(path))
        _, every = check_file(str(path), all_pairs=True)
    assert pairs_reported(grouped) == pairs_reported(every)
    assert [d for d in grouped if d.code not in ("indirect-flow", "reply-flow")] == \
        [d for d in every if d.code not in ("indirect-flow", "reply-flow")]
    assert any(d.is_error for d in grouped) == any(d.is_error for d in every)
