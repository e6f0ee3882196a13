"""Property order, membership admission and conflicts (paper section 3.2)."""
from __future__ import annotations

import pytest

from xen_tvd.diagnostics import Collector
from xen_tvd.policy.lattice import PropertyOrder, admit, joint_conflicts
from xen_tvd.policy.verify import check_membership, check_property_order

from tests.policy.policy_helpers import check_text, errors, mk_policy, prop, req, where

# tpm > signed > basic; hw-crypto > signed; internet excludes card-data
PROPS = (
    prop("tpm", dominates=["signed"]),
    prop("signed", dominates=["basic"]),
    prop("basic"),
    prop("hw-crypto", dominates=["signed"]),
    prop("internet", excludes=["card-data"]),
    prop("card-data"),
    prop("dmz", dominates=["internet"]),       # inherits internet's exclusion
    prop("vault", dominates=["card-data", "tpm"]),
)


@pytest.fixture
def order():
    return PropertyOrder({p.name: p for p in PROPS})


# --- dominance -----------------------------------------------------------------------------

@pytest.mark.parametrize("p", [p.name for p in PROPS])
def test_dominance_is_reflexive(order, p):
    assert order.dominates(p, p)


def test_dominance_direct_and_transitive(order):
    assert order.dominates("tpm", "signed")
    assert order.dominates("tpm", "basic")            # tpm > signed > basic
    assert order.dominates("vault", "basic")          # vault > tpm > signed > basic
    assert order.dominates("hw-crypto", "basic")


def test_dominance_is_not_symmetric_and_unrelated_stay_unrelated(order):
    assert not order.dominates("signed", "tpm")
    assert not order.dominates("basic", "signed")
    assert not order.dominates("tpm", "hw-crypto")
    assert not order.dominates("hw-crypto", "tpm")
    assert not order.dominates("internet", "card-data")


def test_down_closure(order):
    assert order.down("vault") == {"vault", "card-data", "tpm", "signed", "basic"}
    assert order.closure(["dmz", "basic"]) == {"dmz", "internet", "basic"}


def test_unknown_property_dominates_only_itself(order):
    assert order.down("nonesuch") == {"nonesuch"}


def test_down_terminates_on_a_cycle():
    o = PropertyOrder({p.name: p for p in (prop("a", ["b"]), prop("b", ["c"]), prop("c", ["a"]))})
    assert o.down("a") == {"a", "b", "c"}


# --- admission -------------------------------------------------------------------------------

def _policy(**kw):
    memberships = {
        "web": ["signed"],
        "bank": [req("tpm", "immutable-log", "trust")],
        "db": ["basic", "hw-crypto"],
        "pci": ["card-data"],
        "edge": ["dmz"],
    }
    return mk_policy(list(memberships), properties=PROPS, memberships=memberships, **kw)


def test_admit_reflexive():
    r = admit(_policy(), ["web"], {"signed": None})
    assert r.admitted and r.reason() == "admitted"


def test_admit_through_a_dominance_chain():
    assert admit(_policy(), ["web"], {"tpm": None}).admitted          # tpm > signed
    assert admit(_policy(), ["web"], {"vault": None}).admitted        # vault > tpm > signed


def test_deny_names_the_unmet_requirement():
    r = admit(_policy(), ["web"], {"basic": None})                     # basic < signed
    assert not r.admitted
    assert [x.property for x in r.unmet["web"]] == ["signed"]
    assert r.reason() == "TVD web requires signed"


def test_every_requirement_needs_some_dominating_property():
    assert admit(_policy(), ["db"], {"hw-crypto": None}).admitted    # hw-crypto > signed > basic
    r = admit(_policy(), ["db"], {"tpm": None})                       # basic yes, hw-crypto no
    assert not r.admitted and [x.property for x in r.unmet["db"]] == ["hw-crypto"]


@pytest.mark.parametrize("kind, ok", [("immutable-log", True), ("trust", True),
                                      ("mutable-log", False), ("evaluation", False),
                                      (None, False)])
def test_assurance_kinds(kind, ok):
    r = admit(_policy(), ["bank"], {"tpm": kind})
    assert r.admitted is ok
    if not ok:
        assert r.reason() == "TVD bank requires tpm (assured by immutable-log or trust)"


def test_assurance_applies_to_the_dominating_property():
    # vault > tpm: the evidence backing vault is what counts
    assert admit(_policy(), ["bank"], {"vault": "trust"}).admitted
    assert not admit(_policy(), ["bank"], {"vault": "audit"}).admitted


def test_requirement_without_assurance_accepts_any_or_none():
    for kind in (None, "audit", "immutable-log"):
        assert admit(_policy(), ["web"], {"signed": kind}).admitted


def test_multi_tvd_must_satisfy_all():
    pol = _policy(shared=[("web", "db", "bank")])
    assert admit(pol, ["web", "db"], {"hw-crypto": None}).admitted
    r = admit(pol, ["web", "db", "bank"], {"hw-crypto": None})
    assert not r.admitted
    assert list(r.unmet) == ["bank"]
    r = admit(pol, ["web", "db", "bank"], {"hw-crypto": None, "tpm": "trust"})
    assert r.admitted


def test_multi_tvd_needs_a_shared_membership_set():
    r = admit(_policy(), ["web", "db"], {"hw-crypto": None})
    assert not r.admitted
    assert r.not_shared == ["web", "db"]
    assert "web + db are not a shared-membership set" in r.reason()
    # a subset of a listed set is fine; the same TVD twice is one TVD
    assert admit(_policy(shared=[("web", "db", "pci")]), ["web", "db"], {"hw-crypto": None}).admitted
    assert admit(_policy(), ["web", "web"], {"signed": None}).admitted


def test_unknown_tvd_is_denied():
    r = admit(_policy(), ["nope"], {"signed": None})
    assert not r.admitted and r.unknown_tvds == ["nope"]
    assert r.reason() == "unknown TVD nope"


# --- exclusion conflicts -----------------------------------------------------------------------

def test_machine_holding_excluded_pair_is_denied():
    r = admit(_policy(), ["pci"], {"card-data": None, "internet": None})
    assert not r.admitted
    assert r.conflicts == [("card-data", "internet")]
    assert r.reason() == "properties card-data and internet exclude each other"


def test_exclusion_is_inherited_upwards(order):
    # dmz > internet, internet excludes card-data: dmz and card-data conflict too
    assert order.conflicts(["dmz", "card-data"]) == [("card-data", "internet")]
    r = admit(_policy(), ["pci"], {"card-data": None, "dmz": None})
    assert not r.admitted and r.conflicts == [("card-data", "internet")]
    # exclusion does not flow downwards: internet's dominated properties are unaffected
    assert order.conflicts(["internet", "basic"]) == []


def test_joint_conflicts_of_tvds():
    pol = _policy()
    assert joint_conflicts(pol, ["pci", "edge"]) == [("card-data", "internet")]
    assert joint_conflicts(pol, ["pci", "web"]) == []
    assert joint_conflicts(pol, ["pci", "unknown"]) == []


def _diags(fn, pol):
    c = Collector()
    fn(pol, c)
    return c.items


def test_verify_reports_property_that_can_never_be_held():
    props = PROPS + (prop("bad", dominates=["dmz", "card-data"]),)
    out = _diags(check_property_order, mk_policy(["a"], properties=props))
    assert [d.message for d in out] == [
        "property 'bad' can never be held: it dominates both 'card-data' and 'internet', "
        "which exclude each other"]
    assert out[0].code == "property-conflict"


def test_verify_reports_self_exclusion():
    out = _diags(check_property_order, mk_policy(["a"], properties=(prop("x", excludes=["x"]),)))
    assert [d.message for d in out] == ["property 'x' excludes itself"]


def test_verify_tvd_with_conflicting_requirements():
    pol = mk_policy(["t"], properties=PROPS, memberships={"t": ["dmz", "vault"]})
    out = _diags(check_membership, pol)
    assert [d.message for d in out] == [
        "TVD 't' can admit no machine: its requirements need both 'card-data' and "
        "'internet', which exclude each other"]


def test_verify_shared_membership_conflict_reported_once():
    pol = mk_policy(["pci", "edge", "web"], properties=PROPS,
                    memberships={"pci": ["card-data"], "edge": ["dmz"], "web": ["signed"]},
                    shared=[("pci", "edge"), ("pci", "web")])
    out = _diags(check_membership, pol)
    assert [d.message for d in out] == [
        "shared membership pci + edge cannot be met by one VM: it needs both 'card-data' "
        "and 'internet', which exclude each other"]
    assert out[0].code == "membership-conflict"


def test_shared_membership_conflict_already_in_one_tvd_is_not_repeated():
    pol = mk_policy(["bad", "web"], properties=PROPS,
                    memberships={"bad": ["dmz", "card-data"], "web": ["signed"]},
                    shared=[("bad", "web")])
    out = _diags(check_membership, pol)
    assert len(out) == 1 and out[0].message.startswith("TVD 'bad' can admit no machine")


# --- property cycles ---------------------------------------------------------------------------

def _cycle_errors(tmp_path, props_yaml):
    _, diags = check_text(tmp_path, "version: 1\nproperties:\n" + props_yaml
                          + "tvds:\n  t: {vlan: 5}\n")
    return [d for d in diags if d.code == "property-cycle"], diags


def test_cycle_reported_once_with_its_text(tmp_path):
    cyc, diags = _cycle_errors(tmp_path, "  a: {dominates: [b]}\n  b: {dominates: [c]}\n"
                                         "  c: {dominates: [a]}\n  d: {dominates: [a]}\n")
    assert len(cyc) == 1
    assert cyc[0].message == ("cycle in the property order: a > b > c > a "
                              "(dominance must be a partial order)")
    assert where(cyc[0]) == (3, 3)
    assert errors(diags) == cyc


def test_self_loop_is_a_cycle(tmp_path):
    cyc, _ = _cycle_errors(tmp_path, "  a: {dominates: [a]}\n")
    assert [d.message for d in cyc] == [
        "cycle in the property order: a > a (dominance must be a partial order)"]


def test_two_cycles_each_reported_once(tmp_path):
    cyc, _ = _cycle_errors(tmp_path, "  a: {dominates: [b]}\n  b: {dominates: [a, c]}\n"
                                     "  c: {dominates: [d]}\n  d: {dominates: [c]}\n")
    texts = sorted(d.message.split(": ", 1)[1].split(" (")[0] for d in cyc)
    assert texts == ["a > b > a", "c > d > c"]


def test_diamond_is_not_a_cycle(tmp_path):
    cyc, diags = _cycle_errors(tmp_path, "  top: {dominates: [l, r]}\n  l: {dominates: [bot]}\n"
                                         "  r: {dominates: [bot]}\n  bot: {}\n")
    assert cyc == [] and errors(diags) == []


def test_cycles_direct_on_order():
    o = PropertyOrder({p.name: p for p in (prop("x", ["y"]), prop("y", ["z"]), prop("z", ["y"]))})
    assert o.cycles() == [["y", "z", "y"]]
