"""The tvd-proxy local protocol, version 1 (docs/proxy-protocol.md).

One JSON object per line each way, one request per connection. vif-tvd speaks the
same protocol with its own standard-library copy of `request()` (it must not import xen_tvd).
"""
from __future__ import annotations

import json
import os
import socket
import time

from xen_tvd import boundedjson
from xen_tvd.desired.names import BACKEND_BRIDGE_PREFIX
from xen_tvd.desired.patterns import NAME_RE

VERSION = 1
DEFAULT_SOCKET = "/run/xen-tvd/proxy.sock"
MAX_REQUEST = 64 * 1024
DEFAULT_TIMEOUT = 10.0     # seconds; TVD_PROXY_TIMEOUT overrides it, as for vif-tvd

OPS = ("ping", "register", "unregister", "join", "leave", "vif-online", "vif-offline", "status",
       "port-online", "port-offline", "check", "inspect", "probe")


class ProtocolError(Exception):
    """A request the proxy cannot act on; the message is the one-line `error`."""


class ProxyUnreachable(Exception):
    """No proxy answered (socket missing, refused, timeout, connection dropped)."""


def socket_path() -> str:
    return os.environ.get("TVD_PROXY_SOCKET") or DEFAULT_SOCKET


def default_timeout() -> float:
    """How long a client waits for the proxy's answer: TVD_PROXY_TIMEOUT (seconds), the same
    variable vif-tvd reads, else DEFAULT_TIMEOUT. The callers that stand in for vif-tvd (the
    lab's attach, tvdctl xl) then wait as long as the hotplug script would: under software
    emulation a TVD's first vif-online (bridges, nftables tables, router) takes 10 s and more
    (docs/test-tiers.md), on real hardware well under one."""
    try:
        t = float(os.environ.get("TVD_PROXY_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return t if t > 0 else DEFAULT_TIMEOUT


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def decode_request(data: bytes) -> dict:
    """Parse and check the envelope; raises ProtocolError with the reason."""
    try:
        obj = boundedjson.loads(data, MAX_REQUEST, "request")
    except boundedjson.JsonRefused as e:
        raise ProtocolError(f"malformed request: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed request: not a JSON object")
    if "v" not in obj:
        raise ProtocolError(f"request has no protocol version 'v' (this proxy speaks v{VERSION})")
    if obj["v"] != VERSION:
        raise ProtocolError(f"protocol version {obj['v']!r} not supported (this proxy speaks v{VERSION})")
    op = obj.get("op")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r} (known: {', '.join(OPS)})")
    return obj


def tvd_from_bridge(bridge: str | None) -> str | None:
    """'tvd:alpha' -> 'alpha'; any other bridge value -> None; 'tvd:<garbage>' -> ProtocolError."""
    if not bridge or not bridge.startswith(BACKEND_BRIDGE_PREFIX):
        return None
    name = bridge[len(BACKEND_BRIDGE_PREFIX):]
    if not NAME_RE.match(name):
        raise ProtocolError(f"backend bridge key {bridge!r} is not tvd:<name> with a valid TVD name "
                            f"(1-32 of a-z 0-9 _ -, starting with a letter)")
    return name


def request(obj: dict, path: str | None = None, timeout: float | None = None) -> dict:
    """Send one request, return the response object (ok or not). ProxyUnreachable otherwise.
    `timeout` None: default_timeout()."""
    path = path or socket_path()
    timeout = default_timeout() if timeout is None else timeout
    msg = dict(obj)
    msg.setdefault("v", VERSION)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                s.connect(path)
                break
            except BlockingIOError:   # listen backlog full: the proxy is alive, retry
                if time.monotonic() > deadline:
                    raise socket.timeout() from None
                time.sleep(0.01)
            except FileNotFoundError:
                raise ProxyUnreachable(f"tvd-proxy is not running (no socket {path})") from None
            except ConnectionRefusedError:
                raise ProxyUnreachable(f"tvd-proxy is not running (socket {path} refuses connections)") from None
            except PermissionError:
                raise ProxyUnreachable(f"permission denied on {path} (tvd-proxy talks to root only)") from None
        s.sendall(encode(msg))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise ProxyUnreachable(f"tvd-proxy did not answer within {timeout:g} s (socket {path})") from None
    except OSError as e:
        raise ProxyUnreachable(f"talking to tvd-proxy on {path} failed: {e.strerror or e}") from None
    finally:
        s.close()
    if not buf:
        raise ProxyUnreachable(f"tvd-proxy closed the connection without an answer (socket {path})")
    try:
        resp = json.loads(buf)
    except ValueError:
        raise ProxyUnreachable(f"tvd-proxy sent a malformed answer (socket {path})") from None
    if not isinstance(resp, dict) or "ok" not in resp:
        raise ProxyUnreachable(f"tvd-proxy sent a malformed answer (socket {path})")
    return resp
