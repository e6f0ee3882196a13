"""Port security as one eBPF program per vif, at tc ingress (clsact, cls_bpf direct action).

The same checks as the nftables chains (`..portsec`, whose module docstring is the rule book),
compiled from the same PortRules, with one verdict per frame. Why: nftables' netdev hook and
link-layer loads cost 0.84–0.87× of a bare bridge in packets/s; this program 0.98×
(bench/README.md, "eBPF port security"). Where it is stricter than the nftables rules:
  - a frame too short for the header its ethertype announces (Ethernet, IPv4 with its options,
    UDP, ARP for Ethernet/IPv4, IPv6 and each extension header) is dropped as `malformed`
    (nftables fails such a rule's load and lets the frame pass);
  - an IPv6 frame with more than MAX_EXT extension headers, or whose extension headers end
    beyond MAX_OFF bytes into the frame, is dropped as `malformed`.
A frame whose headers are not all in its linear part (one sent through a packet socket's ring
carries all but its Ethernet header in page fragments) gets its first PULL bytes made linear
(bpf_skb_pull_data) and is checked again from the start; no other frame is pulled.
Each drop increments its reason's slot in the program's counter map (REASONS); the flood limit
is a token bucket in a second map, updated without a lock: two CPUs racing may each spend the
same token, so a storm spread over n CPUs passes at most n times the limit per race window.
`log_drops` has no equivalent here (no kernel log line from a program): compile() refuses it.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import struct
from dataclasses import dataclass

from ..portsec import PortRules
from ..report import DataplaneError
from . import kernel
from .asm import PSEUDO_MAP_FD, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Asm

REASONS = ("flood-limit", "source-mac", "vlan-tag", "dhcp-server", "ipv4-source", "arp-malformed",
           "arp-sender-mac", "arp-sender-ip", "nd-redirect", "router-advert", "ipv6-source",
           "nd-target", "malformed")
PREFIX, COUNTERS_MAP = "xtvd", "xtvd_drops"
PULL = 256            # bytes made linear before parsing (or the whole frame, when shorter)
MAX_EXT = 8           # IPv6 extension headers walked before the frame counts as malformed
MAX_OFF = 512         # ... and where the last of them may end, from the frame's start
_EXT6 = (0, 43, 60)   # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_FRAG6, _AH = 44, 51
# __sk_buff offsets (include/uapi/linux/bpf.h)
_LEN, _PKT_TYPE, _VLAN_PRESENT, _DATA, _DATA_END = 0, 4, 20, 76, 80


def _le(data: bytes) -> int:
    """What a load of these network-order bytes yields on a little-endian CPU."""
    return int.from_bytes(data, "little")


def _be16(value: int) -> int:
    return _le(struct.pack("!H", value))


def _mac(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


class _Prog:
    """Emits the checks; `drop(reason)` is a jump target, its stub emitted once at the end."""

    def __init__(self, rules: PortRules, counters_fd: int, bucket_fd: int) -> None:
        self.r, self.a = rules, Asm()
        self.counters_fd, self.bucket_fd = counters_fd, bucket_fd
        self.used: set[str] = {"malformed"}
        self.n = 0

    def drop(self, reason: str) -> str:
        self.used.add(reason)
        return f"drop:{reason}"

    def fresh(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def need(self, ptr: int, length: int) -> None:
        """ptr + length bytes must be in the linear part (the verifier then knows); if not,
        "pull" makes the headers linear and the checks start over, once: a frame still
        too short after that is malformed."""
        self.a.mov(R3, ptr)
        self.a.alu("add", R3, length)
        self.a.jmp("gt", R3, R8, "pull", reg=True)

    def build(self) -> bytes:
        a, r = self.a, self.r
        a.mov(R6, R1)
        a.movi(R1, 0)
        a.stx(8, R10, -16, R1)                      # pulled yet? (a spilled register: tracked)
        if r.flood_limit:                           # from metadata only: before any start-over
            self._flood()
        a.label("top")
        self._data()
        self.need(R7, 14)
        if r.mac is not None:
            self._mac_at(6, "source-mac")
        a.ldx(4, R3, R6, _VLAN_PRESENT)            # a tag the receive path took off already
        a.jmp("ne", R3, 0, self.drop("vlan-tag"))
        a.ldx(2, R3, R7, 12)
        a.jmp("eq", R3, _be16(0x0800), "ipv4")
        a.jmp("eq", R3, _be16(0x86DD), "ipv6")
        a.jmp("eq", R3, _be16(0x0806), "arp")
        for tpid in (0x8100, 0x88A8, 0x9100):
            a.jmp("eq", R3, _be16(tpid), self.drop("vlan-tag"))
        a.ja("pass")
        self._ipv4()
        self._arp()
        self._ipv6()
        a.label("pass")
        a.movi(R0, kernel.TC_ACT_OK)
        a.exit()
        self._pull()
        self._drops()
        return a.assemble()

    def _mac_at(self, off: int, reason: str) -> None:
        """The declared MAC at this offset of the frame, or a drop for `reason`."""
        m = _mac(self.r.mac)
        self.a.ldx(4, R3, R7, off)
        self.a.jmp("ne", R3, _le(m[:4]), self.drop(reason), w32=True)
        self.a.ldx(2, R3, R7, off + 4)
        self.a.jmp("ne", R3, _le(m[4:]), self.drop(reason))

    def _pull(self) -> None:
        """Only a frame whose headers are not all linear gets here (a packet socket's ring
        puts all but the Ethernet header in fragments); a TCP frame's payload is never
        pulled, so GSO frames stay as they are."""
        a = self.a
        a.label("pull")
        a.ldx(8, R1, R10, -16)
        a.jmp("ne", R1, 0, self.drop("malformed"))
        a.movi(R1, 1)
        a.stx(8, R10, -16, R1)
        a.ldx(4, R2, R6, _LEN)
        a.jmp("le", R2, PULL, "pull_len")
        a.movi(R2, PULL)
        a.label("pull_len")
        a.mov(R1, R6)
        a.call(kernel.HELPER_SKB_PULL_DATA)
        a.jmp("ne", R0, 0, self.drop("malformed"))
        a.ja("top")

    def _data(self) -> None:
        self.a.ldx(4, R7, R6, _DATA)
        self.a.ldx(4, R8, R6, _DATA_END)

    def _flood(self) -> None:
        """Broadcast/multicast (pkt_type 1-2): a token bucket of flood_limit per second,
        two seconds' worth deep, in ns of credit: {u64 credit, u64 last}."""
        a, rate = self.a, self.r.flood_limit
        cost = 10**9 // rate
        a.ldx(4, R3, R6, _PKT_TYPE)
        a.jmp("eq", R3, 1, "flood")
        a.jmp("ne", R3, 2, "flood_done")
        a.label("flood")
        a.st(4, R10, -4, 0)
        a.ld64(R1, self.bucket_fd, src=PSEUDO_MAP_FD)
        a.mov(R2, R10)
        a.alu("add", R2, -4)
        a.call(kernel.HELPER_MAP_LOOKUP)
        a.jmp("eq", R0, 0, self.drop("flood-limit"))
        a.mov(R9, R0)
        a.call(kernel.HELPER_KTIME_GET_NS)
        a.ldx(8, R1, R9, 8)
        a.movi(R2, 0)                               # elapsed; 0 when another CPU was later
        a.jmp("le", R0, R1, "flood_elapsed", reg=True)
        a.stx(8, R9, 8, R0)
        a.mov(R2, R0)
        a.alu("sub", R2, R1, reg=True)
        a.label("flood_elapsed")
        a.ldx(8, R1, R9, 0)
        a.alu("add", R1, R2, reg=True)
        a.ld64(R2, 2 * rate * cost)
        a.jmp("le", R1, R2, "flood_capped", reg=True)
        a.mov(R1, R2)
        a.label("flood_capped")
        a.ld64(R2, cost)
        a.jmp("ge", R1, R2, "flood_spend", reg=True)
        a.stx(8, R9, 0, R1)
        a.ja(self.drop("flood-limit"))
        a.label("flood_spend")
        a.alu("sub", R1, R2, reg=True)
        a.stx(8, R9, 0, R1)
        a.label("flood_done")

    def _v4_in(self, reg: int, addrs: tuple[str, ...], ok: str) -> None:
        for ip in addrs:
            self.a.jmp("eq", reg, _le(ipaddress.IPv4Address(ip).packed), ok, w32=True)

    def _ipv4(self) -> None:
        a, r = self.a, self.r
        a.label("ipv4")
        self.need(R7, 34)
        a.ldx(1, R4, R7, 14)
        a.alu("and", R4, 0x0F)
        a.jmp("lt", R4, 5, self.drop("malformed"))
        a.alu("lsh", R4, 2)
        a.mov(R9, R7)
        a.alu("add", R9, R4, reg=True)
        a.alu("add", R9, 14)                        # R9: the transport header
        a.ldx(1, R3, R7, 23)
        a.jmp("ne", R3, 17, "v4_source")
        a.ldx(2, R3, R7, 20)
        a.jmp("set", R3, _be16(0x1FFF), "v4_source")   # a later fragment: no UDP header
        self.need(R9, 8)
        a.ldx(2, R4, R9, 0)
        if not r.dhcp_server:
            a.jmp("eq", R4, _be16(67), self.drop("dhcp-server"))
        if r.v4 is not None:                        # DHCP client from 0.0.0.0, 68 -> 67
            a.jmp("ne", R4, _be16(68), "v4_source")
            a.ldx(2, R3, R9, 2)
            a.jmp("ne", R3, _be16(67), "v4_source")
            a.ldx(4, R3, R7, 26)
            a.jmp("eq", R3, 0, "pass", w32=True)
        a.label("v4_source")
        if r.v4 is not None:
            a.ldx(4, R3, R7, 26)
            self._v4_in(R3, r.v4, "pass")
            a.ja(self.drop("ipv4-source"))
        else:
            a.ja("pass")

    def _arp(self) -> None:
        a, r = self.a, self.r
        a.label("arp")
        a.ldx(4, R3, R6, _LEN)
        a.jmp("lt", R3, 42, self.drop("arp-malformed"))   # shorter than Ethernet/IPv4 ARP
        self.need(R7, 42)
        for off, size, want in ((14, 2, _be16(1)), (16, 2, _be16(0x0800)), (18, 1, 6), (19, 1, 4)):
            a.ldx(size, R3, R7, off)
            a.jmp("ne", R3, want, self.drop("arp-malformed"))
        if r.mac is not None:
            self._mac_at(22, "arp-sender-mac")
        if r.v4 is not None:
            a.ldx(4, R3, R7, 28)
            a.jmp("eq", R3, 0, "pass", w32=True)    # RFC 5227 probe
            self._v4_in(R3, r.v4, "pass")
            a.ja(self.drop("arp-sender-ip"))
        else:
            a.ja("pass")

    def _ipv6(self) -> None:
        """The extension headers are walked with their offset as a bounded number (R9, at most
        MAX_OFF): the verifier then sees one state per header kind at each step, where a
        pointer with a different range on every path made it explore 3^8 of them."""
        a = self.a
        a.label("ipv6")
        self.need(R7, 54)
        a.ldx(1, R4, R7, 20)                        # R4: next header
        a.movi(R9, 54)                              # R9: where it starts, from the frame's start
        for i in range(MAX_EXT):
            a.label(f"ext{i}")
            for nh in _EXT6:
                a.jmp("eq", R4, nh, f"opts{i}")
            a.jmp("eq", R4, _FRAG6, f"frag{i}")
            a.jmp("eq", R4, _AH, f"ah{i}")
            a.ja("l4")
            for kind in ("opts", "ah", "frag"):
                a.label(f"{kind}{i}")
                a.mov(R1, R7)
                a.alu("add", R1, R9, reg=True)
                self.need(R1, 8)
                a.ldx(1, R4, R1, 0)
                if kind == "frag":
                    a.ldx(2, R5, R1, 2)
                    a.alu("add", R9, 8)
                    a.jmp("set", R5, _be16(0xFFF8), "no_l4")   # a later fragment: no transport header
                else:
                    a.ldx(1, R5, R1, 1)
                    a.alu("add", R5, 1 if kind == "opts" else 2)
                    a.alu("lsh", R5, 3 if kind == "opts" else 2)
                    a.alu("add", R9, R5, reg=True)
                a.jmp("gt", R9, MAX_OFF, self.drop("malformed"))
                a.ja(f"ext{i + 1}")
        a.label(f"ext{MAX_EXT}")
        for nh in _EXT6 + (_FRAG6, _AH):
            a.jmp("eq", R4, nh, self.drop("malformed"))
        a.ja("l4")
        a.label("no_l4")
        a.movi(R4, 59)                              # "no next header"
        a.label("l4")
        a.alu("add", R9, R7, reg=True)              # R9: the transport header
        self._ipv6_l4()

    def _v6_in(self, hi: int, lo: int, addrs: tuple[str, ...], ok: str) -> None:
        for ip in addrs:
            b, miss = ipaddress.IPv6Address(ip).packed, self.fresh("v6miss")
            self.a.ld64(R2, _le(b[:8]))
            self.a.jmp("ne", hi, R2, miss, reg=True)
            self.a.ld64(R2, _le(b[8:]))
            self.a.jmp("eq", lo, R2, ok, reg=True)
            self.a.label(miss)

    def _ipv6_l4(self) -> None:
        a, r = self.a, self.r
        a.movi(R5, 0xFFFF)                          # R5: ICMPv6 type, 0xffff: not ICMPv6
        a.jmp("ne", R4, 58, "l4_udp")
        self.need(R9, 4)
        a.ldx(1, R5, R9, 0)
        a.jmp("eq", R5, 137, self.drop("nd-redirect"))
        if not r.router_adverts:
            a.jmp("eq", R5, 134, self.drop("router-advert"))
        a.ja("v6_source")
        a.label("l4_udp")
        if not r.dhcp_server:
            a.jmp("ne", R4, 17, "v6_source")
            self.need(R9, 8)
            a.ldx(2, R3, R9, 0)
            a.jmp("eq", R3, _be16(547), self.drop("dhcp-server"))
        a.label("v6_source")
        if r.v6 is None:
            a.ja("pass")
            return
        a.ldx(8, R3, R7, 22)
        a.ldx(8, R4, R7, 30)
        a.mov(R2, R3)
        a.alu("or", R2, R4, reg=True)
        a.jmp("ne", R2, 0, "v6_declared")
        for typ in (135, 131, 143):                 # from ::, only DAD and MLD reports
            a.jmp("eq", R5, typ, "pass")
        a.ja(self.drop("ipv6-source"))
        a.label("v6_declared")
        if not r.v6:
            a.ja(self.drop("ipv6-source"))
            return
        self._v6_in(R3, R4, r.v6, "v6_source_ok")
        a.ja(self.drop("ipv6-source"))
        a.label("v6_source_ok")
        a.jmp("ne", R5, 136, "pass")                # neighbour advertisement: its target
        self.need(R9, 24)
        a.ldx(8, R3, R9, 8)
        a.ldx(8, R4, R9, 16)
        self._v6_in(R3, R4, r.v6, "pass")
        a.ja(self.drop("nd-target"))

    def _drops(self) -> None:
        a = self.a
        for reason in sorted(self.used, key=REASONS.index):
            a.label(f"drop:{reason}")
            a.movi(R9, REASONS.index(reason))
            a.ja("count")
        a.label("count")
        a.stx(4, R10, -4, R9)
        a.ld64(R1, self.counters_fd, src=PSEUDO_MAP_FD)
        a.mov(R2, R10)
        a.alu("add", R2, -4)
        a.call(kernel.HELPER_MAP_LOOKUP)
        a.jmp("eq", R0, 0, "shot")
        a.movi(R1, 1)
        a.atomic_add64(R0, 0, R1)
        a.label("shot")
        a.movi(R0, kernel.TC_ACT_SHOT)
        a.exit()


def read_counters(map_fd: int) -> dict[str, int]:
    """reason -> frames dropped, for the reasons with any, from a program's counter map."""
    out = {}
    for i, reason in enumerate(REASONS):
        n = struct.unpack("<Q", kernel.map_lookup(map_fd, i, 8))[0]
        if n:
            out[reason] = n
    return out


def compile_rules(rules: PortRules, counters_fd: int = 0, bucket_fd: int = 0) -> bytes:
    if rules.log_drops:
        raise DataplaneError(f"port {rules.ifname}: log-drops needs the nftables port security "
                             f"(an eBPF program writes no kernel log line)")
    return _Prog(rules, counters_fd, bucket_fd).build()


def program_name(rules: PortRules) -> str:
    """xtvd + a digest of the program (map fds left out): the same rules, the same name."""
    return PREFIX + hashlib.sha256(compile_rules(rules)).hexdigest()[:kernel.NAME_LEN - len(PREFIX)]


@dataclass
class PortProgram:
    """One vif's loaded program and its maps (fds owned here: close() them)."""
    name: str
    fd: int
    counters_fd: int
    bucket_fd: int

    @classmethod
    def load(cls, rules: PortRules) -> "PortProgram":
        name = program_name(rules)
        counters = kernel.map_array(COUNTERS_MAP, 8, len(REASONS))
        try:
            bucket = kernel.map_array("xtvd_flood", 16, 1)
            try:
                fd = kernel.load_sched_cls(compile_rules(rules, counters, bucket), name)
            except DataplaneError:
                os.close(bucket)
                raise
        except DataplaneError:
            os.close(counters)
            raise
        return cls(name, fd, counters, bucket)

    def counters(self) -> dict[str, int]:
        return read_counters(self.counters_fd)

    def close(self) -> None:
        for fd in (self.fd, self.counters_fd, self.bucket_fd):
            os.close(fd)
