"""Names of the network devices and namespaces xen-tvd creates.

The planner chooses them (bridge_name, leg and external names, the router namespace); the
dataplane recognises what it owns by them (a name prefix in OWNED_NAME_PREFIXES and an ifalias
starting with OWNER_ALIAS_PREFIX, both, or it touches nothing); tools and the lab refer to them.
vif-tvd keeps a standard-library copy of BACKEND_BRIDGE_PREFIX (tests/desired checks it).
"""
from __future__ import annotations

import hashlib

from .transports import ORDER as _TRANSPORTS

IFNAME_MAX = 15                 # Linux IFNAMSIZ (16) less the terminating NUL

# Every device xen-tvd creates carries this ifalias prefix (and a name prefix below), so the
# reconciler can tell what it owns and never touches anything else.
OWNER_ALIAS_PREFIX = "xen-tvd:"

BRIDGE_PREFIX = "tvd-"          # a TVD's vSwitch
# its uplink: each transport's own prefix (tvx- VXLAN, tvl- VLAN; desired/transports)
UPLINK_PREFIXES = tuple(t.device_prefix for t in _TRANSPORTS)
LEG_PREFIX = "tvr-"             # host side of a router leg, a port of the TVD's vSwitch
WIREGUARD_PREFIX = "tvw-"       # the host's WireGuard device (desired/wireguard.py)
OWNED_NAME_PREFIXES = (BRIDGE_PREFIX, *UPLINK_PREFIXES, LEG_PREFIX, WIREGUARD_PREFIX)

LEG_PEER_PREFIX = "leg-"        # router side of a router leg, in the router namespace
EXTERNAL_PREFIX = "ext-"        # an external leg (macvlan), in the router namespace
ROUTER_NS_PREFIX = "tvd-rtr-"   # a host's router namespace
# the tap a probe (dataplane/probe.py) injects its one packet through: on no bridge, gone
# with the probe's file; not among the owned prefixes, so apply() never touches one
PROBE_PREFIX = "tvp-"

# A VM's vif names its TVD as bridge=tvd:<name> (xl.cfg, xenstore backend `bridge` key, the
# proxy protocol, libvirt <source bridge='tvd:...'/>); not a device name.
BACKEND_BRIDGE_PREFIX = "tvd:"


def _fitted(prefix: str, name: str) -> str:
    """prefix+name, or prefix + a hash of name when that would exceed IFNAME_MAX."""
    n = prefix + name
    if len(n) <= IFNAME_MAX:
        return n
    return prefix + hashlib.sha1(name.encode()).hexdigest()[:IFNAME_MAX - len(prefix)]


def bridge_name(tvd: str) -> str:
    """The vSwitch of TVD `tvd` on every host."""
    return _fitted(BRIDGE_PREFIX, tvd)


def uplink_name(prefix: str, bridge: str) -> str:
    """A segment's uplink device: the transport's prefix and the bridge's name after tvd-
    (the same length as the bridge name, so <= 15 characters)."""
    return prefix + bridge[len(BRIDGE_PREFIX):]


def external_ifname(external: str) -> str:
    """The router's card on external network `external`."""
    return _fitted(EXTERNAL_PREFIX, external)


def leg_port(tvd_id: int) -> str:
    """Host side of the router leg of the TVD with VLAN id `tvd_id`."""
    return f"{LEG_PREFIX}{tvd_id}"


def leg_peer(tvd_id: int) -> str:
    """Router side of that leg."""
    return f"{LEG_PEER_PREFIX}{tvd_id}"


def router_netns(host: str, host_netns: str | None = None) -> str:
    """The router namespace of `host`; a host that is itself a named network namespace (the
    lab) gets "<that namespace>-rtr", so several hosts on one machine never share one."""
    return f"{host_netns}-rtr" if host_netns else ROUTER_NS_PREFIX + host
