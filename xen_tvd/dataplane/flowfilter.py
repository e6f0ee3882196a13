"""Stateful inter-TVD flow filter of one host (design items 3-5, docs/flow-control-design.md).

Two tables, replaced together in ONE `nft -f` transaction whenever the plan changes (their
text is a pure function of the plan, so a digest in a rule comment makes a rerun a no-op):

`inet xen_tvd_flows` — the pair filter, in the inet forward hook. The design put it in the
bridge family at the vifs, but `ct` there needs nf_conntrack_bridge, which kernels built
without CONFIG_NF_CONNTRACK_BRIDGE (the tier-1 kernel) refuse ("Protocol error"). Bridged
IPv4/IPv6 traverses the inet hooks through br_netfilter (bridge-nf-call-ip{,6}tables=1, set
here), with conntrack, and there `iifname` is the vSwitch, i.e. the TVD. So the identities are:
  vSwitch t (the frame's segment) x address -> TVD (interval maps of every TVD's subnets).
On vSwitch t, a packet from t's subnet to u's subnet is *outbound*: t's sender rules for t->u
(this is where the sender's host sees it, between its VM and its router); a packet from u's
subnet to t's is *inbound*: t's receiver rules for u->t (the receiver's host sees it between
its router or uplink and its VM, whichever host's router carried it). Sender and receiver
hosts thus each enforce their half; a receiver never depends on the sender's host.
  - both ends in t: accept (inside a TVD);
  - ct reply direction: accepted only for pairs with `replies: true` (a closed pair's
    "replies" are new connections in the other direction and judged as such);
  - a pair's map element is accept (open), a jump to its rule chain (controlled) or drop
    (closed; every subnet of every TVD has an element, so nothing falls through);
  - a packet on t with neither end in t but one in some TVD's subnet is forged: dropped;
  - traffic touching no TVD subnet (DHCP from 0.0.0.0, link-local, multicast) stays inside
    the segment: to or from a router leg's MAC it is dropped (unrouted), so the router sees
    only what some pair judged, for IPv4 and IPv6 alike (ND with link-local/multicast
    addresses excepted).
Rules grow with TVDs (two 12-rule chains per routed TVD) and permitted pairs (one chain per
controlled pair and side); subnets are map elements.
Traffic with both ends in the vSwitch's own TVD is not tracked (raw prerouting: `notrack`); o_T
accepts it statelessly, and conntrack on every bridged frame was most of the filter's cost.
Conntrack zones (raw prerouting, per vSwitch): every vSwitch with a router leg shares ONE zone
(ROUTED_ZONE). Each VM's packets are routed by its own host (anycast gateway), so a routed
connection between hosts is asymmetric: a2 (h2) -> c1 (h1) is routed on h2 and reaches h1 on
c's vSwitch, c1's answer is routed on h1 and leaves on a's vSwitch. With a zone per vSwitch,
h1 met that answer on a's vSwitch in a zone that never saw the request and dropped it (ICMP
"invalid", TCP judged as a new c -> a connection); it worked only while ARP had made both
directions use one host's router (below). Routed TVDs' subnets are disjoint (the policy
verifier's subnet-overlap error) and traffic touching no subnet gets the same verdict in both
directions, so sharing the zone merges nothing two TVDs could tell apart. A vSwitch without a
leg keeps a zone of its own (its TVD id), so TVDs reusing addresses never share a connection.

External networks (paper 4.2) are in the plan like TVDs without a vSwitch (TvdSubnets with
external=True): their subnets are map elements of every routed TVD's chains, so a TVD's half
of a flow with an external (sender rules towards it, receiver rules from it) is enforced on the
TVD's vSwitch like any pair, and a closed TVD's packets towards an external are dropped there.
The external's own halves are enforced at its leg, in the router namespace (render_external).

`bridge xen_tvd_gw` — the anycast gateway stays local: ARP requests for a gateway address and
ARP replies from one (and ND solicitations/advertisements for it) never leave through the
VXLAN/VLAN uplink, so every VM resolves its own host's router. The router's own ARP requests
for remote VMs must cross (it delivers answers to them), but with the gateway address as
sender they taught every remote VM that its gateway lives at THIS host's leg MAC (a VM
updates its entry for the sender of a request for its address); on the uplink their sender
address is set to 0.0.0.0, an RFC 5227 probe, which VMs answer without learning anything.
IPv6 has no such probe for a known target: the router's own solicitations with a gateway
source do not cross (forwarded traffic solicits from the leg's link-local address).
"""
from __future__ import annotations

import ipaddress

from xen_tvd.desired import model

from . import nftables, sysctl

FAMILY, TABLE = "inet", "xen_tvd_flows"
GW_FAMILY, GW_TABLE = "bridge", "xen_tvd_gw"
# the digest is read from the forward chain only: listing the whole table as JSON costs seconds
# at 100 TVDs (35,000 rules, 40,000 elements), and a converged rerun must stay cheap
FLOWS = nftables.Table(FAMILY, TABLE, digest_chain="forward")
GW = nftables.Table(GW_FAMILY, GW_TABLE)
# br_netfilter must hand bridged IP to the inet hooks, or the filter would see nothing.
# the shared conntrack zone of routed vSwitches: VLAN id 4095 is reserved, so no TVD id (1..4094)
# and no zone of a TVD without subnets (4096 + n) is ever this
ROUTED_ZONE = 4095
BRNF_SYSCTLS = {"net/bridge/bridge-nf-call-iptables": "1",
                "net/bridge/bridge-nf-call-ip6tables": "1"}


def _rule(r: model.FlowRule) -> str:
    if r.proto == "any":
        return "accept"
    if r.proto in ("tcp", "udp") and r.ports is not None:
        lo, hi = r.ports
        return f"{r.proto} dport {lo if lo == hi else f'{lo}-{hi}'} accept"
    l4 = {"icmpv6": "ipv6-icmp"}.get(r.proto, r.proto)
    return f"meta l4proto {l4} accept"


def _log(reason: str, rate: int) -> str:
    """A rate-limited kernel log line before a drop (HostState.log_drops; 0: none)."""
    return (f'    limit rate {rate}/second counter log prefix "xen-tvd drop {reason}: " level info\n'
            if rate else "")


def _chain(name: str, rules: tuple[model.FlowRule, ...], reason: str, log_drops: int = 0) -> str:
    """A controlled pair's half: its rules, else counted (counter `drop_<reason>_<s>_<d>`)
    and dropped. `name` is s_<s>_<d> or r_<s>_<d>."""
    counter = f"drop_{reason}_{name[2:]}"
    lines = ([f"  counter {counter} {{}}", f"  chain {name} {{"]
             + [f"    {_rule(r)}" for r in rules]
             + [_log(reason, log_drops).rstrip("\n")] * bool(log_drops)
             + [f"    counter name {counter} drop", "  }"])
    return "\n".join(lines) + "\n"


def _drops(name: str, reason: str, by: str, maps: str, log_drops: int) -> str:
    """A chain the verdict maps send a packet to when its pair says drop: the pair's counter
    (from the objref maps `maps`4/6 + `_<tid>`, keyed on the other end's address: `by` is
    saddr or daddr), then drop. `name` ends in _<tid> like the maps."""
    tid = name.rsplit("_", 1)[1]
    return (f"  chain {name} {{\n"
            f"    counter name ip {by} map @{maps}4_{tid}\n"
            f"    counter name ip6 {by} map @{maps}6_{tid}\n"
            + _log(reason, log_drops) + "    drop\n  }\n")


def _set(name: str, typ: str, els: list[str], interval: bool = False) -> str:
    flags = " flags interval;" if interval else ""
    body = f" elements = {{ {', '.join(els)} }};" if els else ""
    return f"  {'map' if ':' in typ else 'set'} {name} {{ type {typ};{flags}{body} }}\n"


def render(fp: model.FlowPlan, bridges: dict[str, int], log_drops: int = 0,
           legs: tuple[str, ...] = ()) -> str:
    """The `inet xen_tvd_flows` table body. `bridges`: every TVD vSwitch here -> its
    conntrack zone; `legs`: the MACs of this host's router legs.

    What reaches the router is only what the policy routes: a packet to or from a leg MAC that
    no pair's map element judged (an address of no TVD or external, for either family) goes to
    unrouted_T, counted `drop_unrouted_T_T`, and dropped. Without this, traffic "touching no
    TVD subnet" was accepted and delivered to the router, which answered or forwarded it as
    its routes allowed (IPv6 in particular: empty sets matched nothing). Link-local and
    multicast IPv6 (ND, which the router needs) and the unspecified source stay exempt.

    Per routed TVD T two chains, o_T (original direction) and p_T (replies), entered by one
    hash lookup on the vSwitch name; each judges with single-field interval maps of subnets
    (a few hundred elements at most), not one concatenated vSwitch x subnet map: the latter
    (pipapo, 10^4 elements at 100 TVDs) doubled the filter's per-packet cost.
    """
    routed = [t for t in fp.tvds if t.bridge]
    pairs = {(p.src, p.dst): p for p in fp.pairs}
    nets = {t.tvd: [ipaddress.ip_network(n) for n in t.subnets] for t in fp.tvds}
    parts: list[str] = []
    for v in (4, 6):
        addr_t = "ipv4_addr" if v == 4 else "ipv6_addr"
        parts.append(_set(f"all{v}", addr_t,
                          [str(n) for t in fp.tvds for n in nets[t.tvd] if n.version == v], True))
    orig, reply, chains = [], [], []
    external = {t.tvd for t in fp.tvds if t.external}
    for p in fp.pairs:
        if not p.open:   # an external's half is judged at its leg (render_external), not here
            if p.src not in external:
                chains.append(_chain(f"s_{p.src_id}_{p.dst_id}", p.sender, "sender", log_drops))
            if p.dst not in external:
                chains.append(_chain(f"r_{p.src_id}_{p.dst_id}", p.receiver, "receiver", log_drops))
    ids = {t.tvd: t.tvd_id for t in fp.tvds}
    counters: set[str] = set()
    for t in routed:
        tid = t.tvd_id
        orig.append(f'"{t.bridge}" : jump o_{tid}')
        reply.append(f'"{t.bridge}" : goto p_{tid}')   # never falls back into o_T
        for v in (4, 6):
            addr_t = "ipv4_addr" if v == 4 else "ipv6_addr"
            own = [str(n) for n in nets[t.tvd] if n.version == v]
            send, recv, rsend, rrecv = ([f"{n} : accept" for n in own] for _ in range(4))
            # which pair's drop counter a dropped packet counts in, by its other end's subnet
            c_out, c_in, r_out, r_in = [], [], [], []
            for u in fp.tvds:
                if u.tvd == t.tvd:
                    continue
                out_p, in_p = pairs.get((t.tvd, u.tvd)), pairs.get((u.tvd, t.tvd))
                for n in (str(n) for n in nets[u.tvd] if n.version == v):
                    send.append(f"{n} : " + (f"goto closed_out_{tid}" if out_p is None
                                             else "accept" if out_p.open
                                             else f"jump s_{out_p.src_id}_{out_p.dst_id}"))
                    recv.append(f"{n} : " + (f"goto closed_in_{tid}" if in_p is None
                                             else "accept" if in_p.open
                                             else f"jump r_{in_p.src_id}_{in_p.dst_id}"))
                    # t answering u's connection (u -> t) / u answering t's (t -> u)
                    rsend.append(f"{n} : " + ("accept" if in_p and in_p.replies
                                              else f"goto reply_out_{tid}"))
                    rrecv.append(f"{n} : " + ("accept" if out_p and out_p.replies
                                              else f"goto reply_in_{tid}"))
                    for lst, reason, a, b, needed in (
                            (c_out, "closed", tid, ids[u.tvd], out_p is None),
                            (c_in, "closed", ids[u.tvd], tid, in_p is None),
                            (r_out, "reply", tid, ids[u.tvd], not (in_p and in_p.replies)),
                            (r_in, "reply", ids[u.tvd], tid, not (out_p and out_p.replies))):
                        if needed:
                            lst.append(f'{n} : "drop_{reason}_{a}_{b}"')
                            counters.add(f"drop_{reason}_{a}_{b}")
            parts.append(_set(f"own{v}_{tid}", addr_t, own, True)
                         + _set(f"send{v}_{tid}", f"{addr_t} : verdict", send, True)
                         + _set(f"recv{v}_{tid}", f"{addr_t} : verdict", recv, True)
                         + _set(f"rsend{v}_{tid}", f"{addr_t} : verdict", rsend, True)
                         + _set(f"rrecv{v}_{tid}", f"{addr_t} : verdict", rrecv, True)
                         + _set(f"cout{v}_{tid}", f"{addr_t} : counter", c_out, True)
                         + _set(f"cin{v}_{tid}", f"{addr_t} : counter", c_in, True)
                         + _set(f"rout{v}_{tid}", f"{addr_t} : counter", r_out, True)
                         + _set(f"rin{v}_{tid}", f"{addr_t} : counter", r_in, True))
        counters.add(f"drop_forged_{tid}_{tid}")
        chains += [_drops(f"closed_out_{tid}", "closed", "daddr", "cout", log_drops),
                   _drops(f"closed_in_{tid}", "closed", "saddr", "cin", log_drops),
                   _drops(f"reply_out_{tid}", "reply", "daddr", "rout", log_drops),
                   _drops(f"reply_in_{tid}", "reply", "saddr", "rin", log_drops)]

    # which IP packets to/from a leg are not neighbour discovery (ND must reach the router)
    routable = {4: " meta nfproto ipv4",
                6: " ip6 daddr != { fe80::/10, ff00::/8 } ip6 saddr != { ::, fe80::/10 }"}

    def judge(name: str, tid: int, send: str, recv: str) -> str:
        lines = [f"  chain {name}_{tid} {{"]
        for v, ip in ((4, "ip"), (6, "ip6")):
            lines += [f"    {ip} saddr @own{v}_{tid} {ip} daddr vmap @{send}{v}_{tid}",
                      # from T to an address of nobody, via the router: not routed by policy
                      *([f"    {ip} saddr @own{v}_{tid} ether daddr @legs{routable[v]}"
                         f" goto unrouted_{tid}"] if legs else []),
                      f"    {ip} saddr @own{v}_{tid} accept",
                      f"    {ip} daddr @own{v}_{tid} {ip} saddr vmap @{recv}{v}_{tid}",
                      *([f"    {ip} daddr @own{v}_{tid} ether saddr @legs{routable[v]}"
                         f" goto unrouted_{tid}"] if legs else []),
                      f"    {ip} daddr @own{v}_{tid} accept",
                      # neither end in T, one a TVD's: forged
                      f"    {ip} saddr @all{v} counter name drop_forged_{tid}_{tid} drop",
                      f"    {ip} daddr @all{v} counter name drop_forged_{tid}_{tid} drop"]
        if legs:   # neither end anybody's: stays in the segment, never to or from the router
            lines += [f"    ether {d} @legs{routable[v]} goto unrouted_{tid}"
                      for v in (4, 6) for d in ("daddr", "saddr")]
        return "\n".join(lines + ["  }"]) + "\n"

    def unrouted(tid: int) -> str:
        counters.add(f"drop_unrouted_{tid}_{tid}")
        return (f"  chain unrouted_{tid} {{\n" + _log("unrouted", log_drops)
                + f"    counter name drop_unrouted_{tid}_{tid} drop\n  }}\n")

    zones = [f'"{b}" : {z}' for b, z in sorted(bridges.items())]
    intra = [f'"{t.bridge}" : jump n_{t.tvd_id}' for t in routed]

    def untracked(tid: int) -> str:
        # both ends in the vSwitch's own TVD: accepted by o_T whatever conntrack says, so it
        # is not tracked (conntrack on every bridged frame of a routed TVD cost most of the
        # filter's per-packet price, bench/paper_section7.py tvd-same-routed). `accept` ends
        # the hook here: a zone set after notrack would attach a conntrack template again.
        return (f"  chain n_{tid} {{\n"
                + "".join(f"    {ip} saddr @own{v}_{tid} {ip} daddr @own{v}_{tid} notrack accept\n"
                          for v, ip in ((4, "ip"), (6, "ip6")))
                + "  }\n")

    judged = "".join(judge("o", t.tvd_id, "send", "recv") + judge("p", t.tvd_id, "rsend", "rrecv")
                     + untracked(t.tvd_id) + (unrouted(t.tvd_id) if legs else "")
                     for t in routed)
    return ("".join(parts)
            + _set("legs", "ether_addr", sorted(set(legs)))
            + "".join(f"  counter {c} {{}}\n" for c in sorted(counters))
            + _set("orig", "ifname : verdict", orig)
            + _set("reply", "ifname : verdict", reply)
            + _set("intra", "ifname : verdict", intra)
            + (f"  map zone {{ typeof iifname : ct zone;"
               f"{' elements = { ' + ', '.join(zones) + ' };' if zones else ''} }}\n")
            + "".join(chains)
            + judged
            + "  chain zones {\n"
              "    type filter hook prerouting priority raw; policy accept;\n"
              "    iifname vmap @intra\n"
              "    ct zone set iifname map @zone\n"
              "  }\n"
              "  chain forward {\n"
              "    type filter hook forward priority filter; policy accept;\n"
              '    ct direction reply iifname vmap @reply comment "@DIGEST@"\n'
              "    iifname vmap @orig\n"
              "  }\n")


def render_external(exts: tuple[model.ExternalLeg, ...],
                    fp: model.FlowPlan | None) -> tuple[str, str, str]:
    """(sets, chains, forward-rules) of the router table for its external legs.

    Per external E with id x, two chains entered from the router's forward hook:
      xi_x (oifname = E's leg, towards E): replies of E -> T connections pass iff that flow
        has `replies: true`; a new packet from TVD T passes as its pair T -> E says: accept
        (open), E's receiver rules (controlled: E's integrity), or drop (no pair: closed);
      xo_x (iifname = E's leg, from E): a source outside E's subnets is forged and dropped;
        replies of T -> E connections pass iff `replies: true`; a new packet to T passes as
        E -> T says: accept, E's sender rules (E's confidentiality), or drop.
    The TVD's own halves are enforced at its vSwitch (render). Only permitted pairs have
    elements, so everything else, the router's other legs included, falls through to drop.
    """
    if not exts or fp is None:
        return "", "", ""
    pairs = {(p.src, p.dst): p for p in fp.pairs}
    tvds = [t for t in fp.tvds if not t.external]
    sets, chains, jumps = [], [], []
    for e in exts:
        x = e.ext_id
        nets = [ipaddress.ip_network(n) for n in e.subnets]
        for v in (4, 6):
            addr_t = "ipv4_addr" if v == 4 else "ipv6_addr"
            into, rin, out, rout = [], [], [], []
            for t in tvds:
                to_e, from_e = pairs.get((t.tvd, e.external)), pairs.get((e.external, t.tvd))
                for n in (str(n) for n in map(ipaddress.ip_network, t.subnets) if n.version == v):
                    if to_e is not None:
                        into.append(f"{n} : " + ("accept" if to_e.open
                                                 else f"jump r_{to_e.src_id}_{to_e.dst_id}"))
                        if to_e.replies:
                            rout.append(f"{n} : accept")
                    if from_e is not None:
                        out.append(f"{n} : " + ("accept" if from_e.open
                                                else f"jump s_{from_e.src_id}_{from_e.dst_id}"))
                        if from_e.replies:
                            rin.append(f"{n} : accept")
            sets += [_set(f"xnet{v}_{x}", addr_t, [str(n) for n in nets if n.version == v], True),
                     _set(f"xin{v}_{x}", f"{addr_t} : verdict", into, True),
                     _set(f"xrin{v}_{x}", f"{addr_t} : verdict", rin, True),
                     _set(f"xout{v}_{x}", f"{addr_t} : verdict", out, True),
                     _set(f"xrout{v}_{x}", f"{addr_t} : verdict", rout, True)]
        for p in fp.pairs:
            if not p.open and p.dst == e.external:
                chains.append(_chain(f"r_{p.src_id}_{p.dst_id}", p.receiver, "receiver"))
            if not p.open and p.src == e.external:
                chains.append(_chain(f"s_{p.src_id}_{p.dst_id}", p.sender, "sender"))
        li, lo = [f"  chain xi_{x} {{"], [f"  chain xo_{x} {{"]
        for v, ip in ((4, "ip"), (6, "ip6")):
            li += [f"    {ip} daddr != @xnet{v}_{x} drop",
                   f"    ct direction reply {ip} saddr vmap @xrin{v}_{x}",
                   f"    ct direction original {ip} saddr vmap @xin{v}_{x}"]
            lo += [f"    {ip} saddr != @xnet{v}_{x} drop",
                   f"    ct direction reply {ip} daddr vmap @xrout{v}_{x}",
                   f"    ct direction original {ip} daddr vmap @xout{v}_{x}"]
        chains.append("\n".join(li + ["    drop", "  }"]) + "\n")
        chains.append("\n".join(lo + ["    drop", "  }"]) + "\n")
        jumps.append(f'    oifname "{e.ifname}" goto xi_{x}\n'
                     f'    iifname "{e.ifname}" goto xo_{x}\n')
    return "".join(sets), "".join(chains), "".join(jumps)


def render_gw(legs: tuple[model.RouterLeg, ...], uplinks: list[str]) -> str:
    gw4, gw6 = [], []
    for leg in legs:
        for g in leg.gateways:
            ip = ipaddress.ip_interface(g).ip
            (gw4 if ip.version == 4 else gw6).append(ip)
    gw6_raw = [f"0x{int(ip):032x}" for ip in sorted(set(gw6))]
    return (_set("uplinks", "ifname", [f'"{u}"' for u in sorted(set(uplinks))])
            + _set("gw4", "ipv4_addr", [str(i) for i in sorted(set(gw4))])
            + _set("gw6src", "ipv6_addr", [str(i) for i in sorted(set(gw6))])
            + (f"  set gw6 {{ typeof @th,64,128;"
               f"{' elements = { ' + ', '.join(gw6_raw) + ' };' if gw6_raw else ''} }}\n")
            + "  chain postrouting {\n"
              "    type filter hook postrouting priority filter; policy accept;\n"
              # IPv4 frames carry no ARP or ND: gone without an interface-name lookup
              '    meta protocol ip accept comment "@DIGEST@"\n'
              "    oifname != @uplinks accept\n"
              "    arp operation request arp daddr ip @gw4 drop\n"
              "    arp operation request arp saddr ip @gw4 arp saddr ip set 0.0.0.0\n"
              "    arp operation reply arp saddr ip @gw4 drop\n"
              "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,128 @gw6 drop\n"
              # the router's own solicitations from a gateway address (pinging a remote VM
              # from it) would move that VM's gateway to this host, as its ARP requests did;
              # forwarded traffic solicits from the leg's link-local address and still crosses
              "    icmpv6 type nd-neighbor-solicit ip6 saddr @gw6src drop\n"
              "  }\n")


def tables(state: model.HostState, uplinks: list[str]) -> list[tuple[nftables.Table, str]]:
    """Both tables' bodies: loaded as one transaction under one joint digest."""
    routed = {t.tvd for t in state.flows.tvds if t.bridge}
    bridges = {s.bridge: ROUTED_ZONE if s.tvd in routed else _tvd_id(state, s.tvd)
               for s in state.segments}
    legs = tuple(l.mac for l in state.router.legs) if state.router else ()
    flows = render(state.flows, bridges, state.log_drops, legs)
    gw = render_gw(state.router.legs if state.router else (), uplinks)
    return [(FLOWS, flows), (GW, gw)]


def script(state: model.HostState, uplinks: list[str]) -> tuple[str, str]:
    """Both tables as one nft input (one transaction) and their joint digest."""
    return nftables.render(tables(state, uplinks))


def _tvd_id(state: model.HostState, tvd: str) -> int:
    for t in state.flows.tvds:
        if t.tvd == tvd:
            return t.tvd_id
    # a TVD without subnets still gets a zone of its own: derive a stable one from its bridge
    # position above the VLAN id range, so it never shares a zone with a TVD id (1..4094)
    return 4096 + sorted(s.tvd for s in state.segments).index(tvd)


def sync(state: model.HostState, netns: str | None, uplinks: list[str], changed) -> None:
    """Install or replace both tables when the plan has flows (before any router leg exists)."""
    if state.flows is None:
        return
    for k in sysctl.ensure(netns, BRNF_SYSCTLS, "flow filter (br_netfilter must pass bridged IP "
                                                "to nftables; load it: modprobe br_netfilter)"):
        changed(f"set {k}=1")
    done = nftables.converge(netns, tables(state, uplinks), "loading the inter-TVD flow filter")
    if done:
        changed(f"{done} nftables tables {FAMILY} {TABLE} "
                f"and {GW_FAMILY} {GW_TABLE}: {len(state.flows.pairs)} permitted pair(s)")


def drops(netns: str | None) -> dict[tuple[str, int, int], int]:
    """(reason, source TVD id, destination TVD id) -> packets the flow filter dropped, from its
    named counters (cheap to list: no rules). Reasons: closed (no permitted pair), reply (the
    pair's replies are not allowed), sender / receiver (a controlled pair's half had no rule
    for it), forged (on TVD t's vSwitch, neither end in t but one in another TVD: t, t),
    unrouted (on t's vSwitch, to or from the router with an address no TVD or external has).
    Counts start again when the plan changes (the table is replaced)."""
    out = {}
    for o in nftables.list_json(netns, "counters", "table", FAMILY, TABLE) or ():
        c = o.get("counter")
        if c and c["name"].startswith("drop_"):
            reason, src, dst = c["name"][5:].rsplit("_", 2)
            out[(reason, int(src), int(dst))] = c["packets"]
    return out


def remove(netns: str | None, changed) -> None:
    """Delete both tables (after the router legs are gone: no path left to filter)."""
    if nftables.drop(netns, [FLOWS, GW], "deleting the inter-TVD flow filter"):
        changed("deleted the inter-TVD flow filter (no routed TVD here)")
