"""The transports' contract halves (xen_tvd.desired.transports): every registered transport's
words are in the one capability vocabulary, its device names are ones xen-tvd owns, and its
uplink model is what a Segment may carry. Written over the registry: a new transport is
checked without an edit here."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from xen_tvd.desired import capabilities, names, transports
from xen_tvd.desired.model import Segment

ORDER = transports.ORDER


@pytest.mark.parametrize("t", ORDER, ids=lambda t: t.name)
def test_capability_is_in_the_one_vocabulary(t):
    c = t.capability
    assert c.functional in capabilities.FUNCTIONAL and capabilities.PROBES[c.functional] == c.probe
    assert c.policy in capabilities.POLICY and capabilities.EVIDENCE[c.policy] == c.functional


def test_vocabulary_lists_each_word_once():
    assert len(set(capabilities.FUNCTIONAL)) == len(capabilities.FUNCTIONAL)
    assert len(set(capabilities.POLICY)) == len(capabilities.POLICY)
    # every policy word is backed by a reported feature, and the master accepts only these
    assert set(capabilities.EVIDENCE) == set(capabilities.POLICY)
    assert set(capabilities.EVIDENCE.values()) <= set(capabilities.FUNCTIONAL)


@pytest.mark.parametrize("t", ORDER, ids=lambda t: t.name)
def test_uplink_device_is_owned_and_fits(t):
    assert t.device_prefix in names.OWNED_NAME_PREFIXES
    longest = names.bridge_name("x" * 64)
    assert len(names.uplink_name(t.device_prefix, longest)) <= names.IFNAME_MAX


def test_names_and_prefixes_are_distinct():
    assert len({t.name for t in ORDER}) == len(ORDER) == len(transports.BY_NAME)
    prefixes = [t.device_prefix for t in ORDER]
    assert len(set(prefixes)) == len(prefixes)
    assert names.BRIDGE_PREFIX not in prefixes and names.LEG_PREFIX not in prefixes


@pytest.mark.parametrize("t", ORDER, ids=lambda t: t.name)
def test_uplink_model_is_a_segments_uplink(t):
    assert dataclasses.is_dataclass(t.uplink) and t.uplink.__dataclass_params__.frozen
    assert t.uplink in typing.get_args(typing.get_type_hints(Segment)["uplink"])
    assert isinstance(getattr(t.uplink, "nic", None), property)   # the Dom0 NIC it rides on
    assert t.overhead >= 0


def test_of_uplink_names_the_transport_and_refuses_others():
    from xen_tvd.desired.model import VlanUplink, VxlanUplink
    assert transports.of_uplink(VlanUplink(5, "eth0")) is transports.BY_NAME["vlan"]
    assert transports.of_uplink(VxlanUplink(5, "10.0.0.1", "eth0")).title == "VXLAN"
    with pytest.raises(KeyError):
        transports.of_uplink(object())
