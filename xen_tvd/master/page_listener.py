"""`tvd-master serve --page-listen ADDR:PORT`: the read-only page over plain HTTP on a loopback
address only (docs/master.md, "The page"), for a browser on the master's host or through
`ssh -L`, without an admin certificate in the browser. Anyone who can connect to that loopback
port can read the page (not change anything): that is the trade documented there.

A small stdlib server is enough here: loopback only, GET of one page, at most MAX_ACTIVE
requests at once (more are closed at once) and a read timeout per connection."""
from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from xen_tvd.errors import UsageError
from xen_tvd.log import log
from xen_tvd.master import page

MAX_ACTIVE = 8
READ_TIMEOUT = 10.0
PATHS = ("/", "/v1/page")


def _loopback(addr: str) -> tuple[str, int, int]:
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
        port_n = int(port)
    except ValueError:
        raise UsageError(f"--page-listen {addr}: write ADDR:PORT with a loopback IP address") \
            from None
    if not sep or not ip.is_loopback or not 0 <= port_n <= 65535:
        raise UsageError(f"--page-listen {addr}: the page is served on a loopback address only "
                         "(127.0.0.1 or ::1); remote admins use GET /v1/page with their "
                         "certificate")
    return host, port_n, socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, family, master) -> None:
        self.address_family = family
        self.master = master
        self.active = threading.BoundedSemaphore(MAX_ACTIVE)
        super().__init__(addr, _Handler)

    def process_request(self, request, client_address):
        if not self.active.acquire(blocking=False):
            self.shutdown_request(request)      # busy: close rather than queue
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.active.release()


class _Handler(BaseHTTPRequestHandler):
    server_version = "tvd-master-page/1"
    sys_version = ""
    timeout = READ_TIMEOUT

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        m = self.server.master
        if path not in PATHS:
            return self._answer(404, "text/plain; charset=utf-8", b"no such page\n")
        try:
            body = page.page(m).encode()
        except Exception as e:   # a bug: a generic line, the log says where
            log("error", "page-failed", kind=type(e).__name__)
            return self._answer(500, "text/plain; charset=utf-8",
                                b"internal error in tvd-master; see its log\n")
        finally:
            m.store.release()
        self.send_response(200)
        page.headers(self.send_header)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def start(master, addr: str):
    """The page server for ADDR:PORT (loopback only), serving on a thread; stop with
    srv.shutdown(); srv.server_close()."""
    host, port, family = _loopback(addr)
    try:
        srv = _Server((host, port), family, master)
    except OSError as e:
        raise UsageError(f"--page-listen {addr}: {e.strerror or e}") from None
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, name="page",
                     daemon=True).start()
    log("info", "page-listening", addr=f"{host}:{srv.server_address[1]}")
    return srv
