"""tvd-master's HTTPS API (docs/master-protocol.md; schemas in docs/master-openapi.yaml).

TLS 1.3 only; a client certificate is requested on every connection (CERT_OPTIONAL, so
GET /v1/ca and POST /v1/enroll work without one) and each route names the role it needs.
Connections, handshakes and request reading are listener.py's (one selector thread, explicit
budgets, so idle or slow clients hold no thread); a Handler runs on a worker thread with the
whole request in memory. http.server's BaseHTTPRequestHandler only parses the request line and
headers from those bytes. Every answer is JSON; errors are {"error": "one line"}; a bug
becomes a 500 with a generic line, never a traceback.
Log lines never contain request bodies (tokens, CSRs) or keys.
"""
from __future__ import annotations

import io
import json
import re
import socket
import ssl
import threading
import time
import traceback
import uuid as uuidlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography import x509

from xen_tvd import boundedjson
from xen_tvd.desired import capabilities
from xen_tvd.desired.patterns import is_wireguard_key
from xen_tvd.log import log
from xen_tvd.master import ca as camod
from xen_tvd.master import page
from xen_tvd.master.decide import effective_host
from xen_tvd.master.listener import Limits, Listener
from xen_tvd.master.service import Master, verify_policy_text
from xen_tvd.master.store import StoreError, StoreUnavailable, TokenRefused
from xen_tvd.policy import PolicyInvalid
from xen_tvd.policy.model import ASSURANCE_KINDS

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
POLICY_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_TS = 2**53                        # audit timestamps: exact in a double, fit SQLite
SMALL_BODY = 64 * 1024
LARGE_BODY = 8 * 1024 * 1024          # policies (the 1,000-TVD bench policy is 339 KiB)
MAX_WAIT = 60.0
REVOCATION_CHECK = 0.5                # an open watch re-checks its certificate this often
AUDIT_EVENTS = {"admitted", "denied", "detached", "session-expired", "revoked"}
FUNCTIONAL = set(capabilities.FUNCTIONAL)
# wireguard-accepts: the next keys of rotating peers; two per peer at most, so a host's list is
# bounded by twice its peers (hosts, in the policy's bounds)
MAX_ACCEPTS = 8192


class _TlsWriter(io.RawIOBase):
    """The handler's wfile: every write goes out whole (blocking, under the listener's
    write timeout)."""

    def __init__(self, sock) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sock.sendall(data)
        return len(data)


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra) -> None:
        # one line, whatever a client put in the path it echoes (%0A in a host name, say)
        message = "".join(c if c.isprintable() else " " for c in message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


# (method, path template, role, handler name). Role: None = anyone, "host" = the host named
# in {host}, "admin" = an admin certificate. The OpenAPI test compares this table with
# docs/master-openapi.yaml.
ROUTES = [
    ("GET", "/v1/ca", None, "get_ca"),
    ("POST", "/v1/enroll", None, "post_enroll"),
    ("PUT", "/v1/hosts/{host}/capabilities", "host", "put_capabilities"),
    ("GET", "/v1/hosts/{host}/bundle", "host", "get_bundle"),
    ("POST", "/v1/audit", "host", "post_audit"),
    ("GET", "/v1/audit", "admin", "get_audit"),
    ("GET", "/v1/hosts", "admin", "get_hosts"),
    ("POST", "/v1/hosts/{host}/revoke", "admin", "post_revoke_host"),
    ("GET", "/v1/tvds", "admin", "get_tvds"),
    ("GET", "/v1/admissions", "admin", "get_admissions"),
    ("GET", "/v1/policy", "admin", "get_policy"),
    ("PUT", "/v1/policy", "admin", "put_policy"),
    ("PUT", "/v1/images/{digest}", "admin", "put_image"),
    ("POST", "/v1/vms/{uuid}/revoke", "admin", "post_revoke_vm"),
    ("POST", "/v1/vm-certs/{serial}/revoke", "admin", "post_revoke_vm_cert"),
    ("GET", "/v1/page", "admin", "get_page"),
]


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


_COMPILED = [(m, _compile(t), role, name) for m, t, role, name in ROUTES]


class Handler(BaseHTTPRequestHandler):
    server_version = "tvd-master/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    master: Master   # set on the subclass made by make_server

    # -- plumbing ------------------------------------------------------------------------------
    def __init__(self, conn, request: bytes, server) -> None:
        # the listener read the whole request (head and body) before any thread saw it
        self._request_bytes = request
        super().__init__(conn.tls, conn.peer, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._request_bytes)
        self.wfile = _TlsWriter(self.connection)

    def log_message(self, fmt, *args):   # http.server's own lines: replaced by _log_request
        pass

    def log_error(self, fmt, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        # http.server's own refusals (bad request line, unknown method, oversized headers)
        # would be HTML: answer them in the API's JSON form too
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        line = (message or phrase).replace("\n", " ")[:200]
        self._send(code, {"error": f"{line}"})
        log("warning", "bad-request", status=code, reason=line)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        t0 = time.monotonic()
        self.close_connection = True
        self._body_read = False
        self.who = "-"
        parts = urlsplit(self.path)
        status, route = 500, None
        try:
            route, params = self._route(method, parts.path)
            self.query = parse_qs(parts.query)
            self._authorize(route[2], params)
            status, body = getattr(self, route[3])(**params)
        except HttpError as e:
            status, body = e.status, {"error": e.message, **e.extra}
        except StoreUnavailable as e:
            # cut off from etcd (or no quorum): answer nothing from stale state; a proxy
            # with several master URLs tries the next one
            log("error", "store-unavailable", path=parts.path, error=str(e)[:300])
            status, body = 503, {"error": "this master cannot reach its store; try another "
                                          "replica or later"}
        except Exception as e:   # a bug: answer generically, log where (no values)
            tb = traceback.extract_tb(e.__traceback__)[-1]
            log("error", "internal-error", kind=type(e).__name__,
                at=f"{tb.filename.rsplit('/', 1)[-1]}:{tb.lineno}", path=parts.path)
            status, body = 500, {"error": "internal error in tvd-master; see its log"}
        finally:
            self.master.store.release()
        self._drain()
        self._send(status, body)
        took = time.monotonic() - t0
        self.master.seen.request(route[3] if route else "none", status, took, self.who)
        log("info" if status < 400 else "warning", "request", method=method, path=parts.path,
            status=status, who=self.who, ms=took * 1000)

    def _drain(self) -> None:
        # a refusal sent before the body was read would make the kernel reset the connection
        # (unread data on close), and the client would see a reset instead of our answer
        if self._body_read:
            return
        try:
            left = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return
        if 0 < left <= LARGE_BODY:
            try:
                while left > 0:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    left -= len(chunk)
            except OSError:
                pass

    def _send(self, status: int, body) -> None:
        if isinstance(body, page.Html):      # the read-only page: the one non-JSON answer
            data = body.encode()
        else:
            data = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Connection", "close")
            if isinstance(body, page.Html):
                page.headers(self.send_header)
            elif body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass   # the client went away; nothing to tell it

    def _route(self, method: str, path: str):
        allowed = False
        for m, rx, role, name in _COMPILED:
            mt = rx.match(path)
            if mt:
                if m == method:
                    return (m, rx, role, name), {k: unquote(v) for k, v in mt.groupdict().items()}
                allowed = True
        if allowed:
            raise HttpError(405, f"method {method} not allowed on {path}")
        raise HttpError(404, f"no such endpoint {path}")

    def _peer(self):
        der = self.connection.getpeercert(binary_form=True)
        if not der:
            return None
        return camod.identity(x509.load_der_x509_certificate(der))

    def _authorize(self, role: str | None, params: dict) -> None:
        if role is None:
            return
        peer = self._peer()
        if peer is None:
            raise HttpError(401, "a client certificate is required")
        ou, cn, serial = peer
        if ou == camod.HOST_OU:
            self.who = f"host:{cn}"
            if not self.master.store.host_cert_ok(cn, serial):
                raise HttpError(403, f"host {cn}: certificate revoked or not on record")
            if role != "host":
                raise HttpError(403, "this endpoint needs an admin certificate")
            if "host" in params and params["host"] != cn:
                raise HttpError(403, f"host {cn} may not access host {params['host']}")
        elif ou == camod.ADMIN_OU:
            self.who = f"admin:{cn}"
            if not self.master.store.admin_cert_ok(cn, serial):
                raise HttpError(403, f"admin {cn}: certificate revoked or not on record")
            if role != "admin":
                raise HttpError(403, "this endpoint needs a host certificate")
        else:
            raise HttpError(403, f"certificate role {ou or 'none'} may not use this API")
        self.serial = serial

    def _body(self, limit: int = SMALL_BODY) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(411, "send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HttpError(411, "Content-Length required") from None
        if length < 0 or length > limit:
            if length > LARGE_BODY:
                self._body_read = True     # not worth reading: the client gets a reset
            raise HttpError(413, f"request body over {limit} bytes")
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) < length:
            raise HttpError(400, f"request body shorter than its Content-Length {length}")
        try:
            obj = boundedjson.loads(raw, limit, "request body")
        except boundedjson.JsonRefused as e:
            raise HttpError(400, str(e)) from None
        if not isinstance(obj, dict):
            raise HttpError(400, "request body must be a JSON object")
        return obj

    def _q(self, name: str, kind, default, lo, hi):
        vals = self.query.get(name)
        if not vals:
            return default
        try:
            v = kind(vals[0])
        except ValueError:
            raise HttpError(400, f"query parameter {name} must be a number") from None
        if not lo <= v <= hi:
            raise HttpError(400, f"query parameter {name} must be within {lo}..{hi}")
        return v

    # -- open endpoints ------------------------------------------------------------------------
    def get_ca(self):
        return 200, {"ca": self.master.ca_pem}

    def post_enroll(self):
        b = self._body()
        token, host, csr = b.get("token"), b.get("host"), b.get("csr")
        if not all(isinstance(v, str) for v in (token, host, csr)):
            raise HttpError(400, "enroll needs string fields token, host and csr")
        if not HOST_NAME.match(host):
            raise HttpError(400, "host name must be 1-63 of A-Z a-z 0-9 . _ - ")
        parts = token.split(".")
        refused = HttpError(401, "enrolment refused: the token is unknown, used, expired or "
                                 "for another host; ask for a new one")
        if len(parts) != 4 or parts[0] != "tvd1":
            self.master.store.audit(f"peer:{self.client_address[0]}", "enrol-refused",
                                    {"host": host, "reason": "malformed token"})
            raise refused
        m = self.master
        try:
            cert = m.store.enroll(parts[1], parts[2], host, lambda: m.ca.issue_from_csr(
                csr, host, camod.HOST_OU), camod.csr_key_sha256(csr))
        except TokenRefused as e:
            m.store.audit(f"peer:{self.client_address[0]}", "enrol-refused",
                          {"host": host, "token_id": parts[1], "reason": str(e)})
            log("warning", "enrol-refused", host=host, token_id=parts[1], reason=str(e))
            raise refused from None
        except camod.CaError as e:
            raise HttpError(400, str(e)) from None
        self.who = f"host:{host}"
        log("info", "enrolled", host=host, serial=cert.serial_number)
        m.changed()
        return 200, {"certificate": camod.pem(cert), "ca": m.ca_pem, "master": m.url}

    # -- host endpoints ------------------------------------------------------------------------
    def put_capabilities(self, host: str):
        b = self._body(LARGE_BODY)
        report = _check_report(b)
        try:
            policy = self.master.policy()
        except PolicyInvalid:
            raise HttpError(503, "the policy in force no longer verifies with this master; "
                                 "push a fixed one") from None
        if policy is not None and host not in policy.hosts:
            self.master.store.audit(f"host:{host}", "capabilities-refused",
                                    {"host": host, "reason": "not in the policy's hosts"})
            raise HttpError(403, f"host {host} is not in the policy's hosts:")
        changed = self.master.store.put_report(host, report)
        body = {"changed": changed}
        if policy is not None:
            eff, warnings = effective_host(policy.hosts[host], report)
            if changed:
                for w in warnings:
                    self.master.store.audit(f"host:{host}", "capability-warning",
                                            {"host": host, "warning": w})
            body.update(capabilities=sorted(eff.capabilities), properties=eff.properties,
                        warnings=warnings)
        if changed:
            self.master.changed()
        return 200, body

    def get_bundle(self, host: str):
        after = self._q("after", int, 0, 0, 2**62)
        wait = self._q("wait", float, 0.0, 0.0, MAX_WAIT)
        m = self.master
        deadline = time.monotonic() + wait
        m.settled(min(wait, 5.0))       # a report/push just made should be in the answer
        next_check = time.monotonic() + REVOCATION_CHECK
        with m.cond:
            while True:
                cur = m.envelopes.get(host)
                if cur is not None and cur[0] > after:
                    return 200, cur[1]
                now = time.monotonic()
                if now >= deadline:
                    return 204, None
                if now >= next_check:
                    # revocation (also by the CLI in another process) ends the watch at once
                    if not m.store.host_cert_ok(host, self.serial):
                        raise HttpError(403, f"host {host}: certificate revoked")
                    next_check = now + REVOCATION_CHECK
                m.cond.wait(min(deadline, next_check) - now)

    def post_audit(self):
        b = self._body(4 * 1024 * 1024)
        events = b.get("events")
        if not isinstance(events, list) or len(events) > 10000:
            raise HttpError(400, "audit needs 'events': a list of at most 10000 events")
        clean = []
        for i, e in enumerate(events):
            if not isinstance(e, dict):
                raise HttpError(400, f"events[{i}] is not an object")
            if not isinstance(e.get("id"), str) or not 0 < len(e["id"]) <= 64:
                raise HttpError(400, f"events[{i}].id must be a string (a uuid4)")
            if e.get("event") not in AUDIT_EVENTS:
                raise HttpError(400, f"events[{i}].event must be one of "
                                     f"{', '.join(sorted(AUDIT_EVENTS))}")
            ts = e.get("ts")
            if "ts" in e and (isinstance(ts, bool) or not isinstance(ts, (int, float))
                              or not 0 <= ts <= MAX_TS):
                raise HttpError(400, f"events[{i}].ts must be a number of seconds since 1970 "
                                     f"(0..{MAX_TS})")
            for k in ("vm", "name", "tvd", "ifname", "reason"):
                if e.get(k) is not None and (not isinstance(e[k], str) or len(e[k]) > 1024):
                    raise HttpError(400, f"events[{i}].{k} must be a string of <= 1024 chars")
            clean.append(e)
        host = self.who.split(":", 1)[1]
        new = self.master.store.record_events(host, clean)
        return 200, {"recorded": new, "duplicates": len(clean) - new}

    # -- admin endpoints -----------------------------------------------------------------------
    def get_audit(self):
        after = self._q("after", int, 0, 0, 2**62)
        limit = self._q("limit", int, 1000, 1, 10000)
        return 200, {"events": self.master.store.audit_events(after, limit)}

    def get_hosts(self):
        return 200, {"hosts": self.master.store.hosts()}

    def post_revoke_host(self, host: str):
        try:
            changed = self.master.store.revoke_host(host, self.who)
        except StoreError as e:
            raise HttpError(404, str(e)) from None
        log("warning", "host-revoked", host=host, by=self.who)
        self.master.changed()
        return 200, {"host": host, "revoked": True, "changed": changed}

    def get_tvds(self):
        try:
            policy = self.master.policy()
        except PolicyInvalid:
            raise HttpError(503, "the policy in force no longer verifies with this master; "
                                 "push a fixed one") from None
        if policy is None:
            return 200, {"tvds": [], "policy_version": None}
        out = []
        carriers = self.master.tvd_carriers()
        for t in sorted(policy.tvds.values(), key=lambda t: t.name):
            out.append({"id": f"{self.master.url}#{t.name}", "name": t.name, "vlan": t.vlan,
                        "vni": t.vni, "protection": sorted(t.protection),
                        "membership": [str(r) for r in t.membership],
                        "session_seconds": t.session_seconds,
                        "hosts": sorted(carriers.get(t.name, []))})
        return 200, {"tvds": out, "policy_version": self.master.store.policy()[0]}

    def get_page(self):
        return 200, page.Html(page.page(self.master))

    def get_admissions(self):
        return 200, {"admissions": self.master.store.admissions()}

    def get_policy(self):
        cur = self.master.store.policy()
        if cur is None:
            raise HttpError(404, "no policy has been pushed yet")
        return 200, {"version": cur[0], "name": cur[2], "yaml": cur[1]}

    def put_policy(self):
        b = self._body(LARGE_BODY)
        text, name = b.get("yaml"), b.get("name", "policy.yaml")
        if not isinstance(text, str) or not isinstance(name, str):
            raise HttpError(400, "policy push needs 'yaml' (text) and optional 'name'")
        # the name becomes a file name (diagnostics read NAME:LINE:COL): keep it one
        name = POLICY_NAME_CHARS.sub("_", name.rsplit("/", 1)[-1])[:200].lstrip(".") \
            or "policy.yaml"
        policy, diags = verify_policy_text(text, name)
        if policy is None:
            errors = [d for d in diags if ": error: " in d or ": warning: " not in d]
            raise HttpError(422, f"policy {name} has {len(errors)} error(s); nothing changed",
                            diagnostics=diags)
        version, changed = self.master.store.add_policy(text, name, self.who)
        if changed:
            log("info", "policy-pushed", version=version, by=self.who)
            self.master.changed()
        return 200, {"version": version, "changed": changed, "diagnostics": diags}

    def put_image(self, digest: str):
        if not DIGEST.match(digest):
            raise HttpError(400, "image digest must be sha256:<64 lowercase hex>")
        props = self._body().get("properties")
        _check_props(props)
        self.master.store.allow_image(digest, props, self.who)
        self.master.changed()
        return 200, {"digest": digest, "properties": props}

    def post_revoke_vm(self, uuid: str):
        try:
            vm = str(uuidlib.UUID(uuid))
        except ValueError:
            raise HttpError(400, f"{uuid!r} is not a UUID") from None
        changed = self.master.store.revoke_vm(vm, self.who)
        self.master.changed()
        return 200, {"vm": vm, "revoked": True, "changed": changed}

    def post_revoke_vm_cert(self, serial: str):
        if not serial.isdigit():
            raise HttpError(400, "serial must be a decimal number")
        try:
            changed = self.master.store.revoke_vm_cert(int(serial), self.who)
        except StoreError as e:
            raise HttpError(404, str(e)) from None
        self.master.changed()
        return 200, {"serial": serial, "revoked": True, "changed": changed}


def _check_props(props) -> None:
    if not isinstance(props, dict) or not props or not all(
            isinstance(k, str) and v in ASSURANCE_KINDS for k, v in props.items()):
        raise HttpError(400, "properties must be {property: assurance kind} with kinds from "
                             + ", ".join(ASSURANCE_KINDS))


def _check_report(b: dict) -> dict:
    functional = b.get("functional", [])
    if not isinstance(functional, list) or not all(isinstance(f, str) for f in functional):
        raise HttpError(400, "functional must be a list of strings")
    unknown = sorted(set(functional) - FUNCTIONAL)
    if unknown:
        raise HttpError(400, f"unknown functional capability {unknown[0]} (one of: "
                             f"{', '.join(sorted(FUNCTIONAL))})")
    nics = b.get("nics", [])
    if not isinstance(nics, list) or not all(
            isinstance(n, dict) and all(isinstance(n.get(k), str)
                                        for k in ("network", "nic", "address")) for n in nics):
        raise HttpError(400, "nics must be a list of {network, nic, address} strings")
    security = b.get("security", [])
    if not isinstance(security, list):
        raise HttpError(400, "security must be a list")
    for i, s in enumerate(security):
        if not isinstance(s, dict) or not isinstance(s.get("property"), str):
            raise HttpError(400, f"security[{i}] needs a string property")
        if s.get("assurance") not in ASSURANCE_KINDS:
            raise HttpError(400, f"security[{i}].assurance must be one of "
                                 + ", ".join(ASSURANCE_KINDS))
        if not isinstance(s.get("evidence", ""), str):
            raise HttpError(400, f"security[{i}].evidence must be a string")
    wg = {}
    for field in ("wireguard-key", "wireguard-next-key"):
        key = b.get(field)
        if key is not None and not is_wireguard_key(key):
            raise HttpError(400, f"{field} must be a WireGuard public key (44 characters of "
                                 "base64)")
        if key is not None:
            wg[field] = key
    if "wireguard-next-key" in wg and "wireguard-key" not in wg:
        raise HttpError(400, "wireguard-next-key needs wireguard-key (the key the host runs "
                             "with)")
    accepts = b.get("wireguard-accepts", [])
    if not isinstance(accepts, list) or not all(is_wireguard_key(k) for k in accepts):
        raise HttpError(400, "wireguard-accepts must be a list of WireGuard public keys")
    if len(accepts) > MAX_ACCEPTS:
        raise HttpError(400, f"wireguard-accepts lists more than {MAX_ACCEPTS} keys")
    if accepts:
        wg["wireguard-accepts"] = sorted(set(accepts))
    extra = sorted(set(b) - {"functional", "nics", "security", "wireguard-key",
                             "wireguard-next-key", "wireguard-accepts"})
    if extra:
        raise HttpError(400, f"unknown field {extra[0]} in capability report")
    out = {"functional": sorted(set(functional)),
           "nics": [{k: n[k] for k in ("network", "nic", "address")} for n in nics],
           "security": [{"property": s["property"], "assurance": s["assurance"],
                         "evidence": s.get("evidence", "")} for s in security]}
    out.update(wg)
    return out


class MasterServer(Listener):
    """The front end (listener.py: accept, TLS, budgets, whole requests) serving Handler."""

    def __init__(self, addr, family, handler, ctx: ssl.SSLContext,
                 limits: Limits = Limits()) -> None:
        self.RequestHandlerClass = handler
        super().__init__(addr, family, ctx, self._serve_request, limits)

    def _serve_request(self, conn, request: bytes) -> None:
        self.RequestHandlerClass(conn, request, self)


def server_context(directory: str) -> ssl.SSLContext:
    import os
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(os.path.join(directory, "server.pem"),
                        os.path.join(directory, "server.key"))
    ctx.load_verify_locations(os.path.join(directory, "ca.pem"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def make_server(master: Master, host: str, port: int,
                limits: Limits = Limits()) -> MasterServer:
    handler = type("BoundHandler", (Handler,), {"master": master})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return MasterServer((host, port), family, handler, server_context(master.dir), limits)


def start_in_thread(directory: str, host: str = "127.0.0.1", port: int = 0,
                    limits: Limits = Limits()):
    """(master, server, thread): for tests and embedding; stop with stop(server, master)."""
    master = Master(directory)
    master.start()
    srv = make_server(master, host, port, limits)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return master, srv, t


def stop(srv: MasterServer, master: Master) -> None:
    srv.shutdown()
    srv.server_close()
    master.stop()
