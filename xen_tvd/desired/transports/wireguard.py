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
    peers: tuple[tuple[str, str], ...]  # (underlay address, public key) of each other carrier
    wg_mtu: int                         # the WireGuard device's MTU: the underlay's less 60
    port: int = 4789                    # VXLAN's, inside the tunnel
    listen_port: int = LISTEN_PORT      # WireGuard's, on the underlay

    @property
    def nic(self) -> str:
        return self.underlay_dev

    @property
    def remotes(self) -> tuple[str, ...]:
        """The peers' inner addresses: VXLAN's head-end replication list."""
        return tuple(inner_address(a) for a, _ in self.peers)


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
            peers = tuple(sorted((primary[o.name].address, o.wireguard_key)
                                 for o in hosts if o.name != h.name))
            uplink = WireguardUplink(vni=tvd.vni, local_ip=me.address, underlay_dev=me.nic,
                                     peers=peers, wg_mtu=underlay - OVERHEAD_IPV4)
            out[h.name] = HostUplink(uplink, vm_mtu,
                                     underlay_mtu=((me.nic, raise_to),) if raise_to else (),
                                     peers=tuple(a for a, _ in peers))
        return out


TRANSPORT = Wireguard()
