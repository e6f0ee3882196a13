"""Grouping bypassed closed pairs (bypass.py): which groups, their counts, examples and links.

test_indirect_property.py checks on random small policies that the groups partition exactly
the pairs find_indirect_flows reports; here medium policies with known shapes.
"""
from __future__ import annotations

from xen_tvd.policy.bypass import GUARDED, OPEN, REPLY, Condensation, bypass_groups
from xen_tvd.policy.flows import InformationGraph

from tests.policy.policy_helpers import flow, mk_policy


def groups_of(policy):
    graph = InformationGraph(policy)
    return graph, bypass_groups(graph)


def names(graph, mask):
    return {graph.names[i] for i in range(graph.n) if mask >> i & 1}


def chain(n, replies=True):
    tvds = [f"t{i}" for i in range(n)]
    return mk_policy(tvds, [flow(a, b, "open", replies=replies) for a, b in zip(tvds, tvds[1:])])


def test_condensation_finds_sccs_and_what_they_reach():
    # a <-> b -> c <-> d, e alone
    pol = mk_policy(list("abcde"), [flow("a", "b", replies=False), flow("b", "a", replies=False),
                                    flow("b", "c", replies=False), flow("c", "d"),
                                    flow("d", "c", replies=False)])
    graph = InformationGraph(pol)
    cond = Condensation(graph.open)
    comp = {n: cond.comp[graph.idx[n]] for n in "abcde"}
    assert comp["a"] == comp["b"] and comp["c"] == comp["d"]
    assert len({comp["a"], comp["c"], comp["e"]}) == 3
    assert names(graph, cond.reach[comp["a"]]) == set("abcd")
    assert names(graph, cond.reach[comp["c"]]) == set("cd")
    assert names(graph, cond.coreach[comp["c"]]) == set("abcd")
    assert names(graph, cond.reach[comp["e"]]) == names(graph, cond.coreach[comp["e"]]) == {"e"}


def test_open_chain_of_300_is_one_group_and_its_replies_another():
    graph, groups = groups_of(chain(300))
    by_kind = {g.kind: g for g in groups}
    assert len(groups) == 2 and set(by_kind) == {OPEN, REPLY}
    err = by_kind[OPEN]
    # 300 * 299 ordered pairs, less the 299 open entries and the 299 pairs their replies cross
    assert err.within and err.count == 300 * 299 - 2 * 299
    assert names(graph, err.sources) == names(graph, err.dests) == {f"t{i}" for i in range(300)}
    ex = err.example()
    assert (ex.src, ex.dst, ex.path_text(), ex.all_open) == ("t0", "t2", "t0 -> t1 -> t2", True)
    assert len(err.links()) == 2 * 299          # every open edge of the chain, both ways
    rep = by_kind[REPLY]
    assert rep.count == 299
    assert {(graph.names[x], graph.names[y]) for x, y in rep.pairs()} == \
        {(f"t{i + 1}", f"t{i}") for i in range(299)}


def test_one_way_chain_has_a_group_per_destination_with_exact_counts():
    # replies: false: no cycle; t_i -> t_j is bypassed for every j > i + 1. Each t_j is reached
    # from its own set of sources, except t58 and t59: from t0..t57 both (t57 -> t58 being
    # permitted leaves t57 with one pair in that group): 57 groups
    graph, groups = groups_of(chain(60, replies=False))
    assert all(g.kind == OPEN and not g.within for g in groups)
    assert len(groups) == 57
    pairs = [(graph.names[x], graph.names[y]) for g in groups for x, y in g.pairs()]
    assert sorted(pairs) == sorted((f"t{i}", f"t{j}") for i in range(60) for j in range(i + 2, 60))
    assert sum(g.count for g in groups) == len(pairs) == 60 * 59 // 2 - 59
    for g in groups:                 # the shortest chains of the group: two hops
        ex = g.example()
        i = int(ex.src[1:])
        assert ex.path == (ex.src, f"t{i + 1}", f"t{i + 2}")


def test_sources_with_the_same_destinations_are_one_group():
    # a1, a2, a3 -> hub -> d1, d2, d3, all one-way: 9 closed pairs, one biclique
    a, d = ["a1", "a2", "a3"], ["d1", "d2", "d3"]
    pol = mk_policy(a + ["hub"] + d, [flow(x, "hub", replies=False) for x in a]
                    + [flow("hub", y, replies=False) for y in d])
    graph, [g] = groups_of(pol)
    assert g.kind == OPEN and not g.within and g.count == 9
    assert names(graph, g.sources) == set(a) and names(graph, g.dests) == set(d)
    assert {(e.src, e.dst) for e in g.links()} == \
        {(x, "hub") for x in a} | {("hub", y) for y in d}


def test_destinations_with_the_same_sources_are_one_group_when_that_is_fewer():
    # s1 -> h1 -> t1, s2 -> h2 -> t2, and five more sources -> hub -> t1 and t2: by source
    # that is 3 destination sets, by destination 2 source sets
    more = [f"m{i}" for i in range(5)]
    flows = [flow("s1", "h1", replies=False), flow("h1", "t1", replies=False),
             flow("s2", "h2", replies=False), flow("h2", "t2", replies=False),
             flow("hub", "t1", replies=False), flow("hub", "t2", replies=False)]
    flows += [flow(m, "hub", replies=False) for m in more]
    graph, groups = groups_of(mk_policy(["s1", "s2", "h1", "h2", "t1", "t2", "hub"] + more, flows))
    assert len(groups) == 2
    by_dest = {frozenset(names(graph, g.dests)): g for g in groups}
    assert set(by_dest) == {frozenset({"t1"}), frozenset({"t2"})}
    assert names(graph, by_dest[frozenset({"t1"})].sources) == {"s1"} | set(more)
    assert names(graph, by_dest[frozenset({"t2"})].sources) == {"s2"} | set(more)
    # s1 -> t1, s2 -> t2, and each of the five to t1 and t2
    assert sum(g.count for g in groups) == 12


def test_collector_fed_through_gateways_is_one_guarded_group_linked_by_the_gateways():
    # three departments, each a fully meshed open core of 3; only the gateway (first TVD)
    # sends to the collector, one-way controlled: the other core TVDs reach it guarded
    flows, depts = [], [[f"d{k}a", f"d{k}b", f"d{k}c"] for k in range(3)]
    for core in depts:
        flows += [flow(x, y, replies=False) for x in core for y in core if x != y]
        flows.append(flow(core[0], "collector", "controlled", replies=False))
    graph, [g] = groups_of(mk_policy([t for c in depts for t in c] + ["collector"], flows))
    assert g.kind == GUARDED and not g.within and g.count == 6
    assert names(graph, g.dests) == {"collector"}
    assert names(graph, g.sources) == {t for c in depts for t in c[1:]}
    assert sorted((e.src, e.dst) for e in g.links()) == \
        [(c[0], "collector") for c in depts]          # the gateways' entries, not the meshes
    ex = g.example()
    assert ex.path == ("d0b", "d0a", "collector") and not ex.all_open


def test_guarded_pairs_inside_one_component_name_the_guards():
    # a -> c controlled with replies, shared-membership b + c: a, b, c reach each other, but
    # only through guarded edges
    pol = mk_policy(["a", "b", "c"], [flow("a", "c", "controlled")], shared=[("b", "c")])
    graph, [g] = groups_of(pol)
    # every ordered pair but the permitted a -> c (c -> a rides on controlled replies)
    assert g.kind == GUARDED and g.within and g.count == 5
    assert {(graph.names[x], graph.names[y]) for x, y in g.pairs()} == \
        {("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), ("c", "a")}
    assert {(e.src, e.dst, e.why) for e in g.links()} == {
        ("a", "c", "flow"), ("c", "a", "reply"), ("b", "c", "shared"), ("c", "b", "shared")}
