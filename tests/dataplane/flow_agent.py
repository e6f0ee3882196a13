"""Runs inside a test VM namespace (stdlib only), as `python -m tests.dataplane.flow_agent`
from the source tree (agent_argv in flow_helpers).

  listen PORT...                       TCP listeners; prints "ready", serves until stdin closes
  connect IP PORT TIMEOUT [SRC]        prints "ok" or "fail ..." (SRC: bind to that address)
  udp-echo PORT                        echo UDP datagrams back; prints "ready", then on stdin
                                       close the number of datagrams received
  udp-ask IP PORT TIMEOUT              send one datagram from an ephemeral port; prints "reply"
                                       or "none"
  blast DEV DSTMAC SRCIP DSTIP SECONDS MAGIC
                                       raw IPv4 or IPv6 UDP frames (any source address) to
                                       DSTMAC as fast as possible; prints how many were sent
  sniff DEV MAGIC                      prints "ready"; on stdin close, frames seen with MAGIC
"""
import select
import errno
import socket
import struct
import sys
import threading
import time

from tests.common.packets import inet_checksum


def listen(ports):
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET6)     # dual-stack: IPv4 arrives mapped
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", p))
        s.listen(64)
        socks.append(s)

    def serve(s):
        while True:
            c, _ = s.accept()
            c.close()
    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


def connect(ip, port, timeout, src=None):
    try:
        socket.create_connection((ip, int(port)), timeout=float(timeout),
                                 source_address=(src, 0) if src else None).close()
        print("ok")
    except OSError as e:
        print(f"fail {e}")


def udp_echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(port)))
    n = 0
    print("ready", flush=True)
    while True:
        r, _, _ = select.select([s, sys.stdin], [], [])
        if s in r:
            data, peer = s.recvfrom(2048)
            n += 1
            s.sendto(data, peer)
        if sys.stdin in r:
            print(n, flush=True)
            return


def udp_ask(ip, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(float(timeout))
    s.sendto(b"ask", (ip, int(port)))
    try:
        s.recvfrom(2048)
        print("reply")
    except OSError:
        print("none")


def blast(dev, dstmac, srcip, dstip, seconds, magic):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    with open(f"/sys/class/net/{dev}/address") as f:
        src = bytes.fromhex(f.read().strip().replace(":", ""))
    dst = bytes.fromhex(dstmac.replace(":", ""))
    payload = magic.encode()
    if ":" in srcip:
        s6, d6 = socket.inet_pton(socket.AF_INET6, srcip), socket.inet_pton(socket.AF_INET6, dstip)
        udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
        pseudo = s6 + d6 + struct.pack("!IxxxB", len(udp), 17)
        udp = udp[:6] + struct.pack("!H", inet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
        hdr = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + s6 + d6
        frame = dst + src + b"\x86\xdd" + hdr + udp
    else:
        udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                          socket.inet_aton(srcip), socket.inet_aton(dstip))
        hdr = hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:]
        frame = dst + src + b"\x08\x00" + hdr + udp
    n, end = 0, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        for _ in range(50):
            try:
                s.send(frame)
                n += 1
            except OSError as e:   # ENOBUFS: the qdisc is full (emulated CPU); back off
                if e.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.01)
        time.sleep(0.001)
    print(n)


def sniff(dev, magic):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((dev, 0))
    m, n = magic.encode(), 0
    print("ready", flush=True)
    while True:
        r, _, _ = select.select([s, sys.stdin], [], [])
        if s in r:
            data, addr = s.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING and m in data:
                n += 1
        elif sys.stdin in r:
            while select.select([s], [], [], 0.2)[0]:   # drain what is still queued
                data, addr = s.recvfrom(65535)
                if addr[2] != socket.PACKET_OUTGOING and m in data:
                    n += 1
            print(n, flush=True)
            return


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"listen": lambda: listen([int(p) for p in args]), "connect": lambda: connect(*args),
     "udp-echo": lambda: udp_echo(*args), "udp-ask": lambda: udp_ask(*args),
     "blast": lambda: blast(*args), "sniff": lambda: sniff(*args)}[cmd]()
