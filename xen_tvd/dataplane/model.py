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
    # port security lets this segment's vifs send DHCP(v6) server replies / router adverts
    allow_dhcp_server: bool = False
    allow_router_advertisements: bool = False


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
class RouterLeg:
    """One card of the host's router (paper 4.4): a veth from a TVD's vSwitch into the router
    namespace, holding the TVD's gateway addresses (the same on every host: anycast) with a
    MAC of this host's own (so each VM resolves its local router)."""
    tvd: str
    tvd_id: int                   # the TVD's VLAN id: its identity in nftables maps and names
    bridge: str                   # the TVD's vSwitch on this host (the leg's port is on it)
    port: str                     # host-side end, a port of `bridge` (<= 15 chars)
    peer: str                     # router-side end, inside the router namespace
    mac: str                      # of `peer`; locally administered, per host and TVD
    gateways: tuple[str, ...]     # interface addresses on `peer`, "10.1.0.1/24"
    subnets: tuple[str, ...]      # the TVD's subnets (connected routes in the router)


@dataclass(frozen=True)
class ExternalLeg:
    """The router's card on a non-virtualized network (paper 4.2): a macvlan on the Dom0 NIC
    `nic`, moved into the router namespace as `ifname`. A macvlan rather than the NIC itself,
    so Dom0 keeps its NIC (and its own addresses on it); in private mode it cannot talk to
    the NIC's other macvlans or to Dom0's stack on that NIC."""
    external: str
    ext_id: int                   # its identity in chain names (above every TVD/zone id)
    nic: str                      # Dom0 device on the external network
    ifname: str                   # in the router namespace (<= 15 chars)
    mac: str                      # locally administered, per host and external
    address: str                  # "198.51.100.2/24"
    subnets: tuple[str, ...]      # the external's subnets (its identity)
    gateway: str | None = None    # next hop for the subnets outside `address`'s network


@dataclass(frozen=True)
class Router:
    """The host's router namespace. `netns` is its name in Dom0; apply() run for a host that
    is itself a named namespace (the lab) uses "<that namespace>-rtr" instead, so several
    hosts on one machine never share one."""
    netns: str
    legs: tuple[RouterLeg, ...] = ()
    externals: tuple[ExternalLeg, ...] = ()


@dataclass(frozen=True)
class FlowRule:
    """One allowed service: proto tcp|udp|icmp|icmpv6|any, optional inclusive port range."""
    proto: str
    ports: tuple[int, int] | None = None


@dataclass(frozen=True)
class PairFilter:
    """A permitted ordered pair src -> dst. Open: no rules, everything passes. Controlled:
    `sender` rules are enforced where src's traffic leaves src's vSwitch (src's
    confidentiality), `receiver` rules where it enters dst's vSwitch (dst's integrity)."""
    src: str
    dst: str
    src_id: int
    dst_id: int
    open: bool
    sender: tuple[FlowRule, ...] = ()
    receiver: tuple[FlowRule, ...] = ()
    replies: bool = True          # replies of permitted connections flow dst -> src


@dataclass(frozen=True)
class TvdSubnets:
    """A TVD's identity by address: every packet whose source (destination) lies in
    `subnets` is from (to) this TVD. `bridge` is its vSwitch here when it has a router leg."""
    tvd: str
    tvd_id: int
    subnets: tuple[str, ...]
    bridge: str | None = None
    external: bool = False        # an external network (no vSwitch; its leg is in the router)


@dataclass(frozen=True)
class FlowPlan:
    """Stateful inter-TVD filter of one host (dataplane/flowfilter.py): every TVD with
    subnets (so traffic to or from a closed TVD's subnet is recognised and dropped) and the
    permitted pairs among the TVDs routed on this host. Unlisted pairs are closed."""
    tvds: tuple[TvdSubnets, ...] = ()
    pairs: tuple[PairFilter, ...] = ()


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
    # Routed inter-TVD flows (planner): None = no TVD here has a card, so no router namespace
    # and no flow filter (every pair closed by topology).
    router: Router | None = None
    flows: FlowPlan | None = None

    def segment(self, tvd: str) -> Segment | None:
        for s in self.segments:
            if s.tvd == tvd:
                return s
        return None
