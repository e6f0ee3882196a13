"""`externals:` (gateways to non-virtualized networks, paper 4.2) and hosts' external NICs."""
from __future__ import annotations

import pytest

from tests.policy.policy_helpers import check_text, errors, warnings, where

BASE = """\
version: 1
tvds:
  a: {vlan: 5, subnets: [10.1.0.0/24]}
  b: {vlan: 6, subnets: [10.2.0.0/24]}
externals:
  corp: {subnets: [198.51.100.0/24, 203.0.113.0/24], description: the office LAN}
flows:
  - {from: a, to: corp, policy: controlled, sender: {allow: [{proto: tcp, port: 443}]}, receiver: {allow: [{proto: tcp, port: 443}]}}
networks:
  lan: {subnet: 10.0.0.0/24}
hosts:
  h1:
    address: 10.0.0.1
    capabilities: [ip]
    nics: [{network: lan, nic: eth0, address: 10.0.0.1}]
    externals: [{external: corp, nic: eth1, address: 198.51.100.2/24, gateway: 198.51.100.1}]
"""


def test_externals_load(tmp_path):
    pol, diags = check_text(tmp_path, BASE)
    assert errors(diags) == [], diags
    assert pol.externals["corp"].subnets == ("198.51.100.0/24", "203.0.113.0/24")
    e = pol.hosts["h1"].external_on("corp")
    assert (e.nic, e.address, e.gateway) == ("eth1", "198.51.100.2/24", "198.51.100.1")
    assert "corp" not in pol.tvds


@pytest.mark.parametrize("old, new, line, fragment", [
    ("  corp: {subnets", "  a: {subnets: [192.0.2.0/24]}\n  corp: {subnets", 6,
     "external 'a' has the name of a TVD"),
    (", gateway: 198.51.100.1}", "}", 16, "203.0.113.0/24 lie beyond it: add 'gateway:"),
    ("203.0.113.0/24]", "10.2.0.128/25]", 6, "overlaps 10.2.0.0/24 of TVD 'b' (line 4)"),
    ("[198.51.100.0/24, 203.0.113.0/24]", "[]", 6, "needs at least one subnet"),
    ("external: corp, nic", "external: lab, nic", 16, "unknown external 'lab' in host 'h1'"),
    ("address: 198.51.100.2/24", "address: 192.0.2.2/24", 16, "inside none of its subnets"),
    ("address: 198.51.100.2/24", "address: 198.51.100.2", 16, "address with prefix"),
    ("gateway: 198.51.100.1", "gateway: 192.0.2.1", 16, "must be another address inside "
                                                        "198.51.100.0/24"),
    ("{from: a, to: corp", "{from: a, to: crop", 8, "unknown TVD or external 'crop' in flow"),
])
def test_mistakes_are_one_line_at_the_place_saying_what_to_fix(tmp_path, old, new, line, fragment):
    assert old in BASE
    _, diags = check_text(tmp_path, BASE.replace(old, new))
    errs = errors(diags)
    assert len(errs) == 1 and fragment in errs[0].message, [str(d) for d in errs]
    assert where(errs[0])[0] == line and "\n" not in str(errs[0])


def test_a_flow_between_two_externals_is_refused(tmp_path):
    text = BASE.replace("  corp: {", "  lab: {subnets: [192.0.2.0/24]}\n  corp: {") \
               .replace("networks:", "  - {from: corp, to: lab, policy: open}\nnetworks:")
    _, diags = check_text(tmp_path, text)
    errs = errors(diags)
    assert len(errs) == 1 and "needs a TVD at its other end" in errs[0].message, errs


def test_indirect_flow_through_an_external_is_found(tmp_path):
    # a -> corp open and corp -> b open: closed pair a -> b is bypassed through corp
    text = BASE.replace("  - {from: a, to: corp, policy: controlled, sender: {allow: [{proto: tcp, "
                        "port: 443}]}, receiver: {allow: [{proto: tcp, port: 443}]}}",
                        "  - {from: a, to: corp, policy: open, replies: false}\n"
                        "  - {from: corp, to: b, policy: open, replies: false}\n"
                        "  - {from: a, to: b, policy: closed}")
    _, diags = check_text(tmp_path, text)
    errs = [d.message for d in errors(diags)]
    assert errs == ["closed pair a -> b is bypassed by open path a -> corp -> b "
                    "(a -> corp is open; corp -> b is open)"], errs
    # controlled hops make it a warning (guarded path), not an error
    _, diags = check_text(tmp_path, text.replace("{from: corp, to: b, policy: open, replies: false}",
                                                 "{from: corp, to: b, policy: controlled, "
                                                 "replies: false, allow: [{proto: tcp, port: 1}]}"))
    assert errors(diags) == []
    assert any("guarded path a -> corp -> b" in w.message for w in warnings(diags))


def test_policies_without_externals_are_unchanged(tmp_path):
    pol, diags = check_text(tmp_path, "version: 1\ntvds:\n  a: {vlan: 5}\n")
    assert diags == [] and pol.externals == {} and pol.hosts == {}


def test_show_and_graph_list_the_external_and_the_open_dummy_does_not_reach_it(tmp_path):
    from xen_tvd.policy.flows import FlowMatrix
    from xen_tvd.policy.model import FlowKind
    from xen_tvd.policy.render import matrix_text, to_dot
    import dataclasses
    pol, _ = check_text(tmp_path, BASE)
    pol = dataclasses.replace(pol, dummy_policy=FlowKind.OPEN)   # (the verifier would object)
    m = FlowMatrix(pol)
    assert m.kind("corp", "dummy") is FlowKind.CLOSED and m.kind("dummy", "corp") is FlowKind.CLOSED
    assert m.kind("a", "dummy") is FlowKind.OPEN
    rows = {l.split("|")[0].strip(): [c.strip() for c in l.split("|")[1:]]
            for l in matrix_text(pol).splitlines()[2:7]}
    assert rows["a"] == ["1", "0", "P[a,corp]", "1"] and rows["corp"] == ["0", "0", "1", "0"]
    assert '"corp" [label="corp (external)\\n198.51.100.0/24, 203.0.113.0/24"' in to_dot(pol)
