"""Desired state of one Dom0's TVD network: the contract between planner and dataplane.

The planner (pure) produces a HostState; the dataplane's apply() makes the kernel match it.
Everything here is plain, hashable data: no kernel handles, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Every network device xen-tvd creates carries this ifalias prefix (and a name prefix), so the
# reconciler can tell what it owns and never touches anything else.
OWNER_ALIAS_PREFIX = "xen-tvd:"

VXLAN_OVERHEAD_IPV4 = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VLAN_OVERHEAD = 0         # 802.1Q tag rides in the frame; NICs carry 1500 + tag


@dataclass(frozen=True)
class VxlanUplink:
    """Ethernet-in-UDP transport for one TVD segment (what the paper's EtherIP became)."""
    vni: int
    local_ip: str            # this host's underlay address
    underlay_dev: str        # NIC the VXLAN device is bound to
    group: str | None = None # IPv4 multicast group for BUM traffic (LAN case)
    remotes: tuple[str, ...] = ()  # head-end replication peers (WAN case: no multicast)
    port: int = 4789
    ttl: int = 16            # so multicast/unicast can cross the WAN router


@dataclass(frozen=True)
class VlanUplink:
    """802.1Q transport: a VLAN device on the physical NIC enslaved to the vSwitch."""
    vlan_id: int
    phys_dev: str


@dataclass(frozen=True)
class Segment:
    """One TVD's vSwitch on this host."""
    tvd: str
    bridge: str                               # e.g. "tvd-alpha" (<= 15 chars)
    uplink: VxlanUplink | VlanUplink | None   # None: host-local segment only
    mtu: int                                  # VM-facing MTU on this segment
    vif_tx_csum_offload: bool = False         # paper 6.2: off by default (safe)


@dataclass(frozen=True)
class VifPort:
    """An admitted VM interface that must be attached to a segment's vSwitch."""
    ifname: str      # vif<domid>.<devid> (or ...-emu for HVM tap)
    tvd: str         # which Segment (by TVD name) it joins
    # Port security (dataplane/firewall.py). mac: the guest's MAC (Xen backend `mac` key), the
    # only source MAC its frames may carry; None = not pinned. addresses: the guest's declared
    # IPv4/IPv6 addresses (backend `ip` key; "a.b.c.d" or CIDR); None = not declared (IP
    # sources unchecked), () = declared none (fail closed: no IP source but ARP/DHCP/DAD
    # bootstrapping and the MAC's EUI-64 link-local).
    mac: str | None = None
    addresses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class HostState:
    host: str
    segments: tuple[Segment, ...] = ()
    ports: tuple[VifPort, ...] = ()
    # physical NICs carrying TVD VLANs: rx/tx VLAN offload must be off (paper 6.1)
    vlan_offload_off: tuple[str, ...] = ()
    underlay_mtu: dict[str, int] = field(default_factory=dict, hash=False, compare=True)
    # Underlay addresses of the hosts sharing a VXLAN segment with this one (planner): VXLAN
    # from any other source is dropped. None = not computed (no underlay filter installed).
    underlay_peers: tuple[str, ...] | None = None
    # Treat ports with addresses=None as addresses=() (fail closed) once all callers declare.
    require_addresses: bool = False

    def segment(self, tvd: str) -> Segment | None:
        for s in self.segments:
            if s.tvd == tvd:
                return s
        return None
