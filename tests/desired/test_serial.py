"""xen_tvd.desired.serial: model <-> plain JSON, generic over the dataclasses' fields."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from xen_tvd.desired.model import HostState, Segment, VifPort, VlanUplink, VxlanUplink
from xen_tvd.desired.serial import (SerialError, from_json, segments_from_json,
                                    segments_to_json, to_json)

SEGMENTS = (
    Segment("alpha", "tvd-alpha", VxlanUplink(10100, "10.0.0.1", "eth0", "239.1.1.1",
                                              ("10.9.0.2", "10.9.0.3")), 1450),
    Segment("beta", "tvd-beta", VlanUplink(200, "eth1"), 1500, True),
    Segment("gamma", "tvd-gamma", None, 1500),
)


def test_segments_round_trip_through_json_text():
    text = json.dumps(segments_to_json(SEGMENTS))
    assert segments_from_json(json.loads(text)) == SEGMENTS


def test_uplink_union_carries_a_type_tag_and_tuples_become_lists():
    j = segments_to_json(SEGMENTS)
    assert j[0]["uplink"]["type"] == "VxlanUplink"
    assert j[0]["uplink"]["remotes"] == ["10.9.0.2", "10.9.0.3"]
    assert j[1]["uplink"] == {"type": "VlanUplink", "vlan_id": 200, "phys_dev": "eth1"}
    assert j[2]["uplink"] is None


def test_host_state_round_trip_with_ports_dicts_and_optional_tuples():
    hs = HostState("h1", SEGMENTS, (VifPort("vif1.0", "alpha", "00:16:3e:00:00:01",
                                             ("10.1.0.5",)), VifPort("vif2.0", "beta")),
                   ("eth1",), {"eth0": 1550}, ("10.0.0.2",), True)
    back = from_json(HostState, json.loads(json.dumps(to_json(hs))))
    assert back == hs and isinstance(back.underlay_peers, tuple)
    assert from_json(HostState, to_json(HostState("h2"))).underlay_peers is None


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s[0]["uplink"].update(vni="10100"), "segments[0].uplink.vni: expected int, got str"),
    (lambda s: s[0]["uplink"].update(type="GeneveUplink"), "unknown type 'GeneveUplink'"),
    (lambda s: s[0]["uplink"].pop("type"), "expected an object with 'type'"),
    (lambda s: s[1].update(colour="red"), "unknown field 'colour'"),
    (lambda s: s[2].pop("mtu"), "missing field 'mtu'"),
    (lambda s: s[1].update(vif_tx_csum_offload=1), "expected bool, got int"),
    (lambda s: s[0]["uplink"].update(vni=True), "expected int, got bool"),
])
def test_bad_json_is_refused_with_a_one_line_path(mutate, message):
    data = segments_to_json(SEGMENTS)
    mutate(data)
    with pytest.raises(SerialError) as e:
        segments_from_json(data)
    assert message in str(e.value) and "\n" not in str(e.value)


# A model grown with new fields and a third uplink kind (as inter-TVD routing will add):
# the serializer must carry them without being edited.
@dataclass(frozen=True)
class GeneveUplink:
    port: int
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class GrownSegment:
    tvd: str
    uplink: VxlanUplink | VlanUplink | GeneveUplink | None
    routes: tuple[tuple[str, int], ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    gateway: str | None = None


def test_new_fields_and_union_members_need_no_serializer_edit():
    g = GrownSegment("alpha", GeneveUplink(51820, ("10.0.0.2",)),
                     (("10.2.0.0/16", 100),), {"zone": "dmz"}, "10.1.0.1")
    j = json.loads(json.dumps(to_json(g)))
    assert j["uplink"]["type"] == "GeneveUplink"
    assert from_json(GrownSegment, j) == g


def test_the_routing_fields_added_to_the_model_travel_unchanged():
    # Router / FlowPlan arrived in desired/model.py after this serializer was written
    from xen_tvd.desired.model import FlowPlan, FlowRule, PairFilter, Router, RouterLeg, TvdSubnets
    hs = HostState("h1", SEGMENTS[:1],
                   router=Router("tvd-rtr-h1", (RouterLeg("alpha", 100, "tvd-alpha", "tvl100",
                                                          "tvr100", "02:00:00:00:00:01",
                                                          ("10.1.0.1/24",), ("10.1.0.0/24",)),)),
                   flows=FlowPlan((TvdSubnets("alpha", 100, ("10.1.0.0/24",), "tvd-alpha"),),
                                  (PairFilter("alpha", "beta", 100, 200, False,
                                              (FlowRule("tcp", (80, 80)),), (FlowRule("any"),)),)))
    j = json.loads(json.dumps(to_json(hs)))
    assert j["flows"]["pairs"][0]["sender"][0]["ports"] == [80, 80]
    back = from_json(HostState, j)
    assert back == hs and back.flows.pairs[0].sender[0].ports == (80, 80)
