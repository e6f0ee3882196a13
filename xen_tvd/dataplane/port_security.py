"""Which port security a host runs, and the one entry point for each of its operations.

eBPF (bpf/, one program per vif at tc ingress) by default: it costs 0.98x of a bare bridge in
64-byte packets/s where the nftables chains cost 0.84-0.87x (bench/README.md). nftables
(portsec.py) when drops are logged (HostState.log_drops, tvd-proxy --log-drops): an eBPF
program cannot write the kernel log line. Both enforce the same PortRules. A switch between
the two installs the new one before it removes the other, so no vif is ever unguarded.
"""
from __future__ import annotations

import dataclasses

from xen_tvd.desired import model

from . import portsec
from .bpf import ports as bpf_ports
from .common import Ctx
from .netlink import Link
from .report import DataplaneError

EBPF, NFTABLES = "ebpf", "nftables"


def backend(choice: str | None, log_drops: int) -> str:
    """The backend asked for (HostState.port_security), or by default the one that fits."""
    if choice is None:
        return NFTABLES if log_drops else EBPF
    if choice not in (EBPF, NFTABLES):
        raise DataplaneError(f"port security {choice!r}: choose {EBPF!r} or {NFTABLES!r}")
    if choice == EBPF and log_drops:
        raise DataplaneError("logging dropped frames needs port security 'nftables' (an eBPF "
                             "program writes no kernel log line); drop one of the two settings")
    return choice


def _candidates(ctx: Ctx) -> dict[str, int]:
    """Devices that may carry a vif's program: every one not xen-tvd's own (but lo)."""
    return {l.name: l.index for l in ctx.links.by_name.values() if not l.owned and l.name != "lo"}


def sync(ctx: Ctx, state: model.HostState) -> None:
    """Every present port of the state guarded by the host's backend; nothing left of the other."""
    present = {p.ifname for p in state.ports if ctx.links.get(p.ifname)}
    unguarded = dataclasses.replace(state, segments=(), ports=())
    if backend(state.port_security, state.log_drops) == NFTABLES:
        portsec.sync(state, present, ctx.netns, ctx.changed)
        bpf_ports.sync(ctx.netns, unguarded, _candidates(ctx), ctx.changed, ctx.ipr)
    else:
        bpf_ports.sync(ctx.netns, state, _candidates(ctx), ctx.changed, ctx.ipr)
        portsec.sync(unguarded, set(), ctx.netns, ctx.changed)


def plug_port(ctx: Ctx, link: Link, port: model.VifPort, require_addresses: bool,
              segment: model.Segment, log_drops: int, choice: str | None = None) -> None:
    """This vif's port security (only its own), before it is attached to anything."""
    portsec.validate_port(port)
    if backend(choice, log_drops) == NFTABLES:
        portsec.plug_port(port, ctx.netns, require_addresses, segment, log_drops)
        bpf_ports.unplug_port(ctx.netns, link.index, port.ifname, ctx.ipr)
    else:
        bpf_ports.plug_port(ctx.netns, link.index, portsec.PortRules.of(port, require_addresses, segment),
                             ctx.ipr)


def unplug_port(ctx: Ctx, link: Link | None, ifname: str) -> None:
    """After the vif is detached: its port security goes (a gone device took its program)."""
    if link is not None:
        bpf_ports.unplug_port(ctx.netns, link.index, ifname, ctx.ipr)
    portsec.unplug_port(ifname, ctx.netns)


def counters(ctx: Ctx) -> dict[str, dict[str, int]]:
    """ifname -> reason -> frames dropped, from whichever backend guards each vif."""
    out = portsec.counters(ctx.netns)
    for ifname, per in bpf_ports.counters(ctx.netns, _candidates(ctx), ctx.ipr).items():
        out.setdefault(ifname, {}).update(per)
    return out
