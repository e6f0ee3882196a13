"""Frame crafting for dishonest-VM tests: plain struct, no scapy (nothing to install, and every
byte on the wire is visible here). Every crafted frame carries a marker (MARK + kind + seq)
inside its payload or as trailing bytes, so a receiver recognises it by content, never by
counting (bridges and IPv6 stacks emit IGMP/MLD/ND of their own)."""
from __future__ import annotations

import ipaddress
import socket
import struct

from tests.common.packets import inet_checksum

MARK = b"XTVD-ATK:"
BCAST = "ff:ff:ff:ff:ff:ff"
ETH_IP, ETH_ARP, ETH_IP6, ETH_8021Q, ETH_8021AD = 0x0800, 0x0806, 0x86DD, 0x8100, 0x88A8


def marker(kind: str, seq: int = 0) -> bytes:
    return MARK + kind.encode() + b"#" + str(seq).encode() + b";"


def mac_b(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def eth(dst: str, src: str, ethertype: int, payload: bytes, tags: tuple[tuple[int, int], ...] = (),
        trailer: bytes = b"") -> bytes:
    """Ethernet frame; tags = ((tpid, vid), ...) outermost first; trailer = bytes after payload."""
    hdr = mac_b(dst) + mac_b(src)
    for tpid, vid in tags:
        hdr += struct.pack("!HH", tpid, vid & 0xFFF)
    frame = hdr + struct.pack("!H", ethertype) + payload + trailer
    return frame + b"\0" * max(0, 60 - len(frame))


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", inet_checksum(h)) + h[12:] + payload


def udp4(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def icmp4_echo(src: str, dst: str, data: bytes) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, 0x7476, 1) + data
    return ipv4(src, dst, 1, body[:2] + struct.pack("!H", inet_checksum(body)) + body[4:])


def tcp4_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 8192, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    return ipv4(src, dst, 6, hdr[:16] + struct.pack("!H", inet_checksum(pseudo + hdr)) + hdr[18:])


def arp(op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP, 6, 4, op, mac_b(sha), socket.inet_aton(spa),
                       mac_b(tha), socket.inet_aton(tpa))


def ipv6(src: str, dst: str, nh: int, payload: bytes, hlim: int = 255) -> bytes:
    return (struct.pack("!IHBB", 0x60000000, len(payload), nh, hlim) +
            ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def _l4_6(src: str, dst: str, nh: int, body: bytes, csum_at: int) -> bytes:
    pseudo = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed +
              struct.pack("!I3xB", len(body), nh))
    c = inet_checksum(pseudo + body)
    return ipv6(src, dst, nh, body[:csum_at] + struct.pack("!H", c) + body[csum_at + 2:])


def udp6(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    return _l4_6(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data, 6)


def icmp6(src: str, dst: str, typ: int, code: int, body: bytes) -> bytes:
    return _l4_6(src, dst, 58, struct.pack("!BBH", typ, code, 0) + body, 2)


def nd_opt_mark(mark: bytes) -> bytes:
    """An ND option of experimental type 253 (RFC 4727; receivers ignore it) carrying the
    marker inside the ICMPv6 message, where no layer trims it off."""
    data = mark + b"\0" * (-(len(mark) + 2) % 8)
    return bytes([253, (len(data) + 2) // 8]) + data


def nd_na(src: str, dst: str, target: str, tll_mac: str, mark: bytes, flags: int = 0x20000000) -> bytes:
    """Neighbour advertisement (override flag) with a target link-layer address option."""
    body = struct.pack("!I", flags) + ipaddress.IPv6Address(target).packed + b"\x02\x01" + mac_b(tll_mac)
    return icmp6(src, dst, 136, 0, body + nd_opt_mark(mark))


def nd_ra(src: str, src_mac: str, mark: bytes) -> bytes:
    """Router advertisement: lifetime 1800 s, a prefix option 2001:db8:bad::/64, SLLA."""
    body = struct.pack("!BBHII", 64, 0, 1800, 0, 0) + b"\x01\x01" + mac_b(src_mac)
    body += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + ipaddress.IPv6Address("2001:db8:bad::").packed
    return icmp6(src, "ff02::1", 134, 0, body + nd_opt_mark(mark))


def dhcp_offer(server_ip: str, server_mac: str, yiaddr: str, mark: bytes) -> bytes:
    """BOOTP reply (DHCPOFFER) from a rogue server, broadcast."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, 0xBAD, 0, 0x8000, b"\0" * 4,
                        socket.inet_aton(yiaddr), socket.inet_aton(server_ip), b"\0" * 4,
                        b"\0" * 16, mark[:64], b"")
    opts = b"\x63\x82\x53\x63" + b"\x35\x01\x02" + b"\x36\x04" + socket.inet_aton(server_ip) + b"\xff"
    return udp4(server_ip, "255.255.255.255", 67, 68, bootp + opts)


def vxlan(vni: int, inner: bytes) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + inner


class Injector:
    """A raw AF_PACKET socket inside a namespace: what a dishonest guest's kernel can send."""

    def __init__(self, ns: str, dev: str = "eth0"):
        from pyroute2 import netns as pr_netns
        self.sock = pr_netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)
        self.sock.bind((dev, 0))

    def send(self, frame: bytes, count: int = 1) -> int:
        for _ in range(count):
            self.sock.send(frame)
        return count

    def close(self):
        self.sock.close()


class RingInjector:
    """The same through a packet socket's TX ring (PACKET_TX_RING, TPACKET_V1), as trafgen
    sends: the kernel puts all but the Ethernet header of such a frame in page fragments
    (references to the ring, so a slot stays busy while a receiver still queues its frame:
    each send takes the next of SLOTS)."""
    FRAME, SLOTS = 2048, 8

    def __init__(self, ns: str, dev: str = "eth0"):
        import mmap
        from pyroute2 import netns as pr_netns
        self.sock = pr_netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)
        # SOL_PACKET, PACKET_TX_RING: struct tpacket_req {block_size, block_nr, frame_size, frame_nr}
        self.sock.setsockopt(263, 13, struct.pack("IIII", 4096, self.SLOTS // 2, self.FRAME, self.SLOTS))
        self.ring = mmap.mmap(self.sock.fileno(), self.FRAME * self.SLOTS)
        self.sock.bind((dev, 0))
        self.next = 0

    def send(self, frame: bytes) -> None:
        at = self.next * self.FRAME
        if self.next >= self.SLOTS or struct.unpack_from("=Q", self.ring, at)[0] != 0:
            raise RuntimeError("RingInjector: no free slot (send at most SLOTS frames)")
        # struct tpacket_hdr: tp_status (long), tp_len, ...; the frame 32 bytes in
        self.ring[at + 32:at + 32 + len(frame)] = frame
        struct.pack_into("=QI", self.ring, at, 0, len(frame))
        struct.pack_into("=Q", self.ring, at, 1)                 # TP_STATUS_SEND_REQUEST
        self.sock.send(b"")
        self.next += 1

    def close(self):
        self.sock.close()
        try:
            self.ring.close()
        except BufferError:
            pass


class MarkSniffer:
    """Every frame an interface receives (AF_PACKET, not outgoing ones), kept if it carries MARK."""

    def __init__(self, ns: str, dev: str = "eth0"):
        from pyroute2 import netns as pr_netns
        self.sock = pr_netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003), flags=0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((dev, 0))
        self.sock.setblocking(False)
        self.frames: list[bytes] = []

    def drain(self) -> list[bytes]:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return self.frames
            if addr[2] != socket.PACKET_OUTGOING and MARK in data:
                self.frames.append(data)

    def count(self, kind: str) -> int:
        tag = MARK + kind.encode() + b"#"
        return sum(1 for f in self.drain() if tag in f)

    def close(self):
        self.sock.close()


# ---- the two-host lab the dishonest-VM tests share ---------------------------------------

POLICY = """
version: 1
tvds:
  alpha: {vlan: 100}
  beta: {vlan: 200}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true, mtu: 1500, max-mtu: 1500}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""
ROGUE_IP = "10.0.0.66"

# name: (host, vif, tvd, ipv4, ipv6, mac). Both TVDs share one IP subnet on purpose: a leak
# would be delivered, not filtered by a guest's routing.
VMS = {
    "a1": ("h1", "vif1.0", "alpha", "192.168.10.1", "fd00:10::1", "02:00:00:0a:00:01"),  # dishonest
    "a2": ("h1", "vif2.0", "alpha", "192.168.10.2", "fd00:10::2", "02:00:00:0a:00:02"),
    "a3": ("h2", "vif1.0", "alpha", "192.168.10.3", "fd00:10::3", "02:00:00:0a:00:03"),
    "b1": ("h1", "vif3.0", "beta", "192.168.10.4", "fd00:10::4", "02:00:00:0b:00:04"),
    "b2": ("h2", "vif2.0", "beta", "192.168.10.5", "fd00:10::5", "02:00:00:0b:00:05"),
}


def link_local(mac: str) -> str:
    b = mac_b(mac)
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + bytes([b[0] ^ 2, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])))


ALL6 = "33:33:00:00:00:01"
_, _, _, IP1, IP6_1, M1 = VMS["a1"]
_, _, _, IP2, IP6_2, M2 = VMS["a2"]
_, _, _, IP3, IP6_3, M3 = VMS["a3"]
M4 = VMS["b1"][5]
LL1 = link_local(M1)


def u4(src_mac, src_ip, m, **kw):
    return eth(BCAST, src_mac, ETH_IP, udp4(src_ip, "192.168.10.255", 9, 9, m), **kw)


# kind -> frame(marker). Each is something a1 must never get onto the TVD network (its port
# security: nftables in test_port_security.py, eBPF in bpf/test_portsec.py).
ATTACKS = {
    "spoofed src MAC (unknown)": lambda m: u4("02:ba:d0:00:00:01", IP1, m),
    "spoofed src MAC (same-TVD VM's)": lambda m: u4(M2, IP1, m),
    "spoofed src MAC (other TVD VM's)": lambda m: u4(M4, IP1, m),
    "spoofed src IPv4 (same-TVD VM's)": lambda m: u4(M1, IP3, m),
    "spoofed src IPv4 (other TVD VM's)": lambda m: u4(M1, VMS["b2"][3], m),
    "spoofed src IPv6 (global)": lambda m: eth(ALL6, M1, ETH_IP6, udp6(IP6_3, "ff02::1", 9, 9, m)),
    "spoofed src IPv6 (another's link-local)": lambda m: eth(ALL6, M1, ETH_IP6, udp6(link_local(M3), "ff02::1", 9, 9, m)),
    "gratuitous ARP request for another's IP": lambda m: eth(BCAST, M1, ETH_ARP, arp(1, M1, IP3, "00:00:00:00:00:00", IP3), trailer=m),
    "gratuitous ARP reply for another's IP": lambda m: eth(BCAST, M1, ETH_ARP, arp(2, M1, IP3, BCAST, IP3), trailer=m),
    "ARP with forged sender MAC": lambda m: eth(BCAST, M1, ETH_ARP, arp(2, M2, IP1, BCAST, IP2), trailer=m),
    "ND advert for another's address": lambda m: eth(ALL6, M1, ETH_IP6, nd_na(LL1, "ff02::1", IP6_3, M1, m)),
    "802.1Q tagged, own TVD's VLAN 100": lambda m: u4(M1, IP1, m, tags=((0x8100, 100),)),
    "802.1Q tagged, other TVD's VLAN 200": lambda m: u4(M1, IP1, m, tags=((0x8100, 200),)),
    "802.1Q priority-tagged (VLAN 0)": lambda m: u4(M1, IP1, m, tags=((0x8100, 0),)),
    "double-tagged 802.1ad 100 + 802.1Q 200": lambda m: u4(M1, IP1, m, tags=((0x88A8, 100), (0x8100, 200))),
    "double-tagged 802.1Q 100 + 802.1Q 200": lambda m: u4(M1, IP1, m, tags=((0x8100, 100), (0x8100, 200))),
    "DHCP server reply (OFFER, sport 67)": lambda m: eth(BCAST, M1, ETH_IP, dhcp_offer(IP1, M1, IP3, m)),
    "DHCPv6 server reply (sport 547)": lambda m: eth(ALL6, M1, ETH_IP6, udp6(LL1, "ff02::1", 547, 546, m)),
    "IPv6 router advertisement": lambda m: eth(ALL6, M1, ETH_IP6, nd_ra(LL1, M1, m)),
    "double-tagged 0x9100 100 + 802.1Q 200": lambda m: u4(M1, IP1, m, tags=((0x9100, 100), (0x8100, 200))),
    "other ethertype (0x88b5) from a spoofed MAC": lambda m: eth(BCAST, M2, 0x88B5, m),
}
# The same crafting, honest: must reach a1's TVD peers (proves the attacks could have arrived).
CONTROLS = {
    "ctl: IPv4 from own MAC/IP": lambda m: u4(M1, IP1, m),
    "ctl: IPv6 from own global address": lambda m: eth(ALL6, M1, ETH_IP6, udp6(IP6_1, "ff02::1", 9, 9, m)),
    "ctl: IPv6 from own EUI-64 link-local": lambda m: eth(ALL6, M1, ETH_IP6, udp6(LL1, "ff02::1", 9, 9, m)),
    "ctl: gratuitous ARP for own IP": lambda m: eth(BCAST, M1, ETH_ARP, arp(1, M1, IP1, "00:00:00:00:00:00", IP1), trailer=m),
    "ctl: ARP probe (sender 0.0.0.0)": lambda m: eth(BCAST, M1, ETH_ARP, arp(1, M1, "0.0.0.0", "00:00:00:00:00:00", IP1), trailer=m),
    "ctl: ND advert for own address": lambda m: eth(ALL6, M1, ETH_IP6, nd_na(LL1, "ff02::1", IP6_1, M1, m)),
    "ctl: DHCP client DISCOVER from 0.0.0.0": lambda m: eth(BCAST, M1, ETH_IP, udp4("0.0.0.0", "255.255.255.255", 68, 67, m)),
    "ctl: other ethertype (0x88b5) from own MAC": lambda m: eth(BCAST, M1, 0x88B5, m),
}


class Lab:
    """Two host namespaces (h1, h2) and a rogue one on a bridged underlay (namespace `fab`),
    TVDs alpha and beta on VXLAN as the planner decides from POLICY, and the VMs above: each a
    namespace whose eth0 is the peer of a host-side veth named like Xen's netback vif (veth
    stands in for netback). h1 gets its ports through apply(), h2 through plug_vif (hotplug)."""

    def __init__(self, mkns, tmp_path, underlay_filter: bool = True, policy: str = POLICY,
                 wireguard_keys: dict[str, str] | None = None, apply_errors: list | None = None):
        """policy: POLICY or one with the same hosts and TVDs (test_wireguard_e2e.py encrypts
        alpha); wireguard_keys: host -> its key file, for encrypted segments; apply_errors: a
        list to collect the dataplane's errors in (a segment that cannot be built) instead of
        failing."""
        import dataclasses

        from tests.dataplane.dp_helpers import addr, sh, veth
        from xen_tvd.dataplane import DataplaneError, apply, plug_vif
        from xen_tvd.desired.model import VifPort
        from xen_tvd.planner import plan
        from xen_tvd.policy import load_policy

        self.sh = sh
        self.fab = mkns("fab")
        sh(self.fab, "ip", "link", "add", "name", "br0", "type", "bridge", "mcast_snooping", "0")
        sh(self.fab, "ip", "link", "set", "br0", "up")
        self.hosts = {"h1": mkns("h1"), "h2": mkns("h2")}
        self.rogue = mkns("rogue")
        for i, (ns, ip) in enumerate(((self.hosts["h1"], "10.0.0.1"), (self.hosts["h2"], "10.0.0.2"),
                                      (self.rogue, ROGUE_IP))):
            veth(self.fab, f"p{i}", "ul0", peer_ns=ns)
            sh(self.fab, "ip", "link", "set", f"p{i}", "master", "br0")
            addr(ns, "ul0", ip)
        self.vm = {}
        for name, (h, vif, tvd, ip4, ip6, mac) in VMS.items():
            g = mkns(name)
            veth(self.hosts[h], vif, "eth0", peer_ns=g, up=False)
            sh(g, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
               "net.ipv6.conf.default.addr_gen_mode=0", "net.ipv6.conf.default.accept_ra=2")
            sh(g, "ip", "link", "set", "eth0", "address", mac, "mtu", "1450")
            sh(g, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0", "net.ipv6.conf.eth0.accept_ra=2",
               "net.ipv6.conf.eth0.addr_gen_mode=0", "net.ipv6.conf.eth0.dad_transmits=0")
            sh(g, "ip", "addr", "add", f"{ip4}/24", "dev", "eth0")
            sh(g, "ip", "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            sh(g, "ip", "link", "set", "eth0", "up")
            self.vm[name] = g
        f = tmp_path / "policy.yaml"
        f.write_text(policy)
        self.policy = load_policy(str(f))
        ports = {}
        for name, (h, vif, tvd, ip4, ip6, mac) in VMS.items():
            ports.setdefault(h, []).append(VifPort(vif, tvd, mac=mac, addresses=(f"{ip4}/24", ip6)))
        self.planned = plan(self.policy, ports)
        self.states = {h: (st if underlay_filter else dataclasses.replace(st, underlay_peers=None))
                       for h, st in self.planned.items()}
        for name, (h, vif, tvd, *_) in VMS.items():   # the guest takes its segment's MTU
            sh(self.vm[name], "ip", "link", "set", "eth0", "mtu",
               str(self.planned[h].segment(tvd).mtu))
        keys = wireguard_keys or {}

        def tolerated(step, *args, **kw):
            try:
                return step(*args, **kw)
            except DataplaneError as e:
                if apply_errors is None:
                    raise
                apply_errors.append(str(e))
                return e.report
        rep = tolerated(apply, self.states["h1"], netns=self.hosts["h1"],
                        wireguard_key=keys.get("h1"))
        assert rep.missing_ports == [], rep
        if apply_errors is None:
            assert rep.warnings == [], rep
        else:
            apply_errors.extend(rep.warnings)
        st2 = self.states["h2"]
        tolerated(apply, dataclasses.replace(st2, ports=()), netns=self.hosts["h2"],
                  wireguard_key=keys.get("h2"))
        for p in st2.ports:
            tolerated(plug_vif, p, st2.segment(p.tvd), netns=self.hosts["h2"])
        self.sniffers = {n: MarkSniffer(g) for n, g in self.vm.items()}

    def ns(self, vm: str) -> str:
        return self.vm[vm]

    def info(self, vm: str):
        return VMS[vm]

    def tvd_of(self, vm: str) -> str:
        return VMS[vm][2]

    def barrier(self, seq: int) -> None:
        """An honest broadcast from one VM per TVD on each host must reach all its TVD peers:
        what was sent before it has crossed the bridges and the VXLAN by then (plus 0.2 s)."""
        import time
        senders = ("a1", "b1")
        with_inj = {s: Injector(self.vm[s]) for s in senders}
        try:
            for s in senders:
                _, _, _, ip4, _, mac = VMS[s]
                with_inj[s].send(eth(BCAST, mac, ETH_IP, udp4(ip4, "192.168.10.255", 9, 9, marker(f"barrier{seq}-{s}"))))
            deadline = time.monotonic() + 5
            for s in senders:
                for r in VMS:
                    if r == s or VMS[r][2] != VMS[s][2]:
                        continue
                    while self.sniffers[r].count(f"barrier{seq}-{s}") <= 0 and time.monotonic() < deadline:
                        time.sleep(0.02)
            time.sleep(0.2)
        finally:
            for i in with_inj.values():
                i.close()

    def arrivals(self, kind: str) -> dict[str, int]:
        return {n: s.count(kind) for n, s in self.sniffers.items()}

    def close(self):
        for s in self.sniffers.values():
            s.close()


def print_table(title: str, rows: list[tuple]) -> None:
    """rows: (kind, tried, forbidden arrivals, allowed arrivals or '-', where it was sent from)."""
    print(f"\n{title}")
    print(f"{'attack kind':52} {'tried':>6} {'arrived where forbidden':>24} {'allowed arrivals':>17}  from")
    for kind, tried, bad, ok, frm in rows:
        print(f"{kind:52} {tried:>6} {bad:>24} {str(ok):>17}  {frm}")
