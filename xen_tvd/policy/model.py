"""The TVD security model as plain data (paper sections 3 and 5.1).

Built by xen_tvd.policy.schema from a verified YAML file; consumed by the semantic functions
(lattice, flows, membership), the planner and the proxy. No I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from xen_tvd.desired import capabilities
from xen_tvd.diagnostics import Pos  # re-exported: defined there so importing never cycles

PROTECTION_GOALS = ("isolation", "integrity", "confidentiality")
FUNCTIONAL_CAPABILITIES = capabilities.POLICY   # C(h): vlan, ethernet, ip (+ a transport's)
ASSURANCE_KINDS = ("trust", "mutable-log", "immutable-log", "evaluation", "introspection",
                   "policy", "audit")
DUMMY_TVD = "dummy"  # the paper's TVD_delta for VLANs outside every TVD (section 4.5)


class FlowKind(str, Enum):
    OPEN = "open"
    CONTROLLED = "controlled"
    CLOSED = "closed"


@dataclass(frozen=True)
class Property:
    name: str
    dominates: tuple[str, ...] = ()   # direct successors in the partial order (p > q)
    excludes: tuple[str, ...] = ()    # properties no one machine can hold together with p
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MembershipRequirement:
    """One element of M(t): a property the member must hold (reflexively or by dominance),
    optionally backed by evidence of one of the given assurance kinds (Table 2)."""
    property: str
    assurance: frozenset[str] = frozenset()   # empty: any assurance kind will do
    pos: Pos | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if not self.assurance:
            return self.property
        return f"{self.property} (assured by {' or '.join(sorted(self.assurance))})"


@dataclass(frozen=True)
class Tvd:
    name: str
    vlan: int
    vni: int
    protection: frozenset[str] = frozenset({"isolation"})
    membership: tuple[MembershipRequirement, ...] = ()  # M(t)
    multicast_group: str = ""                 # IPv4 group for VXLAN BUM traffic
    tx_checksum_offload: bool = True          # vif tx-csum offload (off: paper 6.2's workaround)
    session_seconds: int | None = None        # continual membership re-check bound
    pos: Pos | None = field(default=None, compare=False)
    # Routed inter-TVD flows (docs/flow-control-design.md): the TVD's IP subnets (CIDR,
    # disjoint across TVDs; they identify the TVD of a packet) and, one per subnet, the
    # gateway interface address its VMs route through ("10.1.0.1/24"). Empty: the TVD gets
    # no router card, so every pair with it stays closed by topology.
    subnets: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    # Port security drops DHCP/DHCPv6 server traffic and router advertisements from VMs; a TVD
    # whose own VMs serve these (a VM-run DHCP server or router) allows them for its vifs.
    allow_dhcp_server: bool = False
    allow_router_advertisements: bool = False
    # broadcast and multicast frames per second one vif may send into the TVD (port security
    # drops the excess: a VM's storm reaches its peers at this rate at most); 0 = no limit
    flood_limit: int = 1000


@dataclass(frozen=True)
class Rule:
    """One allowed service of a controlled flow: proto tcp|udp|icmp|any, optional port(s)."""
    proto: str
    ports: tuple[int, int] | None = None     # inclusive range; None = any port
    pos: Pos | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.ports is None:
            return self.proto
        lo, hi = self.ports
        return f"{self.proto}/{lo}" if lo == hi else f"{self.proto}/{lo}-{hi}"


@dataclass(frozen=True)
class Flow:
    """P_{src,dst}: information flow policy from src TVD to dst TVD (section 3.3).

    A controlled flow is enforced twice: `sender` rules by the sender TVD (its
    confidentiality), `receiver` rules by the receiver TVD (its integrity). What passes is the
    intersection of the two.
    """
    src: str
    dst: str
    kind: FlowKind
    sender: tuple[Rule, ...] = ()
    receiver: tuple[Rule, ...] = ()
    replies: bool = True      # replies of permitted connections carry data back dst -> src
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Network:
    """A physical network of the capability model (an L2 segment hosts sit on)."""
    name: str
    subnet: str                       # IPv4 CIDR of the underlay
    vlan_capable: bool = False        # 802.1Q switches: TVD VLANs may be trunked here
    multicast: bool = True            # IP multicast works between hosts of this network
    trusted_for: frozenset[str] = frozenset()  # protection goals the network itself provides
    mtu: int = 1500
    max_mtu: int = 1500               # the underlay may be raised up to this (jumbo frames)
    pos: Pos | None = field(default=None, compare=False)
    require_encryption: bool = False  # every TVD crossing it rides an encrypting transport


@dataclass(frozen=True)
class HostNic:
    network: str
    nic: str                          # Dom0 device name on that network
    address: str                      # this host's IPv4 address there


@dataclass(frozen=True)
class External:
    """A non-virtualized network a TVD may have a gateway to (paper 4.2). Not a TVD: no VLAN,
    VNI or members; only its subnets, which identify its traffic (disjoint from every TVD's)
    and are what a host's router reaches through its external leg."""
    name: str
    subnets: tuple[str, ...]
    pos: Pos | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HostExternal:
    """A host's Dom0 NIC on an external network: the router's external leg is a macvlan on
    `nic` with `address` (CIDR); subnets of the external outside that address's network are
    routed via `gateway`."""
    external: str
    nic: str
    address: str                      # "198.51.100.2/24"
    gateway: str | None = None


@dataclass(frozen=True)
class Host:
    name: str
    address: str                      # management / primary underlay address
    capabilities: frozenset[str]      # C(h) subset of FUNCTIONAL_CAPABILITIES
    properties: dict[str, str] = field(default_factory=dict, hash=False)  # prop -> assurance
    nics: tuple[HostNic, ...] = ()
    pos: Pos | None = field(default=None, compare=False)
    externals: tuple[HostExternal, ...] = ()
    # the host's WireGuard public key (base64): standalone, the administrator copies it from
    # `tvd-proxy wireguard-key`; with a master, the host reports it and this entry, if given,
    # pins it (a differing report is not believed)
    wireguard_key: str | None = None
    # the key pair it rotates to (`tvd-proxy wireguard-key --rotate`): peers accept both keys;
    # with a master, the host reports it and this entry, if given, pins it too
    wireguard_next_key: str | None = None

    def external_on(self, external: str) -> HostExternal | None:
        return next((e for e in self.externals if e.external == external), None)

    def nic_on(self, network: str) -> HostNic | None:
        for n in self.nics:
            if n.network == network:
                return n
        return None


@dataclass(frozen=True)
class Policy:
    version: int
    properties: dict[str, Property]
    tvds: dict[str, Tvd]
    flows: tuple[Flow, ...]
    # The paper's TVD_delta holds every VLAN outside all TVDs and is open to every TVD; we
    # default to CLOSED (fail closed) and the verifier flags `open` as an indirect channel.
    dummy_policy: FlowKind = FlowKind.CLOSED
    dummy_vlans: tuple[int, ...] = ()
    shared_membership: tuple[tuple[str, ...], ...] = ()  # TVD sets a VM may join together
    networks: dict[str, Network] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    source: str = ""
    # gateways to non-virtualized networks; flows may name them like TVDs
    externals: dict[str, External] = field(default_factory=dict)
