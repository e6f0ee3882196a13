"""The host's router namespace and its legs ("cards", paper 4.4): routed inter-TVD flows.

    <router ns>:  lo, and per leg `leg-<vlan>` = the TVD's gateway addresses, a per-host MAC
    host ns:      `tvr-<vlan>`, the other end of that veth, a port of the TVD's vSwitch

The router only routes between its legs' connected subnets (no default route, nothing else):
a TVD without a leg cannot be reached or reach anyone through it. It does no flow filtering of
its own (that is dataplane/flowfilter.py, at the vSwitches, stateful, so that asymmetric paths
through different hosts' routers are fine); it does drop what no honest VM can send: a source
that is not routed back through the leg it arrived on (strict reverse path, IPv4 and IPv6), so
a VM claiming another TVD's address gets nowhere even where port security is bypassed.

Name: Router.netns ("tvd-rtr-<host>") in Dom0; "<host netns>-rtr" when apply() runs for a host
that is itself a named namespace (the lab, tests), so hosts sharing a machine never share one.
Idempotent: everything is compared before it is written; a router with no legs is deleted with
its namespace (its veth ends go with it; the host-side ends are owned devices pruned by apply).

External legs (gateways to non-virtualized networks, paper 4.2): `ext-<name>`, a macvlan
(private mode) on the Dom0 NIC the policy names, created straight into the router namespace.
Not the NIC itself: on a real Dom0 that NIC also carries Dom0's own traffic, and a macvlan
child neither sees Dom0's addresses on it nor lets Dom0 reach the router through it. It holds
the host's address on the external network; the external's subnets outside that address's
network are routed via the policy's `gateway`. The external must route the TVD subnets back
to that address (there is no NAT: the flow filter identifies traffic by address). What may
cross the leg is judged here, statefully (this namespace's conntrack): the external's halves
of its flows (receiver rules towards it, sender rules from it) and replies per `replies:`;
the TVDs' halves stay at their vSwitches (flowfilter.py).
"""
from __future__ import annotations

import ipaddress
import os

from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from xen_tvd.desired import model, names
from xen_tvd.desired.names import IFNAME_MAX, LEG_PREFIX, router_netns
from xen_tvd.desired.patterns import IFNAME_RE, MAC_RE

from . import common, flowfilter, nftables, sysctl
from .common import Ctx
from .netlink import Link, Links, describe, doing, open_ipr
from .report import DataplaneError

KIND = "veth"
RTR_FAMILY, RTR_TABLE = "inet", "xen_tvd_rtr"
RTR = nftables.Table(RTR_FAMILY, RTR_TABLE)
IFA_F_NODAD = 0x02

# Router namespace sysctls. rp_filter=1: strict reverse path (IPv4; IPv6 by the nft rule).
# accept_ra=0: the router takes no configuration from the VMs it serves.
ROUTER_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/ipv4/conf/all/rp_filter": "1",
    "net/ipv4/conf/default/rp_filter": "1",
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/default/send_redirects": "0",
    # legs carry IPv6 gateways of dual-stack TVDs: a namespace made with IPv6 off (copied
    # devconf, a lab's quiet namespaces) refuses them with EACCES
    "net/ipv6/conf/all/disable_ipv6": "0",
    "net/ipv6/conf/default/disable_ipv6": "0",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv6/conf/all/accept_ra": "0",
    "net/ipv6/conf/default/accept_ra": "0",
    # no DAD on the legs: while a new leg's link-local address is tentative the router has no
    # source for the solicitations of forwarded packets and sends none (the first routed IPv6
    # packets to a remote VM were lost); the gateway is anycast by design, the MAC per host
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    # answer ARP only for the address of the receiving leg: an external network must not
    # learn the TVDs' gateway addresses (the router is reachable there by its leg address)
    "net/ipv4/conf/all/arp_ignore": "1",
}


def ns_name(state: model.HostState, netns: str | None) -> str:
    if netns or not state.router:
        return router_netns(state.host, netns)
    return state.router.netns


def alias(leg: model.RouterLeg) -> str:
    return f"{names.OWNER_ALIAS_PREFIX}router-leg={leg.tvd}"


def ext_alias(ext: model.ExternalLeg) -> str:
    # the NIC is in the alias so that a plan moving the external to another NIC rebuilds it
    return f"{names.OWNER_ALIAS_PREFIX}external={ext.external} nic={ext.nic}"


def _validate_external(ext: model.ExternalLeg, seen: set[str]) -> None:
    if not IFNAME_RE.match(ext.ifname) or ext.ifname == "lo" or ext.ifname in seen:
        raise DataplaneError(f"external leg {ext.ifname!r}: not a valid, unique interface name")
    seen.add(ext.ifname)
    if not IFNAME_RE.match(ext.nic):
        raise DataplaneError(f"external leg {ext.ifname}: NIC {ext.nic!r} is not an interface name")
    if not MAC_RE.match(ext.mac) or int(ext.mac[:2], 16) & 1:
        raise DataplaneError(f"external leg {ext.ifname}: MAC {ext.mac!r} is not a unicast MAC")
    try:
        net = ipaddress.ip_interface(ext.address).network
        gw = ipaddress.ip_address(ext.gateway) if ext.gateway else None
        subnets = [ipaddress.ip_network(n) for n in ext.subnets]
    except ValueError as e:
        raise DataplaneError(f"external leg {ext.ifname}: {e}") from None
    far = [n for n in subnets if not (n.version == net.version and n.subnet_of(net))]
    if far and gw is None:
        raise DataplaneError(f"external {ext.external}: subnets {', '.join(map(str, far))} lie "
                             f"outside {net} and no gateway is given to reach them")


def validate(state: model.HostState) -> None:
    """Raise DataplaneError (before any write) for a router plan that cannot be realised."""
    r = state.router
    if r is None:
        return
    if not r.netns or "/" in r.netns or r.netns in (".", ".."):
        raise DataplaneError(f"router namespace name {r.netns!r} is not a valid name")
    if r.legs and state.flows is None:
        # fail closed: legs without the flow filter would route every pair as if open
        raise DataplaneError("router legs planned without a flow filter plan (HostState.flows)")
    seen: set[str] = set()
    for leg in r.legs:
        if state.segment(leg.tvd) is None or state.segment(leg.tvd).bridge != leg.bridge:
            raise DataplaneError(f"router leg for TVD {leg.tvd}: no segment with bridge "
                                 f"{leg.bridge} on this host")
        if not (leg.port.startswith(LEG_PREFIX) and len(leg.port) <= IFNAME_MAX):
            raise DataplaneError(f"router leg {leg.port!r}: must be '{LEG_PREFIX}<x>', at most "
                                 f"{IFNAME_MAX} characters")
        if not IFNAME_RE.match(leg.peer) or leg.peer == "lo":
            raise DataplaneError(f"router leg peer {leg.peer!r}: not a valid interface name")
        if not MAC_RE.match(leg.mac) or int(leg.mac[:2], 16) & 1:
            raise DataplaneError(f"router leg {leg.port}: MAC {leg.mac!r} is not a unicast MAC")
        for g in leg.gateways:
            try:
                ipaddress.ip_interface(g)
            except ValueError:
                raise DataplaneError(f"router leg {leg.port}: gateway {g!r} is not an "
                                     "address with prefix") from None
        for n in (leg.port, leg.peer):
            if n in seen:
                raise DataplaneError(f"router leg name {n} used twice")
            seen.add(n)
    for ext in r.externals:
        _validate_external(ext, seen)


def desired_devices(state: model.HostState) -> dict[str, tuple[str, model.RouterLeg]]:
    """Host-side leg ends apply() owns (so _prune keeps them, and deletes stale ones)."""
    return {leg.port: (KIND, leg) for leg in (state.router.legs if state.router else ())}


# ---- the router namespace -------------------------------------------------------------------

def _ensure_ns(name: str, ctx: Ctx) -> None:
    if os.path.exists(os.path.join(nftables.NETNS_DIR, name)):
        return
    try:
        pr_netns.create(name)
    except OSError as e:
        if e.errno != 17:   # EEXIST: created meanwhile (a concurrent apply of this host)
            raise DataplaneError(f"creating router namespace {name} failed: {e}") from None
    ctx.changed(f"created router namespace {name}")


def remove(state: model.HostState, netns: str | None, changed) -> None:
    name = ns_name(state, netns)
    if os.path.exists(os.path.join(nftables.NETNS_DIR, name)):
        try:
            pr_netns.remove(name)
        except OSError as e:
            raise DataplaneError(f"deleting router namespace {name} failed: {e}") from None
        changed(f"deleted router namespace {name} (no TVD here has a card)")


def sync(ctx: Ctx, state: model.HostState, bridges: dict[str, Link]) -> None:
    """Router namespace, sysctls, legs, addresses and its reverse-path table match the plan."""
    r = state.router
    if r is None or not r.legs:
        remove(state, ctx.netns, ctx.changed)
        return
    name = ns_name(state, ctx.netns)
    _ensure_ns(name, ctx)
    for k in sysctl.ensure(name, ROUTER_SYSCTLS, "router"):
        ctx.changed(f"router {name}: set {k}")
    with open_ipr(name) as ripr:
        rctx = Ctx(ripr, Links(ripr), ctx.report, name)
        lo = rctx.links.get("lo")
        if lo is not None:
            common.set_up(rctx, lo)
        # one address dump for all legs: pyroute2's get_addr(index=) dumps everything and
        # filters in Python, which made a converged rerun take 13 s at 100 legs
        with doing(f"reading addresses in router namespace {name}"):
            addrs: dict[int, list] = {}
            for a in ripr.get_addr():
                addrs.setdefault(a["index"], []).append(a)
        for leg in r.legs:
            _leg(ctx, rctx, name, leg, bridges[leg.tvd], state.segment(leg.tvd).mtu, addrs)
        present = {ext.ifname for ext in r.externals if _external(ctx, rctx, name, ext, addrs)}
        _external_routes(rctx, [e for e in r.externals if e.ifname in present])
        wanted = {leg.peer for leg in r.legs} | present | {"lo"}
        for link in list(rctx.links.by_name.values()):
            if _kernel_fallback(link):
                continue
            if link.name not in wanted:   # the namespace is ours alone: nothing else belongs
                with doing(f"deleting stray {link.name} in router namespace {name}"):
                    ripr.link("del", index=link.index)
                ctx.changed(f"router {name}: deleted stray interface {link.name}")
    _rp_table(name, r, state.flows, ctx.changed)


# Fallback tunnel devices the kernel puts into every new namespace while a tunnel module is
# loaded (net.core.fb_tunnels_only_for_init_net=0, the default): seen on Debian's 6.1 with
# ip_gre loaded (tier 2). Deleting one is a silent no-op (ip_tunnel_dellink skips it), so
# "deleting the stray" never converged; they are created down and no route uses them.
KERNEL_FALLBACK = {"tunl0": "ipip", "gre0": "gre", "gretap0": "gretap", "erspan0": "erspan",
                   "ip_vti0": "vti", "ip6_vti0": "vti6", "sit0": "sit", "ip6tnl0": "ip6tnl",
                   "ip6gre0": "ip6gre"}


def _kernel_fallback(link: Link) -> bool:
    return KERNEL_FALLBACK.get(link.name) == link.kind


def _paired(port: Link | None, peer: Link | None) -> bool:
    return (port is not None and peer is not None and port.kind == KIND and peer.kind == KIND
            and port.parent == peer.index and peer.parent == port.index)


def _leg(ctx: Ctx, rctx: Ctx, name: str, leg: model.RouterLeg, br: Link, mtu: int,
         addrs: dict[int, list]) -> None:
    port, peer = ctx.links.get(leg.port), rctx.links.get(leg.peer)
    if not _paired(port, peer):
        addrs = {}   # a new peer has no addresses (and may reuse a deleted link's index)
        # a half pair (crash between steps) or a same-named device of another kind: rebuild
        if port is not None:
            common.delete(ctx, port, "router leg is not paired with the router namespace")
        if peer is not None:
            with doing(f"deleting unpaired {leg.peer} in router namespace {name}"):
                rctx.ipr.link("del", index=peer.index)
            rctx.links.forget(leg.peer)
        with doing(f"creating router leg {leg.port} <-> {name}/{leg.peer}"):
            ctx.ipr.link("add", ifname=leg.port, kind=KIND,
                         peer={"ifname": leg.peer, "net_ns_fd": name})
        ctx.changed(f"created router leg {leg.port} for TVD {leg.tvd}")
        port, peer = ctx.require(leg.port), rctx.require(leg.peer)
    # router side first: MAC and addresses are in place before the leg joins the vSwitch
    _mac(rctx, peer, leg.mac)
    peer = common.set_mtu(rctx, peer, mtu)
    _addresses(rctx, peer, leg.gateways, addrs.get(peer.index, []))
    common.set_up(rctx, peer)
    port = common.set_alias(ctx, port, alias(leg))
    port = common.set_mtu(ctx, port, mtu)
    port = common.make_port(ctx, port)
    port = common.set_master(ctx, port, br)
    common.set_up(ctx, port)


def _external(ctx: Ctx, rctx: Ctx, name: str, ext: model.ExternalLeg,
              addrs: dict[int, list]) -> bool:
    """The external leg matches the plan; False (with a warning) when its NIC is missing, in
    which case the leg is left out: no leg, no path to the external (fail closed)."""
    nic = ctx.links.get(ext.nic)
    cur = rctx.links.get(ext.ifname)
    if nic is None:
        ctx.report.warnings.append(f"external {ext.external}: NIC {ext.nic} not found in "
                                   f"{ctx.where}; no leg to it in router {name}")
        return False
    if cur is not None and (cur.kind != "macvlan" or cur.alias != ext_alias(ext)):
        # another kind, or a leg on another NIC: rebuilt (the old one must not keep a path)
        with doing(f"deleting {ext.ifname} in router namespace {name}"):
            rctx.ipr.link("del", index=cur.index)
        rctx.links.forget(ext.ifname)
        rctx.changed(f"router {name}: deleted external leg {ext.ifname} (not as planned)")
        cur = None
    if cur is None:
        addrs = {}
        with doing(f"creating external leg {name}/{ext.ifname} on {ext.nic}"):
            ctx.ipr.link("add", ifname=ext.ifname, kind="macvlan", link=nic.index,
                         macvlan_mode="private", address=ext.mac,
                         net_ns_fd=os.path.join(nftables.NETNS_DIR, name))
        ctx.changed(f"created external leg {ext.ifname} on {ext.nic} for {ext.external}")
        cur = rctx.require(ext.ifname)
    cur = common.set_alias(rctx, cur, ext_alias(ext))
    _mac(rctx, cur, ext.mac)
    _addresses(rctx, cur, (ext.address,), addrs.get(cur.index, []))
    common.set_up(rctx, cur)
    return True


def _external_routes(rctx: Ctx, exts: list[model.ExternalLeg]) -> None:
    """Static routes for external subnets beyond the leg's own network, via its gateway; any
    other gateway route in the namespace goes (the router has no default route by design)."""
    want: dict[str, tuple[str, int]] = {}
    for ext in exts:
        net = ipaddress.ip_interface(ext.address).network
        idx = rctx.links.get(ext.ifname).index
        for n in map(ipaddress.ip_network, ext.subnets):
            if not (n.version == net.version and n.subnet_of(net)):
                want[str(n)] = (str(ext.gateway), idx)
    have: dict[str, tuple[str, int]] = {}
    for fam in (2, 10):
        with doing(f"reading routes in {rctx.where}"):
            for rt in rctx.ipr.get_routes(family=fam, table=254):
                gw = rt.get_attr("RTA_GATEWAY")
                if gw is None:
                    continue   # connected and kernel routes are the legs' own
                dst = f"{rt.get_attr('RTA_DST') or ('0.0.0.0' if fam == 2 else '::')}/{rt['dst_len']}"
                have[dst] = (gw, rt.get_attr("RTA_OIF"))
                if want.get(dst) != have[dst]:
                    with doing(f"deleting route {dst} via {gw} in {rctx.where}"):
                        rctx.ipr.route("del", dst=dst, gateway=gw, table=254)
                    rctx.changed(f"router: deleted route {dst} via {gw}")
    for dst, (gw, idx) in sorted(want.items()):
        if have.get(dst) != (gw, idx):
            with doing(f"adding route {dst} via {gw} in {rctx.where}"):
                rctx.ipr.route("replace", dst=dst, gateway=gw, oif=idx, table=254)
            rctx.changed(f"router: route {dst} via {gw}")


def _mac(rctx: Ctx, link: Link, mac: str) -> None:
    with doing(f"reading {link.name} in {rctx.where}"):
        cur = (rctx.ipr.link("get", index=link.index)[0].get_attr("IFLA_ADDRESS") or "").lower()
    if cur != mac:
        with doing(f"setting MAC {mac} on {link.name} in {rctx.where}"):
            rctx.ipr.link("set", index=link.index, address=mac)
        rctx.changed(f"router: set MAC of {link.name} to {mac}")


def _addresses(rctx: Ctx, link: Link, gateways: tuple[str, ...], addrs: list) -> None:
    """`addrs`: the link's addresses from the namespace's dump (empty for a new link)."""
    want = {str(ipaddress.ip_interface(g)) for g in gateways}
    have = set()
    for a in addrs:
        ip = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
        cidr = f"{ip}/{a['prefixlen']}"
        if cidr in want:
            have.add(cidr)
        elif not ip.is_link_local:   # the kernel's own fe80:: stays
            with doing(f"removing {cidr} from {link.name}"):
                rctx.ipr.addr("del", index=link.index, address=str(ip), prefixlen=a["prefixlen"])
            rctx.changed(f"router: removed {cidr} from {link.name}")
    for cidr in sorted(want - have):
        iface = ipaddress.ip_interface(cidr)
        kw = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
        # NODAD: the gateway is the same address on every host's leg (anycast) by design
        with doing(f"adding gateway {cidr} to {link.name} in {rctx.where}"):
            try:
                rctx.ipr.addr("add", index=link.index, address=str(iface.ip),
                              prefixlen=iface.network.prefixlen, **kw)
            except NetlinkError as e:
                if e.code != 17:   # EEXIST
                    raise
        rctx.changed(f"router: added gateway {cidr} on {link.name}")


# ---- the router's own table: reverse path, and nothing but forwarding between legs ----------

def render_rtr(r: model.Router, fp: model.FlowPlan | None = None) -> str:
    legs = ", ".join(f'"{leg.peer}"' for leg in r.legs)
    ext_sets, ext_chains, ext_jumps = flowfilter.render_external(r.externals, fp)
    body = (f"  set legs {{ type ifname; elements = {{ {legs} }}; }}\n"
            + ext_sets + ext_chains +
            "  chain prerouting {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            '    ip6 saddr :: accept comment "@DIGEST@"\n'
            "    fib saddr . iif oif missing drop\n"
            "  }\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy drop;\n"
            "    iifname @legs oifname @legs accept\n"
            + ext_jumps +
            "  }\n"
            "  chain input {\n"
            "    type filter hook input priority filter; policy drop;\n"
            "    iifname lo accept\n"
            "    meta l4proto { icmp, ipv6-icmp } accept\n"
            "  }\n")
    return body


def _rp_table(name: str, r: model.Router, fp: model.FlowPlan | None, changed) -> None:
    done = nftables.converge(name, [(RTR, render_rtr(r, fp))], f"loading the router table in {name}")
    if done:
        changed(f"router {name}: {done} table {RTR_FAMILY} {RTR_TABLE}")


__all__ = ["ns_name", "validate", "desired_devices", "sync", "remove", "describe"]
