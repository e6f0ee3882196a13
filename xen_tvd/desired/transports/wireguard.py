"""WireGuard: VXLAN inside an encrypted, authenticated tunnel between the carrying hosts
(issue #15; docs/wireguard.md). It provides integrity and confidentiality over any network, so
the planner puts a TVD here when its protection goals are not given by the networks between its
hosts (or a network requires encryption); never otherwise (it costs 80 more bytes than VXLAN).

Eligible when every carrying host has the `wireguard` capability (standalone: listed in the
policy; with a master: also reported by the host's probe) and a WireGuard public key (the
policy's hosts.NAME.wireguard-key, or the key the host reported). Each host's uplink is a VXLAN
device over its WireGuard device (desired/wireguard.py) between the hosts' inner addresses, by
head-end replication (no multicast inside WireGuard); its peers are the other carriers, each
with its public key and underlay address. The VM-facing MTU is the smallest underlay MTU less
both overheads (130), unless every underlay may be raised (max-mtu) so that VMs keep 1500.

Key rotation (docs/wireguard.md): a host with a next key (hosts.NAME.wireguard-next-key, or
the one it reported to the master) is every peer's peer twice, once per key, each key with its
own inner address; the host itself runs with `key` and keeps an inner address for each of its
`keys`, so no packet in flight is lost while it switches.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..wireguard import LISTEN_PORT, OVERHEAD_IPV4, VXLAN_INNER_OVERHEAD, inner_address
from .base import Capability, HostUplink, Transport

GOALS = frozenset({"integrity", "confidentiality"})


@dataclass(frozen=True)
class WireguardUplink:
    """A VXLAN device over the host's WireGuard device, for one encrypted TVD segment."""
    vni: int
    local_ip: str                       # this host's underlay address (its inner one follows)
    underlay_dev: str                   # the NIC WireGuard's packets leave by
    # (underlay address, public key) of each other carrier; twice for one that is rotating
    # its key (the current and the next key are both accepted)
    peers: tuple[tuple[str, str], ...]
    wg_mtu: int                         # the WireGuard device's MTU: the underlay's less 60
    port: int = 4789                    # VXLAN's, inside the tunnel
    listen_port: int = LISTEN_PORT      # WireGuard's, on the underlay
    key: str = ""                       # the public key this host runs with ("": its key file's)
    keys: tuple[str, ...] = ()          # this host's keys its peers accept (key, next key)

    @property
    def nic(self) -> str:
        return self.underlay_dev

    @property
    def remotes(self) -> tuple[str, ...]:
        """The peers' inner addresses: VXLAN's head-end replication list (both of a rotating
        peer's: the copy to the address whose key it does not hold is dropped unread)."""
        return tuple(inner_address(a, k) for a, k in self.peers)


def host_keys(host) -> tuple[str, ...]:
    """A host's WireGuard keys its peers accept: its key and, while rotating, its next key."""
    nxt = getattr(host, "wireguard_next_key", None)
    return (host.wireguard_key,) + ((nxt,) if nxt and nxt != host.wireguard_key else ())


def rotating_keys(uplinks) -> frozenset[str]:
    """The keys of peers that are rotating (an address with two keys) in these uplinks: what a
    proxy tells the master its bundle makes it accept (the master's cue for the rotating host
    to switch)."""
    by_addr: dict[str, set[str]] = {}
    for u in uplinks:
        if isinstance(u, WireguardUplink):
            for a, k in u.peers:
                by_addr.setdefault(a, set()).add(k)
    return frozenset(k for keys in by_addr.values() if len(keys) > 1 for k in keys)


class Wireguard(Transport):
    name = "wireguard"
    title = "WireGuard"
    capability = Capability(
        "wireguard", "ip link add tvdprobe0 type wireguard && ip link set tvdprobe0 up",
        policy="wireguard")
    uplink = WireguardUplink
    device_prefix = "tve-"
    overhead = OVERHEAD_IPV4 + VXLAN_INNER_OVERHEAD
    protects = GOALS

    def missing(self, hosts) -> list[str]:
        """Why these hosts cannot use it, one phrase per host ([] = they can)."""
        out = []
        for h in hosts:
            if self.capability.policy not in h.capabilities:
                out.append(f"host '{h.name}' has no {self.capability.policy} capability")
            elif not getattr(h, "wireguard_key", None):
                out.append(f"host '{h.name}' has no WireGuard public key")
        return out

    def place(self, policy, tvd, hosts, primary):
        if self.missing(hosts):
            return None
        raise_to, vm_mtu = self.mtus(policy, hosts, primary)
        out = {}
        for h in hosts:
            me = primary[h.name]
            underlay = raise_to or policy.networks[me.network].mtu
            peers = tuple(sorted((primary[o.name].address, k)
                                 for o in hosts if o.name != h.name for k in host_keys(o)))
            uplink = WireguardUplink(vni=tvd.vni, local_ip=me.address, underlay_dev=me.nic,
                                     peers=peers, wg_mtu=underlay - OVERHEAD_IPV4,
                                     key=h.wireguard_key, keys=tuple(sorted(host_keys(h))))
            out[h.name] = HostUplink(uplink, vm_mtu,
                                     underlay_mtu=((me.nic, raise_to),) if raise_to else (),
                                     peers=tuple(sorted({a for a, _ in peers})))
        return out


TRANSPORT = Wireguard()
