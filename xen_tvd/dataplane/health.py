"""Read-only views of the kernel for `tvd-proxy status`, its metrics and `tvdctl explain`:
does the kernel still have what apply() made for a HostState (health), and what did the drop
rules count (drop_counters). Changes nothing."""
from __future__ import annotations

import socket

from xen_tvd.desired import model

from . import flowfilter, hostguard, port_security
from .common import Ctx
from .netlink import Links, open_ipr
from .report import ApplyReport
from .reconcile import uplink_plugin


def health(state: model.HostState, netns: str | None = None) -> dict:
    """{"segments": {tvd: [problem, ...]}, "ports": {ifname: {"bridge": the vSwitch it is
    enslaved to now or None, "up": bool, "problem": str or None}}}; an empty problem list is a
    healthy segment."""
    out: dict = {"segments": {}, "ports": {}}
    with open_ipr(netns) as ipr:
        links = Links(ipr)
        for seg in state.segments:
            problems = []
            br = links.get(seg.bridge)
            if br is None:
                problems.append(f"vSwitch {seg.bridge} is missing")
            elif not br.up:
                problems.append(f"vSwitch {seg.bridge} is down")
            p = uplink_plugin(seg)
            if p is not None:
                name = p.ifname(seg)
                up = links.get(name)
                if up is None:
                    problems.append(f"uplink {name} is missing")
                else:
                    if not up.up:
                        problems.append(f"uplink {name} is down")
                    if br is not None and up.master != br.index:
                        problems.append(f"uplink {name} is not a port of {seg.bridge}")
            out["segments"][seg.tvd] = problems
        bridges = {s.tvd: s.bridge for s in state.segments}
        for port in state.ports:
            link = links.get(port.ifname)
            want = bridges.get(port.tvd)
            if link is None:
                out["ports"][port.ifname] = {"bridge": None, "up": False,
                                             "problem": f"{port.ifname} is missing"}
                continue
            master = links.by_index(link.master) if link.master else None
            on = master.name if master is not None else None
            problem = None
            if on != want:
                problem = (f"{port.ifname} is on {on or 'no bridge'}, not on {want} "
                           f"(TVD {port.tvd})")
            out["ports"][port.ifname] = {"bridge": on, "up": link.up, "problem": problem}
    return out


def drop_counters(netns: str | None = None) -> dict:
    """{"flows": {(reason, source TVD id, destination TVD id): packets} (flowfilter.drops),
    "ports": {ifname: {reason: packets}} (port_security.counters), "dom0_guard": packets}."""
    with open_ipr(netns) as ipr:
        ports = port_security.counters(Ctx(ipr, Links(ipr), ApplyReport(), netns))
    return {"flows": flowfilter.drops(netns), "ports": ports,
            "dom0_guard": hostguard.dropped(netns) or 0}


def fdb(bridge_name: str, mac: str, netns: str | None = None) -> list[dict]:
    """Where the vSwitch `bridge_name` would send frames for `mac`: its forwarding entries for
    that address, [{port, remote (a VXLAN entry's underlay address, else None), static}]; empty:
    not learned (the frame would be flooded)."""
    mac = mac.lower()
    out = []
    with open_ipr(netns) as ipr:
        links = Links(ipr)
        br = links.get(bridge_name)
        if br is None:
            return out
        members = {l.index: l.name for l in links.by_name.values() if l.master == br.index}
        for e in ipr.get_neighbours(family=socket.AF_BRIDGE):
            if (e.get_attr("NDA_LLADDR") or "").lower() != mac or e["ifindex"] not in members:
                continue
            out.append({"port": members[e["ifindex"]], "remote": e.get_attr("NDA_DST"),
                        "static": bool(e["state"] & 0x80)})      # NUD_PERMANENT
    return out
