"""Desired state of one Dom0's TVD network: the contract between planner and dataplane.

The planner (pure) produces a HostState; the dataplane's apply() makes the kernel match it.
Everything here is plain, hashable data: no kernel handles, no I/O. Device names follow
desired/names.py, identifiers desired/patterns.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# each transport's uplink model lives in its unit (desired/transports); Segment.uplink is their
# union. Re-exported here for the modules that name them.
from xen_tvd.desired.transports import Uplink
from xen_tvd.desired.transports.vlan import VlanUplink  # noqa: F401
from xen_tvd.desired.transports.vxlan import VxlanUplink  # noqa: F401


@dataclass(frozen=True)
class Segment:
    """One TVD's vSwitch on this host."""
    tvd: str
    bridge: str                               # e.g. "tvd-alpha" (<= 15 chars)
    uplink: Uplink | None                     # None: host-local segment only
    mtu: int                                  # VM-facing MTU on this segment
    vif_tx_csum_offload: bool = True          # off: paper 6.2's workaround, per TVD (policy)
    # port security lets this segment's vifs send DHCP(v6) server replies / router adverts
    allow_dhcp_server: bool = False
    allow_router_advertisements: bool = False
    # broadcast/multicast frames per second per vif (port security); 0 = no limit
    flood_limit: int = 1000


@dataclass(frozen=True)
class VifPort:
    """An admitted VM interface that must be attached to a segment's vSwitch."""
    ifname: str      # vif<domid>.<devid> (or ...-emu for HVM tap)
    tvd: str         # which Segment (by TVD name) it joins
    # Port security (dataplane/portsec.py). mac: the guest's MAC (Xen backend `mac` key), the
    # only source MAC its frames may carry; None = not pinned. addresses: the guest's declared
    # IPv4/IPv6 addresses (backend `ip` key; "a.b.c.d" or CIDR); None = not declared (IP
    # sources unchecked), () = declared none (fail closed: no IP source but ARP/DHCP/DAD
    # bootstrapping and the MAC's EUI-64 link-local).
    mac: str | None = None
    addresses: tuple[str, ...] | None = None
    # the guest's own MTU (Xen backend `mtu` key, xl.cfg vif mtu=); None = the segment's. It
    # can only lower the segment's MTU, never raise it (mtu_on).
    mtu: int | None = None
    # tx checksum offload: False = the VM opts out (xl.cfg tvd_tx_checksum_offload = 0, its
    # registration): off on this vif even where the segment has it on. It can only turn the
    # segment's setting off, never on (tx_csum_on: the stricter wins).
    tx_csum_offload: bool = True

    def mtu_on(self, seg: Segment) -> int:
        return seg.mtu if self.mtu is None else min(self.mtu, seg.mtu)

    def tx_csum_on(self, seg: Segment) -> bool:
        return seg.vif_tx_csum_offload and self.tx_csum_offload


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
    # rate-limited kernel log lines for dropped frames: at most this many per second per drop
    # rule (port security reasons, Dom0 guard, flow filter pairs); 0 = count only
    log_drops: int = 0
    # port security's backend: "ebpf" (a program per vif, dataplane/bpf) or "nftables" (chains
    # per vif, dataplane/portsec.py: the one that can log drops); None: eBPF unless log_drops
    port_security: str | None = None

    def segment(self, tvd: str) -> Segment | None:
        for s in self.segments:
            if s.tvd == tvd:
                return s
        return None
