"""Per-TVD `subnets` and `gateway` (routed inter-TVD flows, docs/flow-control-design.md)."""
from __future__ import annotations

import pytest

from tests.policy.policy_helpers import check_text, errors, where

HEAD = "version: 1\ntvds:\n"


def test_subnets_and_default_gateways(tmp_path):
    pol, diags = check_text(tmp_path, HEAD +
                            "  a: {vlan: 5, subnets: [10.1.0.0/24, 'fd00:1::/64']}\n"
                            "  b: {vlan: 6}\n")
    assert diags == []
    a = pol.tvds["a"]
    assert a.subnets == ("10.1.0.0/24", "fd00:1::/64")
    assert a.gateways == ("10.1.0.1/24", "fd00:1::1/64")   # first host address of each
    assert pol.tvds["b"].subnets == () and pol.tvds["b"].gateways == ()


def test_explicit_gateway_replaces_the_default_of_its_subnet_only(tmp_path):
    pol, diags = check_text(tmp_path, HEAD +
                            "  a: {vlan: 5, subnets: [10.1.0.0/24, 10.9.0.0/16], "
                            "gateway: 10.9.255.254}\n")
    assert diags == []
    assert pol.tvds["a"].gateways == ("10.1.0.1/24", "10.9.255.254/16")


@pytest.mark.parametrize("body, fragment, col", [
    ("subnets: [10.1.0.5/24]", "write the network address, e.g. 10.1.0.0/24", 26),
    ("subnets: [banana]", "is not an IP network", 26),
    ("subnets: [10.1.0.0/31]", "is too small", 26),
    ("subnets: [224.0.0.0/8]", "not a unicast range", 26),
    ("subnets: [10.1.0.0/24], gateway: 10.2.0.1", "inside none of its subnets (10.1.0.0/24)", 49),
    ("gateway: 10.2.0.1", "none; add 'subnets' first", 25),
    ("subnets: [10.1.0.0/24], gateway: 10.1.0.255", "network or broadcast address", 49),
    ("subnets: 10.1.0.0/24", "must be a list", 25),
])
def test_bad_subnets_are_one_error_at_the_value(tmp_path, body, fragment, col):
    _, diags = check_text(tmp_path, HEAD + f"  a: {{vlan: 5, {body}}}\n")
    [e] = errors(diags)
    assert fragment in e.message and where(e) == (3, col), e


def test_overlapping_subnets_across_tvds_are_an_error_with_both_lines(tmp_path):
    _, diags = check_text(tmp_path, HEAD +
                          "  a: {vlan: 5, subnets: [10.1.0.0/16]}\n"
                          "  b: {vlan: 6, subnets: [10.2.0.0/24, 10.1.7.0/24]}\n")
    [e] = errors(diags)
    assert e.code == "subnet-overlap" and where(e) == (4, 39)
    assert e.message.startswith("subnet 10.1.7.0/24 of TVD 'b' overlaps 10.1.0.0/16 of TVD 'a' "
                                "(line 3)")


def test_overlap_within_one_tvd_is_an_error_too(tmp_path):
    _, diags = check_text(tmp_path, HEAD + "  a: {vlan: 5, subnets: [10.1.0.0/24, 10.1.0.128/25]}\n")
    [e] = errors(diags)
    assert "overlaps 10.1.0.0/24 of itself" in e.message


def test_ipv4_and_ipv6_never_overlap(tmp_path):
    _, diags = check_text(tmp_path, HEAD + "  a: {vlan: 5, subnets: [10.1.0.0/24]}\n"
                                           "  b: {vlan: 6, subnets: ['::ffff:0:0/96']}\n")
    assert errors(diags) == []


def test_open_flow_to_a_tvd_without_subnets_says_what_to_add(tmp_path):
    _, diags = check_text(tmp_path, HEAD +
                          "  a: {vlan: 5, subnets: [10.1.0.0/24]}\n"
                          "  b: {vlan: 6}\n"
                          "flows:\n"
                          "  - {from: a, to: b, policy: controlled, allow: [{proto: tcp, port: 22}]}\n"
                          "  - {from: b, to: a, policy: closed}\n")
    [e] = errors(diags)
    assert e.code == "flow-without-subnets" and where(e) == (6, 5)
    assert e.message == ("controlled flow a -> b needs subnets on TVD 'b': add 'subnets: "
                         "[CIDR, ...]' (disjoint from the other TVDs') under tvds.b so the "
                         "router can give it a gateway")


def test_policy_without_any_subnets_keeps_loading_its_flows_stay_closed(tmp_path):
    # the pre-routing form (xl-configs/paper-figure1.yaml): no card, so closed by topology
    pol, diags = check_text(tmp_path, HEAD + "  a: {vlan: 5}\n  b: {vlan: 6}\n"
                                             "flows:\n  - {from: a, to: b, policy: open, replies: false}\n")
    assert errors(diags) == [] and pol is not None
