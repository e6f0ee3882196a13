"""The WireGuard device of a Dom0, as the plan describes it (issue #15, docs/wireguard.md).

One device per host (DEVICE) carries the VXLAN of every encrypted segment: its peers are the
other hosts sharing such a segment, each with its public key, its underlay address as the
endpoint and one inner address (allowed IP), so WireGuard's cryptokey routing accepts from a
peer only packets with that peer's inner source address. Inner addresses need no plan or
configuration: each host's is its underlay IPv4 address inside a fixed IPv6 ULA prefix
(INNER_PREFIX), unique because underlay addresses are (the policy checks that). The private key
is not here: the dataplane reads it from the host's own key file (proxy/wgkey.py).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEVICE = "tvw-wg0"      # owned by its prefix, names.WIREGUARD_PREFIX
LISTEN_PORT = 51820
# fd + 40-bit global ID "tvdwg" (RFC 4193), subnet 0
INNER_PREFIX = ipaddress.IPv6Network("fd74:7664:7767::/64")
# what WireGuard adds on an IPv4 underlay: IPv4 20 + UDP 8 + data header 16 + Poly1305 tag 16
# (its padding to 16 bytes never grows a packet beyond the device MTU)
OVERHEAD_IPV4 = 60
# VXLAN inside it, over the inner IPv6 addresses: IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_INNER_OVERHEAD = 70


def inner_address(underlay: str) -> str:
    """A host's inner address from its IPv4 underlay address (10.0.0.1 -> fd74:7664:7767::a00:1)."""
    v4 = ipaddress.IPv4Address(underlay)
    return str(INNER_PREFIX[int(v4)])


@dataclass(frozen=True)
class WgPeer:
    public_key: str          # base64, 32 bytes
    endpoint: str            # its underlay IPv4 address
    port: int = LISTEN_PORT

    @property
    def inner(self) -> str:
        return inner_address(self.endpoint)


@dataclass(frozen=True)
class WgDevice:
    """This host's end: the underlay address it listens on and the peers it talks to."""
    local: str               # this host's underlay IPv4 address
    mtu: int                 # the device's MTU: the underlay's less OVERHEAD_IPV4
    peers: tuple[WgPeer, ...] = ()
    port: int = LISTEN_PORT

    @property
    def inner(self) -> str:
        return inner_address(self.local)
