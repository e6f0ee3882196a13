"""What every transport provides on the contract side, and what it is given.

A transport receives the policy's objects, read through the small protocols below (the policy
layer is not imported: the contract imports nothing of the layers that use it), and returns
one HostUplink per carrying host, or None when it cannot connect these hosts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

VM_MTU = 1500   # what a VM expects of an Ethernet segment, unless the underlay cannot carry it


@dataclass(frozen=True)
class Capability:
    """One word of the capability vocabulary (xen_tvd.desired.capabilities)."""
    functional: str            # the word in a capability report: a probe found the kernel feature
    probe: str                 # sh -c command, in a throw-away network namespace: exit 0 = present
    policy: str | None = None  # the policy's C(h) word this feature backs, if any


@dataclass(frozen=True)
class HostUplink:
    """What a transport gives one carrying host of a segment."""
    uplink: object                            # the transport's uplink model (Segment.uplink)
    mtu: int                                  # the segment's VM-facing MTU there
    underlay_mtu: tuple[tuple[str, int], ...] = ()   # (NIC, MTU) the underlay is raised to
    vlan_offload_off: tuple[str, ...] = ()    # NICs whose rx/tx VLAN offload must be off
    peers: tuple[str, ...] = ()               # underlay sources the underlay filter admits


class NetworkView(Protocol):
    vlan_capable: bool
    multicast: bool
    mtu: int
    max_mtu: int


class NicView(Protocol):
    network: str
    nic: str
    address: str


class HostView(Protocol):
    name: str
    capabilities: frozenset[str]
    nics: tuple[NicView, ...]
    wireguard_key: str | None
    wireguard_next_key: str | None

    def nic_on(self, network: str) -> NicView | None: ...


class TvdView(Protocol):
    name: str
    vlan: int
    vni: int
    multicast_group: str


class PolicyView(Protocol):
    networks: dict[str, NetworkView]


class Transport:
    """Subclass per transport; one instance, TRANSPORT, in its module."""
    name: str                      # also its dataplane plugin's module name and device kind
    title: str                     # in messages: "VXLAN"
    capability: Capability         # what a host must report (and the policy grant) to use it
    uplink: type                   # its uplink model: a frozen dataclass with a `nic` property
    device_prefix: str             # of its uplink device, "<prefix><bridge suffix>" (<= 15 chars)
    overhead: int                  # bytes it adds to every frame on the underlay
    protects: frozenset[str] = frozenset()   # protection goals it provides over any network
    connects_any: bool = False     # places any hosts without asking for its capability (VXLAN)

    def missing(self, hosts: list[HostView]) -> list[str]:
        """Why these hosts cannot use this transport, one phrase per host ([] = they can); the
        planner's refusal names them."""
        return []

    def mtus(self, policy: PolicyView, hosts: list[HostView],
             primary: dict[str, NicView]) -> tuple[int | None, int]:
        """(underlay MTU to raise every carrier's network to, or None; the VM-facing MTU) for a
        transport adding `overhead` bytes: VMs keep 1500 where every network's max-mtu lets
        the underlay be raised by the overhead, else they get the smallest underlay MTU less
        it (never more than 1500)."""
        nets = {policy.networks[primary[h.name].network] for h in hosts}
        low_mtu = min(n.mtu for n in nets)
        if all(n.max_mtu >= VM_MTU + self.overhead for n in nets) and \
                low_mtu < VM_MTU + self.overhead:
            return VM_MTU + self.overhead, VM_MTU      # raise the underlay
        return None, min(VM_MTU, low_mtu - self.overhead)

    def place(self, policy: PolicyView, tvd: TvdView, hosts: list[HostView],
              primary: dict[str, NicView]) -> dict[str, HostUplink] | None:
        """Each host's uplink for a segment of `tvd` on `hosts` (two or more; `primary`: each
        host's first NIC), or None when this transport cannot connect them."""
        raise NotImplementedError
