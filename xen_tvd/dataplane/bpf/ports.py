"""Which vif runs which port security program: the eBPF backend's sync, plug, unplug and
counters. The kernel is the only state: a vif's ingress filter names its program, and the
name carries the digest of the rules it was compiled from (portsec.program_name)."""
from __future__ import annotations

import os

from ...desired import model
from ..portsec import PortRules
from ..report import DataplaneError
from . import kernel, tc
from .portsec import COUNTERS_MAP, PREFIX, REASONS, PortProgram, program_name, read_counters


def _ours(att: tc.Attached | None) -> bool:
    return att is not None and att.name.startswith(PREFIX)


def _set(ipr, index: int, rules: PortRules) -> None:
    prog = PortProgram.load(rules)
    try:
        tc.attach(ipr, index, rules.ifname, prog.fd, prog.name)
    finally:
        prog.close()     # the filter holds the program, the program its maps


def plug_port(netns: str | None, index: int, rules: PortRules, ipr=None) -> bool:
    with tc.socket(netns, ipr) as ipr:
        return _plug(ipr, index, rules)


def _plug(ipr, index: int, rules: PortRules) -> bool:
    """The vif's program is the one `rules` compile to; True when it had to be (re)attached."""
    att = tc.attached(ipr, index, rules.ifname)
    if att is not None and att.name == program_name(rules):
        return False
    _set(ipr, index, rules)
    return True


def unplug_port(netns: str | None, index: int, ifname: str, ipr=None) -> bool:
    with tc.socket(netns, ipr) as ipr:
        return _unplug(ipr, index, ifname)


def _unplug(ipr, index: int, ifname: str) -> bool:
    if not _ours(tc.attached(ipr, index, ifname)):
        return False
    tc.detach(ipr, index, ifname)
    return True


def sync(netns: str | None, state: model.HostState, candidates: dict[str, int], changed,
         ipr=None) -> None:
    """candidates: ifname -> index of every device that may carry a vif's program (the
    present ports and any other device not xen-tvd's own). Ports get their programs; a
    program of ours on any other candidate goes."""
    want = {p.ifname: PortRules.of(p, state.require_addresses, state.segment(p.tvd))
            for p in state.ports if p.ifname in candidates}
    n_set = n_gone = 0
    with tc.socket(netns, ipr) as ipr:
        for ifname, index in sorted(candidates.items()):
            if ifname in want:
                n_set += _plug(ipr, index, want[ifname])
            else:
                n_gone += _unplug(ipr, index, ifname)
    if n_set or n_gone:
        changed(f"port security (eBPF): programs set for {n_set} vif(s), removed from {n_gone}")


def secured(netns: str | None, index: int, rules: PortRules) -> bool:
    with tc.socket(netns) as ipr:
        att = tc.attached(ipr, index, rules.ifname)
    return att is not None and att.name == program_name(rules)


def counters_of(prog_id: int) -> dict[str, int]:
    """reason -> frames dropped by the loaded program `prog_id`; {} when it went meanwhile."""
    try:
        fd = kernel.prog_fd_by_id(prog_id)
    except DataplaneError:
        return {}
    try:
        map_ids = kernel.prog_info(fd)[2]
    finally:
        os.close(fd)
    for map_id in map_ids:
        try:
            mfd = kernel.map_fd_by_id(map_id)
        except DataplaneError:
            continue
        try:
            if kernel.map_name(mfd) == COUNTERS_MAP:
                return read_counters(mfd)
        finally:
            os.close(mfd)
    return {}


def counters(netns: str | None, devices: dict[str, int], ipr=None) -> dict[str, dict[str, int]]:
    """ifname -> reason -> frames dropped, for the devices (name -> index) running ours."""
    out = {}
    with tc.socket(netns, ipr) as ipr:
        for ifname, index in sorted(devices.items()):
            att = tc.attached(ipr, index, ifname)
            if _ours(att) and att.prog_id is not None:
                out[ifname] = counters_of(att.prog_id)
    return out


def program(netns: str | None, ifname: str) -> tuple[str, dict[str, int]] | None:
    """The name of our program at ifname's ingress and every reason's count (0 included);
    None: no program of ours there (or no such device)."""
    with tc.socket(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        att = tc.attached(ipr, found[0], ifname) if found else None
    if not _ours(att):
        return None
    got = counters_of(att.prog_id) if att.prog_id is not None else {}
    return att.name, {r: got.get(r, 0) for r in REASONS}
