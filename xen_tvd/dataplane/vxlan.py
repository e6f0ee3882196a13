"""VXLAN uplink plugin: Ethernet-in-UDP between hosts of one TVD.

BUM traffic goes to the multicast `group` (LAN) and/or is head-end replicated to every
`remotes` peer via static all-zero FDB entries (WAN without multicast). Unicast is learned.
"""
from __future__ import annotations

import socket

from pyroute2.netlink.exceptions import NetlinkError

from . import model
from .common import Ctx
from .netlink import BRIDGE_PREFIX, VXLAN_PREFIX, Link, doing
from .report import DataplaneError

KIND = "vxlan"
UPLINK = model.VxlanUplink
ZERO_MAC = "00:00:00:00:00:00"
NTF_SELF = 0x02


def ifname(seg: model.Segment) -> str:
    return VXLAN_PREFIX + seg.bridge[len(BRIDGE_PREFIX):]  # same length as the bridge name


def alias(seg: model.Segment) -> str:
    return f"{model.OWNER_ALIAS_PREFIX}vxlan={seg.tvd}"


def validate(ctx: Ctx, seg: model.Segment) -> None:
    up: model.VxlanUplink = seg.uplink
    if not 0 < up.vni < 1 << 24:
        raise DataplaneError(f"segment {seg.tvd}: VNI {up.vni} outside 1..16777215")
    if ctx.links.get(up.underlay_dev) is None:
        raise DataplaneError(
            f"segment {seg.tvd}: underlay device {up.underlay_dev} for VXLAN not found in {ctx.where}")


def _want(ctx: Ctx, up: model.VxlanUplink) -> dict:
    return {
        "IFLA_VXLAN_ID": up.vni,
        "IFLA_VXLAN_LOCAL": up.local_ip,
        "IFLA_VXLAN_LINK": ctx.links.get(up.underlay_dev).index,
        "IFLA_VXLAN_PORT": up.port,
        "IFLA_VXLAN_TTL": up.ttl,
        "IFLA_VXLAN_LEARNING": 1,
        "IFLA_VXLAN_GROUP": up.group,
    }


def mismatch(ctx: Ctx, link: Link, seg: model.Segment) -> list[str]:
    """Differences that need the device recreated (the kernel cannot change them in place)."""
    out = []
    for key, want in _want(ctx, seg.uplink).items():
        have = link.data.get(key)
        if key == "IFLA_VXLAN_GROUP" and have == "0.0.0.0":
            have = None
        if have != want:
            out.append(f"{key[11:].lower()} {have}->{want}")
    return out


def create(ctx: Ctx, seg: model.Segment, name: str) -> None:
    up: model.VxlanUplink = seg.uplink
    kw = dict(ifname=name, kind=KIND, vxlan_id=up.vni, vxlan_local=up.local_ip,
              vxlan_link=ctx.links.get(up.underlay_dev).index, vxlan_port=up.port,
              vxlan_ttl=up.ttl, vxlan_learning=1)
    if up.group:
        kw["vxlan_group"] = up.group
    with doing(f"creating VXLAN {name} (vni {up.vni}) on {up.underlay_dev} in {ctx.where}",
               "another VXLAN device with this VNI/port may exist"):
        ctx.ipr.link("add", **kw)


def mtu_hint(seg: model.Segment) -> str:
    return (f"VXLAN needs underlay {seg.uplink.underlay_dev} MTU >= Segment.mtu + "
            f"{model.VXLAN_OVERHEAD_IPV4}")


def _flood_list(ctx: Ctx, link: Link) -> set[str]:
    if ctx.fdb is None:  # one dump per apply, shared by all segments
        with doing(f"reading the bridge FDB in {ctx.where}"):
            ctx.fdb = list(ctx.ipr.get_neighbours(family=socket.AF_BRIDGE))
    return {e.get("NDA_DST") for e in ctx.fdb
            if e["ifindex"] == link.index and e.get("NDA_LLADDR") == ZERO_MAC and e.get("NDA_DST")}


def sync(ctx: Ctx, seg: model.Segment, link: Link) -> None:
    """Head-end replication list = exactly `remotes` (the group's own entry is the kernel's)."""
    up: model.VxlanUplink = seg.uplink
    have = _flood_list(ctx, link) - ({up.group} if up.group else set())
    want = set(up.remotes)
    for dst in sorted(want - have):
        with doing(f"adding flood entry {dst} to {link.name}"):
            ctx.ipr.fdb("append", ifindex=link.index, lladdr=ZERO_MAC, dst=dst)
        ctx.changed(f"added remote {dst} to {link.name}")
    for dst in sorted(have - want):
        try:
            ctx.ipr.fdb("del", ifindex=link.index, lladdr=ZERO_MAC, dst=dst)
        except NetlinkError as e:
            raise DataplaneError(f"removing stale remote {dst} from {link.name} failed ({e})") from None
        ctx.changed(f"removed remote {dst} from {link.name}")
