"""Port security per vif, the nftables backend: a netdev ingress chain on each vif (design
item 6). The default backend is eBPF (bpf/portsec.py, compiled from the same PortRules below);
this one runs when drops are logged (port_security.py says which runs when).

Table `netdev xen_tvd_ports`, owned by xen-tvd and never anything else touched. Each vif has
its own base chain, hooked at ingress of that device: it runs before the bridge sees the frame,
and only for that vif's frames, so uplinks and router legs pay nothing and a vif pays only for
its own rules: immediate compares and small anonymous sets, no lookup keyed on interface names
(bench/nft_rules.py measures it per packet, with and without other vifs' chains; figures in
bench/README.md). Every
drop has its own counter, named by its comment (the reason), so an admin can see why frames
died (`counters()`):
  - 802.1Q / 802.1ad / 0x9100 (QinQ) tagged frames, so frames tagged with another TVD's VLAN id
    are dropped (nft rebuilds an offloaded tag for `ether type`, tested); other untagged
    ethertypes pass (the lab's flood check uses 0x88b5), MAC-pinned like the rest;
  - source MAC = the vif's declared MAC (when one is declared);
  - broadcast and multicast frames beyond the TVD's `flood-limit` per second (burst: two
    seconds' worth) are dropped, so one VM's storm reaches its peers at that rate at most
    (unknown unicast is kept from pinned vifs by the bridge instead: vif.py);
  - IPv4: DHCP server replies (udp sport 67) dropped unless the segment allows a DHCP server
    (policy `allow-dhcp-server`); DHCP client traffic from 0.0.0.0 (udp 68 -> 67) allowed;
    otherwise the source must be a declared address;
  - ARP: Ethernet/IPv4 only; sender MAC = declared MAC; sender IP declared (0.0.0.0 allowed
    for RFC 5227 probes); so gratuitous ARP for another VM's address is dropped;
  - IPv6: redirects dropped; router advertisements and DHCPv6 server replies (udp sport 547)
    dropped unless the segment allows them; source :: only for DAD neighbour solicitations and
    MLD reports; otherwise the source must be declared or the fe80::/64 EUI-64 link-local
    address of the declared MAC; neighbour advertisements only for the vif's own addresses.

What a vif declares (VifPort.mac, VifPort.addresses):
  - addresses=None: nothing declared about IP. Its IP/ARP/ND sources are NOT checked;
    everything else above still is. HostState.require_addresses=True treats None as ().
  - addresses=() (declared: none): fail closed. ARP probes (sender 0.0.0.0), DHCP client
    requests from 0.0.0.0, IPv6 DAD/MLD from :: and, with a declared MAC, its EUI-64
    link-local address pass; no other IP source does.
  - mac=None: the source MAC (and ARP sender MAC) is not pinned.

Names: a vif's base chain is `p_<name>`, hooked at its ingress, where <name> is the ifname with
every character outside [A-Za-z0-9.-] written as _xx (hex); its rules jump to three chains
named `q4_`/`qa_`/`q6_` + `<digest>_<name>` (IPv4, ARP, IPv6), <digest> being that of the vif's
rendered rules. The kernel is the only state: the table's chain names (cheap to list, no rules)
say which vif has which rules, and a vif's own base chain says its digest. A change adds the new
sub-chains, replaces the base chain's few rules (flush + add) and deletes the old sub-chains in
one transaction: the hook stays registered throughout and the rules switch atomically. The
base chain uses no anonymous set or map: replacing one inside a hooked chain let frames through
while the transaction committed (a tier-1 test sent 512,000 spoofed frames across replacements;
with a vmap there, a few passed). When the
device goes away, 6.1 deletes its base chain with it (unplug and apply() delete the rest);
kernels from 6.16 keep it and hook it again to the next device of that name, whose frames
then meet the old vif's rules until it is plugged (it is on no bridge before that).
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field

from xen_tvd.desired import model
from xen_tvd.desired.patterns import IFNAME_RE, MAC_RE

from . import nftables
from .report import DataplaneError

FAMILY, TABLE = "netdev", "xen_tvd_ports"
T = f"{FAMILY} {TABLE}"
_SAFE = re.compile(r"[A-Za-z0-9.-]")
_BASE_RE = re.compile(r"^p_([A-Za-z0-9.\-_]+)$")
_SUB_RE = re.compile(r"^(q4|qa|q6)_([0-9a-f]{16})_([A-Za-z0-9.\-_]+)$")
SUBCHAINS = ("q4", "qa", "q6")


# ---- names ---------------------------------------------------------------------------------

def escape(ifname: str) -> str:
    return "".join(c if _SAFE.match(c) else f"_{ord(c):02x}" for c in ifname)


def unescape(text: str) -> str:
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def base_name(ifname: str) -> str:
    return f"p_{escape(ifname)}"


def base_or_sub(chain: str) -> str | None:
    """The vif a port security chain (base or sub-chain) belongs to; None: not one."""
    m = _BASE_RE.match(chain) or _SUB_RE.match(chain)
    return unescape(m.group(m.lastindex)) if m else None


def sub_names(ifname: str, digest: str) -> list[str]:
    esc = escape(ifname)
    return [f"{k}_{digest}_{esc}" for k in SUBCHAINS]


# ---- rendering -----------------------------------------------------------------------------

def validate_port(port: model.VifPort) -> None:
    """Raise DataplaneError (no writes yet) for anything that could not be rendered safely."""
    if not IFNAME_RE.match(port.ifname):
        raise DataplaneError(f"port {port.ifname!r}: not a valid interface name for port security")
    if port.mtu is not None and not 68 <= port.mtu <= 65535:
        raise DataplaneError(f"port {port.ifname}: MTU {port.mtu} outside 68..65535")
    if port.mac is not None and not MAC_RE.match(port.mac.lower()):
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


def _one_of(values: list[str]) -> str:
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _drop(match: str, reason: str) -> str:
    """A drop rule with its own counter; an empty match drops whatever reaches it."""
    return f'    {match + " " if match else ""}counter drop comment "{reason}"\n'


@dataclass(frozen=True)
class PortRules:
    """What one vif's chains say, from its VifPort and its segment's settings."""
    ifname: str
    mac: str | None
    v4: tuple[str, ...] | None        # None: IP sources not checked (nothing declared)
    v6: tuple[str, ...] | None
    dhcp_server: bool
    router_adverts: bool
    flood_limit: int = 0               # broadcast/multicast frames per second; 0 = no limit
    log_drops: int = 0                 # kernel log lines per second per drop rule; 0 = none

    @classmethod
    def of(cls, port: model.VifPort, require_addresses: bool = False,
           segment: model.Segment | None = None, log_drops: int = 0) -> "PortRules":
        addrs = port.addresses
        if addrs is None and require_addresses:
            addrs = ()
        mac = port.mac.lower() if port.mac is not None else None
        v4 = v6 = None
        if addrs is not None:
            ips = [ipaddress.ip_interface(a).ip for a in addrs]
            if mac is not None:
                ips.append(eui64_link_local(mac))
            v4 = tuple(sorted({str(i) for i in ips if i.version == 4}))
            v6 = tuple(sorted({str(i) for i in ips if i.version == 6}))
        return cls(port.ifname, mac, v4, v6,
                   bool(segment is not None and segment.allow_dhcp_server),
                   bool(segment is not None and segment.allow_router_advertisements),
                   segment.flood_limit if segment is not None else 0, log_drops)

    def render(self) -> tuple[str, str, str]:
        """(the sub-chains as a table block's chains, the base chain's rules, the digest)."""
        subs, base = self._body("@Q4", "@QA", "@Q6")
        digest = nftables.digest_of(subs + base)
        for mark, name in zip(("@Q4", "@QA", "@Q6"), sub_names(self.ifname, digest)):
            subs, base = subs.replace(mark, name), base.replace(mark, name)
        return subs, base, digest

    def _drop(self, match: str, reason: str) -> str:
        """_drop, preceded by a rate-limited log rule of the same match when logging is on."""
        log = (f'    {match + " " if match else ""}limit rate {self.log_drops}/second counter log prefix '
               f'"xen-tvd drop {reason} {self.ifname}: " level info\n' if self.log_drops else "")
        return log + _drop(match, reason)

    def _body(self, q4: str, qa: str, q6: str) -> tuple[str, str]:
        mac = self.mac
        ip4 = ""
        if not self.dhcp_server:
            ip4 += self._drop("udp sport 67", "dhcp-server")
        ip4 += "    ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept\n"
        if self.v4 is not None:
            ip4 += (self._drop(f"ip saddr != {_one_of(list(self.v4))}", "ipv4-source") if self.v4
                    else self._drop("", "ipv4-source"))
        arp = (self._drop("arp htype != 1", "arp-malformed") + self._drop("arp ptype != ip", "arp-malformed")
               + self._drop("arp hlen != 6", "arp-malformed") + self._drop("arp plen != 4", "arp-malformed"))
        if mac is not None:
            arp += self._drop(f"arp saddr ether != {mac}", "arp-sender-mac")
        if self.v4 is not None:
            arp += "    arp saddr ip 0.0.0.0 accept\n"
            arp += (self._drop(f"arp saddr ip != {_one_of(list(self.v4))}", "arp-sender-ip") if self.v4
                    else self._drop("arp saddr ip != 0.0.0.0", "arp-sender-ip"))
        ip6 = self._drop("icmpv6 type nd-redirect", "nd-redirect")
        if not self.router_adverts:
            ip6 += self._drop("icmpv6 type nd-router-advert", "router-advert")
        if not self.dhcp_server:
            ip6 += self._drop("udp sport 547", "dhcp-server")
        if self.v6 is not None:
            ip6 += ("    ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, "
                    "mld2-listener-report } accept\n")
            if self.v6:
                targets = [f"0x{int(ipaddress.IPv6Address(a)):032x}" for a in self.v6]
                ip6 += (self._drop(f"ip6 saddr != {_one_of(list(self.v6))}", "ipv6-source")
                        + self._drop(f"icmpv6 type nd-neighbor-advert @th,64,128 != {_one_of(targets)}",
                                "nd-target"))
            else:
                ip6 += self._drop("", "ipv6-source")
        # the frame's kind from meta data or one Ethernet load each: an IPv4 frame costs two
        # link-layer loads (source MAC, ethertype), as LL loads go through skb_copy_bits;
        # pkttype 1-2 = broadcast or multicast (set from the destination MAC on ingress)
        flood = (self._drop(f"meta pkttype 1-2 limit rate over {self.flood_limit}"
                       f"/second burst {2 * self.flood_limit} packets", "flood-limit")
                 if self.flood_limit else "")
        base = (flood + (self._drop(f"ether saddr != {mac}", "source-mac") if mac else "")
                + f"    ether type ip goto {q4}\n    ether type ip6 goto {q6}\n"
                + f"    ether type arp goto {qa}\n"
                + "".join(self._drop(f"ether type {t}", "vlan-tag") for t in ("8021q", "8021ad", "0x9100")))
        return (f"  chain {q4} {{\n{ip4}  }}\n  chain {qa} {{\n{arp}  }}\n"
                f"  chain {q6} {{\n{ip6}  }}\n"), base


# ---- reading back --------------------------------------------------------------------------

@dataclass
class Installed:
    """What the table holds for one vif: its base chain, and the digests of its sub-chains
    (one digest when converged; none, or a stale one, after a crash or a kernel's cleanup)."""
    base: bool = False
    subs: dict[str, set[str]] = field(default_factory=dict)   # digest -> {"q4", "qa", "q6"}

    def digest(self) -> str | None:
        """The digest in force: a hooked base chain and one complete set of sub-chains."""
        whole = [d for d, kinds in self.subs.items() if kinds == set(SUBCHAINS)]
        return whole[0] if self.base and len(self.subs) == 1 and whole else None


def installed(netns: str | None) -> dict[str, Installed] | None:
    """ifname -> Installed for every vif with chains in the table; None: no table."""
    # `list chains` carries no rules: cheap at hundreds of vifs, where listing the table is not
    out: dict[str, Installed] = {}
    strays = []
    for o in nftables.list_json(netns, "chains", FAMILY) or ():
        c = o.get("chain")
        if not c or c.get("table") != TABLE:
            continue
        if m := _BASE_RE.match(c["name"]):
            out.setdefault(unescape(m.group(1)), Installed()).base = True
        elif m := _SUB_RE.match(c["name"]):
            inst = out.setdefault(unescape(m.group(3)), Installed())
            inst.subs.setdefault(m.group(2), set()).add(m.group(1))
        else:
            strays.append(c["name"])
    if strays:   # a name we never make: sync replaces the whole table
        out[""] = Installed()
    if out:
        return out
    tables = nftables.list_json(netns, "tables", FAMILY) or ()
    return {} if any(o.get("table", {}).get("name") == TABLE for o in tables) else None


def _installed_one(netns: str | None, ifname: str) -> Installed | None:
    """The same for one vif, from its base chain alone (plug_vif's cheap path); None: no
    table. Only a missing base chain needs the whole list (for stale sub-chains)."""
    objs = nftables.list_json(netns, "chain", FAMILY, TABLE, base_name(ifname))
    if objs is None:
        whole = installed(netns)
        return None if whole is None else whole.get(ifname, Installed())
    inst = Installed(base=True)
    for o in objs:
        for name in re.findall(r'"((?:q4|qa|q6)_[0-9a-f]{16}_[A-Za-z0-9.\-_]+)"', json.dumps(o.get("rule", {}))):
            m = _SUB_RE.match(name)
            inst.subs.setdefault(m.group(2), set()).add(m.group(1))
    return inst


def counters(netns: str | None, ifname: str | None = None) -> dict[str, dict[str, int]]:
    """ifname -> reason -> packets dropped (every vif's, or only `ifname`'s)."""
    objs = nftables.list_json(netns, "table", FAMILY, TABLE)
    out: dict[str, dict[str, int]] = {}
    for o in objs or ():
        r = o.get("rule")
        if not r or not r.get("comment"):
            continue
        chain = r.get("chain", "")
        m = _BASE_RE.match(chain) or _SUB_RE.match(chain)
        if not m:
            continue
        name = unescape(m.group(m.lastindex))
        if ifname is not None and name != ifname:
            continue
        for e in r.get("expr", ()):
            if "counter" in e:
                per = out.setdefault(name, {})
                per[r["comment"]] = per.get(r["comment"], 0) + e["counter"]["packets"]
    return out


# ---- entry points used by reconcile / vif --------------------------------------------------

def _delete_subs(ifname: str, subs: dict[str, set[str]]) -> str:
    esc = escape(ifname)
    return "".join(f"delete chain {T} {kind}_{d}_{esc}\n"
                   for d, kinds in sorted(subs.items()) for kind in sorted(kinds))


def _update(ifname: str, inst: Installed, rules: PortRules | None) -> str:
    """nft input that makes one vif's chains what `rules` render to (None: no chains)."""
    p = base_name(ifname)
    if rules is None:
        base = f"delete chain {T} {p}\n" if inst.base else ""
        return base + _delete_subs(ifname, inst.subs)   # base first: it jumps to the others
    subs, base_rules, digest = rules.render()
    if inst.digest() == digest:
        return ""
    reuse = inst.subs.get(digest) == set(SUBCHAINS)
    # hooked base chain (created, or declared again: a no-op), its rules flushed, so no old
    # sub-chain is referenced any more; the new sub-chains (a partial set of this digest is
    # made whole by deleting it first), the base chain's new rules, then every old sub-chain.
    # One transaction: the hook stays registered and the rules switch atomically at commit.
    hook = ("" if inst.base else
            f'table {T} {{\n  chain {p} {{ type filter hook ingress device "{ifname}" '
            f"priority filter; policy accept; }}\n}}\n") + f"flush chain {T} {p}\n"
    partial = {} if reuse or digest not in inst.subs else {digest: inst.subs[digest]}
    new = "" if reuse else f"table {T} {{\n{subs}}}\n"
    adds = "".join(f"add rule {T} {p} {line.strip()}\n" for line in base_rules.splitlines())
    old = {d: k for d, k in inst.subs.items() if d != digest}
    return hook + _delete_subs(ifname, partial) + new + adds + _delete_subs(ifname, old)


def sync(state: model.HostState, present: set[str], netns: str | None, changed) -> None:
    """Make the table hold exactly the chains of the state's ports whose device exists
    (`present`; a chain can only be hooked to an existing device); absent when the host has
    no segments. `changed(msg)` records a change for the ApplyReport."""
    have = installed(netns)
    if not state.segments:
        if have is not None:
            nftables.run(netns, f"delete table {T}\n", f"deleting nftables table {T}")
            changed(f"deleted nftables table {T} (no segments)")
        return
    want = {p.ifname: PortRules.of(p, state.require_addresses, state.segment(p.tvd), state.log_drops)
            for p in state.ports if p.ifname in present}
    if have is None or "" in have:
        # no table, or chains of names we never make: the whole table, replaced atomically
        body = "".join(_update(i, Installed(), r) for i, r in sorted(want.items()))
        nftables.run(netns, nftables.replace_table(FAMILY, TABLE, "") + body,
                     f"loading port security (nftables table {T})")
        changed(f"{'created' if have is None else 'replaced'} nftables table {T}: port security "
                f"for {len(want)} vif(s)")
        return
    script, n_set, n_gone = "", 0, 0
    for ifname in sorted(set(have) | set(want)):
        part = _update(ifname, have.get(ifname, Installed()), want.get(ifname))
        if part:
            script += part
            n_set, n_gone = (n_set + 1, n_gone) if ifname in want else (n_set, n_gone + 1)
    if script:
        nftables.run(netns, script, f"updating port security (nftables table {T})")
        changed(f"port security: rules set for {n_set} vif(s), removed for {n_gone}")


def plug_port(port: model.VifPort, netns: str | None, require_addresses: bool = False,
              segment: model.Segment | None = None, log_drops: int = 0) -> None:
    """Install this vif's chains (only its own) in one transaction."""
    validate_port(port)
    inst = _installed_one(netns, port.ifname)
    if inst is None:
        raise DataplaneError(f"cannot secure {port.ifname}: nftables table {T} is missing; "
                             f"run apply() for this host first")
    script = _update(port.ifname, inst, PortRules.of(port, require_addresses, segment, log_drops))
    if script:
        nftables.run(netns, script, f"setting port security for {port.ifname}")


def unplug_port(ifname: str, netns: str | None) -> None:
    inst = _installed_one(netns, ifname)
    if inst is not None and (inst.base or inst.subs):
        nftables.run(netns, _update(ifname, inst, None), f"removing port security for {ifname}")


def secured(netns: str | None, port: model.VifPort, require_addresses: bool = False,
            segment: model.Segment | None = None) -> bool:
    """True when the vif's chains in the kernel are exactly what its rules render to."""
    inst = (installed(netns) or {}).get(port.ifname, Installed())
    return inst.digest() == PortRules.of(port, require_addresses, segment).render()[2]
