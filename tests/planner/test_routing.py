"""Planner: router cards and the flow filter plan for routed inter-TVD flows (pure)."""
import textwrap

from xen_tvd.desired.model import FlowRule, VifPort
from xen_tvd.planner import plan
from xen_tvd.planner.routing import components, leg_mac
from xen_tvd.policy import load_policy

POLICY = """
version: 1
tvds:
  a: {vlan: 100, subnets: [10.1.0.0/24, 'fd00:1::/64']}
  b: {vlan: 200, subnets: [10.2.0.0/24], gateway: 10.2.0.254}
  c: {vlan: 300, subnets: [10.3.0.0/24]}
  d: {vlan: 400, subnets: [10.4.0.0/24]}
  e: {vlan: 500}
flows:
  - {from: a, to: b, policy: open}
  - from: b
    to: c
    policy: controlled
    replies: false
    sender: {allow: [{proto: tcp, port: 22}, {proto: tcp, port: 80}]}
    receiver: {allow: [{proto: tcp, port: 22}, {proto: udp}]}
  - {from: c, to: d, policy: closed}
networks:
  lan: {subnet: 10.0.1.0/24, multicast: true}
hosts:
  h1: {address: 10.0.1.1, capabilities: [ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.0.1.1}]}
  h2: {address: 10.0.1.2, capabilities: [ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.0.1.2}]}
  h3: {address: 10.0.1.3, capabilities: [ethernet, ip], nics: [{network: lan, nic: eth0, address: 10.0.1.3}]}
"""


def _policy(tmp_path, text=POLICY):
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(text))
    return load_policy(str(f))


def _ports(**placement):
    return {h: [VifPort(f"vif{i + 1}.0", t) for i, t in enumerate(ts)] for h, ts in placement.items()}


def test_components_join_tvds_by_permitted_pairs_only(tmp_path):
    comp = components(_policy(tmp_path))
    assert comp["a"] == comp["b"] == comp["c"] == frozenset("abc")
    assert "d" not in comp and "e" not in comp     # d: all closed; e: no subnets


def test_router_gets_a_leg_per_tvd_of_the_component_even_without_local_vms(tmp_path):
    states = plan(_policy(tmp_path), _ports(h1=["a"], h2=["c", "d"], h3=["d", "e"]))
    r1 = states["h1"].router
    assert r1.netns == "tvd-rtr-h1"
    assert [(l.tvd, l.port, l.peer, l.bridge) for l in r1.legs] == [
        ("a", "tvr-100", "leg-100", "tvd-a"), ("b", "tvr-200", "leg-200", "tvd-b"),
        ("c", "tvr-300", "leg-300", "tvd-c")]
    assert r1.legs[0].gateways == ("10.1.0.1/24", "fd00:1::1/64")
    assert r1.legs[1].gateways == ("10.2.0.254/24",)
    # b and c have no VM on h1 but their segments are carried for the router (VXLAN to h2)
    assert {s.tvd for s in states["h1"].segments} == {"a", "b", "c"}
    assert {s.tvd for s in states["h2"].segments} == {"a", "b", "c", "d"}
    # d (closed to all) and e (no subnets) never get a card: h3 has no router at all
    assert states["h3"].router is None and states["h3"].flows is None
    assert {s.tvd for s in states["h3"].segments} == {"d", "e"}
    assert "d" not in {l.tvd for l in states["h2"].router.legs}


def test_leg_macs_are_per_host_and_locally_administered(tmp_path):
    states = plan(_policy(tmp_path), _ports(h1=["a"], h2=["a"]))
    m1 = {l.tvd: l.mac for l in states["h1"].router.legs}
    m2 = {l.tvd: l.mac for l in states["h2"].router.legs}
    assert m1["a"] != m2["a"] and m1["a"] == leg_mac("h1", "a")
    for mac in [*m1.values(), *m2.values()]:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01


def test_flow_plan_lists_every_subnet_tvd_and_the_permitted_pairs(tmp_path):
    fp = plan(_policy(tmp_path), _ports(h1=["a"]))["h1"].flows
    assert [(t.tvd, t.tvd_id, t.subnets, t.bridge) for t in fp.tvds] == [
        ("a", 100, ("10.1.0.0/24", "fd00:1::/64"), "tvd-a"), ("b", 200, ("10.2.0.0/24",), "tvd-b"),
        ("c", 300, ("10.3.0.0/24",), "tvd-c"), ("d", 400, ("10.4.0.0/24",), None)]
    ab, bc = fp.pairs
    assert (ab.src, ab.dst, ab.open, ab.sender, ab.replies) == ("a", "b", True, (), True)
    assert (bc.src_id, bc.dst_id, bc.open, bc.replies) == (200, 300, False, False)
    assert bc.sender == (FlowRule("tcp", (22, 22)), FlowRule("tcp", (80, 80)))
    assert bc.receiver == (FlowRule("tcp", (22, 22)), FlowRule("udp", None))


def test_policy_without_subnets_plans_exactly_as_before(tmp_path):
    text = POLICY.replace(", subnets: [10.1.0.0/24, 'fd00:1::/64']", "") \
        .replace(", subnets: [10.2.0.0/24], gateway: 10.2.0.254", "") \
        .replace(", subnets: [10.3.0.0/24]", "").replace(", subnets: [10.4.0.0/24]", "")
    states = plan(_policy(tmp_path, text), _ports(h1=["a"], h2=["c"]))
    assert all(s.router is None and s.flows is None for s in states.values())
    assert [s.tvd for s in states["h1"].segments] == ["a"]
    assert [s.tvd for s in states["h2"].segments] == ["c"]
