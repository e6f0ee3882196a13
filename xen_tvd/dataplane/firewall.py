"""Port security per vif and the underlay VXLAN source filter (nftables; design items 6 and 7).

Two tables, owned by xen-tvd and never anything else touched:

`bridge xen_tvd` — port security for frames *entering a bridge from a vif* (prerouting hook,
priority filter = -200, so it also runs on kernels with br_netfilter loaded). Rules are fixed;
every vif is a handful of set elements keyed on its ifname, so the rule count does not grow
with VMs:
  - 802.1Q / 802.1ad / 0x9100 (QinQ) tagged frames, and therefore frames tagged with another
    TVD's VLAN id, are dropped (nft rebuilds an offloaded tag for `ether type`, tested); other
    untagged ethertypes pass (the lab's flood check uses 0x88b5), MAC-pinned like the rest;
  - source MAC = the vif's declared MAC (when one is declared);
  - IPv4: DHCP server replies (udp sport 67) dropped unless the segment allows a DHCP server
    (policy `allow-dhcp-server`, Segment.allow_dhcp_server); DHCP client traffic from 0.0.0.0
    (udp 68 -> 67) allowed; otherwise the source must be a declared address;
  - ARP: Ethernet/IPv4 only; sender MAC = declared MAC; sender IP declared (0.0.0.0 allowed
    for RFC 5227 probes); so gratuitous ARP for another VM's address is dropped;
  - IPv6: redirects dropped; router advertisements and DHCPv6 server replies (udp sport 547)
    dropped unless the segment allows them (`allow-router-advertisements`, `allow-dhcp-server`);
    source :: only for DAD neighbour solicitations and MLD reports; otherwise the source must be
    declared or the fe80::/64 EUI-64 link-local address of the declared MAC; neighbour
    advertisements only for the vif's own addresses (ND target checked).

What a vif declares (VifPort.mac, VifPort.addresses):
  - addresses=None: the caller declared nothing about IP (callers written before port security;
    today the lab and the proxy). Its IP/ARP/ND sources are NOT checked; everything else above
    (tags, other ethertypes, DHCP/RA server traffic, declared MAC) still is. Set
    HostState.require_addresses=True to treat None as () (fail closed) once every caller
    declares addresses.
  - addresses=() (declared: none): fail closed. The VM may send ARP probes (sender 0.0.0.0),
    DHCP client requests from 0.0.0.0, IPv6 DAD/MLD from :: and, if its MAC is declared,
    traffic from its EUI-64 link-local address (derived from the pinned MAC, so not
    spoofable). No other IP source passes.
  - mac=None: the source MAC (and ARP sender MAC) is not pinned.

`inet xen_tvd_underlay` — VXLAN (udp dport = the segments' VXLAN ports) reaching this host is
dropped in prerouting (priority raw, before the VXLAN socket decapsulates it) unless its source
is an enrolled peer (HostState.underlay_peers plus every VXLAN remote). Only packets a VXLAN
socket here could receive are judged: destination a local address (`fib daddr type local`) or
a segment's multicast group. With br_netfilter (bridge-nf-call-iptables=1, the default once
it is loaded or built in) frames bridged between a TVD's ports traverse this inet hook too,
with the VMs' addresses; without that condition a VM's own UDP to port 4789 was dropped.
A VM's traffic to the underlay's group address and VXLAN port still is. Installed only when the
host has a VXLAN segment and the planner supplied underlay_peers (None = not computed: no
filter). Without encryption a host on the underlay that spoofs a peer's source address still
gets in.

Updates: a full table is always replaced as `table X {}; delete table X; table X {...}` in one
`nft -f` input, i.e. one kernel transaction: there is no instant without rules. The rules'
digest rides in a rule comment; when it matches, only set elements are diffed and changed (one
transaction too), which is also what plug_vif/unplug_vif do. The kernel is the only state, so a
crash at any point leaves either the old or the new ruleset and the next apply converges.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from . import model, nftables
from .report import DataplaneError

FAMILY, TABLE = "bridge", "xen_tvd"
UL_FAMILY, UL_TABLE = "inet", "xen_tvd_underlay"
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# set name -> nft type declaration
SETS = {
    "ports": "type ifname",                    # every vif under port security
    "unpinned": "type ifname",                 # addresses=None: IP sources not checked
    "has_mac": "type ifname",                  # vifs with a declared MAC
    "port_mac": "type ifname . ether_addr",
    "port_ip4": "type ifname . ipv4_addr",
    "port_ip6": "type ifname . ipv6_addr",     # declared + EUI-64 link-local
    "na_ok": "typeof iifname . @th,64,128",    # same addresses, as ND target (raw ICMPv6 bytes 8..23)
    "dhcp_srv": "type ifname",                 # segment allows DHCP/DHCPv6 server traffic
    "ra_ok": "type ifname",                    # segment allows router advertisements
}

CHAINS = """\
  chain prerouting {
    type filter hook prerouting priority filter; policy accept;
    iifname != @ports accept comment "@DIGEST@"
    iifname @has_mac iifname . ether saddr != @port_mac drop
    ether type { 8021q, 8021ad, 0x9100 } drop
    ether type vmap { ip : goto vif_ip4, arp : goto vif_arp, ip6 : goto vif_ip6 }
  }
  chain vif_ip4 {
    iifname != @dhcp_srv udp sport 67 drop
    ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept
    iifname @unpinned accept
    iifname . ip saddr != @port_ip4 drop
  }
  chain vif_arp {
    arp htype != 1 drop
    arp ptype != ip drop
    arp hlen != 6 drop
    arp plen != 4 drop
    iifname @has_mac iifname . arp saddr ether != @port_mac drop
    iifname @unpinned accept
    arp saddr ip 0.0.0.0 accept
    iifname . arp saddr ip != @port_ip4 drop
  }
  chain vif_ip6 {
    icmpv6 type nd-redirect drop
    iifname != @ra_ok icmpv6 type nd-router-advert drop
    iifname != @dhcp_srv udp sport 547 drop
    ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } accept
    iifname @unpinned accept
    iifname . ip6 saddr != @port_ip6 drop
    icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @na_ok drop
  }
"""


def _skeleton() -> tuple[str, str]:
    body = "".join(f"  set {n} {{ {t}; }}\n" for n, t in SETS.items()) + CHAINS
    return nftables.stamp(body)


SKELETON, DIGEST = _skeleton()


# ---- desired elements ----------------------------------------------------------------------

Elements = dict[str, set[tuple]]


def validate_port(port: model.VifPort) -> None:
    """Raise DataplaneError (no writes yet) for anything that could not be rendered safely."""
    if not _IFNAME_RE.match(port.ifname):
        raise DataplaneError(f"port {port.ifname!r}: not a valid interface name for port security")
    if port.mac is not None and not _MAC_RE.match(port.mac.lower()):
        raise DataplaneError(f"port {port.ifname}: MAC {port.mac!r} is not aa:bb:cc:dd:ee:ff")
    if port.mac is not None and int(port.mac[:2], 16) & 1:
        raise DataplaneError(f"port {port.ifname}: MAC {port.mac} is a multicast address")
    for a in port.addresses or ():
        try:
            ipaddress.ip_interface(a)
        except ValueError:
            raise DataplaneError(f"port {port.ifname}: declared address {a!r} is not an IP address") from None


def eui64_link_local(mac: str) -> ipaddress.IPv6Address:
    b = bytes(int(x, 16) for x in mac.split(":"))
    iid = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid)


def port_elements(port: model.VifPort, require_addresses: bool = False,
                  segment: model.Segment | None = None) -> Elements:
    n = port.ifname
    out: Elements = {k: set() for k in SETS}
    out["ports"].add((n,))
    if segment is not None and segment.allow_dhcp_server:
        out["dhcp_srv"].add((n,))
    if segment is not None and segment.allow_router_advertisements:
        out["ra_ok"].add((n,))
    addrs = port.addresses
    if addrs is None and require_addresses:
        addrs = ()
    if port.mac is not None:
        mac = port.mac.lower()
        out["has_mac"].add((n,))
        out["port_mac"].add((n, mac))
    if addrs is None:
        out["unpinned"].add((n,))
        return out
    ips = [ipaddress.ip_interface(a).ip for a in addrs]
    if port.mac is not None:
        ips.append(eui64_link_local(port.mac.lower()))
    for ip in ips:
        if ip.version == 4:
            out["port_ip4"].add((n, _ip(4, str(ip))))
        else:
            out["port_ip6"].add((n, _ip(6, str(ip))))
            out["na_ok"].add((n, int(ip)))
    return out


def desired_elements(state: model.HostState) -> Elements:
    out: Elements = {k: set() for k in SETS}
    for p in state.ports:
        for k, v in port_elements(p, state.require_addresses, state.segment(p.tvd)).items():
            out[k] |= v
    return out


def _fmt(set_name: str, el: tuple) -> str:
    parts = []
    for i, v in enumerate(el):
        if i == 0:
            parts.append(f'"{v}"')
        elif set_name == "na_ok":
            parts.append(f"0x{v:032x}")
        else:
            parts.append(str(v))
    return " . ".join(parts)


def _elements_block(set_name: str, els) -> str:
    return ", ".join(_fmt(set_name, e) for e in sorted(els))


def render(els: Elements) -> str:
    """The whole `bridge xen_tvd` table as one atomic nft input (create-if-missing, delete, define)."""
    lines = [f"table {FAMILY} {TABLE} {{}}", f"delete table {FAMILY} {TABLE}", f"table {FAMILY} {TABLE} {{",
             SKELETON.rstrip("\n"), "}"]
    for name in SETS:
        if els.get(name):
            lines.append(f"add element {FAMILY} {TABLE} {name} {{ {_elements_block(name, els[name])} }}")
    return "\n".join(lines) + "\n"


# ---- reading back (JSON only) --------------------------------------------------------------

@dataclass
class Current:
    digest: str | None
    elements: Elements


def _ip(version: int, text: str) -> str:
    """One canonical text form for both sides of a diff (C inet_pton/ntop: fast at 10^4)."""
    af = socket.AF_INET if version == 4 else socket.AF_INET6
    return socket.inet_ntop(af, socket.inet_pton(af, text))


def _norm(set_name: str, raw) -> tuple:
    if isinstance(raw, dict) and "elem" in raw:
        raw = raw["elem"]["val"]
    vals = raw["concat"] if isinstance(raw, dict) and "concat" in raw else [raw]
    out = [vals[0]]
    for v in vals[1:]:
        if set_name == "na_ok":
            out.append(int(v, 0) if isinstance(v, str) else int(v))
        elif set_name == "port_ip4":
            out.append(_ip(4, v))
        elif set_name == "port_ip6":
            out.append(_ip(6, v))
        else:
            out.append(str(v).lower())
    return tuple(out)


def _key(raw) -> str:
    if isinstance(raw, dict) and "elem" in raw:
        raw = raw["elem"]["val"]
    return raw["concat"][0] if isinstance(raw, dict) and "concat" in raw else raw


def read(netns: str | None, only: str | None = None) -> Current | None:
    """The table's digest and elements (only those of vif `only`, if given), or None."""
    objs = nftables.list_json(netns, "table", FAMILY, TABLE)
    if objs is None:
        return None
    els: Elements = {k: set() for k in SETS}
    for o in objs:
        if "set" in o and o["set"]["name"] in SETS:
            s = o["set"]
            els[s["name"]] = {_norm(s["name"], e) for e in s.get("elem", [])
                              if only is None or _key(e) == only}
    return Current(nftables.digest_in(objs, chain="prerouting"), els)


def _diff_script(cur: Elements, want: Elements) -> tuple[str, int, int]:
    dels, adds = [], []
    for name in SETS:
        gone, new = cur.get(name, set()) - want[name], want[name] - cur.get(name, set())
        if gone:
            dels.append(f"delete element {FAMILY} {TABLE} {name} {{ {_elements_block(name, gone)} }}")
        if new:
            adds.append(f"add element {FAMILY} {TABLE} {name} {{ {_elements_block(name, new)} }}")
    # deletes first: an element whose value changed (same key) is removed, then re-added
    return "\n".join(dels + adds) + "\n", sum(len(cur.get(n, set()) - want[n]) for n in SETS), \
        sum(len(want[n] - cur.get(n, set())) for n in SETS)


# ---- entry points used by reconcile / vif --------------------------------------------------

def sync_ports(state: model.HostState, netns: str | None, changed) -> None:
    """Make `bridge xen_tvd` match state (absent when there are no segments). `changed(msg)`
    records a change for the ApplyReport."""
    cur = read(netns)
    if not state.segments:
        if cur is not None:
            nftables.run(netns, f"delete table {FAMILY} {TABLE}\n", "deleting nftables table bridge xen_tvd")
            changed(f"deleted nftables table {FAMILY} {TABLE} (no segments)")
        return
    want = desired_elements(state)
    if cur is None or cur.digest != DIGEST:
        nftables.run(netns, render(want), "loading port security (nftables table bridge xen_tvd)")
        why = "created" if cur is None else "replaced (rules changed)"
        changed(f"{why} nftables table {FAMILY} {TABLE}: port security for {len(want['ports'])} vif(s)")
        return
    script, n_del, n_add = _diff_script(cur.elements, want)
    if n_del or n_add:
        nftables.run(netns, script, "updating port security set elements")
        changed(f"port security: {n_add} set element(s) added, {n_del} removed")


def _require_table(netns: str | None, ifname: str) -> Current:
    cur = read(netns, only=ifname)
    if cur is None or cur.digest != DIGEST:
        state = "is missing" if cur is None else "has other rules (older xen-tvd?)"
        raise DataplaneError(f"cannot secure {ifname}: nftables table {FAMILY} {TABLE} {state}; "
                             f"run apply() for this host first")
    return cur


def plug_port(port: model.VifPort, netns: str | None, require_addresses: bool = False,
              segment: model.Segment | None = None) -> None:
    """Replace this vif's elements (only its own) in one transaction; rules untouched."""
    validate_port(port)
    cur = _require_table(netns, port.ifname)
    script, n_del, n_add = _diff_script(cur.elements,
                                        port_elements(port, require_addresses, segment))
    if n_del or n_add:
        nftables.run(netns, script, f"setting port security for {port.ifname}")


def unplug_port(ifname: str, netns: str | None) -> None:
    cur = read(netns, only=ifname)
    if cur is None:
        return
    script, n_del, _ = _diff_script(cur.elements, {k: set() for k in SETS})
    if n_del:
        nftables.run(netns, script, f"removing port security for {ifname}")


# ---- underlay VXLAN source filter ----------------------------------------------------------

def underlay_wanted(state: model.HostState) -> tuple[set[str], set[str], set[int], set[str]] | None:
    vx = [s.uplink for s in state.segments if isinstance(s.uplink, model.VxlanUplink)]
    if not vx or state.underlay_peers is None:
        return None
    peers = set(state.underlay_peers)
    for u in vx:
        peers.update(u.remotes)
    v4 = {str(ipaddress.ip_address(p)) for p in peers if ipaddress.ip_address(p).version == 4}
    v6 = {str(ipaddress.ip_address(p)) for p in peers if ipaddress.ip_address(p).version == 6}
    groups = {str(ipaddress.ip_address(u.group)) for u in vx if u.group}
    return v4, v6, {u.port for u in vx}, groups


def render_underlay(v4: set[str], v6: set[str], ports: set[int], groups: set[str] = frozenset()) -> tuple[str, str]:
    def elems(xs):
        return f" elements = {{ {', '.join(str(x) for x in sorted(xs))} }};" if xs else ""
    body = (f"  set peers4 {{ type ipv4_addr;{elems(v4)} }}\n"
            f"  set peers6 {{ type ipv6_addr;{elems(v6)} }}\n"
            f"  set vxlan_ports {{ type inet_service;{elems(ports)} }}\n"
            f"  set groups4 {{ type ipv4_addr;{elems(groups)} }}\n"
            "  chain prerouting {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            '    udp dport @vxlan_ports fib daddr type local ip saddr != @peers4 drop comment "@DIGEST@"\n'
            "    udp dport @vxlan_ports fib daddr type local ip6 saddr != @peers6 drop\n"
            "    udp dport @vxlan_ports ip daddr @groups4 ip saddr != @peers4 drop\n"
            "  }\n")
    body, digest = nftables.stamp(body)
    return nftables.replace_table(UL_FAMILY, UL_TABLE, body), digest


def _underlay_digest(netns: str | None) -> str | None | bool:
    objs = nftables.list_json(netns, "table", UL_FAMILY, UL_TABLE)
    return False if objs is None else nftables.digest_in(objs)


def sync_underlay(state: model.HostState, netns: str | None, changed) -> None:
    want = underlay_wanted(state)
    have = _underlay_digest(netns)
    t = f"{UL_FAMILY} {UL_TABLE}"
    if want is None:
        if have is not False:
            nftables.run(netns, f"delete table {t}\n", f"deleting nftables table {t}")
            changed(f"deleted nftables table {t} (no VXLAN segment or no peer list)")
        return
    script, digest = render_underlay(*want)
    if have != digest:
        nftables.run(netns, script, f"loading the underlay VXLAN filter (nftables table {t})")
        changed(f"{'created' if have is False else 'replaced'} nftables table {t}: VXLAN only from "
                f"{', '.join(sorted(want[0] | want[1])) or 'nobody'}")
