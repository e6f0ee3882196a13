"""The underlay source filter (nftables `inet xen_tvd_underlay`; design item 7).

An encapsulating transport's packets (VXLAN: udp dport = the segments' VXLAN ports) delivered
to this host are dropped unless their source is an enrolled peer (HostState.underlay_peers plus
what the transport adds, every VXLAN remote). Each transport's plugin gives its part
(UplinkPlugin.underlay: its sets and rules); this module puts them into one table.

The chain hooks `input`, before conntrack (priority raw): only packets delivered to a local socket pass there,
which is exactly what a VXLAN socket could decapsulate (unicast to a local address, or a
segment's multicast group), and bridged frames never do, even with br_netfilter handing bridged
IP to the inet hooks; so a VM's own UDP to port 4789 is not judged and the TVDs' bridged
traffic pays nothing for this filter. Installed only when the host has a segment whose transport
has a part (VXLAN) and the planner supplied underlay_peers (None = not computed: no filter).

The peer sets declare a `size` (set_size): on every packet to a local socket the chain looks the
source up, and a sized set of IPv4 addresses is the kernel's fixed hash with a one-word key
(nft_hash_fast), where an unsized one is an rhashtable compared with memcmp (bench/README.md,
"underlay_filter.py"). The table is replaced whole on any change, so a size never has to grow.

Its limit, without an encrypting transport: a host on the underlay that spoofs a peer's source
address still gets in (docs/flow-control-design.md, "underlay").
"""
from __future__ import annotations

import ipaddress

from xen_tvd.desired import model

from . import nftables
from .transports import PLUGINS, UnderlayPart

FAMILY, TABLE = "inet", "xen_tvd_underlay"
T = f"{FAMILY} {TABLE}"
FILTER = nftables.Table(FAMILY, TABLE)


def parts(state: model.HostState) -> list[tuple[str, UnderlayPart]]:
    """(transport title, its part) for every transport with segments here that needs one."""
    out = []
    for p in PLUGINS:
        uplinks = [s.uplink for s in state.segments if isinstance(s.uplink, p.transport.uplink)]
        part = p.underlay(uplinks) if uplinks else None
        if part is not None:
            out.append((p.transport.title, part))
    return out


def wanted(state: model.HostState) -> tuple[set[str], set[str], list[UnderlayPart]] | None:
    """(IPv4 peers, IPv6 peers, the transports' parts) of the filter this state needs, or None."""
    ps = [part for _, part in parts(state)]
    if not ps or state.underlay_peers is None:
        return None
    peers = {ipaddress.ip_address(p) for p in state.underlay_peers}
    for part in ps:
        peers.update(ipaddress.ip_address(r) for r in part.sources)
    return ({str(p) for p in peers if p.version == 4}, {str(p) for p in peers if p.version == 6},
            ps)


def set_size(n: int) -> int:
    """The declared size of a peer set of n: room to spare (a fixed hash's buckets are 4/3 of
    it, 8 bytes each: 32 KB at 2,000 peers), never below 64."""
    return max(64, 2 * n)


def render(v4: set[str], v6: set[str], ps: list[UnderlayPart]) -> str:
    def body(xs):
        elems = f" elements = {{ {', '.join(str(x) for x in sorted(xs))} }};" if xs else ""
        return f" size {set_size(len(xs))};{elems}"
    rules = [r for part in ps for r in part.rules]
    rules[0] += ' comment "@DIGEST@"'
    return (f"  set peers4 {{ type ipv4_addr;{body(v4)} }}\n"
            f"  set peers6 {{ type ipv6_addr;{body(v6)} }}\n"
            + "".join(part.sets for part in ps) +
            "  chain input {\n"
            "    type filter hook input priority raw; policy accept;\n"
            + "".join(f"    {r}\n" for r in rules) +
            "  }\n")


def sync(state: model.HostState, netns: str | None, changed) -> None:
    want = wanted(state)
    if want is None:
        if nftables.drop(netns, [FILTER], f"deleting nftables table {T}"):
            changed(f"deleted nftables table {T} (no segment of a transport that needs it, "
                    "or no peer list)")
        return
    titles = "/".join(t for t, _ in parts(state))
    done = nftables.converge(netns, [(FILTER, render(*want))],
                             f"loading the underlay {titles} filter (nftables table {T})")
    if done:
        changed(f"{done} nftables table {T}: {titles} only from "
                f"{', '.join(sorted(want[0] | want[1])) or 'nobody'}")
