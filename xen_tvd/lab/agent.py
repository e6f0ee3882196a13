"""Helper that runs INSIDE a lab namespace (`ip netns exec NS python3 -m xen_tvd.lab.agent`).

Standard library only, so it starts fast. Sub-commands:
  listen --port P [--daemon]   TCP listener the reachability probes connect to
  probe                        JSON list of probes on stdin -> JSON results on stdout (all
                               probes run concurrently)
  sniff --dev D --magic HEX    count frames carrying the marker; "ready"/"end" lines on stdout,
                               JSON counts when stdin closes
  flood --dev D --magic HEX    send broadcast, multicast, unknown/known-unicast, ARP, VLAN-tagged
                               and IPv4-broadcast frames carrying the marker, then END markers
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import select
import selectors
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_LAB = 0x88B5          # IEEE local experimental ethertype
PACKET_OUTGOING = 4
SO_BINDTODEVICE = 25

KINDS = {
    "B": "broadcast", "M": "multicast", "U": "unknown-unicast", "K": "foreign-unicast",
    "A": "arp-request", "V": "vlan-tagged", "I": "ipv4-broadcast", "E": "end-marker",
}


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _dev_mac(dev: str) -> bytes:
    with open(f"/sys/class/net/{dev}/address") as f:
        return _mac_bytes(f.read().strip())


# ---- listen -----------------------------------------------------------------------------------

def _listener(port: int) -> socket.socket:
    """Dual-stack: IPv4 connections arrive as mapped addresses, IPv6 ones in dual-stack TVDs."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    return srv


def cmd_listen(a) -> int:
    srv = _listener(a.port)
    srv.listen(256)
    if a.daemon:
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            os.read(r, 1)          # the grandchild is serving
            print(f"ready {int(os.read(r, 32) or b'0')}", flush=True)
            os._exit(0)
        os.close(r)
        os.setsid()
        pid2 = os.fork()
        if pid2:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.write(w, b"." + str(os.getpid()).encode())
        os.close(w)
    else:
        print(f"ready {os.getpid()}", flush=True)
    while True:
        try:
            c, _ = srv.accept()
        except InterruptedError:
            continue
        c.close()


def _setns(path: str) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:   # CLONE_NEWNET
            e = ctypes.get_errno()
            raise OSError(e, f"setns {path}: {os.strerror(e)}")
    finally:
        os.close(fd)


def cmd_listen_many(a) -> int:
    """One daemonized listener per --vm VM=NETNS, forked from this one process (starting a
    Python per VM is what made bring-up slow). Prints {"VM": pid, ...}; errors per VM."""
    out: dict[str, object] = {}
    for spec in a.vm:
        vm, _, ns = spec.partition("=")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # child: enter the VM, listen, detach, report the serving pid
            os.close(r)
            try:
                _setns(f"/run/netns/{ns}")
                servers = []
                for port in a.port:
                    srv = _listener(port)
                    srv.listen(256)
                    servers.append(srv)
                os.setsid()
                if os.fork():
                    os._exit(0)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.write(w, str(os.getpid()).encode())
                os.close(w)
            except Exception as e:
                os.write(w, f"error {e}".encode())
                os._exit(1)
            while True:
                with contextlib.suppress(InterruptedError, ConnectionAbortedError):
                    for srv in select.select(servers, [], [])[0]:
                        srv.accept()[0].close()
        os.close(w)
        msg = b""
        while True:
            chunk = os.read(r, 256)
            if not chunk:
                break
            msg += chunk
        os.close(r)
        os.waitpid(pid, 0)
        text = msg.decode(errors="replace")
        out[vm] = int(text) if text.isdigit() else (text or "listener exited without a word")
    json.dump(out, sys.stdout)
    return 0


# ---- probes -----------------------------------------------------------------------------------

def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return _ip_checksum(data)


class _Prober:
    """All probes of one batch in one event loop: per (dev, src) one raw ICMP socket and one
    AF_PACKET ARP socket shared by every destination, one non-blocking socket per TCP probe.
    Cheap enough that thousands of probes run at once; unanswered requests are resent every
    RESEND seconds until the common deadline."""

    RESEND = 0.25

    def __init__(self, probes: list[dict]) -> None:
        self.sel = selectors.DefaultSelector()
        self.results: dict[str, dict] = {}
        self.pending_icmp: dict[tuple, dict[str, str]] = {}   # (dev, src) -> dst -> probe id
        self.pending_arp: dict[tuple, dict[bytes, str]] = {}  # (dev, src) -> dst bytes -> id
        self.tcp: dict[socket.socket, str] = {}
        self.icmp_ident: dict[tuple, int] = {}
        self.sockets: list[socket.socket] = []
        self.probes = probes

    def _res(self, pid: str, ok: bool, detail: str) -> None:
        self.results.setdefault(pid, {"ok": ok, "detail": detail})

    def run(self) -> dict:
        timeout = max((p["timeout"] for p in self.probes), default=0)
        deadline = time.monotonic() + timeout
        icmp_socks, arp_socks = {}, {}
        for p in self.probes:
            key = (p["dev"], p["src"])
            try:
                if p["kind"] in ("icmp", "icmp6"):
                    if key not in icmp_socks:
                        icmp_socks[key] = self._icmp_socket(*key)
                    self.pending_icmp.setdefault(key, {})[p["dst"]] = p["id"]
                elif p["kind"] == "arp":
                    if key not in arp_socks:
                        arp_socks[key] = self._arp_socket(*key)
                    self.pending_arp.setdefault(key, {})[socket.inet_aton(p["dst"])] = p["id"]
                elif p["kind"] in ("tcp", "tcp6"):
                    self._tcp_start(p)
                else:
                    self._res(p["id"], False, f"unknown probe kind {p['kind']}")
            except OSError as e:
                self._res(p["id"], False, f"{p['kind']} probe setup failed: {e}")
        next_send = 0.0
        while True:
            now = time.monotonic()
            busy = (any(self.pending_icmp.values()) or any(self.pending_arp.values())
                    or self.tcp)
            if not busy or now >= deadline:
                break
            if now >= next_send:
                self._send_all(icmp_socks, arp_socks)
                next_send = now + self.RESEND
            for k, _ in self.sel.select(max(0.0, min(deadline, next_send) - now)):
                k.data(k.fileobj)
        for key, m in self.pending_icmp.items():
            for dst, pid in m.items():
                self._res(pid, False, f"no echo reply in {timeout} s")
        for key, m in self.pending_arp.items():
            for dst, pid in m.items():
                self._res(pid, False, f"no ARP reply in {timeout} s")
        for sk, pid in self.tcp.items():
            self._res(pid, False, f"no TCP handshake in {timeout} s")
        for sk in self.sockets:
            sk.close()
        return self.results

    # -- ICMP
    def _icmp_socket(self, dev: str, src: str) -> socket.socket:
        """Echo requests from `src` (IPv4, or IPv6: the kernel checksums ICMPv6 and hands
        raw ICMPv6 sockets the message without its IP header)."""
        v6 = ":" in src
        sk = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                           socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        sk.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, dev.encode())   # like ping -I dev
        sk.bind((src, 0))
        sk.setblocking(False)
        ident = random.randrange(1, 0xFFFF)
        key = (dev, src)

        def on_read(s, ident=ident, key=key):
            while True:
                try:
                    data, addr = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                ihl = 0 if v6 else (data[0] & 0x0F) * 4
                if len(data) < ihl + 8:
                    continue
                typ, _, _, rid = struct.unpack("!BBHH", data[ihl:ihl + 6])
                reply = 129 if v6 else 0
                pid = self.pending_icmp.get(key, {}).pop(addr[0], None) \
                    if typ == reply and rid == ident else None
                if pid:
                    self._res(pid, True, "echo reply")

        self.icmp_ident[key] = ident
        self.sel.register(sk, selectors.EVENT_READ, on_read)
        self.sockets.append(sk)
        return sk

    # -- ARP
    def _arp_socket(self, dev: str, src: str) -> socket.socket:
        sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        sk.bind((dev, ETH_P_ARP))
        sk.setblocking(False)
        srcb = socket.inet_aton(src)
        key = (dev, src)

        def on_read(s, key=key, srcb=srcb):
            while True:
                try:
                    data, addr = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                if addr[2] == PACKET_OUTGOING or len(data) < 42:
                    continue
                if struct.unpack("!H", data[20:22])[0] == 2 and data[38:42] == srcb:
                    pid = self.pending_arp.get(key, {}).pop(data[28:32], None)
                    if pid:
                        mac = ":".join(f"{b:02x}" for b in data[22:28])
                        self._res(pid, True, f"ARP reply from {mac}")

        self.sel.register(sk, selectors.EVENT_READ, on_read)
        self.sockets.append(sk)
        return sk

    def _send_all(self, icmp_socks, arp_socks) -> None:
        for key, m in self.pending_icmp.items():
            sk = icmp_socks[key]
            for dst in list(m):
                body = struct.pack("!HH", self.icmp_ident[key], 1) + b"xen-tvd-lab".ljust(48, b".")
                if ":" in dst:   # ICMPv6 echo request; the kernel fills in the checksum
                    msg = struct.pack("!BBH", 128, 0, 0) + body
                else:
                    csum = _icmp_checksum(struct.pack("!BBH", 8, 0, 0) + body)
                    msg = struct.pack("!BBH", 8, 0, csum) + body
                with contextlib.suppress(OSError):   # e.g. EHOSTUNREACH once ARP failed
                    sk.sendto(msg, (dst, 0))
        for key, m in self.pending_arp.items():
            sk = arp_socks[key]
            dev, src = key
            mac = _dev_mac(dev)
            for dst in list(m):
                arp = (struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac + socket.inet_aton(src)
                       + b"\0" * 6 + dst)
                frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp
                with contextlib.suppress(OSError):
                    sk.send(frame + b"\0" * (60 - len(frame)))

    # -- TCP
    def _tcp_start(self, p) -> None:
        sk = socket.socket(socket.AF_INET6 if ":" in p["dst"] else socket.AF_INET,
                           socket.SOCK_STREAM)
        self.sockets.append(sk)
        sk.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, p["dev"].encode())
        sk.bind((p["src"], 0))
        sk.setblocking(False)
        err = sk.connect_ex((p["dst"], p["port"]))
        if err not in (0, errno.EINPROGRESS):
            self._res(p["id"], False, os.strerror(err))
            return
        self.tcp[sk] = p["id"]

        def on_write(s):
            pid = self.tcp.pop(s)
            self.sel.unregister(s)
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._res(pid, e == 0, "connected" if e == 0 else os.strerror(e))

        self.sel.register(sk, selectors.EVENT_WRITE, on_write)


def cmd_probe(a) -> int:
    probes = json.load(sys.stdin)
    json.dump(_Prober(probes).run(), sys.stdout)
    return 0


# ---- sniff / flood ----------------------------------------------------------------------------

def cmd_sniff(a) -> int:
    magic = bytes.fromhex(a.magic)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.dev, ETH_P_ALL))
    counts: dict[str, int] = {}
    sources: dict[str, int] = {}
    total = 0
    print("ready", flush=True)
    end_seen = False
    stdin = sys.stdin.fileno()
    while True:
        r, _, _ = select.select([s, stdin], [], [])
        if stdin in r and not os.read(stdin, 4096):
            break
        if s not in r:
            continue
        data, addr = s.recvfrom(65536)
        if addr[2] == PACKET_OUTGOING:
            continue
        total += 1
        i = data.find(magic)
        if i < 0 or i + len(magic) >= len(data):
            continue
        kind = KINDS.get(chr(data[i + len(magic)]), "other")
        counts[kind] = counts.get(kind, 0) + 1
        src = ":".join(f"{b:02x}" for b in data[6:12])
        sources[src] = sources.get(src, 0) + 1
        if kind == "end-marker" and not end_seen:
            end_seen = True
            print("end", flush=True)
    json.dump({"dev": a.dev, "marked": counts, "sources": sources, "frames_seen": total}, sys.stdout)
    print(flush=True)
    return 0


def _ip_checksum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def cmd_flood(a) -> int:
    magic = bytes.fromhex(a.magic)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((a.dev, 0))
    mac = _dev_mac(a.dev)
    sent: dict[str, int] = {}
    rnd = random.Random(a.magic)

    def send(kind: str, frame: bytes) -> None:
        if len(frame) < 60:
            frame += b"\0" * (60 - len(frame))
        s.send(frame)
        sent[KINDS[kind]] = sent.get(KINDS[kind], 0) + 1

    def payload(kind: str, seq: int) -> bytes:
        return magic + kind.encode() + struct.pack("!I", seq) + b"x" * 32

    lab = struct.pack("!H", ETH_P_LAB)
    src_ip = socket.inet_aton(a.src_ip) if a.src_ip else b"\0" * 4
    for seq in range(a.count):
        send("B", b"\xff" * 6 + mac + lab + payload("B", seq))
        send("M", bytes([0x01, 0x00, 0x5E, 0x7F, 0x00, 0x01]) + mac + lab + payload("M", seq))
        dst = bytes([0x02] + [rnd.randrange(256) for _ in range(5)])
        send("U", dst + mac + lab + payload("U", seq))
        for t in a.unicast:
            send("K", _mac_bytes(t) + mac + lab + payload("K", seq))
        for ip in a.arp_target:
            arp = (struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac + src_ip + b"\0" * 6
                   + socket.inet_aton(ip))
            send("A", b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp + payload("A", seq))
        for vid in a.vlan:
            tag = struct.pack("!HH", ETH_P_8021Q, vid & 0xFFF)
            send("V", b"\xff" * 6 + mac + tag + lab + payload("V", seq))
        udp_payload = payload("I", seq)
        udp = struct.pack("!HHHH", 9, 9, 8 + len(udp_payload), 0) + udp_payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 1, 17, 0,
                         src_ip, b"\xff" * 4)
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        send("I", b"\xff" * 6 + mac + struct.pack("!H", ETH_P_IP) + ip + udp)
    for seq in range(3):
        time.sleep(0.05)
        send("E", b"\xff" * 6 + mac + lab + payload("E", seq))
    json.dump({"dev": a.dev, "sent": sent}, sys.stdout)
    print(flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="xen_tvd.lab.agent")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("listen-many")
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--lab", required=True)
    p.add_argument("--vm", action="append", default=[], help="VM=NETNS")
    p = sub.add_parser("listen")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--daemon", action="store_true")
    p.add_argument("--lab", default="", help="lab name (lets `down` find strays by command line)")
    p.add_argument("--vm", default="")
    sub.add_parser("probe")
    p = sub.add_parser("sniff")
    p.add_argument("--dev", required=True)
    p.add_argument("--magic", required=True)
    p = sub.add_parser("flood")
    p.add_argument("--dev", required=True)
    p.add_argument("--magic", required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--src-ip", default="")
    p.add_argument("--unicast", action="append", default=[], help="foreign MAC to unicast to")
    p.add_argument("--arp-target", action="append", default=[], help="foreign IP to ARP for")
    p.add_argument("--vlan", action="append", type=int, default=[], help="802.1Q id to tag with")
    a = ap.parse_args(argv)
    return {"listen": cmd_listen, "listen-many": cmd_listen_many, "probe": cmd_probe, "sniff": cmd_sniff, "flood": cmd_flood}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
