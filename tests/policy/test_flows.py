"""The flow matrix, controlled-rule intersection and the indirect-flow finder (paper 3.3)."""
from __future__ import annotations

import pytest

from xen_tvd.policy.flows import FlowMatrix, find_indirect_flows, intersect_rules
from xen_tvd.policy.model import DUMMY_TVD, FlowKind, Rule

from tests.policy.policy_helpers import check_text, errors, flow, mk_policy, warnings, where

O, C, X = FlowKind.OPEN, FlowKind.CONTROLLED, FlowKind.CLOSED


# --- FlowMatrix ------------------------------------------------------------------------------

def test_unlisted_pair_is_closed_same_tvd_open():
    m = FlowMatrix(mk_policy(["a", "b"], [flow("a", "b", "open")]))
    assert m.kind("a", "b") is O
    assert m.kind("b", "a") is X            # unlisted
    assert m.kind("a", "a") is O and m.kind("b", "b") is O


def test_listed_kinds():
    m = FlowMatrix(mk_policy(["a", "b", "c"], [flow("a", "b", "controlled"),
                                               flow("b", "a", "closed"), flow("a", "c", "open")]))
    assert (m.kind("a", "b"), m.kind("b", "a"), m.kind("a", "c"), m.kind("c", "a")) == (C, X, O, X)


def test_dummy_default_closed_and_open():
    m = FlowMatrix(mk_policy(["a"]))
    assert m.kind("a", DUMMY_TVD) is X and m.kind(DUMMY_TVD, "a") is X
    m = FlowMatrix(mk_policy(["a"], dummy="open"))
    assert m.kind("a", DUMMY_TVD) is O and m.kind(DUMMY_TVD, "a") is O
    assert m.kind(DUMMY_TVD, DUMMY_TVD) is O


def test_explicit_dummy_entry_overrides_default():
    m = FlowMatrix(mk_policy(["a"], [flow("a", DUMMY_TVD, "closed")], dummy="open"))
    assert m.kind("a", DUMMY_TVD) is X and m.kind(DUMMY_TVD, "a") is O
    m = FlowMatrix(mk_policy(["a"], [flow(DUMMY_TVD, "a", "open")]))
    assert m.kind(DUMMY_TVD, "a") is O and m.kind("a", DUMMY_TVD) is X


def test_dummy_open_from_yaml(tmp_path):
    pol, diags = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 5}}
        dummy: {policy: open, vlans: [1, 2]}
    """)
    assert errors(diags) == []
    assert pol.dummy_policy is O and pol.dummy_vlans == (1, 2)


# --- controlled rules: sender ∩ receiver ----------------------------------------------------

def R(proto, lo=None, hi=None):
    return Rule(proto, None if lo is None else (lo, hi if hi is not None else lo))


@pytest.mark.parametrize("a, b, expected", [
    ([R("tcp", 443)], [R("tcp", 443)], [R("tcp", 443)]),
    ([R("tcp", 443), R("tcp", 80)], [R("tcp", 443)], [R("tcp", 443)]),
    ([R("tcp", 80, 90)], [R("tcp", 85, 100)], [R("tcp", 85, 90)]),
    ([R("tcp", 80, 90)], [R("tcp", 91, 100)], []),                 # disjoint ranges
    ([R("tcp", 80, 90)], [R("tcp", 90, 95)], [R("tcp", 90)]),      # touching at one port
    ([R("tcp")], [R("tcp", 22)], [R("tcp", 22)]),                  # any port ∩ one port
    ([R("udp", 53)], [R("udp")], [R("udp", 53)]),
    ([R("tcp", 443)], [R("udp", 443)], []),                        # protocols differ
    ([R("any")], [R("udp", 53)], [R("udp", 53)]),
    ([R("tcp", 22)], [R("any")], [R("tcp", 22)]),
    ([R("any")], [R("any")], [R("any")]),
    ([R("any")], [R("icmp")], [R("icmp")]),
    ([R("any")], [R("tcp")], [R("tcp")]),
    ([R("icmp")], [R("icmp")], [R("icmp")]),
    ([R("icmp")], [R("icmpv6")], []),
    ([], [R("any")], []),
])
def test_intersect_rules(a, b, expected):
    assert list(intersect_rules(tuple(a), tuple(b))) == expected
    # intersection is symmetric as a set
    assert set(intersect_rules(tuple(b), tuple(a))) == set(expected)


def test_matrix_rules_of_controlled_pair(tmp_path):
    pol, diags = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 5}, b: {vlan: 6}}
        flows:
          - from: a
            to: b
            policy: controlled
            sender: {allow: [{proto: tcp, port: "8000-8100"}, {proto: icmp}]}
            receiver: {allow: [{proto: tcp, port: "8080-9000"}, {proto: any}]}
            replies: false
    """)
    assert errors(diags) == []
    m = FlowMatrix(pol)
    assert [str(r) for r in m.rules("a", "b")] == ["tcp/8080-8100", "tcp/8000-8100", "icmp"]
    assert m.rules("b", "a") == ()          # closed: nothing passes


def test_allow_applies_to_both_sides(tmp_path):
    pol, _ = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 5}, b: {vlan: 6}}
        flows: [{from: a, to: b, policy: controlled, allow: [{proto: udp, port: 514}], replies: false}]
    """)
    f = pol.flows[0]
    assert f.sender == f.receiver and [str(r) for r in FlowMatrix(pol).rules("a", "b")] == ["udp/514"]


def test_empty_intersection_warns(tmp_path):
    _, diags = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 5}, b: {vlan: 6}}
        flows:
          - {from: a, to: b, policy: controlled, replies: false,
             sender: {allow: [{proto: tcp, port: 22}]}, receiver: {allow: [{proto: udp}]}}
    """)
    assert errors(diags) == []
    [w] = warnings(diags)
    assert w.code == "empty-controlled" and where(w) == (4, 5)
    assert "controlled flow a -> b passes nothing" in w.message


# --- replies, shared membership, dummy: information edges ------------------------------------

def _found(pol):
    return {(f.src, f.dst): (f.path_text(), f.all_open) for f in find_indirect_flows(pol)}


def test_replies_carry_information_back():
    # a -> b open with replies: b's data reaches a although b -> a is closed
    assert _found(mk_policy(["a", "b"], [flow("a", "b", "open")])) == {("b", "a"): ("b -> a", True)}
    assert _found(mk_policy(["a", "b"], [flow("a", "b", "controlled")])) == \
        {("b", "a"): ("b -> a", False)}


def test_replies_false_removes_the_back_edge():
    assert _found(mk_policy(["a", "b"], [flow("a", "b", "open", replies=False)])) == {}
    # and a chain that needed the back edge disappears too
    pol = mk_policy(["a", "b", "c"], [flow("a", "b", "open", replies=False),
                                      flow("c", "b", "open", replies=False)])
    assert _found(pol) == {}


def test_closed_entry_carries_nothing():
    assert _found(mk_policy(["a", "b"], [flow("a", "b", "closed"), flow("b", "a", "closed")])) == {}


def test_shared_membership_is_a_guarded_edge_both_ways():
    # a VM in both TVDs is a channel, guarded by admission like a controlled flow: warnings
    assert _found(mk_policy(["a", "b"], shared=[("a", "b")])) == {
        ("a", "b"): ("a -> b", False), ("b", "a"): ("b -> a", False)}
    pol = mk_policy(["a", "b", "c"], [flow("a", "b", "open", replies=False)], shared=[("b", "c")])
    assert _found(pol) == {("a", "c"): ("a -> b -> c", False), ("b", "c"): ("b -> c", False),
                           ("c", "b"): ("c -> b", False)}


def test_open_dummy_bypasses_every_closed_pair():
    found = _found(mk_policy(["a", "b"], dummy="open"))
    assert found == {("a", "b"): ("a -> dummy -> b", True), ("b", "a"): ("b -> dummy -> a", True)}


def test_closed_dummy_carries_nothing_by_default():
    assert _found(mk_policy(["a", "b"])) == {}


def test_explicit_dummy_entries_carry_information_with_closed_default():
    pol = mk_policy(["a", "b"], [flow("b", DUMMY_TVD, "open", replies=False),
                                 flow(DUMMY_TVD, "a", "open", replies=False)])
    assert _found(pol) == {("b", "a"): ("b -> dummy -> a", True)}


def test_explicit_closed_dummy_entry_with_open_default_is_checked():
    pol = mk_policy(["a", "b"], [flow("a", DUMMY_TVD, "closed"), flow(DUMMY_TVD, "a", "closed"),
                                 flow("a", "b", "open"), flow("b", "a", "open")], dummy="open")
    assert _found(pol) == {("a", DUMMY_TVD): ("a -> b -> dummy", True),
                           (DUMMY_TVD, "a"): ("dummy -> b -> a", True)}


# --- indirect flows: error vs warning, exact text ------------------------------------------------

FIG1_LIKE = """
    version: 1
    tvds:
      alpha: {vlan: 100}
      beta: {vlan: 200}
      gamma: {vlan: 300}
    flows:
      - {from: alpha, to: gamma, policy: %s, replies: false%s}
      - {from: gamma, to: beta, policy: open, replies: false}
"""


def test_all_open_chain_is_an_error_with_path(tmp_path):
    _, diags = check_text(tmp_path, FIG1_LIKE % ("open", ""))
    [e] = errors(diags)
    assert warnings(diags) == []
    assert e.code == "indirect-flow" and where(e) == (7, 5)
    assert e.message == ("closed pair alpha -> beta is bypassed by open path alpha -> gamma -> beta "
                         "(alpha -> gamma is open; gamma -> beta is open)")
    assert str(e).startswith(f"{tmp_path / 'policy.yaml'}:7:5: error: closed pair alpha -> beta")


def test_chain_through_controlled_edge_is_a_warning_with_path(tmp_path):
    _, diags = check_text(tmp_path, FIG1_LIKE % ("controlled", ", allow: [{proto: tcp, port: 443}]"))
    assert errors(diags) == []
    [w] = warnings(diags)
    assert w.code == "indirect-flow" and where(w) == (7, 5)
    assert w.message == ("closed pair alpha -> beta is reachable through guarded path "
                         "alpha -> gamma -> beta (alpha -> gamma is controlled; gamma -> beta is "
                         "open); make sure the controlled rules and shared-membership VMs cannot "
                         "relay it")


def test_open_chain_preferred_over_shorter_controlled_one():
    pol = mk_policy(["a", "b", "c", "d"], [
        flow("a", "b", "controlled", replies=False),            # short but controlled
        flow("a", "c", "open", replies=False), flow("c", "d", "open", replies=False),
        flow("d", "b", "open", replies=False)])
    found = {(f.src, f.dst): f for f in find_indirect_flows(pol)}
    f = found[("a", "d")]
    assert f.all_open and f.path_text() == "a -> c -> d"
    assert ("a", "b") not in found                               # a -> b is permitted
    f = found[("c", "b")]
    assert f.all_open and f.path_text() == "c -> d -> b"


def test_one_shortest_chain_per_pair():
    # two routes a -> b: a -> x -> b and a -> y -> z -> b: one finding, the short one
    pol = mk_policy(["a", "b", "x", "y", "z"], [
        flow("a", "x", "open", replies=False), flow("x", "b", "open", replies=False),
        flow("a", "y", "open", replies=False), flow("y", "z", "open", replies=False),
        flow("z", "b", "open", replies=False)])
    ab = [f for f in find_indirect_flows(pol) if (f.src, f.dst) == ("a", "b")]
    assert len(ab) == 1 and ab[0].path_text() == "a -> x -> b"
    assert [e.describe() for e in ab[0].edges] == ["a -> x is open", "x -> b is open"]


def test_edge_descriptions():
    pol = mk_policy(["a", "b", "c"], [flow("b", "a", "open")], shared=[("b", "c")])
    found = {(f.src, f.dst): f for f in find_indirect_flows(pol)}
    f = found[("a", "c")]
    assert f.path_text() == "a -> b -> c"
    assert [e.describe() for e in f.edges] == [
        "a -> b rides on replies of b -> a", "b -> c through a VM in both (shared-membership)"]
    f = _found(mk_policy(["a", "b"], dummy="open"))
    pol = mk_policy(["a", "b"], dummy="open")
    [ab] = [x for x in find_indirect_flows(pol) if (x.src, x.dst) == ("a", "b")]
    assert ab.edges[0].describe() == "a -> dummy through the open dummy TVD"


def test_shared_over_controlled_warns(tmp_path):
    _, diags = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 5}, b: {vlan: 6}}
        flows:
          - {from: a, to: b, policy: controlled, allow: [{proto: tcp, port: 443}]}
          - {from: b, to: a, policy: open}
        shared-membership: [[a, b]]
    """)
    assert errors(diags) == []
    [w] = warnings(diags)
    assert w.code == "shared-over-controlled" and where(w) == (4, 5)
    assert w.message == ("controlled flow a -> b is effectively open for VMs in both "
                         "(shared-membership a + b)")


def test_figure1_example_checks_with_warnings_only():
    from xen_tvd.policy import check_file
    pol, diags = check_file("xl-configs/paper-figure1.yaml")
    assert pol is not None and errors(diags) == []
    texts = [d.message for d in diags if d.code == "indirect-flow"]
    assert any("closed pair alpha -> beta is reachable through guarded path "
               "alpha -> gamma -> beta" in t for t in texts)
    assert any("closed pair beta -> alpha is reachable through guarded path "
               "beta -> gamma -> alpha" in t for t in texts)


REPLY_ONLY = """
    version: 1
    tvds:
      alpha: {vlan: 100}
      beta: {vlan: 200}
    flows:
      - {from: alpha, to: beta, policy: open}
%s"""


def test_replies_onto_an_unlisted_pair_are_a_warning_that_says_how_to_state_it(tmp_path):
    _, diags = check_text(tmp_path, REPLY_ONLY % "")
    assert errors(diags) == []
    [w] = warnings(diags)
    assert w.code == "reply-flow" and where(w) == (6, 5)
    assert w.message == ("unlisted pair beta -> alpha is closed, but replies of the open flow "
                         "alpha -> beta carry data beta -> alpha; state the pair "
                         "(open/controlled), or set 'replies: false' on alpha -> beta for a "
                         "one-way flow")


def test_replies_onto_an_explicitly_closed_pair_are_an_error(tmp_path):
    _, diags = check_text(tmp_path, REPLY_ONLY % "      - {from: beta, to: alpha, policy: closed}\n")
    [e] = errors(diags)
    assert e.code == "indirect-flow"
    assert e.message.startswith("closed pair beta -> alpha is bypassed by open path beta -> alpha "
                                "(beta -> alpha rides on replies of alpha -> beta)")


def test_one_way_flow_without_replies_reports_nothing(tmp_path):
    text = (REPLY_ONLY % "").replace("policy: open}", "policy: open, replies: false}")
    _, diags = check_text(tmp_path, text)
    assert diags == []
