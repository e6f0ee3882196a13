"""eBPF port security (xen_tvd/dataplane/bpf), tier 1: every program is loaded by this kernel's
verifier and run by the kernel, on crafted frames (BPF_PROG_TEST_RUN) and on a real veth's
ingress. The attack and control frames are the ones the nftables port security must stop and
pass (tests/dataplane/dishonest.py)."""
from __future__ import annotations

import dataclasses
import struct
import time

import pytest

from tests.dataplane.dishonest import (ATTACKS, BCAST, CONTROLS, ETH_ARP, ETH_IP, ETH_IP6, IP1, IP6_1, LL1, M1, M2,
                                       Injector, MarkSniffer, RingInjector, arp, eth, icmp6, ipv6, marker, nd_ra, u4, udp4,
                                       udp6)
from tests.dataplane.dp_helpers import ping, sh, veth
from xen_tvd.dataplane import DataplaneError
from xen_tvd.dataplane.bpf import kernel, tc
from xen_tvd.dataplane.bpf.asm import Asm, R0
from xen_tvd.dataplane.bpf.portsec import PortProgram, PortRules
from xen_tvd.desired.model import Segment, VifPort

SEG = Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=1500)
A1 = VifPort("vif1.0", "alpha", mac=M1, addresses=(f"{IP1}/24", IP6_1))
OK, SHOT = kernel.TC_ACT_OK, kernel.TC_ACT_SHOT

# what each attack of dishonest.ATTACKS is dropped for (the nftables rules' reasons)
REASON_OF = {
    "spoofed src MAC (unknown)": "source-mac",
    "spoofed src MAC (same-TVD VM's)": "source-mac",
    "spoofed src MAC (other TVD VM's)": "source-mac",
    "spoofed src IPv4 (same-TVD VM's)": "ipv4-source",
    "spoofed src IPv4 (other TVD VM's)": "ipv4-source",
    "spoofed src IPv6 (global)": "ipv6-source",
    "spoofed src IPv6 (another's link-local)": "ipv6-source",
    "gratuitous ARP request for another's IP": "arp-sender-ip",
    "gratuitous ARP reply for another's IP": "arp-sender-ip",
    "ARP with forged sender MAC": "arp-sender-mac",
    "ND advert for another's address": "nd-target",
    "DHCP server reply (OFFER, sport 67)": "dhcp-server",
    "DHCPv6 server reply (sport 547)": "dhcp-server",
    "IPv6 router advertisement": "router-advert",
    "other ethertype (0x88b5) from a spoofed MAC": "source-mac",
}


@pytest.fixture
def load():
    progs = []

    def make(port=A1, segment=SEG, **rules):
        p = PortProgram.load(dataclasses.replace(PortRules.of(port, segment=segment), **rules))
        progs.append(p)
        return p

    yield make
    for p in progs:
        p.close()


def verdict(prog: PortProgram, frame: bytes) -> tuple[int, dict[str, int]]:
    """The program's verdict on one frame, and which drop counters it moved."""
    before = prog.counters()
    v = kernel.test_run(prog.fd, frame)
    after = prog.counters()
    return v, {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def test_every_attack_is_dropped_for_its_reason_and_every_control_passes(load):
    prog = load()
    wrong = []
    for kind, make in ATTACKS.items():
        v, moved = verdict(prog, make(marker(kind)))
        # a tagged frame: the kernel's receive path would have taken the tag off (the veth test
        # below); a test run sees the TPID as the ethertype
        want = REASON_OF.get(kind, "vlan-tag" if "tagged" in kind else None)
        if (v, moved) != (SHOT, {want: 1}):
            wrong.append(f"{kind}: verdict {v}, counted {moved}, want {SHOT} {want}")
    for kind, make in CONTROLS.items():
        v, moved = verdict(prog, make(marker(kind)))
        if (v, moved) != (OK, {}):
            wrong.append(f"{kind}: verdict {v}, counted {moved}, want {OK}")
    assert set(REASON_OF) <= set(ATTACKS)
    assert not wrong, wrong


def _v6_opts(nh: int) -> bytes:
    """An 8-byte hop-by-hop/destination options header (PadN) whose next header is nh."""
    return bytes([nh, 0, 1, 4, 0, 0, 0, 0])


def test_headers_are_parsed_not_assumed(load):
    prog = load()
    dst6 = "33:33:00:00:00:01"
    ra = nd_ra(LL1, M1, marker("ra"))[40:]                      # the ICMPv6 message alone
    cases = {
        # IPv6: the transport header behind extension headers is found
        "RA behind hop-by-hop + destination options":
            (eth(dst6, M1, ETH_IP6, ipv6(LL1, "ff02::1", 0, _v6_opts(60) + _v6_opts(58) + ra)),
             SHOT, "router-advert"),
        "nine extension headers": (eth(dst6, M1, ETH_IP6, ipv6(IP6_1, "ff02::1", 0,
                                   b"".join(_v6_opts(0) for _ in range(8)) + _v6_opts(59))), SHOT, "malformed"),
        "later fragment, own source": (eth(dst6, M1, ETH_IP6, ipv6(IP6_1, "ff02::1", 44,
                                      bytes([17, 0, 0, 8, 0, 0, 0, 1]) + struct.pack("!HH", 547, 546) + b"x" * 16)),
                                      OK, None),
        "later fragment, spoofed source": (eth(dst6, M1, ETH_IP6, ipv6("fd00:10::9", "ff02::1", 44,
                                          bytes([17, 0, 0, 8, 0, 0, 0, 1]) + b"x" * 16)), SHOT, "ipv6-source"),
        "ICMPv6 from :: other than DAD/MLD": (eth(dst6, M1, ETH_IP6, icmp6("::", "ff02::1", 128, 0, b"x" * 8)),
                                              SHOT, "ipv6-source"),
        "extension header longer than the frame": (eth(dst6, M1, ETH_IP6, ipv6(IP6_1, "ff02::1", 0,
                                                  bytes([58, 255]) + b"\0" * 14)), SHOT, "malformed"),
        # IPv4: the UDP header is where the IHL says
        "DHCP offer behind IPv4 options": (eth(BCAST, M1, ETH_IP, _with_options(udp4(IP1, "255.255.255.255", 67, 68, b"x" * 8))),
                                           SHOT, "dhcp-server"),
        "later IPv4 fragment whose bytes read 67": (eth(BCAST, M1, ETH_IP, _fragment(udp4(IP1, "255.255.255.255", 67, 68, b"x" * 8))),
                                                    OK, None),
        "IPv4 options past the frame": (eth(BCAST, M1, ETH_IP, b"\x4f" + udp4(IP1, "255.255.255.255", 9, 9, b"")[1:]),
                                        SHOT, "malformed"),
        "IHL below 5": (eth(BCAST, M1, ETH_IP, b"\x44" + udp4(IP1, "255.255.255.255", 9, 9, b"x")[1:]), SHOT, "malformed"),
        "truncated ARP": (eth(BCAST, M1, ETH_ARP, arp(1, M1, IP1, "00:00:00:00:00:00", IP1))[:30], SHOT, "arp-malformed"),
        "ARP for another protocol": (eth(BCAST, M1, ETH_ARP, arp(1, M1, IP1, "00:00:00:00:00:00", IP1)[:2] + b"\x86\xdd"
                                         + arp(1, M1, IP1, "00:00:00:00:00:00", IP1)[4:]), SHOT, "arp-malformed"),
    }
    wrong = []
    for name, (frame, want_v, reason) in cases.items():
        v, moved = verdict(prog, frame)
        if (v, moved) != (want_v, {reason: 1} if reason else {}):
            wrong.append(f"{name}: verdict {v}, counted {moved}, want {want_v} {reason}")
    assert not wrong, wrong


def _with_options(ip: bytes) -> bytes:
    """The IPv4 packet with one 4-byte option (NOP x4), IHL 6."""
    return bytes([0x46]) + ip[1:2] + struct.pack("!H", len(ip) + 4) + ip[4:20] + b"\x01" * 4 + ip[20:]


def _fragment(ip: bytes) -> bytes:
    """The same bytes as a later fragment (offset 8 bytes)."""
    return ip[:6] + struct.pack("!H", 1) + ip[8:]


def test_what_a_vif_declares_decides_what_is_pinned(load):
    none_declared = load(dataclasses.replace(A1, addresses=()))
    dhcp_discover = eth(BCAST, M1, ETH_IP, udp4("0.0.0.0", "255.255.255.255", 68, 67, b"x"))
    probe = eth(BCAST, M1, ETH_ARP, arp(1, M1, "0.0.0.0", "00:00:00:00:00:00", IP1))
    dad = eth("33:33:ff:00:00:01", M1, ETH_IP6, icmp6("::", "ff02::1:ff00:1", 135, 0, b"\0" * 20))
    own_ll = eth("33:33:00:00:00:01", M1, ETH_IP6, udp6(LL1, "ff02::1", 9, 9, b"x"))
    for frame in (dhcp_discover, probe, dad, own_ll):
        assert verdict(none_declared, frame) == (OK, {})
    assert verdict(none_declared, u4(M1, IP1, b"x")) == (SHOT, {"ipv4-source": 1})
    assert verdict(none_declared, eth(BCAST, M1, ETH_ARP, arp(1, M1, IP1, BCAST, IP1))) == (SHOT, {"arp-sender-ip": 1})
    assert verdict(none_declared, eth("33:33:00:00:00:01", M1, ETH_IP6, udp6(IP6_1, "ff02::1", 9, 9, b"x"))) \
        == (SHOT, {"ipv6-source": 1})

    nothing_declared = load(dataclasses.replace(A1, addresses=None))
    assert verdict(nothing_declared, u4(M1, "10.1.2.3", b"x")) == (OK, {})
    assert verdict(nothing_declared, u4(M2, IP1, b"x")) == (SHOT, {"source-mac": 1})
    assert verdict(load(dataclasses.replace(A1, mac=None)), u4(M2, IP1, b"x")) == (OK, {})

    servers = load(segment=dataclasses.replace(SEG, allow_dhcp_server=True, allow_router_advertisements=True))
    assert verdict(servers, ATTACKS["DHCP server reply (OFFER, sport 67)"](b"x")) == (OK, {})
    assert verdict(servers, ATTACKS["IPv6 router advertisement"](b"x")) == (OK, {})
    assert verdict(servers, ATTACKS["spoofed src IPv4 (same-TVD VM's)"](b"x"))[0] == SHOT


def test_broadcast_beyond_the_flood_limit_is_dropped_unicast_never(load):
    prog = load(segment=dataclasses.replace(SEG, flood_limit=1000))
    bcast = u4(M1, IP1, b"storm")
    assert kernel.test_run(prog.fd, bcast, repeat=3000) == SHOT
    dropped = prog.counters().get("flood-limit", 0)
    # the bucket starts full (2 s = 2000 frames) and refills 1 per ms while the 3000 run
    assert 0 < dropped <= 1000, dropped
    unicast = eth("02:00:00:0a:00:02", M1, ETH_IP, udp4(IP1, "192.168.10.2", 9, 9, b"x"))
    assert kernel.test_run(prog.fd, unicast, repeat=3000) == OK
    assert prog.counters().get("flood-limit", 0) == dropped
    unlimited = load(segment=dataclasses.replace(SEG, flood_limit=0))
    assert kernel.test_run(unlimited.fd, bcast, repeat=3000) == OK


def test_refusals_say_what_to_change(load):
    with pytest.raises(DataplaneError, match="log-drops needs the nftables port security"):
        load(log_drops=5)
    a = Asm()
    a.exit()                                      # R0 never set: the verifier refuses
    with pytest.raises(DataplaneError, match=r"loading BPF program bad: .*verifier: .*R0 !read_ok"):
        kernel.load_sched_cls(a.assemble(), "bad")
    a = Asm()
    a.ja("nowhere")
    with pytest.raises(ValueError, match="undefined label nowhere"):
        a.assemble()


def test_on_a_real_vif_ingress(mkns, load):
    """Attached to a veth standing in for netback's vif, bridged to a second VM: the kernel's
    receive path runs it (a VLAN tag is already off the frame, in skb metadata; a packet
    socket's frame may carry its headers in fragments)."""
    h, g1, g2 = mkns("h"), mkns("g1"), mkns("g2")
    sh(h, "ip", "link", "add", "br0", "type", "bridge")
    sh(h, "ip", "link", "set", "br0", "up")
    for vif, g, mac, ip in (("vif1.0", g1, M1, IP1), ("vif2.0", g2, M2, "192.168.10.2")):
        veth(h, vif, "eth0", peer_ns=g)
        sh(h, "ip", "link", "set", vif, "master", "br0")
        sh(g, "ip", "link", "set", "eth0", "address", mac)
        sh(g, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    prog = load()
    with tc.socket(h) as ipr:
        vif = ipr.link_lookup(ifname="vif1.0")[0]
        assert tc.attached(ipr, vif, "vif1.0") is None
        tc.attach(ipr, vif, "vif1.0", prog.fd, prog.name)
        assert tc.attached(ipr, vif, "vif1.0") == tc.Attached(prog.name, kernel.prog_info(prog.fd)[0])
    assert ping(g1, "192.168.10.2"), "honest IPv4 (and its ARP) through the program"
    sniff, inj, ring = MarkSniffer(g2), Injector(g1), RingInjector(g1)
    try:
        inj.send(u4(M1, IP1, marker("tagged"), tags=((0x8100, 200),)))
        inj.send(u4(M1, "192.168.10.9", marker("spoofed")))
        inj.send(u4(M1, IP1, marker("honest")))
        inj.send(eth(BCAST, M1, ETH_IP, b"\x45" + b"\0" * 10)[:25])     # (the kernel's test run refuses it)
        # headers in fragments: made linear, then checked like any other frame
        ring.send(u4(M1, IP1, marker("ring honest")))
        ring.send(u4(M1, "192.168.10.9", marker("ring spoofed")))
        time.sleep(0.3)
        assert [sniff.count(k) for k in ("tagged", "spoofed", "honest", "ring honest", "ring spoofed")] \
            == [0, 0, 1, 1, 0]
    finally:
        sniff.close()
        inj.close()
        ring.close()
    got = prog.counters()
    assert (got.get("vlan-tag"), got.get("ipv4-source"), got.get("malformed")) == (1, 2, 1), got
    # replacing the program is one request; the name says which one is in force
    other = load(dataclasses.replace(A1, addresses=(f"{IP1}/24", "192.168.10.9/24")))
    with tc.socket(h) as ipr:
        tc.attach(ipr, vif, "vif1.0", other.fd, other.name)
        assert tc.attached(ipr, vif, "vif1.0").name == other.name != prog.name
        tc.detach(ipr, vif, "vif1.0")
        tc.detach(ipr, vif, "vif1.0")
        assert tc.attached(ipr, vif, "vif1.0") is None
    assert ping(g1, "192.168.10.2")
