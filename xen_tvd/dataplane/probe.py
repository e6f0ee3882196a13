"""One real packet, traced through the kernel (`tvdctl explain --probe --yes`, the proxy's
`probe` request): where it was dropped, or that it arrived.

Armed on every host involved, sent on the source's host, collected on each:

  inject   The packet is made as the source VM would send it (its MAC and address) and enters
           through the source vif's *ingress*, as if the VM had sent it: written into a tap of
           the probe's own (tvp-<id>, on no bridge, gone with its file), whose tc u32 filter
           redirects exactly that packet (its IP id) into the vif's ingress (act_mirred
           ingress redirect). So it meets the vif's port security, the vSwitch, the flow filter and
           the router like the VM's own packets. Nothing of the vif, its bridge or its rules is
           changed.
  trace    nftables tracing: a table of the probe's own per namespace (netdev ingress of the
           source vif, bridge prerouting, the router namespace's inet prerouting; the kernel
           clears the trace flag at every namespace crossing and VXLAN decapsulation) sets
           `meta nftrace` on the probe's packet only (IP id, source and destination), and a
           NETLINK_NETFILTER socket subscribed to NFNLGRP_NFTRACE reads the trace events: the
           rule (table, chain, handle) whose verdict dropped it. The tables are deleted when
           the probe ends; the xen-tvd tables are never touched.
  arrived  An AF_PACKET socket on each watched vif (the destination's), with a classic BPF
           filter for the probe's packet and for answers to it: the packet leaving the vif
           towards its VM is "arrived"; an answer leaving the source vif (echo reply, TCP
           SYN-ACK or reset) is "answered".

IPv4 only (the IP id marks the packet). The packet is real: the destination VM sees it and
answers the source VM (an echo reply; a SYN-ACK the source's stack resets) — hence --yes.
"""
from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import os
import random
import select
import socket
import struct
import time

from xen_tvd.desired.names import PROBE_PREFIX

from . import flowfilter, hostguard, nftables, portsec
from .exchange import describe_rule
from .bpf import ports as bpf_ports
from .netlink import open_ipr, opened_inside
from .report import DataplaneError

TABLE = "xen_tvd_probe"
NETLINK_NETFILTER, NFNLGRP_NFTRACE, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 12, 9, 270, 1
NFT_MSG_TRACE = (10 << 8) | 17          # NFNL_SUBSYS_NFTABLES, NFT_MSG_TRACE
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop",
            -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
MAX_EVENTS = 64
PROTOCOLS = ("icmp", "tcp", "udp")
PAYLOAD = b"xen-tvd explain probe"


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    id: str                        # 16 hex digits: names the probe's tables and tap
    ip_id: int                     # 1..65535: the IP id that marks the packet
    src_ip: str
    dst_ip: str
    proto: str = "icmp"            # icmp (echo), tcp (SYN), udp
    port: int | None = None
    inject: str | None = None      # the source vif (this host sends)
    src_mac: str | None = None     # the source VM's MAC (with inject)
    dst_mac: str | None = None     # the next hop's: the destination VM's, or the router leg's
    watch: tuple[str, ...] = ()    # vifs on this host whose egress shows arrival / answers
    router_netns: str | None = None

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise DataplaneError(f"a probe sends {', '.join(PROTOCOLS)}, not {self.proto}")
        for a in (self.src_ip, self.dst_ip):
            if ipaddress.ip_address(a).version != 4:
                raise DataplaneError("a probe is IPv4 only (its IP id marks the packet)")
        if self.inject and not (self.src_mac and self.dst_mac):
            raise DataplaneError("a probe that sends needs the source's and the next hop's MAC")

    @property
    def sport(self) -> int:
        return 40000 + self.ip_id % 20000


# ---- packets -------------------------------------------------------------------------------

def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _mac(m: str) -> bytes:
    return bytes(int(x, 16) for x in m.split(":"))


def frame(spec: ProbeSpec) -> bytes:
    """The Ethernet frame the source VM would send: an ICMP echo request, a TCP SYN or a UDP
    datagram, with correct checksums (conntrack checks them)."""
    src, dst = socket.inet_aton(spec.src_ip), socket.inet_aton(spec.dst_ip)
    if spec.proto == "icmp":
        num = 1
        l4 = struct.pack("!BBHHH", 8, 0, 0, spec.ip_id, 1) + PAYLOAD
        l4 = l4[:2] + struct.pack("!H", _csum(l4)) + l4[4:]
    else:
        num = 6 if spec.proto == "tcp" else 17
        if spec.proto == "tcp":
            l4 = struct.pack("!HHIIBBHHH", spec.sport, spec.port or 0,
                             random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
            off = 16
        else:
            l4 = struct.pack("!HHHH", spec.sport, spec.port or 0, 8 + len(PAYLOAD), 0) + PAYLOAD
            off = 6
        pseudo = src + dst + struct.pack("!BBH", 0, num, len(l4))
        c = _csum(pseudo + l4) or (0xFFFF if num == 17 else 0)
        l4 = l4[:off] + struct.pack("!H", c) + l4[off + 2:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), spec.ip_id, 0x4000, 64, num, 0,
                     src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return _mac(spec.dst_mac) + _mac(spec.src_mac) + b"\x08\x00" + ip + l4


def _answer(spec: ProbeSpec, d: bytes) -> str | None:
    """What a frame from the destination to the source says about the probe, if anything."""
    if len(d) < 34 or d[23] not in (1, 6):
        return None
    ihl = (d[14] & 0x0F) * 4
    l4 = d[14 + ihl:]
    if d[23] == 1 and spec.proto == "icmp" and len(l4) >= 8:
        typ, _, _, ident = struct.unpack("!BBHH", l4[:6])
        return "echo reply" if typ == 0 and ident == spec.ip_id else None
    if d[23] == 6 and spec.proto == "tcp" and len(l4) >= 14:
        sport, dport = struct.unpack("!HH", l4[:4])
        if (sport, dport) != (spec.port, spec.sport):
            return None
        flags = l4[13]
        return "TCP reset (nothing listens)" if flags & 0x04 else \
            "TCP SYN-ACK" if flags & 0x12 == 0x12 else None
    return None


# ---- sockets -------------------------------------------------------------------------------

def _bpf(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
    # SO_ATTACH_FILTER copies the program: buf may go once setsockopt returned
    sock.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", len(prog), ctypes.addressof(buf)))


def _capture(ifname: str, spec: ProbeSpec, netns: str | None) -> socket.socket:
    """An AF_PACKET socket on `ifname` that queues only the probe's packet and frames from
    the destination to the source (answers)."""
    S = int(ipaddress.IPv4Address(spec.src_ip))
    D = int(ipaddress.IPv4Address(spec.dst_ip))
    ldh, ld, jeq, ret = 0x28, 0x20, 0x15, 0x06
    prog = [(ldh, 0, 0, 12), (jeq, 0, 10, 0x0800),           # 0-1: IPv4, else drop (12)
            (ld, 0, 0, 26), (jeq, 0, 4, S),                   # 2-3: saddr S? else 8
            (ld, 0, 0, 30), (jeq, 0, 6, D),                   # 4-5: daddr D? else drop
            (ldh, 0, 0, 18), (jeq, 3, 4, spec.ip_id),         # 6-7: our IP id: accept
            (jeq, 0, 3, D),                                   # 8: saddr D (an answer)?
            (ld, 0, 0, 30), (jeq, 0, 1, S),                   # 9-10: to S: accept
            (ret, 0, 0, 0xFFFF), (ret, 0, 0, 0)]              # 11 accept, 12 drop

    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        try:
            _bpf(s, prog)
            s.bind((ifname, 0))
        except OSError:
            s.close()
            raise
        return s
    s = make() if netns is None else opened_inside(netns, make)
    s.setblocking(False)
    try:     # what queued before the filter was attached
        while s.recv(65536):
            pass
    except BlockingIOError:
        pass
    return s


def _trace_socket(netns: str | None) -> socket.socket:
    def make():
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        s.bind((0, 0))
        s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        return s
    s = make() if netns is None else opened_inside(netns, make)
    s.setblocking(False)
    return s


def _attrs(buf: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(buf):
        ln, typ = struct.unpack_from("HH", buf, i)
        if ln < 4:
            break
        out[typ & 0x3FFF] = buf[i + 4:i + ln]
        i += (ln + 3) & ~3
    return out


def parse_trace(data: bytes) -> list[dict]:
    """NFT_MSG_TRACE messages -> [{id, family, table, chain, handle, type, verdict, target,
    policy, iif, oif}]."""
    out, i = [], 0
    while i + 16 <= len(data):
        ln, typ = struct.unpack_from("IH", data, i)
        if ln < 16:
            break
        if typ == NFT_MSG_TRACE:
            body = data[i + 16:i + ln]
            a = _attrs(body[4:])
            s = lambda k: a[k].rstrip(b"\0").decode(errors="replace") if k in a else None  # noqa: E731
            u32 = lambda k: struct.unpack(">I", a[k][:4])[0] if k in a else None         # noqa: E731
            e = {"id": u32(6), "family": FAMILIES.get(body[0], str(body[0])), "table": s(1),
                 "chain": s(2), "handle": struct.unpack(">Q", a[3])[0] if 3 in a else None,
                 "type": TRACE_TYPES.get(u32(4), str(u32(4))), "verdict": None,
                 "target": None, "policy": None, "iif": u32(10), "oif": u32(12)}
            if 5 in a:
                v = _attrs(a[5])
                if 1 in v:
                    e["verdict"] = VERDICTS.get(struct.unpack(">i", v[1][:4])[0])
                if 2 in v:
                    e["target"] = v[2].rstrip(b"\0").decode(errors="replace")
            if 16 in a:
                e["policy"] = VERDICTS.get(struct.unpack(">i", a[16][:4])[0])
            out.append(e)
        i += (ln + 3) & ~3
    return out


# ---- the probe -----------------------------------------------------------------------------

class Probe:
    """arm() -> send() (the source's host) -> collect(); close() undoes everything and may be
    called at any point, more than once."""

    def __init__(self, spec: ProbeSpec, netns: str | None = None) -> None:
        self.spec, self.netns = spec, netns
        self.table = f"{TABLE}_{spec.id[:8]}"
        self.tap = f"{PROBE_PREFIX}{spec.id[:8]}"
        self.tap_fd: int | None = None
        self.tables: list[tuple[str | None, str]] = []     # (netns, "family name")
        self.traces: list[tuple[str, socket.socket]] = []  # (where, socket)
        self.captures: list[tuple[str, socket.socket]] = []
        self.names: dict[str, dict[int, str]] = {}         # where -> ifindex -> name
        self.sent_at: float | None = None
        self.closed = False
        self.port_before: tuple[str, dict[str, int]] | None = None   # the inject vif's eBPF program

    def _match(self) -> str:
        s = self.spec
        return f"ip saddr {s.src_ip} ip daddr {s.dst_ip} ip id {s.ip_id} meta nftrace set 1"

    def _table(self, netns: str | None, family: str, hook: str, prio: int,
               device: str | None = None) -> None:
        dev = f' device "{device}"' if device else ""
        body = (f"  chain trace {{\n    type filter hook {hook}{dev} priority {prio}; "
                f"policy accept;\n    {self._match()}\n  }}\n")
        nftables.run(netns, nftables.replace_table(family, self.table, body),
                     f"arming probe {self.spec.id}")
        self.tables.append((netns, f"{family} {self.table}"))

    def arm(self) -> None:
        try:
            self._arm()
        except BaseException:
            self.close()
            raise

    def _arm(self) -> None:
        s = self.spec
        self.traces.append(("host", _trace_socket(self.netns)))
        with open_ipr(self.netns) as ipr:
            self.names["host"] = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
        if s.inject:
            self._table(self.netns, "netdev", "ingress", -500, s.inject)
            # an eBPF port security drop leaves no trace event: its counters tell
            self.port_before = bpf_ports.program(self.netns, s.inject)
        self._table(self.netns, "bridge", "prerouting", -400)
        rtr = s.router_netns
        if rtr and os.path.exists(os.path.join(nftables.NETNS_DIR, rtr)):
            self.traces.append(("router", _trace_socket(rtr)))
            with open_ipr(rtr) as ipr:
                self.names["router"] = {l["index"]: l.get_attr("IFLA_IFNAME")
                                        for l in ipr.get_links()}
            self._table(rtr, "inet", "prerouting", -500)
        for ifname in dict.fromkeys(s.watch + ((s.inject,) if s.inject else ())):
            try:
                self.captures.append((ifname, _capture(ifname, s, self.netns)))
            except OSError as e:
                raise DataplaneError(f"probe: cannot watch {ifname}: {e.strerror or e}") from None

    def send(self) -> None:
        """Inject the packet through the source vif's ingress (once): written into a tap of
        the probe's own, whose ingress filter redirects it into the vif's ingress."""
        s = self.spec
        if not s.inject or self.sent_at is not None:
            return
        try:
            self.tap_fd = _tap(self.tap) if self.netns is None else \
                opened_inside(self.netns, lambda: _tap(self.tap))
            with open_ipr(self.netns) as ipr:
                vif = ipr.link_lookup(ifname=s.inject)
                if not vif:
                    raise DataplaneError(f"probe: {s.inject} is gone")
                idx = ipr.link_lookup(ifname=self.tap)[0]
                ipr.link("set", index=idx, state="up")
                ipr.tc("add", "clsact", idx)
                # exactly the probe's packet (IPv4, its IP id at offset 4 of the IP header)
                ipr.tc("add-filter", "u32", idx, parent="ffff:fff2", protocol=0x0800, prio=1,
                       target=0x10001, keys=[f"0x{s.ip_id << 16:08x}/0xffff0000+4"],
                       action={"kind": "mirred", "direction": "ingress",
                               "action": "redirect", "ifindex": vif[0]})
            # the tap receives what is written to it synchronously: the packet has met the
            # vif's port security, the vSwitch and the flow filter when write() returns
            os.write(self.tap_fd, frame(s))
        except DataplaneError:
            raise
        except Exception as e:
            raise DataplaneError(f"probe: cannot inject into {s.inject}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
        self.sent_at = time.monotonic()

    def collect(self, deadline: float) -> dict:
        """Read trace events and watched vifs until `deadline` (time.monotonic()) or until the
        outcome is known: {events, arrived: [ifname], answered, dropped: event or None}."""
        s = self.spec
        events: list[dict] = []
        ours: set[tuple[str, int]] = set()
        arrived: list[str] = []
        answered = None
        socks = {sock: ("trace", where) for where, sock in self.traces}
        socks.update({sock: ("capture", ifname) for ifname, sock in self.captures})
        watched = set(s.watch) - ({s.inject} if s.inject else set())
        while True:
            dropped = next((e for e in events if _drops(e)), None)
            done = dropped is not None or (
                (not watched or watched <= set(arrived))
                and (not s.inject or answered is not None or s.proto == "udp"))
            left = deadline - time.monotonic()
            if done or left <= 0:
                break
            ready, _, _ = select.select(list(socks), [], [], min(left, 0.2))
            for sock in ready:
                kind, where = socks[sock]
                try:
                    data, addr = sock.recvfrom(1 << 16)
                except BlockingIOError:
                    continue
                if kind == "trace":
                    for e in parse_trace(data):
                        e["where"] = where
                        if e["table"] == self.table:
                            ours.add((where, e["id"]))
                            continue
                        if (where, e["id"]) in ours and len(events) < MAX_EVENTS:
                            events.append(self._named(e))
                elif addr[2] == socket.PACKET_OUTGOING and len(data) >= 34:
                    if data[26:30] == socket.inet_aton(s.src_ip) and \
                            struct.unpack("!H", data[18:20])[0] == s.ip_id:
                        if where not in arrived:
                            arrived.append(where)
                    elif where == s.inject and answered is None:
                        answered = _answer(s, data)
        for where, sock in self.traces:     # what the kernel queued before the outcome
            try:
                while True:
                    for e in parse_trace(sock.recv(1 << 16)):
                        e["where"] = where
                        if e["table"] == self.table:
                            ours.add((where, e["id"]))
                        elif (where, e["id"]) in ours and len(events) < MAX_EVENTS:
                            events.append(self._named(e))
            except BlockingIOError:
                pass
        dropped = next((e for e in events if _drops(e)), None)
        if dropped is not None:
            rtr = s.router_netns if dropped["where"] == "router" else self.netns
            fam = dropped["family"]
            try:
                rule = describe_rule(rtr, fam if fam in ("netdev", "bridge", "inet") else "inet",
                                     dropped["table"], dropped["chain"], dropped["handle"]) \
                    if dropped["handle"] is not None else None
            except DataplaneError:
                rule = None
            dropped = dict(dropped, rule=rule)
        if dropped is None and not arrived:
            dropped = self._port_drop()
        if dropped is not None:
            dropped["as"] = dropped.get("as") or classify(dropped)
        return {"events": events, "arrived": arrived, "answered": answered,
                "dropped": dropped, "sent": self.sent_at is not None}

    def _port_drop(self) -> dict | None:
        """The inject vif's eBPF port security as the drop, when one of its counters moved
        while the probe was in flight (a frame of the VM's own dropped meanwhile would count
        too: the rule names the reason, which says whose frame it could have been)."""
        before, s = self.port_before, self.spec
        after = bpf_ports.program(self.netns, s.inject) if before is not None else None
        if after is None or after[0] != before[0]:
            return None
        moved = [r for r, n in after[1].items() if n > before[1].get(r, 0)]
        if not moved:
            return None
        return {"where": "host", "family": "tc", "table": f"{s.inject} ingress", "chain": after[0],
                "handle": 1, "type": "rule", "verdict": "drop",
                "rule": {"rule": f"eBPF port security: drop {moved[0]}", "comment": moved[0]},
                "as": {"where": "port security", "reason": moved[0], "vif": s.inject,
                       "src_id": None, "dst_id": None}}

    def _named(self, e: dict) -> dict:
        names = self.names.get(e["where"], {})
        return dict(e, iif=names.get(e["iif"], e["iif"]) if e["iif"] else None,
                    oif=names.get(e["oif"], e["oif"]) if e["oif"] else None)

    def close(self) -> list[str]:
        """Delete the probe's tables and tap, close its sockets; the problems met, if any."""
        if self.closed:
            return []
        self.closed = True
        problems = []
        for _, sock in self.traces + self.captures:
            sock.close()
        for netns, table in self.tables:
            try:
                nftables.run(netns, f"delete table {table}\n", f"removing probe {self.spec.id}")
            except DataplaneError as e:
                problems.append(str(e))
        if self.tap_fd is not None:     # a tap without its file goes away with it
            os.close(self.tap_fd)
            self.tap_fd = None
        return problems


def _tap(name: str) -> int:
    """A tap device `name` in the calling thread's namespace; it lives as long as the file."""
    import fcntl
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
    except OSError:     # TUNSETIFF with IFF_TAP | IFF_NO_PI
        os.close(fd)
        raise
    return fd


def classify(dropped: dict) -> dict:
    """Which xen-tvd rule a traced drop is, in the words the drop counters use: {where (port
    security, flow filter, dom0 guard, router, nftables), reason, vif, src_id, dst_id} (ids:
    TVD ids of the flow filter's pair, None where the rule judges by the other end's address;
    the caller knows it from the packet)."""
    table, chain = dropped.get("table") or "", dropped.get("chain") or ""
    rule = dropped.get("rule") or {}
    out = {"where": "nftables", "reason": f"{dropped.get('family')} {table} {chain}",
           "vif": None, "src_id": None, "dst_id": None}
    if table == portsec.TABLE:
        m = portsec.base_or_sub(chain)
        out.update(where="port security", reason=rule.get("comment") or "port-security",
                   vif=m)
    elif table == flowfilter.TABLE:
        out["where"] = "flow filter"
        name = rule.get("counter") or ""
        parts = chain.split("_")
        if name.startswith("drop_"):
            reason, a, b = name[5:].rsplit("_", 2)
            out.update(reason=reason, src_id=int(a), dst_id=int(b))
        elif parts[0] in ("s", "r") and len(parts) == 3:
            out.update(reason="sender" if parts[0] == "s" else "receiver",
                       src_id=int(parts[1]), dst_id=int(parts[2]))
        elif parts[0] in ("closed", "reply") and len(parts) == 3:
            t = int(parts[2])
            out.update(reason=parts[0], **({"src_id": t} if parts[1] == "out" else {"dst_id": t}))
        elif parts[0] == "unrouted" and len(parts) == 2:
            out.update(reason="unrouted", src_id=int(parts[1]), dst_id=int(parts[1]))
    elif table == hostguard.TABLE:
        out.update(where="dom0 guard", reason="dom0-guard")
    elif dropped.get("where") == "router":
        out.update(where="router", reason="not forwarded by the router "
                                          f"({table} {chain}{' policy' if dropped.get('type') == 'policy' else ''})")
    return out


def _drops(e: dict) -> bool:
    return (e["type"] == "rule" and e["verdict"] == "drop") or \
        (e["type"] == "policy" and e["policy"] == "drop")


def leftovers(netns: str | None = None, router_netns: str | None = None,
              keep: set[str] = frozenset()) -> list[str]:
    """Remove the tables of probes a crashed proxy left (all but those whose 8-digit ids are
    in `keep`; a probe's tap went away with the process); what it removed."""
    out = []
    spaces = [netns] + ([router_netns] if router_netns and os.path.exists(
        os.path.join(nftables.NETNS_DIR, router_netns)) else [])
    for ns in spaces:
        stale = [f"{t['family']} {t['name']}" for o in nftables.list_json(ns, "tables") or ()
                 for t in [o.get("table") or {}]
                 if str(t.get("name", "")).startswith(TABLE + "_")
                 and t["name"][len(TABLE) + 1:] not in keep]
        if stale:
            nftables.run(ns, "".join(f"delete table {t}\n" for t in stale),
                         "removing stale probe tables")
            out += stale
    return out
