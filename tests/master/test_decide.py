"""decide(): effective capability model, per-host TVDs, refusals with reasons (pure)."""
import pytest

from xen_tvd.desired.model import VxlanUplink
from xen_tvd.master.decide import decide, effective_host
from xen_tvd.policy import load_policy

from tests.master.master_helpers import POLICY, REPORT


@pytest.fixture
def policy(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    return load_policy(str(f))


def report(n, **over):
    r = dict(REPORT, nics=[{"network": "lan", "nic": "eth0", "address": f"10.0.0.{n}"}])
    r.update(over)
    return r


def test_effective_host_is_the_policy_narrowed_by_the_report(policy):
    h, warnings = effective_host(policy.hosts["h1"], report(1, functional=["bridge"]))
    assert h.capabilities == {"ethernet"}
    assert h.properties == {"hv-integrity": "immutable-log"}
    assert any("capability ip not confirmed" in w for w in warnings)


@pytest.mark.parametrize("claim, why", [
    ({"property": "hv-integrity", "assurance": "trust", "evidence": "x"}, "assurance trust"),
    ({"property": "hv-integrity", "assurance": "immutable-log", "evidence": ""}, "without evidence"),
])
def test_claims_weaker_than_the_policy_are_ignored(policy, claim, why):
    h, warnings = effective_host(policy.hosts["h1"], report(1, security=[claim]))
    assert h.properties == {} and any(why in w for w in warnings)


def test_claims_beyond_the_policy_and_wrong_nic_addresses_only_warn(policy):
    r = report(3, security=[{"property": "hv-integrity", "assurance": "immutable-log",
                             "evidence": "x"}],
               nics=[{"network": "lan", "nic": "eth0", "address": "10.0.0.99"}])
    h, warnings = effective_host(policy.hosts["h3"], r)
    assert h.properties == {} and h.nics[0].address == "10.0.0.3"
    assert any("not in the policy" in w for w in warnings)
    assert any("10.0.0.99" in w for w in warnings)


def test_each_host_carries_the_tvds_it_qualifies_for_and_peers_are_enrolled_carriers(policy):
    d = decide(policy, {h: report(i) for i, h in ((1, "h1"), (2, "h2"), (3, "h3"))},
               {"h1", "h2", "h3"})
    assert [s.tvd for s in d["h1"].state.segments] == ["alpha", "beta"]
    assert [s.tvd for s in d["h3"].state.segments] == ["alpha"]
    assert "hv-integrity" in d["h3"].refused["beta"]
    assert "confidentiality" in d["h1"].refused["gamma"]
    assert d["h1"].state.underlay_peers == ("10.0.0.2", "10.0.0.3")
    assert isinstance(d["h1"].state.segment("beta").uplink, VxlanUplink)


def test_revoked_or_unreported_hosts_are_not_peers(policy):
    d = decide(policy, {"h1": report(1), "h2": report(2)}, {"h1", "h3"})
    assert "h2" not in d                          # revoked: not enrolled
    assert d["h1"].state.underlay_peers == ()
    assert d["h1"].state.segment("alpha").uplink is None   # alone: host-local segment
    assert "not reported" in d["h3"].refused["alpha"]


def test_a_host_without_vxlan_is_refused_where_vxlan_is_needed(policy):
    d = decide(policy, {"h1": report(1), "h2": report(2, functional=["bridge"])},
               {"h1", "h2"})
    assert "no confirmed ip capability" in d["h2"].refused["alpha"]
    assert d["h1"].state.underlay_peers == ()


def test_a_host_without_bridge_support_carries_nothing(policy):
    d = decide(policy, {"h1": report(1, functional=["vxlan"])}, {"h1"})
    assert d["h1"].state.segments == () and "cannot bridge" in d["h1"].refused["alpha"]


def test_single_carrier_of_a_confidential_tvd_keeps_it_host_local(policy):
    d = decide(policy, {"h1": report(1)}, {"h1"})
    assert d["h1"].state.segment("gamma").uplink is None


ROUTED = POLICY.replace(
    "  alpha: {vlan: 100, vni: 10100}",
    "  alpha: {vlan: 100, vni: 10100, subnets: [10.1.0.0/24]}").replace(
    "    membership: [{property: hv-integrity, assurance: [immutable-log]}]",
    "    membership: [{property: hv-integrity, assurance: [immutable-log]}]\n"
    "    subnets: [10.2.0.0/24]") + "flows:\n  - {from: alpha, to: beta, policy: open}\n"


def test_a_tvd_routed_with_one_the_host_may_not_carry_is_refused_there(tmp_path):
    f = tmp_path / "routed.yaml"
    f.write_text(ROUTED)
    routed = load_policy(str(f))
    d = decide(routed, {h: report(i) for i, h in ((1, "h1"), (3, "h3"))}, {"h1", "h3"})
    # h3 lacks hv-integrity, so beta is barred there, and alpha (routed with beta) with it
    assert [s.tvd for s in d["h3"].state.segments] == []
    assert "routed together with beta" in d["h3"].refused["alpha"]
    assert [s.tvd for s in d["h1"].state.segments] == ["alpha", "beta"]
    assert d["h1"].state.router is not None


def test_the_bundle_carries_the_router_and_flow_plan_only_where_something_is_routed(tmp_path):
    from xen_tvd.desired.model import FlowPlan, Router
    from xen_tvd.desired.serial import from_json
    from xen_tvd.master.decide import bundle_content
    f = tmp_path / "routed.yaml"
    f.write_text(ROUTED)
    routed = load_policy(str(f))
    d = decide(routed, {h: report(i) for i, h in ((1, "h1"), (3, "h3"))}, {"h1", "h3"})
    plan1 = bundle_content(ROUTED, "https://m", "h1", d["h1"], {})["plan"]
    assert from_json(Router, plan1["router"]) == d["h1"].state.router
    assert from_json(FlowPlan, plan1["flows"]) == d["h1"].state.flows
    # nothing routed on h3: the keys are absent, so its bundle hash is what it was before them
    plan3 = bundle_content(ROUTED, "https://m", "h3", d["h3"], {})["plan"]
    assert "router" not in plan3 and "flows" not in plan3


WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
OTHER_KEY = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="


def test_the_reported_wireguard_key_is_the_hosts_unless_the_policy_pins_another(policy):
    import dataclasses
    h, warnings = effective_host(policy.hosts["h1"], report(1, **{"wireguard-key": WG_KEY}))
    assert h.wireguard_key == WG_KEY and not any("wireguard" in w for w in warnings)
    assert effective_host(policy.hosts["h1"], report(1))[0].wireguard_key is None
    pinned = dataclasses.replace(policy.hosts["h1"], wireguard_key=OTHER_KEY)
    h, warnings = effective_host(pinned, report(1, **{"wireguard-key": WG_KEY}))
    assert h.wireguard_key is None
    assert any("differs from the policy's hosts entry" in w for w in warnings)
    assert not any(WG_KEY in w or OTHER_KEY in w for w in warnings)
    assert effective_host(pinned, report(1, **{"wireguard-key": OTHER_KEY}))[0].wireguard_key \
        == OTHER_KEY


WG_KEYS = {1: WG_KEY, 2: OTHER_KEY, 3: "Q5UEr0i4UAWW3F+H5pS6ZuQ4flX7PnANdNKmPB2kJDk="}
WG_POLICY = POLICY.replace("capabilities: [ethernet, ip]", "capabilities: [ethernet, ip, wireguard]")


def _wg_report(n, **over):
    return report(n, functional=["bridge", "vxlan", "nftables", "wireguard"],
                  **{"wireguard-key": WG_KEYS[n], **over})


def test_the_bundle_carries_the_peers_wireguard_keys_and_drops_hosts_that_cannot(tmp_path):
    from xen_tvd.desired.transports.wireguard import WireguardUplink
    f = tmp_path / "wg.yaml"
    f.write_text(WG_POLICY)
    pol = load_policy(str(f))
    d = decide(pol, {h: _wg_report(i) for i, h in ((1, "h1"), (2, "h2"), (3, "h3"))},
               {"h1", "h2", "h3"})
    # gamma requires confidentiality and lan is not trusted for it: WireGuard, with keys
    up = d["h1"].state.segment("gamma").uplink
    assert isinstance(up, WireguardUplink)
    assert up.peers == (("10.0.0.2", WG_KEYS[2]), ("10.0.0.3", WG_KEYS[3]))
    assert isinstance(d["h1"].state.segment("alpha").uplink, VxlanUplink)   # plain stays plain
    from xen_tvd.desired.serial import segments_to_json
    assert WG_KEYS[3] in str(segments_to_json(d["h1"].state.segments))
    # h3 revoked (no longer enrolled): its key is gone from every bundle
    d = decide(pol, {h: _wg_report(i) for i, h in ((1, "h1"), (2, "h2"), (3, "h3"))},
               {"h1", "h2"})
    assert d["h1"].state.segment("gamma").uplink.peers == (("10.0.0.2", WG_KEYS[2]),)
    assert all(WG_KEYS[3] not in str(segments_to_json(d[h].state.segments)) for h in d)
    # h3 without the module (its probe found no wireguard): dropped for gamma, with the reason;
    # the others keep gamma encrypted between them
    d = decide(pol, {"h1": _wg_report(1), "h2": _wg_report(2), "h3": report(3)},
               {"h1", "h2", "h3"})
    assert "has no wireguard capability" in d["h3"].refused["gamma"]
    assert d["h3"].state.segment("gamma") is None
    assert d["h1"].state.segment("gamma").uplink.peers == (("10.0.0.2", WG_KEYS[2]),)


NEXT_KEY = "qpI2Hh6Zcs9Anfgj2VVC2dlMWuy2ukeE96ad9ZNTCQU="     # h1's next key pair (rotation)


def test_a_reported_next_key_counts_only_as_the_policy_pins_it(policy):
    import dataclasses
    over = {"wireguard-key": WG_KEY, "wireguard-next-key": NEXT_KEY}
    h, warnings = effective_host(policy.hosts["h1"], report(1, **over))
    assert (h.wireguard_key, h.wireguard_next_key) == (WG_KEY, NEXT_KEY) and not warnings
    # pinned: both keys must be the policy's (wireguard-key and wireguard-next-key, any order)
    pinned = dataclasses.replace(policy.hosts["h1"], wireguard_key=WG_KEY)
    h, warnings = effective_host(pinned, report(1, **over))
    assert (h.wireguard_key, h.wireguard_next_key) == (WG_KEY, None)
    assert any("rotation waits" in w for w in warnings)
    both = dataclasses.replace(pinned, wireguard_next_key=NEXT_KEY)
    assert effective_host(both, report(1, **over))[0].wireguard_next_key == NEXT_KEY
    # after the switch the host reports the new key as its key: still within the pins
    h = effective_host(both, report(1, **{"wireguard-key": NEXT_KEY}))[0]
    assert (h.wireguard_key, h.wireguard_next_key) == (NEXT_KEY, None)
    # a next key without a key, or the key itself, is no rotation
    assert effective_host(policy.hosts["h1"], report(
        1, **{"wireguard-next-key": NEXT_KEY}))[0].wireguard_next_key is None
    assert effective_host(policy.hosts["h1"], report(
        1, **{"wireguard-key": WG_KEY, "wireguard-next-key": WG_KEY}))[0].wireguard_next_key \
        is None


def test_a_rotating_host_switches_only_once_every_peer_accepts_its_next_key(tmp_path):
    from xen_tvd.desired.serial import segments_from_json, segments_to_json
    from xen_tvd.desired.transports.wireguard import WireguardUplink
    f = tmp_path / "wg.yaml"
    f.write_text(WG_POLICY)
    pol = load_policy(str(f))
    hosts = {"h1", "h2", "h3"}
    reports = {h: _wg_report(i) for i, h in ((1, "h1"), (2, "h2"), (3, "h3"))}
    reports["h1"]["wireguard-next-key"] = NEXT_KEY
    d = decide(pol, reports, hosts)
    # every peer accepts both of h1's keys (each has its own inner address); h1 runs its key
    up2 = d["h2"].state.segment("gamma").uplink
    assert isinstance(up2, WireguardUplink)
    assert up2.peers == tuple(sorted((("10.0.0.1", WG_KEY), ("10.0.0.1", NEXT_KEY),
                                      ("10.0.0.3", WG_KEYS[3]))))
    assert len(set(up2.remotes)) == 3
    up1 = d["h1"].state.segment("gamma").uplink
    assert up1.key == WG_KEY and set(up1.keys) == {WG_KEY, NEXT_KEY}
    assert d["h2"].state.segment("gamma").uplink.key == WG_KEYS[2]
    # the keys travel in the bundle and come back as they were
    assert segments_from_json(segments_to_json(d["h1"].state.segments)) == d["h1"].state.segments
    # h2 has applied a bundle with both keys, h3 not yet: h1 keeps its key
    reports["h2"]["wireguard-accepts"] = [NEXT_KEY]
    assert decide(pol, reports, hosts)["h1"].state.segment("gamma").uplink.key == WG_KEY
    # a host that is no peer of h1 does not count; every peer accepting does
    reports["h3"]["wireguard-accepts"] = [NEXT_KEY]
    d2 = decide(pol, reports, hosts)
    assert d2["h1"].state.segment("gamma").uplink.key == NEXT_KEY
    assert set(d2["h1"].state.segment("gamma").uplink.keys) == {WG_KEY, NEXT_KEY}
    assert d2["h2"].state == d["h2"].state and d2["h3"].state == d["h3"].state
    # h1 switched and reports the new key alone: the old key is gone from every plan
    reports["h1"] = _wg_report(1, **{"wireguard-key": NEXT_KEY})
    d3 = decide(pol, reports, hosts)
    assert d3["h2"].state.segment("gamma").uplink.peers == (("10.0.0.1", NEXT_KEY),
                                                            ("10.0.0.3", WG_KEYS[3]))
    up1 = d3["h1"].state.segment("gamma").uplink
    assert (up1.key, up1.keys) == (NEXT_KEY, (NEXT_KEY,))
    assert all(WG_KEY not in str(segments_to_json(d3[h].state.segments)) for h in d3)

