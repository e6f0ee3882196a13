"""Every transport the contract registers has its kernel half (xen_tvd.dataplane.transports),
and the two agree. Over the registry: a new transport is checked without an edit here."""
from __future__ import annotations

import pytest

from xen_tvd.dataplane.transports import PLUGINS, plugin_for
from xen_tvd.desired import transports


@pytest.mark.parametrize("t", transports.ORDER, ids=lambda t: t.name)
def test_each_transport_has_its_plugin(t):
    [p] = [p for p in PLUGINS if p.describe().transport == t.name]
    info = p.describe()
    assert p.transport is t and info.uplink is t.uplink
    assert type(p).__module__ == f"xen_tvd.dataplane.transports.{t.name}"


def test_plugins_are_the_registry_in_its_order():
    assert [p.transport for p in PLUGINS] == list(transports.ORDER)
    # a kernel kind may serve two transports (WireGuard's uplink is a VXLAN device inside the
    # tunnel); their devices are told apart by name prefix, which must be unique
    prefixes = [p.transport.device_prefix for p in PLUGINS]
    assert len(set(prefixes)) == len(prefixes)


def test_plugin_for_an_uplink():
    from xen_tvd.desired.model import VlanUplink, VxlanUplink
    assert plugin_for(VlanUplink(5, "eth0")).kind == "vlan"
    assert plugin_for(VxlanUplink(5, "10.0.0.1", "eth0")).kind == "vxlan"
    assert plugin_for(None) is None
