"""Hostile connections for the flood attacks on tvd-master (issue #16.4), shared by
tests/master/test_server_attacks.py and bench/master_flood.py.

Kinds: "tcp" connects and sends nothing; "tls" completes a TLS handshake without a client
certificate and sends nothing; "hello" sends the first bytes of a ClientHello and stalls;
"slowhead" completes TLS and drips a request head one byte a second, never ending it. Each
comes from a loopback source address other than 127.0.0.1 (127.0.0.2 ...), so the legitimate
client on 127.0.0.1 is another source, as it would be on a network. With `reconnect`, a
connection the server closes is opened again at once (the attacker that keeps everyone out).
"""
from __future__ import annotations

import itertools
import selectors
import socket
import ssl
import threading
import time

KINDS = ("tcp", "tls", "hello", "slowhead")


def client_hello() -> bytes:
    """The first flight of a real TLS 1.3 client (a ClientHello record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class Flood:
    def __init__(self, port: int, counts: dict[str, int], sources: int = 200,
                 reconnect: bool = False, host_first: int = 2) -> None:
        self.port, self.counts, self.reconnect = port, dict(counts), reconnect
        self.addrs = itertools.cycle(f"127.0.0.{i}" for i in range(host_first, host_first + sources))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.hello = client_hello()[:60]
        self.socks: dict[socket.socket, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.opened = self.closed_by_server = self.failed = 0
        self.threads: list[threading.Thread] = []

    # -- one hostile connection ----------------------------------------------------------
    def open_one(self, kind: str) -> socket.socket | None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((next(self.addrs), 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", self.port))
            if kind in ("tls", "slowhead"):
                s = self.ctx.wrap_socket(s)
                if kind == "slowhead":
                    s.sendall(b"GET /v1/ca HTTP/1.1\r\nHost: x\r\n")
            elif kind == "hello":
                s.sendall(self.hello)
        except (OSError, ssl.SSLError):
            self.failed += 1
            s.close()
            return None
        s.setblocking(False)
        with self.lock:
            self.socks[s] = kind
            self.opened += 1
        return s

    def open_all(self) -> None:
        for kind in KINDS:
            for _ in range(self.counts.get(kind, 0)):
                self.open_one(kind)
        self.threads = [threading.Thread(target=self._watch, daemon=True)]
        self.threads[0].start()

    def open_count(self) -> int:
        with self.lock:
            return len(self.socks)

    # -- keep them hostile -----------------------------------------------------------------
    def _watch(self) -> None:
        """Drip the slow heads, notice the server closing connections, reopen them."""
        next_drip = time.monotonic()
        while not self.stop.is_set():
            with self.lock:
                socks = list(self.socks.items())
            gone = []
            sel = selectors.DefaultSelector()
            for s, _ in socks:
                try:
                    sel.register(s, selectors.EVENT_READ)
                except (ValueError, OSError):
                    gone.append(s)
            for key, _ in sel.select(0.2):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    gone.append(s)
            sel.close()
            now = time.monotonic()
            if now >= next_drip:
                next_drip = now + 1.0
                for s, kind in socks:
                    if kind == "slowhead" and s not in gone:
                        try:
                            s.send(b"X")
                        except (ssl.SSLWantWriteError, BlockingIOError):
                            pass
                        except OSError:
                            gone.append(s)
            for s in set(gone):
                with self.lock:
                    kind = self.socks.pop(s, None)
                    self.closed_by_server += kind is not None
                s.close()
                if kind and self.reconnect and not self.stop.is_set():
                    self.open_one(kind)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        with self.lock:
            for s in self.socks:
                s.close()
            self.socks.clear()
