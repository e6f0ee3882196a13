"""Attaching one VM interface to its segment: the single code path for hotplug, lab and apply.

Fail closed: if any step fails the vif is left with no master and down, so a half-configured
VM can never sit on the wrong LAN or on a LAN with the wrong MTU/offload settings.
"""
from __future__ import annotations

from typing import Callable

from pyroute2.netlink.exceptions import NetlinkError

from xen_tvd.desired import model
from xen_tvd.desired.names import BRIDGE_PREFIX

from . import bridge, common, offload
from .port_security import plug_port as guard_port, unplug_port as unguard_port
from .common import Ctx
from .netlink import Link, Links, describe, open_ipr, where
from .report import ApplyReport, DataplaneError


def attach(ctx: Ctx, link: Link, port: model.VifPort, seg: model.Segment, br: Link,
           frontend_mtu_cb: Callable[[int], object] | None = None) -> None:
    """MTU (the segment's, or the port's lower `mtu`), tx-csum (the segment's, or off where the
    port opts out), (frontend MTU), master, the declared MAC pinned in the bridge, up. On
    failure: detached and DataplaneError."""
    mtu = port.mtu_on(seg)
    try:
        link = common.set_mtu(ctx, link, mtu)
        offload.ensure_tx_csum(ctx, link, port.tx_csum_on(seg))
        if frontend_mtu_cb is not None:
            # Before enslaving: the guest learns the MTU before any frame can flow.
            try:
                frontend_mtu_cb(mtu)
            except Exception as e:  # the callback is foreign code (xenstore write)
                raise DataplaneError(f"frontend MTU callback for {link.name} failed: {e}") from None
        link = common.make_port(ctx, link)
        link = common.set_master(ctx, link, br)
        if port.mac is not None:
            common.pin_mac(ctx, link, port.mac)
        common.set_up(ctx, link)
    except DataplaneError as e:
        _fail_closed(ctx, link.name, e)


def _fail_closed(ctx: Ctx, name: str, err: DataplaneError):
    extra = ""
    try:
        cur = ctx.links.refresh(name)
        if cur is not None:
            common.detach(ctx, cur)
    except (DataplaneError, NetlinkError, OSError) as e2:
        extra = f" (and detaching it failed too: {describe(e2)}; detach {name} by hand)"
    raise DataplaneError(f"{err}; {name} left detached{extra}") from None


def plug_vif(port: model.VifPort, segment: model.Segment, netns: str | None = None,
             frontend_mtu_cb: Callable[[int], object] | None = None,
             require_addresses: bool = False, log_drops: int = 0,
             port_security: str | None = None) -> None:
    """Attach one vif; its port security (port_security: the host's HostState.port_security)
    is installed first (its eBPF program, or its nft chains in one transaction; no other
    vif's touched), so it never forwards a frame unfiltered."""
    if port.tvd != segment.tvd:
        raise DataplaneError(f"plug_vif: port {port.ifname} is for TVD {port.tvd}, segment is {segment.tvd}")
    with open_ipr(netns) as ipr:
        ctx = Ctx(ipr, Links(ipr, dump=False), ApplyReport(), netns)
        link = ctx.links.get(port.ifname)
        if link is None:
            raise DataplaneError(f"cannot plug {port.ifname}: no such interface in {where(netns)}")
        br = ctx.links.get(segment.bridge)
        if br is None or br.kind != bridge.KIND or not br.owned:
            state = "does not exist" if br is None else "is not a xen-tvd bridge"
            _fail_closed(ctx, port.ifname, DataplaneError(
                f"cannot plug {port.ifname} into TVD {segment.tvd}: bridge {segment.bridge} {state} "
                f"in {where(netns)}; run apply() for this host first"))
        try:
            guard_port(ctx, link, port, require_addresses, segment, log_drops, port_security)
        except DataplaneError as e:
            _fail_closed(ctx, port.ifname, e)
        attach(ctx, link, port, segment, br, frontend_mtu_cb)


def bridge_ports(netns: str | None = None) -> dict[str, list[str]]:
    """Read-only: name of every xen-tvd TVD bridge -> the interfaces enslaved to it that
    xen-tvd does not own (the vifs), as the kernel has them now."""
    out = {}
    with open_ipr(netns) as ipr:
        links = Links(ipr)
        for br in list(links.by_name.values()):
            if br.owned and br.kind == bridge.KIND and br.name.startswith(BRIDGE_PREFIX):
                out[br.name] = [m.name for m in links.members(br.index) if not m.owned]
    return out


def unplug_vif(ifname: str, netns: str | None = None) -> None:
    with open_ipr(netns) as ipr:
        ctx = Ctx(ipr, Links(ipr, dump=False), ApplyReport(), netns)
        link = ctx.links.get(ifname)
        if link is not None:  # already gone (domain destroyed): nothing to do
            common.detach(ctx, link)
        # after the detach: its port security goes only once it can no longer forward
        unguard_port(ctx, ctx.links.refresh(ifname), ifname)
