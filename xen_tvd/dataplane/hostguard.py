"""A TVD vSwitch never hands a frame to Dom0's own stack (nftables `bridge xen_tvd_host`).

A Linux bridge passes up to the host every frame addressed to the bridge's MAC and a copy of
every broadcast and multicast: a VM that sent IP to its vSwitch's MAC with a Dom0 address
(underlay, management) as destination reached Dom0's ICMP, UDP and TCP (issue #16). Every port
of a TVD vSwitch (vifs, uplinks, router legs) is in common.PORT_GROUP; this table's input
chain, the bridge's hook for frames delivered to the host, drops every frame that entered
through such a port, counted. Only the router namespace answers VMs, through its leg, as the
flow filter allows; nothing on a TVD vSwitch needs Dom0. (By device group rather than by bridge
name: `meta ibrname` needs nft_meta_bridge, which the tier-1 kernel lacks.)

Together with common.make_port (no IPv6 address generation on TVD ports and bridges, so Dom0
sends nothing of its own into a TVD either). Present while the host has segments.
"""
from __future__ import annotations

from xen_tvd.desired import model

from . import nftables
from .common import PORT_GROUP

FAMILY, TABLE = "bridge", "xen_tvd_host"
T = f"{FAMILY} {TABLE}"
GUARD = nftables.Table(FAMILY, TABLE)


def body(log_drops: int = 0) -> str:
    """The table body; with a rate-limited log line per drop if log_drops."""
    log = (f'    meta iifgroup {PORT_GROUP} limit rate {log_drops}/second counter log prefix '
           f'"xen-tvd drop dom0-guard: " level info\n' if log_drops else "")
    return ("  chain input {\n"
            "    type filter hook input priority filter; policy accept;\n"
            + log + f'    meta iifgroup {PORT_GROUP} counter drop comment "@DIGEST@"\n'
            "  }\n")


def sync(state: model.HostState, netns: str | None, changed) -> None:
    if not state.segments:
        if nftables.drop(netns, [GUARD], f"deleting nftables table {T}"):
            changed(f"deleted nftables table {T} (no segments)")
        return
    done = nftables.converge(netns, [(GUARD, body(state.log_drops))],
                             f"loading the Dom0 guard (nftables table {T})")
    if done:
        changed(f"{done} nftables table {T}: no frame from a TVD port reaches Dom0")


def dropped(netns: str | None) -> int:
    """Frames from TVD ports that the guard kept from Dom0's stack."""
    for o in nftables.list_json(netns, "table", FAMILY, TABLE) or ():
        for e in o.get("rule", {}).get("expr", ()):
            if "counter" in e:
                return e["counter"]["packets"]
    return 0
