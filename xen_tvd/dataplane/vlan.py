"""802.1Q uplink plugin: a VLAN device on the physical NIC, enslaved to the segment bridge.

Named tvl-<segment> rather than <nic>.<vid>: the name stays <= 15 characters for any NIC name
and carries our ownership prefix; the NIC and VID are attributes (and in `ip -d link`).
"""
from __future__ import annotations

from . import model
from .common import Ctx
from .netlink import BRIDGE_PREFIX, VLAN_PREFIX, Link, doing
from .report import DataplaneError

KIND = "vlan"
UPLINK = model.VlanUplink


def ifname(seg: model.Segment) -> str:
    return VLAN_PREFIX + seg.bridge[len(BRIDGE_PREFIX):]


def alias(seg: model.Segment) -> str:
    return f"{model.OWNER_ALIAS_PREFIX}vlan={seg.tvd}"


def validate(ctx: Ctx, seg: model.Segment) -> None:
    up: model.VlanUplink = seg.uplink
    if not 1 <= up.vlan_id <= 4094:
        raise DataplaneError(f"segment {seg.tvd}: VLAN id {up.vlan_id} outside 1..4094")
    if ctx.links.get(up.phys_dev) is None:
        raise DataplaneError(f"segment {seg.tvd}: NIC {up.phys_dev} for VLAN {up.vlan_id} not found in {ctx.where}")


def mismatch(ctx: Ctx, link: Link, seg: model.Segment) -> list[str]:
    up: model.VlanUplink = seg.uplink
    out = []
    if link.data.get("IFLA_VLAN_ID") != up.vlan_id:
        out.append(f"vlan {link.data.get('IFLA_VLAN_ID')}->{up.vlan_id}")
    phys = ctx.links.get(up.phys_dev)
    if link.parent != phys.index:
        out.append(f"nic {link.parent}->{up.phys_dev}")
    return out


def create(ctx: Ctx, seg: model.Segment, name: str) -> None:
    up: model.VlanUplink = seg.uplink
    with doing(f"creating VLAN {name} (id {up.vlan_id}) on {up.phys_dev} in {ctx.where}",
               "needs the 8021q module, and no other VLAN device with this id on that NIC"):
        ctx.ipr.link("add", ifname=name, kind=KIND, link=ctx.links.get(up.phys_dev).index, vlan_id=up.vlan_id)


def mtu_hint(seg: model.Segment) -> str:
    return f"a VLAN device's MTU cannot exceed NIC {seg.uplink.phys_dev}'s MTU"


def sync(ctx: Ctx, seg: model.Segment, link: Link) -> None:
    pass  # nothing beyond the device itself
