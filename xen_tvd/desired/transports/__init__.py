"""Transports: how a TVD segment crosses between hosts. Each is one unit in two halves:

    xen_tvd/desired/transports/<name>.py    contract: capability (report word, probe, policy
                                            word), eligibility, overhead, uplink model, and each
                                            carrying host's uplink (Transport.place)
    xen_tvd/dataplane/transports/<name>.py  kernel: the uplink device (describe, plug, unplug)
                                            and its part of the underlay filter

registered here, once: ORDER. The planner takes the first eligible transport in ORDER among
those that give the TVD's protection goals where the networks do not (VXLAN, connects_any,
places any hosts); the dataplane loads the plugin of every transport named here;
the capability vocabulary (desired/capabilities.py), the device names (desired/names.py) and
the Segment.uplink type (desired/model.py) are assembled from it. docs/transports.md: how to
add one. (As OVN's controller/encaps.c knows its encapsulation types in one table, and os-vif
finds a plugin per VIF type.)
"""
from __future__ import annotations

import functools
import operator

from . import vlan, vxlan, wireguard
from .base import VM_MTU, Capability, HostUplink, Transport

# WireGuard last: only a TVD whose protection goals the networks do not give may take it (the
# planner filters by Transport.protects first), and VXLAN would place any hosts before it
ORDER: tuple[Transport, ...] = (vlan.TRANSPORT, vxlan.TRANSPORT, wireguard.TRANSPORT)

BY_NAME = {t.name: t for t in ORDER}
UPLINKS = tuple(t.uplink for t in ORDER)
# the type of Segment.uplink (with None): a union of every transport's uplink model
Uplink = functools.reduce(operator.or_, UPLINKS)


def of_uplink(uplink) -> Transport:
    """The transport whose uplink model `uplink` is (KeyError for anything else)."""
    for t in ORDER:
        if isinstance(uplink, t.uplink):
            return t
    raise KeyError(type(uplink).__name__)


__all__ = ["ORDER", "BY_NAME", "UPLINKS", "Uplink", "of_uplink", "Transport", "Capability",
           "HostUplink", "VM_MTU"]
