"""tvd-master's connection front end: accept, TLS handshake and request reading without
threads, under explicit budgets; only a complete request reaches a worker thread.

Why (issue #16.4): with a thread per connection from accept on, 1,000 idle connections without
a certificate took every thread and locked enrolled hosts out. Here one thread (a selector
loop) accepts every connection, runs its TLS handshake and reads its whole request head and
body non-blocking, each under an absolute deadline, so an idle, half-open or slowloris client
holds a file descriptor and a few KiB, never a thread. Budgets (Limits):

- Connections without a host/admin certificate ("pre-auth": still handshaking, or anonymous
  after it) share `preauth` places, at most `per_source` from one address (IPv6: one /64).
  When the places are full a new connection still gets in: the oldest pre-auth connection
  still waiting (handshake or request) is dropped for it. A client's certificate is known
  only after its handshake, so an enrolled host starts as pre-auth too; dropping the oldest
  lets its handshake (milliseconds) finish whatever the flood, where refusing the newest
  would lock it out.
- After the handshake, a certificate of the CA with the host or admin role moves the
  connection to its own budget (`authenticated`, `per_identity` per certificate subject),
  which pre-auth connections never touch. Revocation is still checked per request.
- Anonymous requests (GET /v1/ca, POST /v1/enroll) run on `anon_workers` threads with at
  most `anon_queue` waiting; more get 503 at once. Authenticated requests get a thread each
  (long-poll watches hold theirs), bounded by `authenticated`.

Connections dropped by a budget or a deadline are counted and logged as one summary line
(event=connections-shed) every SUMMARY_SECONDS, not one line each: a flood must not become a
log flood.
"""
from __future__ import annotations

import collections
import errno
import heapq
import ipaddress
import itertools
import json
import resource
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from cryptography import x509

from xen_tvd.log import log
from xen_tvd.master import ca as camod

SUMMARY_SECONDS = 10.0
ACCEPT_BATCH = 256            # accepts per loop turn, so handshakes in progress keep moving
FD_RESERVE = 256              # descriptors kept for the database, logs, worker sockets
TLS_REFUSED_PER_SECOND = 20   # per-connection handshake failure lines, then only counted


@dataclass(frozen=True)
class Limits:
    handshake_s: float = 5.0          # accept -> TLS handshake done
    anon_request_s: float = 10.0      # handshake done -> whole request read, no certificate
    auth_request_s: float = 30.0      # the same with a host/admin certificate
    anon_write_s: float = 5.0         # an anonymous answer is a few KiB
    auth_write_s: float = 30.0        # bundles can be MiBs
    preauth: int = 8192               # connections without a host/admin certificate
    per_source: int = 64              # of those from one address (IPv6: a /64)
    authenticated: int = 2048         # with one; each may hold a thread (watches)
    per_identity: int = 32            # per certificate subject (a proxy uses 2-3 at once)
    anon_workers: int = 4
    anon_queue: int = 256             # anonymous requests waiting for or in a worker
    head_bytes: int = 64 * 1024       # request line + headers
    anon_body: int = 64 * 1024        # bodies kept for anonymous routes
    auth_body: int = 8 * 1024 * 1024  # and for certificate holders (policies)


HANDSHAKE, HEAD, BODY, DISPATCHED, CLOSED = "handshake", "head", "body", "dispatched", "closed"


class Conn:
    """One client connection and where it is in the front end."""
    __slots__ = ("tls", "peer", "source", "ident", "state", "deadline", "buf", "need", "keep",
                 "queued")

    def __init__(self, tls: ssl.SSLSocket, peer, source: str) -> None:
        self.tls, self.peer, self.source = tls, peer, source
        self.ident: tuple[str, str] | None = None     # (OU, CN) of a host/admin certificate
        self.state = HANDSHAKE
        self.deadline = 0.0
        self.buf = bytearray()
        self.need = 0          # body bytes still to read
        self.keep = True       # False: read and discard an over-size body, then refuse
        self.queued = False    # holds a place in the anonymous queue


def source_of(addr: str) -> str:
    """The unit per-source limits count: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if ip.version == 4:
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def raise_fd_limit(limits: Limits) -> Limits:
    """Raise RLIMIT_NOFILE's soft limit to what the budgets need (up to the hard limit); if
    the hard limit is lower, shrink the budgets to fit and say so."""
    want = limits.preauth + limits.authenticated + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft >= want:
        return limits
    room = max(soft - FD_RESERVE, 128)
    auth = max(min(limits.authenticated, room // 4), 32)
    shrunk = replace(limits, authenticated=auth, preauth=max(room - auth, 64))
    log("warning", "fd-limit", nofile=soft, wanted=want, preauth=shrunk.preauth,
        authenticated=shrunk.authenticated,
        detail="raise LimitNOFILE (the unit sets 65536) for the full connection budgets")
    return shrunk


class Listener:
    """serve_forever / shutdown / server_close like socketserver; `serve(conn, request)` is
    called on a worker thread with the whole request (head and body) as bytes, the TLS
    socket blocking with a write timeout; the listener closes the connection after it."""

    def __init__(self, addr, family, ctx: ssl.SSLContext, serve, limits: Limits = Limits(),
                 backlog: int = 4096) -> None:
        self.ctx, self.serve, self.limits = ctx, serve, raise_fd_limit(limits)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(addr)
            self.sock.listen(backlog)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.server_address = self.sock.getsockname()
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, "accept")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.lock = threading.Lock()               # the counters below; workers release too
        self.waiting: collections.OrderedDict[Conn, None] = collections.OrderedDict()
        self.preauth = 0
        self.by_source: collections.Counter[str] = collections.Counter()
        self.authenticated = 0
        self.by_ident: collections.Counter[tuple] = collections.Counter()
        self.anon_queued = 0
        self.shed: collections.Counter[str] = collections.Counter()
        self._deadlines: list = []
        self._seq = itertools.count()
        self._tls_lines = (0.0, 0)
        self._next_summary = time.monotonic() + SUMMARY_SECONDS
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()
        self.anon_pool = ThreadPoolExecutor(self.limits.anon_workers, "master-anon")

    # -- the loop --------------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        try:
            while not self._stop:
                now = time.monotonic()
                timeout = poll_interval
                if self._deadlines:
                    timeout = max(0.0, min(timeout, self._deadlines[0][0] - now))
                for key, _ in self.sel.select(timeout):
                    try:
                        self._event(key.data)
                    except Exception as e:   # a bug must not stop the front end
                        log("error", "listener-error", kind=type(e).__name__, error=str(e)[:200])
                        if isinstance(key.data, Conn):
                            self._close(key.data)
                now = time.monotonic()
                self._expire(now)
                if now >= self._next_summary:
                    self._summary(now)
        finally:
            self._stopped.set()

    def _event(self, what) -> None:
        if what == "accept":
            self._accept()
        elif what == "wake":
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
        elif what.state == HANDSHAKE:
            self._handshake(what)
        elif what.state in (HEAD, BODY):
            self._read(what)

    def shutdown(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait()

    def server_close(self) -> None:
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, Conn):
                self._close(key.data)
        self.sel.close()
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self.anon_pool.shutdown(wait=False, cancel_futures=True)

    # -- accept: the per-source and pre-auth budgets ---------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.shed["no-descriptor"] += 1
                    with self.lock:
                        self._evict_oldest()      # frees one for the next turn
                return
            source = source_of(peer[0])
            with self.lock:
                refuse = None
                if self.by_source[source] >= self.limits.per_source:
                    refuse = "per-source"
                elif self.preauth >= self.limits.preauth and not self._evict_oldest():
                    refuse = "preauth-busy"
                if refuse is None:
                    self.preauth += 1
                    self.by_source[source] += 1
            if refuse is not None:
                self.shed[refuse] += 1
                sock.close()
                continue
            try:
                sock.setblocking(False)
                tls = self.ctx.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                sock.close()
                with self.lock:
                    self._release_preauth(source)
                continue
            c = Conn(tls, peer, source)
            with self.lock:
                self.waiting[c] = None
            self._arm(c, HANDSHAKE, self.limits.handshake_s)
            self.sel.register(tls, selectors.EVENT_READ, c)

    def _evict_oldest(self) -> bool:
        """Drop the oldest pre-auth connection still waiting on its client (self.lock held)."""
        try:
            victim = next(iter(self.waiting))
        except StopIteration:
            return False
        self.shed["evicted"] += 1
        self._close(victim, locked=True)
        return True

    # -- handshake, then the certificate decides the budget --------------------------------
    def _handshake(self, c: Conn) -> None:
        try:
            c.tls.do_handshake()
        except ssl.SSLWantReadError:
            self.sel.modify(c.tls, selectors.EVENT_READ, c)
            return
        except ssl.SSLWantWriteError:
            self.sel.modify(c.tls, selectors.EVENT_WRITE, c)
            return
        except (ssl.SSLError, OSError) as e:
            self._tls_refused(c, e)
            self._close(c)
            return
        self.sel.modify(c.tls, selectors.EVENT_READ, c)
        ident = _identity(c.tls)
        timeout = self.limits.anon_request_s
        if ident is not None:
            with self.lock:
                full = self.authenticated >= self.limits.authenticated
                over = self.by_ident[ident] >= self.limits.per_identity
                if not (full or over):
                    self.waiting.pop(c, None)
                    self._release_preauth(c.source)
                    c.ident = ident
                    self.authenticated += 1
                    self.by_ident[ident] += 1
            if c.ident is None:
                self.shed["authenticated-full" if full else "per-identity"] += 1
                self._close(c)
                return
            timeout = self.limits.auth_request_s
        self._arm(c, HEAD, timeout)
        self._read(c)          # the request may have come with the handshake's last flight

    def _tls_refused(self, c: Conn, e: Exception) -> None:
        start, n = self._tls_lines
        now = time.monotonic()
        if now - start >= 1.0:
            start, n = now, 0
        self._tls_lines = (start, n + 1)
        if n < TLS_REFUSED_PER_SECOND:
            log("warning", "tls-refused", peer=c.peer[0],
                reason=getattr(e, "reason", None) or type(e).__name__)
        else:
            self.shed["tls-refused"] += 1

    # -- the request: head, then Content-Length bytes --------------------------------------
    def _read(self, c: Conn) -> None:
        while c.state in (HEAD, BODY):
            try:
                data = c.tls.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except (ssl.SSLError, OSError):
                self._close(c)
                return
            if not data:                     # the client gave up before a whole request
                self._close(c)
                return
            if c.state == HEAD:
                c.buf += data
                self._head(c)
            else:
                self._body(c, data)

    def _head(self, c: Conn) -> None:
        end = c.buf.find(b"\r\n\r\n")
        end = end + 4 if end >= 0 else -1
        if end < 0:
            lf = c.buf.find(b"\n\n")
            end = lf + 2 if lf >= 0 else -1
        if end < 0:
            if len(c.buf) > self.limits.head_bytes:
                self._refuse(c, 431, f"request head over {self.limits.head_bytes} bytes")
            return
        if end > self.limits.head_bytes:
            self._refuse(c, 431, f"request head over {self.limits.head_bytes} bytes")
            return
        length = _content_length(bytes(c.buf[:end]))
        rest = bytes(c.buf[end:])
        del c.buf[end:]
        keep_limit = self.limits.auth_body if c.ident else self.limits.anon_body
        if length is None or length <= 0 or length > self.limits.auth_body:
            # no body, or one the handler refuses without reading (411, 413)
            self._dispatch(c)
            return
        c.need, c.keep = length, length <= keep_limit
        c.state = BODY
        if rest:
            self._body(c, rest)

    def _body(self, c: Conn, data: bytes) -> None:
        take = data[:c.need]
        if c.keep:
            c.buf += take
        c.need -= len(take)
        if c.need <= 0:
            self._dispatch(c)

    # -- hand over, refuse, close ------------------------------------------------------------
    def _dispatch(self, c: Conn) -> None:
        self.sel.unregister(c.tls)
        c.state = DISPATCHED
        if c.ident is None:
            with self.lock:
                self.waiting.pop(c, None)
                busy = self.anon_queued >= self.limits.anon_queue
                if not busy:
                    self.anon_queued += 1
                    c.queued = True
            if busy:
                self.shed["anon-queue-full"] += 1
                self._answer_now(c, 503, "tvd-master is busy with anonymous requests; "
                                         "retry in a moment")
                self._close(c)
                return
        try:
            c.tls.settimeout(self.limits.auth_write_s if c.ident else self.limits.anon_write_s)
        except OSError:
            self._close(c)
            return
        request = bytes(c.buf)
        c.buf = bytearray()
        if c.ident is not None:
            threading.Thread(target=self._work, args=(c, request), daemon=True).start()
        else:
            self.anon_pool.submit(self._work, c, request)

    def _work(self, c: Conn, request: bytes) -> None:
        try:
            self.serve(c, request)
        except Exception as e:    # the handler answers its own errors; this is a last resort
            log("error", "connection-error", peer=c.peer[0], kind=type(e).__name__)
        finally:
            self._close(c)

    def _refuse(self, c: Conn, status: int, message: str) -> None:
        self.sel.unregister(c.tls)
        c.state = DISPATCHED
        with self.lock:
            self.waiting.pop(c, None)
        self._answer_now(c, status, message)
        self._close(c)

    @staticmethod
    def _answer_now(c: Conn, status: int, message: str) -> None:
        """A short answer from the loop itself, best effort, never blocking."""
        body = json.dumps({"error": message}).encode()
        head = (f"HTTP/1.1 {status} {'Busy' if status == 503 else 'Refused'}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            c.tls.setblocking(False)
            c.tls.send(head + body)
        except (ssl.SSLError, OSError):
            pass

    def _close(self, c: Conn, locked: bool = False) -> None:
        if c.state == CLOSED:
            return
        if c.state != DISPATCHED:
            try:
                self.sel.unregister(c.tls)
            except (KeyError, ValueError):
                pass
        c.state = CLOSED
        if locked:
            self._forget(c)
        else:
            with self.lock:
                self._forget(c)
        try:
            c.tls.close()
        except OSError:
            pass

    def _forget(self, c: Conn) -> None:
        """The counters of a connection that is going away (self.lock held)."""
        self.waiting.pop(c, None)
        if c.ident is not None:
            self.authenticated -= 1
            self.by_ident[c.ident] -= 1
            if self.by_ident[c.ident] <= 0:
                del self.by_ident[c.ident]
        else:
            self._release_preauth(c.source)
        if c.queued:
            self.anon_queued -= 1

    def _release_preauth(self, source: str) -> None:
        self.preauth -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]

    # -- deadlines ---------------------------------------------------------------------------
    def _arm(self, c: Conn, state: str, seconds: float) -> None:
        c.state = state
        c.deadline = time.monotonic() + seconds
        heapq.heappush(self._deadlines, (c.deadline, next(self._seq), c))

    def _expire(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, c = heapq.heappop(self._deadlines)
            if c.state in (HANDSHAKE, HEAD, BODY) and c.deadline == deadline:
                self.shed[f"timeout-{c.state}"] += 1
                self._close(c)

    def _summary(self, now: float) -> None:
        self._next_summary = now + SUMMARY_SECONDS
        if not self.shed:
            return
        shed, self.shed = self.shed, collections.Counter()
        with self.lock:
            state = {"preauth_open": self.preauth, "authenticated_open": self.authenticated,
                     "sources": len(self.by_source)}
        log("warning", "connections-shed", **{k.replace("-", "_"): v for k, v in
                                              sorted(shed.items())}, **state)


def _identity(tls: ssl.SSLSocket) -> tuple[str, str] | None:
    """(OU, CN) of a host or admin certificate the handshake verified against the CA."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        ou, cn, _serial = camod.identity(x509.load_der_x509_certificate(der))
    except ValueError:
        return None
    return (ou, cn) if ou in (camod.HOST_OU, camod.ADMIN_OU) else None


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a request head; None when absent, unreadable or repeated (the
    handler then refuses the request itself). Only sizes the read: the handler parses the
    head again in full."""
    found = None
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            if found is not None:
                return None
            value = value.strip()
            if not value.isdigit() or len(value) > 12:
                return None
            found = int(value)
    return found
