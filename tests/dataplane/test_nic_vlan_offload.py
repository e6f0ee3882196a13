"""VLAN offloads on a NIC that carries TVD VLANs (paper 6.1): turned off where the driver lets
us, and a warning naming the feature where it does not.

veth (tier 1 and 2) offers both offloads and lets them go; virtio-net (tier 2's real-driver
trunk) never offers them ("off [fixed]"). Drivers that pin VLAN stripping on exist, so this
stand-in for the SIOCETHTOOL driver interface (xen_tvd.dataplane.ethtool) plays one.
"""
from __future__ import annotations

from types import SimpleNamespace

from tests.dataplane.dp_helpers import FakeNicDriver, offload_ctx
from xen_tvd.dataplane import ethtool, offload

F = ethtool.Feature
# rx VLAN stripping pinned on by the driver; tx tag insertion on but changeable
PINNED_STRIP = {"rx-vlan-hw-parse": F(available=False, active=True, fixed=True, requested=True),
                "tx-vlan-hw-insert": F(available=True, active=True, fixed=False, requested=True)}


def test_changeable_offload_turned_off_pinned_one_reported(monkeypatch):
    nic = FakeNicDriver(PINNED_STRIP).install(monkeypatch)
    ctx, changes, warnings = offload_ctx()
    offload.ensure_vlan_offload_off(ctx, SimpleNamespace(name="eth0"))
    assert nic.calls == [{"tx-vlan-hw-insert": False}]        # never asks for the pinned one
    assert changes == ["turned off tx-vlan-hw-insert on eth0"]
    assert len(warnings) == 1 and "eth0" in warnings[0] and "rx-vlan-hw-parse" in warnings[0]
    # rerun: nothing left to change, the warning is repeated (the condition persists)
    offload.ensure_vlan_offload_off(ctx, SimpleNamespace(name="eth0"))
    assert len(nic.calls) == 1 and len(changes) == 1 and len(warnings) == 2


def test_driver_without_vlan_offloads_needs_nothing(monkeypatch):
    nic = FakeNicDriver({"rx-vlan-hw-parse": F(False, False, True),
                         "tx-vlan-hw-insert": F(False, False, True)}).install(monkeypatch)
    ctx, changes, warnings = offload_ctx()
    offload.ensure_vlan_offload_off(ctx, SimpleNamespace(name="eth0"))
    assert changes == [] and warnings == [] and nic.calls == []
