"""The proxy's UNIX socket server: one request per connection, root peers only.

Requests go to the core (core.py: one control plane; standalone.py or master_authority.py
decides; the kernel through dataplane_port.py). `build_standalone` / `build_master` put
the pieces together for main.py and the tests.
"""
from __future__ import annotations

import os
import socket
import socketserver
import struct

from xen_tvd.log import log

from .core import ProxyCore
from .dataplane_port import KernelDataplane
from .protocol import MAX_REQUEST, VERSION, encode
from .standalone import StandaloneAuthority


def _kernel(state_dir: str, on_key_switched=None) -> KernelDataplane:
    return KernelDataplane(state_dir, on_key_switched)


def build_standalone(policy, host: str, state_dir: str, segment_grace: float = 30.0,
                     vif_drivers=frozenset()) -> ProxyCore:
    return ProxyCore(StandaloneAuthority(policy, host), _kernel(state_dir), state_dir,
                     segment_grace=segment_grace, vif_drivers=frozenset(vif_drivers))


def build_master(link, host: str, state_dir: str, segment_grace: float = 30.0,
                 vif_drivers=frozenset()) -> ProxyCore:
    from .master_authority import MasterAuthority
    authority = MasterAuthority(link, host)
    # a switched key goes to the master at once (its peers then drop the old one)
    core = ProxyCore(authority, _kernel(state_dir, link.report_again.set), state_dir,
                     segment_grace=segment_grace,
                     vif_drivers=frozenset(vif_drivers))
    authority.bind(core)
    return core


# ---- the socket server ---------------------------------------------------------------------------

def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        core = self.server.core
        sock.settimeout(self.server.client_timeout)
        try:
            uid = peer_uid(sock)
            # read the request before answering even a refused peer: closing an AF_UNIX socket
            # with unread data makes the peer's recv fail with ECONNRESET instead of our answer
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REQUEST:
                    break
            if uid not in self.server.allowed_uids:
                log("warning", "refused-peer", uid=uid)
                sock.sendall(encode({"v": VERSION, "ok": False,
                                     "error": f"permission denied: tvd-proxy accepts root only (peer uid {uid})"}))
                return
            if not data:
                return
            resp, rollback = core.handle(data)
            try:
                sock.sendall(encode(resp))
            except OSError:
                if rollback is not None:
                    rollback()
        except OSError:
            pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 256   # a host boot plugs dozens of vifs at once

    def __init__(self, path: str, core, allowed_uids=(0,), client_timeout: float = 30.0):
        self.core = core
        self.allowed_uids = set(allowed_uids)
        self.client_timeout = client_timeout
        self.sock_path = path
        _prepare_socket_path(path)
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass


def _prepare_socket_path(path: str) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, mode=0o755, exist_ok=True)
    if os.path.exists(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            os.unlink(path)   # stale socket of a dead proxy
        else:
            raise RuntimeError(f"another tvd-proxy is already listening on {path}")
        finally:
            s.close()
