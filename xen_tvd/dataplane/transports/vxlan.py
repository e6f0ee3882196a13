"""VXLAN uplink plugin: Ethernet-in-UDP between hosts of one TVD.

BUM traffic goes to the multicast `group` (LAN) and/or is head-end replicated to every
`remotes` peer via static all-zero FDB entries (WAN without multicast). Unicast is learned.
Its underlay part: VXLAN (UDP to the segments' ports) only from the host's underlay peers and
the segments' remotes (underlay_filter.py).
"""
from __future__ import annotations

from pyroute2.netlink.exceptions import NetlinkError

from xen_tvd.desired import model
from xen_tvd.desired.transports import vxlan

from .. import common, offload
from ..common import Ctx
from ..netlink import Link, doing
from ..report import DataplaneError
from .base import UnderlayPart, UplinkPlugin

ZERO_MAC = "00:00:00:00:00:00"
NTF_SELF = 0x02


def _want(ctx: Ctx, up: vxlan.VxlanUplink) -> dict:
    return {
        "IFLA_VXLAN_ID": up.vni,
        "IFLA_VXLAN_LOCAL": up.local_ip,
        "IFLA_VXLAN_LINK": ctx.links.get(up.underlay_dev).index,
        "IFLA_VXLAN_PORT": up.port,
        "IFLA_VXLAN_TTL": up.ttl,
        "IFLA_VXLAN_LEARNING": 1,
        "IFLA_VXLAN_GROUP": up.group,
    }


def _flood_list(ctx: Ctx, link: Link) -> set[str]:
    return {e.get_attr("NDA_DST") for e in common.fdb(ctx)
            if e["ifindex"] == link.index and e.get_attr("NDA_LLADDR") == ZERO_MAC and e.get_attr("NDA_DST")}


def sync_flood_list(ctx: Ctx, link: Link, remotes, kernels=frozenset()) -> None:
    """The VXLAN device's head-end replication list (all-zero FDB entries) = exactly `remotes`;
    `kernels`: entries the kernel keeps itself (a multicast group's), left alone. Shared by
    every plugin whose uplink is a VXLAN device."""
    have = _flood_list(ctx, link) - set(kernels)
    want = set(remotes)
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


class VxlanPlugin(UplinkPlugin):
    transport = vxlan.TRANSPORT
    kind = "vxlan"

    def validate(self, ctx: Ctx, seg: model.Segment) -> None:
        up: vxlan.VxlanUplink = seg.uplink
        if not 0 < up.vni < 1 << 24:
            raise DataplaneError(f"segment {seg.tvd}: VNI {up.vni} outside 1..16777215")
        if ctx.links.get(up.underlay_dev) is None:
            raise DataplaneError(
                f"segment {seg.tvd}: underlay device {up.underlay_dev} for VXLAN not found in {ctx.where}")

    def mismatch(self, ctx: Ctx, link: Link, seg: model.Segment) -> list[str]:
        out = []
        for key, want in _want(ctx, seg.uplink).items():
            have = link.data.get(key)
            if key == "IFLA_VXLAN_GROUP" and have == "0.0.0.0":
                have = None
            if have != want:
                out.append(f"{key[11:].lower()} {have}->{want}")
        return out

    def create(self, ctx: Ctx, seg: model.Segment, name: str) -> None:
        up: vxlan.VxlanUplink = seg.uplink
        kw = dict(ifname=name, kind=self.kind, vxlan_id=up.vni, vxlan_local=up.local_ip,
                  vxlan_link=ctx.links.get(up.underlay_dev).index, vxlan_port=up.port,
                  vxlan_ttl=up.ttl, vxlan_learning=1)
        if up.group:
            kw["vxlan_group"] = up.group
        with doing(f"creating VXLAN {name} (vni {up.vni}) on {up.underlay_dev} in {ctx.where}",
                   "another VXLAN device with this VNI/port may exist"):
            ctx.ipr.link("add", **kw)

    def mtu_hint(self, seg: model.Segment) -> str:
        return (f"VXLAN needs underlay {seg.uplink.underlay_dev} MTU >= Segment.mtu + "
                f"{self.transport.overhead}")

    def sync(self, ctx: Ctx, seg: model.Segment, link: Link) -> None:
        """Head-end replication list = exactly `remotes` (the group's own entry is the kernel's);
        GRO on the underlay NIC (offload.ensure_gro_on)."""
        up: vxlan.VxlanUplink = seg.uplink
        offload.ensure_gro_on(ctx, ctx.links.get(up.underlay_dev))
        sync_flood_list(ctx, link, up.remotes, {up.group} if up.group else set())

    def underlay(self, uplinks: list) -> UnderlayPart:
        ports = sorted({u.port for u in uplinks})
        return UnderlayPart(
            sets=f"  set vxlan_ports {{ type inet_service; elements = {{ "
                 f"{', '.join(str(p) for p in ports)} }}; }}\n",
            rules=("udp dport @vxlan_ports ip saddr != @peers4 counter drop",
                   "udp dport @vxlan_ports ip6 saddr != @peers6 counter drop"),
            sources=frozenset(r for u in uplinks for r in u.remotes))


PLUGIN = VxlanPlugin()
