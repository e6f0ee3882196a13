"""VXLAN (Ethernet in UDP): what the paper's EtherIP became; connects any hosts with an IP path.

Peers on the host's own multicast-capable network are reached through the TVD's multicast
group; peers on other networks (the WAN case, no multicast routing) by unicast head-end
replication. The VM-facing MTU is the smallest underlay MTU minus the 50-byte overhead, unless
every underlay network can be raised (max-mtu) so that VMs keep 1500. Every other carrying
host is an underlay peer: the underlay filter accepts VXLAN only from those.

The planner places any hosts here (the last resort); the master then drops carriers without
the `ip` capability (master/decide.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Capability, HostUplink, Transport

OVERHEAD_IPV4 = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


@dataclass(frozen=True)
class VxlanUplink:
    """Ethernet-in-UDP transport for one TVD segment."""
    vni: int
    local_ip: str            # this host's underlay address
    underlay_dev: str        # NIC the VXLAN device is bound to
    group: str | None = None # IPv4 multicast group for BUM traffic (LAN case)
    remotes: tuple[str, ...] = ()  # head-end replication peers (WAN case: no multicast)
    port: int = 4789
    ttl: int = 16            # so multicast/unicast can cross the WAN router

    @property
    def nic(self) -> str:
        return self.underlay_dev


class Vxlan(Transport):
    name = "vxlan"
    title = "VXLAN"
    capability = Capability(
        "vxlan", "ip link add tvdprobe0 type vxlan id 1 dstport 4789 local 127.0.0.1",
        policy="ip")
    uplink = VxlanUplink
    device_prefix = "tvx-"
    overhead = OVERHEAD_IPV4
    connects_any = True

    def place(self, policy, tvd, hosts, primary):
        raise_to, vm_mtu = self.mtus(policy, hosts, primary)
        out = {}
        for h in hosts:
            me = primary[h.name]
            my_net = policy.networks[me.network]
            # by host name: comparing the policy's objects made this O(n^3) for n carriers (the
            # master plans every host at once; 200 hosts took ~20 s, bench/master_enrol.py)
            mcast_hosts = {o.name for o in hosts if o.name != h.name and my_net.multicast
                           and primary[o.name].network == me.network}
            remotes = tuple(sorted(primary[o.name].address for o in hosts
                                   if o.name != h.name and o.name not in mcast_hosts))
            uplink = VxlanUplink(vni=tvd.vni, local_ip=me.address, underlay_dev=me.nic,
                                 group=tvd.multicast_group if mcast_hosts else None,
                                 remotes=remotes)
            # every other carrying host, multicast or not: their VXLAN source is their local_ip
            peers = tuple(primary[o.name].address for o in hosts if o.name != h.name)
            out[h.name] = HostUplink(uplink, vm_mtu,
                                     underlay_mtu=((me.nic, raise_to),) if raise_to else (),
                                     peers=peers)
        return out


TRANSPORT = Vxlan()
