"""xen_tvd.lab.proxies: how a lab waits for a tvd-proxy's answer."""
from __future__ import annotations

import json
import socket
import threading
import time

from xen_tvd.lab import proxies
from xen_tvd.lab.state import Paths


class BusyProxySocket:
    """Stands in for a tvd-proxy on a loaded machine: it answers status on its UNIX socket,
    one request at a time, each `seconds` after it was read (a real one does it under a lock
    and the kernel reads take that long). Counts the requests it got."""

    def __init__(self, path: str, seconds: float) -> None:
        self.seconds, self.requests = seconds, 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                self.requests += 1
                time.sleep(self.seconds)
                try:
                    conn.sendall(json.dumps({"v": 1, "ok": True, "host": "h1"}).encode() + b"\n")
                except OSError:
                    pass       # the poller gave up on this one

    def close(self) -> None:
        self.sock.close()


def test_a_slow_status_is_awaited_not_asked_again(tmp_path):
    """A poller that gave up after 2 s and asked again queued one request more behind each
    one still worked on: with 3 s per answer it never saw one (CI: a tier-2 lab whose four
    proxies 'gave no answer within 180 s')."""
    paths = Paths("t")
    paths.root = str(tmp_path)
    busy = BusyProxySocket(paths.socket("h1"), 3.0)
    try:
        st = proxies.status_by(paths, "h1", time.monotonic() + 20)
        assert st["host"] == "h1" and busy.requests == 1
    finally:
        busy.close()
