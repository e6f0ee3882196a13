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
import json
import os
import random
import select
import socket
import struct
import sys
import threading
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

def cmd_listen(a) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.port))
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


# ---- probes -----------------------------------------------------------------------------------

def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return _ip_checksum(data)


def probe_icmp(p) -> dict:
    """ICMP echo from dev (bound to it, like `ping -I dev`), resent every 0.25 s until answered."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, p["dev"].encode())
        s.bind((p["src"], 0))
        ident = random.randrange(1, 0xFFFF)
        dst = p["dst"]
        deadline = time.monotonic() + p["timeout"]
        next_send, seq = 0.0, 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return {"ok": False, "detail": f"no echo reply in {p['timeout']} s"}
            if now >= next_send:
                seq += 1
                body = struct.pack("!HH", ident, seq) + b"xen-tvd-lab".ljust(48, b".")
                hdr = struct.pack("!BBH", 8, 0, 0)
                csum = _icmp_checksum(hdr + body)
                with contextlib.suppress(OSError):   # e.g. EHOSTUNREACH after ARP failed
                    s.sendto(struct.pack("!BBH", 8, 0, csum) + body, (dst, 0))
                next_send = now + 0.25
            r, _, _ = select.select([s], [], [], max(0.0, min(deadline, next_send) - now))
            if not r:
                continue
            data, addr = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            if addr[0] != dst or len(data) < ihl + 8:
                continue
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if typ == 0 and rid == ident:
                return {"ok": True, "detail": f"echo reply seq {rseq}"}
    except OSError as e:
        return {"ok": False, "detail": str(e)}
    finally:
        s.close()


def probe_tcp(p) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, p["dev"].encode())
        s.bind((p["src"], 0))
        s.settimeout(p["timeout"])
        s.connect((p["dst"], p["port"]))
        return {"ok": True, "detail": "connected"}
    except OSError as e:
        return {"ok": False, "detail": str(e) or type(e).__name__}
    finally:
        s.close()


def probe_arp(p) -> dict:
    """Broadcast an ARP request from dev for dst; ok when dst's owner answers."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        s.bind((p["dev"], ETH_P_ARP))
        mac = _dev_mac(p["dev"])
        src, dst = socket.inet_aton(p["src"]), socket.inet_aton(p["dst"])
        arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac + src + b"\0" * 6 + dst
        frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp
        frame += b"\0" * (60 - len(frame))
        deadline = time.monotonic() + p["timeout"]
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return {"ok": False, "detail": "no ARP reply"}
            if now >= next_send:
                s.send(frame)
                next_send = now + 0.5
            r, _, _ = select.select([s], [], [], max(0.0, min(deadline, next_send) - now))
            if not r:
                continue
            data, addr = s.recvfrom(2048)
            if addr[2] == PACKET_OUTGOING or len(data) < 42:
                continue
            op = struct.unpack("!H", data[20:22])[0]
            if op == 2 and data[28:32] == dst and data[38:42] == src:
                return {"ok": True, "detail": "reply from " + ":".join(f"{b:02x}" for b in data[22:28])}
    except OSError as e:
        return {"ok": False, "detail": str(e)}
    finally:
        s.close()


PROBES = {"icmp": probe_icmp, "tcp": probe_tcp, "arp": probe_arp}


def cmd_probe(a) -> int:
    probes = json.load(sys.stdin)
    results: dict = {}

    def run(p):
        try:
            results[p["id"]] = PROBES[p["kind"]](p)
        except Exception as e:  # report, never crash the batch
            results[p["id"]] = {"ok": False, "detail": f"probe error: {e}"}

    threads = [threading.Thread(target=run, args=(p,)) for p in probes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(results, sys.stdout)
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
    return {"listen": cmd_listen, "probe": cmd_probe, "sniff": cmd_sniff, "flood": cmd_flood}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
