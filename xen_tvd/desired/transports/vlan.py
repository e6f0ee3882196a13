"""802.1Q VLAN: the TVD's VLAN id on a NIC of a network whose switches trunk TVD VLANs.

Eligible when every carrying host has the `vlan` capability and all of them sit on one
VLAN-capable network (the lowest-named one when several are). No overhead: the tag rides in
the frame, and the NICs carry 1500 + tag. The NICs' rx/tx VLAN offload goes off (paper 6.1).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Capability, HostUplink, Transport


@dataclass(frozen=True)
class VlanUplink:
    """802.1Q transport: a VLAN device on the physical NIC enslaved to the vSwitch."""
    vlan_id: int
    phys_dev: str

    @property
    def nic(self) -> str:
        return self.phys_dev


class Vlan(Transport):
    name = "vlan"
    title = "VLAN"
    capability = Capability(
        "vlan", "ip link add tvdprobe0 type bridge && "
                "ip link add link tvdprobe0 name tvdprobe0.5 type vlan id 5", policy="vlan")
    uplink = VlanUplink
    device_prefix = "tvl-"
    overhead = 0

    def place(self, policy, tvd, hosts, primary):
        if not all(self.capability.policy in h.capabilities for h in hosts):
            return None
        common = None
        for h in hosts:
            nets = {n.network for n in h.nics if policy.networks[n.network].vlan_capable}
            common = nets if common is None else common & nets
        if not common:
            return None
        net_name = min(common)
        net = policy.networks[net_name]
        out = {}
        for h in hosts:
            nic = h.nic_on(net_name).nic
            out[h.name] = HostUplink(VlanUplink(tvd.vlan, nic), net.mtu, vlan_offload_off=(nic,))
        return out


TRANSPORT = Vlan()
