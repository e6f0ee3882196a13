"""apply(): make one namespace's TVD devices match a HostState (OVN-controller style).

One netlink socket and one link dump per run. Phases, in an order that never needs a device
that does not exist yet and never holds a kernel resource (VNI, VLAN id) a newer one needs:
  1. validate everything (names, conflicts with devices we do not own, underlays) - no writes
  2. fail closed: detach strays from our bridges; delete owned devices no longer desired or
     whose immutable parameters changed
  3. underlay MTUs, then per segment: bridge, uplink (its transport's plugin, transports/:
     create/recreate, MTU, enslave, up, FDB);
     a segment that fails here is deleted whole (no bridge without its uplink), its vifs stay
     detached, the other segments are still applied, and apply() raises at the end
  4. ports: attach each existing VifPort; absent ones are reported, not errors
     (port security, port_security.py, the Dom0 guard, hostguard.py, and the underlay VXLAN filter,
     underlay_filter.py, are synced right after 1., and so is the inter-TVD flow filter,
     flowfilter.py, when the plan routes any TVD here)
  5. each transport's host-wide settings (the VLAN plugin: NIC VLAN offloads off)
  6. the router namespace and its legs (router.py) once the vSwitches exist; with no router
     planned, the namespace and then the flow filter are removed (legs first: no path left)
Every write is preceded by a comparison, so a converged host sees zero changes.
"""
from __future__ import annotations

import dataclasses

from xen_tvd.desired import model, names

from . import bridge, common, flowfilter, hostguard, port_security, portsec, router, underlay_filter
from .common import Ctx
from .netlink import Link, Links, open_ipr
from .report import ApplyReport, DataplaneError
from .transports import PLUGINS, plugin_for
from .vif import attach


def uplink_plugin(seg: model.Segment):
    return plugin_for(seg.uplink)


def _desired_devices(state: model.HostState) -> dict[str, tuple[str, model.Segment]]:
    """name -> (kind, segment) of every device we should own."""
    out = {}
    for seg in state.segments:
        out[bridge.ifname(seg)] = (bridge.KIND, seg)
        p = uplink_plugin(seg)
        if p is not None:
            out[p.ifname(seg)] = (p.kind, seg)
    for p in PLUGINS:     # host-wide devices of a transport (WireGuard's tvw-wg0)
        out.update({name: (kind, None) for name, kind in p.host_devices(state).items()})
    out.update(router.desired_devices(state))
    return out


def _validate(ctx: Ctx, state: model.HostState) -> dict[str, tuple[str, model.Segment]]:
    tvds, bridges = set(), set()
    for seg in state.segments:
        if seg.tvd in tvds or seg.bridge in bridges:
            raise DataplaneError(f"duplicate segment {seg.tvd}/{seg.bridge} in desired state")
        tvds.add(seg.tvd)
        bridges.add(seg.bridge)
    router.validate(state)
    for seg in state.segments:
        bridge.validate_name(seg)
        if not 68 <= seg.mtu <= 65535:
            raise DataplaneError(f"segment {seg.tvd}: MTU {seg.mtu} outside 68..65535")
        p = uplink_plugin(seg)
        if seg.uplink is not None and p is None:
            raise DataplaneError(f"segment {seg.tvd}: unsupported uplink {type(seg.uplink).__name__}")
        if p is not None:
            p.validate(ctx, seg)
    desired = _desired_devices(state)
    for name in desired:
        link = ctx.links.get(name)
        if link is not None and not link.owned:
            raise DataplaneError(
                f"{name} already exists in {ctx.where} but is not owned by xen-tvd (its ifalias does "
                f"not start with {names.OWNER_ALIAS_PREFIX!r}); rename or delete it, xen-tvd will not touch it")
    port_security.backend(state.port_security, state.log_drops)
    seen = set()
    for port in state.ports:
        if state.segment(port.tvd) is None:
            raise DataplaneError(f"port {port.ifname} names TVD {port.tvd}, which has no segment on this host")
        if port.ifname in seen:
            raise DataplaneError(f"port {port.ifname} listed twice in desired state")
        if port.ifname in desired:
            raise DataplaneError(f"port {port.ifname} collides with a xen-tvd device name")
        portsec.validate_port(port)
        seen.add(port.ifname)
    return desired


def _prune(ctx: Ctx, state: model.HostState, desired) -> None:
    port_names = {p.ifname for p in state.ports}
    owned_bridges = [l for l in ctx.links.by_name.values() if l.owned and l.kind == bridge.KIND]
    for br in owned_bridges:
        for m in ctx.links.members(br.index):
            if not m.owned and m.name not in port_names:
                common.detach(ctx, m)  # a stray on a TVD bridge is an isolation breach
    for link in list(ctx.links.by_name.values()):
        if not link.owned:
            continue
        want = desired.get(link.name)
        if want is None:
            common.delete(ctx, link, "not in desired state")
        elif want[0] != link.kind:
            common.delete(ctx, link, f"is a {link.kind}, want a {want[0]}")
        elif link.kind == router.KIND or want[1] is None:
            pass   # a leg's pairing is checked (and repaired) by router.sync, a host-wide
            # device by its plugin
        elif link.kind != bridge.KIND:
            p = uplink_plugin(want[1])
            diff = p.mismatch(ctx, link, want[1])
            if diff:
                common.delete(ctx, link, "recreating: " + ", ".join(diff))


def _underlay_mtus(ctx: Ctx, state: model.HostState) -> None:
    for nic, mtu in sorted(state.underlay_mtu.items()):
        link = ctx.links.get(nic)
        if link is None:
            ctx.report.warnings.append(f"underlay {nic} not found in {ctx.where}; MTU {mtu} not applied")
            continue
        common.set_mtu(ctx, link, mtu)


def _uplink(ctx: Ctx, seg: model.Segment, br: Link) -> None:
    p = uplink_plugin(seg)
    if p is not None:
        p.plug(ctx, seg, br)


def _discard(ctx: Ctx, seg: model.Segment) -> None:
    """Delete what exists of a segment that failed to build (its vifs fall off the bridge)."""
    why = f"segment {seg.tvd} could not be built"
    p = uplink_plugin(seg)
    if p is not None:
        p.unplug(ctx, seg, why)
    link = ctx.links.get(seg.bridge)
    if link is not None and link.owned:
        common.delete(ctx, link, why)


def _without_legs_of(state: model.HostState, failed: dict[str, str]) -> model.HostState:
    """No router leg into a segment that does not exist: its TVD gets no routed path."""
    if not failed or state.router is None:
        return state
    legs = tuple(leg for leg in state.router.legs if leg.tvd not in failed)
    return dataclasses.replace(state, router=dataclasses.replace(state.router, legs=legs))


def _uplinks(state: model.HostState) -> list[str]:
    return [p.ifname(seg) for seg in state.segments if (p := uplink_plugin(seg)) is not None]


def apply(state: model.HostState, netns: str | None = None,
          wireguard_key: str | None = None) -> ApplyReport:
    """wireguard_key: this host's WireGuard private key file, for encrypted segments."""
    report = ApplyReport()
    with open_ipr(netns) as ipr:
        ctx = Ctx(ipr, Links(ipr), report, netns, state=state, wireguard_key=wireguard_key)
        try:
            desired = _validate(ctx, state)
            # Port security and the underlay filter go in before any vif is attached or any
            # VXLAN device exists, so no frame ever crosses a bridge unfiltered.
            port_security.sync(ctx, state)
            hostguard.sync(state, netns, ctx.changed)
            # A filter that is no longer wanted is deleted only after _prune removed the VXLAN
            # devices it guarded: deleting it first opened a window accepting VXLAN from anyone.
            underlay_gone = underlay_filter.wanted(state) is None
            if not underlay_gone:
                underlay_filter.sync(state, netns, ctx.changed)
            # the flow filter is in place before a router leg can carry a packet
            flowfilter.sync(state, netns, _uplinks(state), ctx.changed)
            _prune(ctx, state, desired)
            if underlay_gone:
                underlay_filter.sync(state, netns, ctx.changed)
            _underlay_mtus(ctx, state)
            bridges, failed = {}, {}
            for seg in state.segments:
                try:
                    br = bridge.ensure(ctx, seg)
                    _uplink(ctx, seg, br)
                    bridges[seg.tvd] = br
                except DataplaneError as e:
                    # one segment that cannot be built (say, no 8021q for its VLAN) must not
                    # keep the others down, and must not stay half-built: a bridge without its
                    # uplink would take vifs that then reach none of their TVD's other hosts
                    failed[seg.tvd] = str(e)
                    _discard(ctx, seg)
            for port in state.ports:
                if port.tvd in failed:
                    report.warnings.append(f"{port.ifname} left detached: segment {port.tvd} "
                                           f"could not be built")
                    continue
                link = ctx.links.get(port.ifname)
                if link is None:
                    report.missing_ports.append(port.ifname)
                    continue
                try:
                    seg = state.segment(port.tvd)
                    attach(ctx, link, port, seg, bridges[port.tvd])
                except DataplaneError as e:
                    # One broken vif must not keep the other VMs offline; it is left detached.
                    report.warnings.append(str(e))
            for seg in state.segments:  # ports could have pulled an auto-MTU bridge down
                if seg.tvd not in failed:
                    common.set_mtu(ctx, ctx.require(seg.bridge), seg.mtu)
            for p in PLUGINS:
                p.sync_host(ctx, state)
            router.sync(ctx, _without_legs_of(state, failed), bridges)
            if state.flows is None:
                flowfilter.remove(netns, ctx.changed)
            if failed:
                raise DataplaneError("; ".join(failed[t] for t in sorted(failed)) +
                                     f" (segment(s) {', '.join(sorted(failed))} removed, their "
                                     f"vifs left detached; the other segments are applied)")
        except DataplaneError as e:
            e.report = report  # what was changed before the failure, for logs
            raise
    return report
