"""The kernel half of a transport: its uplink device on a segment's vSwitch (os-vif style).

    describe()                  PluginInfo: the transport it implements, its uplink model, link kind
    plug(ctx, seg, bridge)      create (or keep) the uplink device, configure it, enslave it, up
    unplug(ctx, seg, why)       delete the segment's uplink device, if it exists and is ours
    validate / mismatch         before any write / what needs the device recreated
    underlay(uplinks)           its part of the underlay filter (underlay_filter.py), or None
    sync_host(ctx, state)       host-wide settings it needs (NIC offloads), after the ports
    host_devices(state)         devices it keeps once per host (WireGuard's), not per segment

A subclass provides create() and whatever else differs; the shared steps are here. The uplink
device is named by the contract half (desired/transports/<name>.py, device_prefix) and carries
the ifalias xen-tvd:<transport>=<tvd>.
"""
from __future__ import annotations

from dataclasses import dataclass

from xen_tvd.desired import model, names
from xen_tvd.desired.transports import Transport

from .. import common
from ..common import Ctx
from ..netlink import Link


@dataclass(frozen=True)
class PluginInfo:
    transport: str          # the contract's Transport.name
    uplink: type            # the uplink model it plugs
    kind: str               # the kernel's link kind of its device


@dataclass(frozen=True)
class UnderlayPart:
    """A transport's part of the underlay filter (nftables `inet xen_tvd_underlay`)."""
    sets: str                     # nft set declarations of its own (one per line, indented)
    rules: tuple[str, ...]        # input-chain rules dropping its packets not from @peers4/@peers6
    sources: frozenset[str]       # underlay addresses admitted beyond HostState.underlay_peers


class UplinkPlugin:
    transport: Transport
    kind: str

    def describe(self) -> PluginInfo:
        return PluginInfo(self.transport.name, self.transport.uplink, self.kind)

    def ifname(self, seg: model.Segment) -> str:
        return names.uplink_name(self.transport.device_prefix, seg.bridge)

    def alias(self, seg: model.Segment) -> str:
        return f"{names.OWNER_ALIAS_PREFIX}{self.transport.name}={seg.tvd}"

    def validate(self, ctx: Ctx, seg: model.Segment) -> None:
        """Refuse (DataplaneError) what cannot be built, before anything is written."""

    def mismatch(self, ctx: Ctx, link: Link, seg: model.Segment) -> list[str]:
        """Differences that need the device recreated (the kernel cannot change them in place)."""
        return []

    def create(self, ctx: Ctx, seg: model.Segment, name: str) -> None:
        raise NotImplementedError

    def mtu_hint(self, seg: model.Segment) -> str:
        return ""

    def sync(self, ctx: Ctx, seg: model.Segment, link: Link) -> None:
        """What the device needs beyond itself (forwarding entries, NIC features)."""

    def plug(self, ctx: Ctx, seg: model.Segment, br: Link) -> Link:
        name = self.ifname(seg)
        link = ctx.links.get(name)
        if link is None:
            self.create(ctx, seg, name)
            ctx.changed(f"created {self.kind} {name}")
            link = ctx.require(name)
        link = common.set_alias(ctx, link, self.alias(seg))
        link = common.set_mtu(ctx, link, seg.mtu, self.mtu_hint(seg))
        link = common.make_port(ctx, link)
        link = common.set_master(ctx, link, br)
        link = common.set_up(ctx, link)
        self.sync(ctx, seg, link)
        return link

    def unplug(self, ctx: Ctx, seg: model.Segment, why: str) -> None:
        link = ctx.links.get(self.ifname(seg))
        if link is not None and link.owned:
            common.delete(ctx, link, why)

    def underlay(self, uplinks: list) -> UnderlayPart | None:
        """None: its packets need no underlay filter (they never reach a local socket)."""
        return None

    def sync_host(self, ctx: Ctx, state: model.HostState) -> None:
        pass

    def host_devices(self, state: model.HostState) -> dict[str, str]:
        """{name: kind} of the devices it keeps once per host, not per segment (reconcile
        keeps them; the plugin converges them)."""
        return {}
