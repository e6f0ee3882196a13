"""HTTPS client for tvd-master, shared by tvd-proxy (master mode) and `tvdctl master`.

Stable API:
    parse_token(token) -> Token(id, secret, pin)
    fetch_ca_pinned(url, pin, timeout=10) -> CA PEM (str)
        GET /v1/ca without verification, then refuse unless SHA-256(DER)[:32 hex] == pin.
    enroll(url, token, host, key_path, timeout=30) -> Enrolled(certificate, ca)
        Pins the CA from the token, creates an EC P-256 key (0600, O_EXCL) and a CSR, posts
        them over a verified connection. The key lands at key_path only after the master
        issued the certificate; a failed attempt leaves an earlier key untouched.
    MasterClient(url, ca_pem, cert=None, key=None, timeout=30)
        .request(method, path, body=None, timeout=None) -> (status, json or None)
        .call(method, path, body=None) -> json, raising MasterError on any non-2xx
        helpers: bundle(host, after, wait), put_capabilities(host, report), post_audit(events)
    MasterPool(urls, ca_pem, cert=None, key=None, timeout=30)
        the same calls against replicas of one master: a transport error or a 503 (that
        replica cannot reach its store) moves on to the next URL; any other answer is final.
Every connection is TLS 1.3 with the master's certificate checked against the pinned CA and
the URL's host name. Errors are MasterError(status, one-line message); status 0 = transport.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from xen_tvd import boundedjson
from xen_tvd.master import ca as camod

MAX_RESPONSE = 64 * 1024 * 1024


class MasterError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{message} (HTTP {status})" if status else message)


class PinMismatch(MasterError):
    """The master's CA is not the token's: never worth asking again."""


@dataclass(frozen=True)
class Token:
    id: str
    secret: str
    pin: str

    def __repr__(self) -> str:          # never print the secret by accident
        return f"Token(id={self.id!r}, pin={self.pin!r})"


def parse_token(token: str) -> Token:
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != "tvd1" or not all(parts[1:]):
        raise MasterError(0, "token must look like tvd1.<id>.<secret>.<ca-pin> "
                             "(as printed by 'tvd-master token HOST')")
    if len(parts[3]) != 32 or any(c not in "0123456789abcdef" for c in parts[3]):
        raise MasterError(0, "token's CA pin is not 32 hex digits")
    return Token(parts[1], parts[2], parts[3])


def _split(url: str) -> tuple[str, int]:
    p = urlsplit(url)
    if p.scheme != "https" or not p.hostname:
        raise MasterError(0, f"master URL {url!r} must look like https://HOST:PORT")
    try:
        return p.hostname, p.port or 443
    except ValueError:
        raise MasterError(0, f"master URL {url!r} has a bad port") from None


def client_context(ca_pem: str | None, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_pem is None:
        # only for GET /v1/ca, whose answer is checked against the token's pin
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem)
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise MasterError(0, f"cannot load client certificate {cert} / key {key}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
    return ctx


def _roundtrip(url: str, ctx: ssl.SSLContext, method: str, path: str, body, timeout: float):
    host, port = _split(url)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Connection": "close"}
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read(MAX_RESPONSE + 1)
    except ssl.SSLCertVerificationError as e:
        raise MasterError(0, f"master {url}: certificate check failed: {e.verify_message}") from None
    except ssl.SSLError as e:
        raise MasterError(0, f"master {url}: TLS failed: {e.reason or e}") from None
    except (socket.timeout, TimeoutError):
        raise MasterError(0, f"master {url}: no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as e:
        raise MasterError(0, f"master {url} unreachable: {getattr(e, 'strerror', None) or e}") \
            from None
    finally:
        conn.close()
    if len(raw) > MAX_RESPONSE:
        raise MasterError(resp.status, "master answer too large")
    if not raw:
        return resp.status, None
    try:
        return resp.status, boundedjson.loads(raw, MAX_RESPONSE, "master answer")
    except ValueError:
        raise MasterError(resp.status, "master answered with something other than JSON") from None


def fetch_ca_pinned(url: str, pin: str, timeout: float = 10) -> str:
    status, obj = _roundtrip(url, client_context(None), "GET", "/v1/ca", None, timeout)
    if status != 200 or not isinstance(obj, dict) or not isinstance(obj.get("ca"), str):
        raise MasterError(status, f"master {url} did not return its CA")
    try:
        cert = x509.load_pem_x509_certificate(obj["ca"].encode())
    except ValueError:
        raise MasterError(status, f"master {url} returned a CA that is not PEM") from None
    if camod.ca_pin(cert) != pin.lower():
        # nothing has been sent yet but this GET: refuse before the token leaves the host
        raise PinMismatch(0, f"the CA served by {url} does not match the token's pin "
                             f"(got {camod.ca_pin(cert)}); wrong master or interception")
    return camod.pem(cert)


@dataclass(frozen=True)
class Enrolled:
    certificate: str
    ca: str
    master: str = ""       # the URL its bundles name (replicas share one); "" = the URL asked


def enroll(url: str | list[str], token: str, host: str, key_path: str,
           timeout: float = 30) -> Enrolled:
    """url: one master URL or a list of its replicas' URLs. While none answers (a master
    restarting, a replica failing over) they are tried again in rounds for up to `timeout`
    seconds, always with the same key and CSR: a retry whose first answer was lost gets the
    same certificate again (the master re-answers a used token for the same key)."""
    urls = [url] if isinstance(url, str) else list(url)
    tok = parse_token(token)
    deadline = time.monotonic() + timeout
    ca_pem = _first_answer(urls, lambda u: fetch_ca_pinned(u, tok.pin, timeout), deadline)
    key = camod.new_ec_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, host)]))
           .sign(key, hashes.SHA256()))
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
    directory = os.path.dirname(os.path.abspath(key_path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # write under a temporary name first: the old key stays usable if enrolment fails
    fd, tmp = tempfile.mkstemp(prefix=".host-key-", dir=directory)
    os.close(fd)
    os.unlink(tmp)
    camod.write_private_key(tmp, key)
    try:
        ctx = client_context(ca_pem)
        body = {"token": token.strip(), "host": host, "csr": csr_pem}
        status, obj = _first_answer(urls, lambda u: _answered(
            _roundtrip(u, ctx, "POST", "/v1/enroll", body, timeout)), deadline)
        if status != 200:
            raise MasterError(status, _error_of(obj, "enrolment refused"))
        if not isinstance(obj, dict) or not isinstance(obj.get("certificate"), str):
            raise MasterError(status, "master's enrolment answer has no certificate")
        cert = x509.load_pem_x509_certificate(obj["certificate"].encode())
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise MasterError(status, "master returned a certificate for another key")
        os.replace(tmp, key_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    master = obj.get("master") if isinstance(obj.get("master"), str) else ""
    return Enrolled(obj["certificate"], ca_pem, master)


def _answered(result):
    """A 503 is a replica that cannot reach its store: as good as no answer."""
    if result[0] == 503:
        raise MasterError(0, _error_of(result[1], "master answered 503"))
    return result


def _first_answer(urls: list[str], fn, deadline: float):
    while True:
        for u in urls:
            try:
                return fn(u)
            except MasterError as e:
                if e.status != 0 or isinstance(e, PinMismatch):
                    raise
                last = e
        if time.monotonic() + 1 > deadline:
            raise last
        time.sleep(1)


def _error_of(obj, default: str) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("error"), str):
        return obj["error"]
    return default


class MasterClient:
    def __init__(self, url: str, ca_pem: str, cert: str | None = None,
                 key: str | None = None, timeout: float = 30) -> None:
        _split(url)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ctx = client_context(ca_pem, cert, key)

    def request(self, method: str, path: str, body=None, timeout: float | None = None):
        return _roundtrip(self.url, self.ctx, method, path, body, timeout or self.timeout)

    def call(self, method: str, path: str, body=None, timeout: float | None = None):
        status, obj = self.request(method, path, body, timeout)
        if not 200 <= status < 300:
            raise MasterError(status, _error_of(obj, f"master answered HTTP {status}"))
        return obj

    def bundle(self, host: str, after: int = 0, wait: float = 0):
        """The signed envelope when the host's generation is > after, else None (204)."""
        status, obj = self.request("GET", f"/v1/hosts/{quote(host, safe='')}/bundle"
                                   f"?after={int(after)}&wait={wait:g}", timeout=wait + 15)
        if status == 204:
            return None
        if status != 200:
            raise MasterError(status, _error_of(obj, f"master answered HTTP {status}"))
        return obj

    def put_capabilities(self, host: str, report: dict):
        return self.call("PUT", f"/v1/hosts/{quote(host, safe='')}/capabilities", report)

    def post_audit(self, events: list[dict]):
        return self.call("POST", "/v1/audit", {"events": events})


class MasterPool:
    """MasterClient's calls against a list of replica URLs: the replica that answered last is
    asked first; a transport error or a 503 tries the next one; when all fail the last error
    is raised (status 0 or 503). Which URL answered is in .url."""

    def __init__(self, urls: list[str], ca_pem: str, cert: str | None = None,
                 key: str | None = None, timeout: float = 30) -> None:
        if not urls:
            raise MasterError(0, "no master URL given")
        self.clients = [MasterClient(u, ca_pem, cert, key, timeout) for u in urls]
        self.current = 0

    @property
    def url(self) -> str:
        return self.clients[self.current].url

    def request(self, method: str, path: str, body=None, timeout: float | None = None):
        last = None
        for k in range(len(self.clients)):
            i = (self.current + k) % len(self.clients)
            try:
                status, obj = self.clients[i].request(method, path, body, timeout)
            except MasterError as e:
                last = e
                continue
            if status == 503:
                last = MasterError(503, _error_of(obj, "master answered 503"))
                continue
            self.current = i
            return status, obj
        raise last

    call = MasterClient.call
    bundle = MasterClient.bundle
    put_capabilities = MasterClient.put_capabilities
    post_audit = MasterClient.post_audit
