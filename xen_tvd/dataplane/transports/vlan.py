"""802.1Q uplink plugin: a VLAN device on the physical NIC, enslaved to the segment bridge.

Named tvl-<segment> rather than <nic>.<vid>: the name stays <= 15 characters for any NIC name
and carries our ownership prefix; the NIC and VID are attributes (and in `ip -d link`). The
NICs that carry TVD VLANs get rx/tx VLAN offload off (paper 6.1), after the ports.
"""
from __future__ import annotations

from xen_tvd.desired import model
from xen_tvd.desired.transports import vlan

from .. import offload
from ..common import Ctx
from ..netlink import Link, doing
from ..report import DataplaneError
from .base import UplinkPlugin


class VlanPlugin(UplinkPlugin):
    transport = vlan.TRANSPORT
    kind = "vlan"

    def validate(self, ctx: Ctx, seg: model.Segment) -> None:
        up: vlan.VlanUplink = seg.uplink
        if not 1 <= up.vlan_id <= 4094:
            raise DataplaneError(f"segment {seg.tvd}: VLAN id {up.vlan_id} outside 1..4094")
        if ctx.links.get(up.phys_dev) is None:
            raise DataplaneError(f"segment {seg.tvd}: NIC {up.phys_dev} for VLAN {up.vlan_id} not found in {ctx.where}")

    def mismatch(self, ctx: Ctx, link: Link, seg: model.Segment) -> list[str]:
        up: vlan.VlanUplink = seg.uplink
        out = []
        if link.data.get("IFLA_VLAN_ID") != up.vlan_id:
            out.append(f"vlan {link.data.get('IFLA_VLAN_ID')}->{up.vlan_id}")
        phys = ctx.links.get(up.phys_dev)
        if link.parent != phys.index:
            out.append(f"nic {link.parent}->{up.phys_dev}")
        return out

    def create(self, ctx: Ctx, seg: model.Segment, name: str) -> None:
        up: vlan.VlanUplink = seg.uplink
        with doing(f"creating VLAN {name} (id {up.vlan_id}) on {up.phys_dev} in {ctx.where}",
                   "needs the 8021q module, and no other VLAN device with this id on that NIC"):
            ctx.ipr.link("add", ifname=name, kind=self.kind, link=ctx.links.get(up.phys_dev).index,
                         vlan_id=up.vlan_id)

    def mtu_hint(self, seg: model.Segment) -> str:
        return f"a VLAN device's MTU cannot exceed NIC {seg.uplink.phys_dev}'s MTU"

    def sync_host(self, ctx: Ctx, state: model.HostState) -> None:
        for nic in state.vlan_offload_off:
            link = ctx.links.get(nic)
            if link is None:
                ctx.report.warnings.append(f"NIC {nic} not found in {ctx.where}; VLAN offload not changed")
            else:
                offload.ensure_vlan_offload_off(ctx, link)


PLUGIN = VlanPlugin()
