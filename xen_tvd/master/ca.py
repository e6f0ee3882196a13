"""The master's certificate authority (docs/master-protocol.md, "Roles and trust").

Layout of the master's directory (made by init_ca):
    ca.pem / ca.key          the CA (EC P-256), 10 years
    server.pem / server.key  TLS server certificate, SAN = host part of the master URL
    signer.pem / signer.key  Ed25519 policy-signing certificate (OU xen-tvd-policy-signer)
    url                      the master URL the certificates were made for
Private keys are created with O_CREAT|O_EXCL and mode 0600 so they are never readable by
others, not even for an instant, and an existing key is never overwritten silently.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import uuid as uuidlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from xen_tvd.master.bundle import SIGNER_OU

HOST_OU = "xen-tvd-host"
ADMIN_OU = "xen-tvd-admin"
VM_OU = "xen-tvd-vm"
SERVER_OU = "xen-tvd-master"
VM_PROPERTIES_OID = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
HOST_CERT_DAYS = 30
ADMIN_CERT_DAYS = 365
VM_CERT_DAYS = 365
CA_DAYS = 3650
SERVER_DAYS = 825
BACKDATE = dt.timedelta(minutes=5)   # tolerate small clock skew between master and hosts


class CaError(Exception):
    """One-line reason a CA operation was refused."""


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast handshakes on small Dom0s, and what the contract names for host keys
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(path: str, key) -> None:
    """PEM (PKCS#8, unencrypted) at `path`, created 0600 and never over an existing file."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_public(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_key(path: str):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def load_cert(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def ca_pin(ca_cert: x509.Certificate) -> str:
    """First 32 hex digits of SHA-256 over the CA certificate's DER (the token's pin)."""
    return hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:32]


def url_host(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CaError(f"master URL {url!r} must look like https://HOST:PORT")
    return parts.hostname


def _san_for(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _name(cn: str, ou: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xen-tvd"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, directory: str) -> "Ca":
        try:
            return cls(load_cert(os.path.join(directory, "ca.pem")),
                       load_key(os.path.join(directory, "ca.key")))
        except FileNotFoundError:
            raise CaError(f"{directory} holds no CA; run 'tvd-master init --dir {directory} "
                          "--url URL' first") from None

    def _builder(self, subject: x509.Name, public_key, days: float,
                 not_before: dt.datetime | None = None) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.timezone.utc)
        start = not_before or now - BACKDATE
        return (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(self.cert.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + BACKDATE + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.cert.public_key()), critical=False))

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.key, hashes.SHA256())

    def issue_client(self, public_key, cn: str, ou: str, days: float = HOST_CERT_DAYS,
                     not_before: dt.datetime | None = None) -> x509.Certificate:
        """A TLS client certificate (host or admin role)."""
        b = self._builder(_name(cn, ou), public_key, days, not_before)
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                          False, False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False)
        return self._sign(b)

    def issue_from_csr(self, csr_pem: str, cn: str, ou: str,
                       days: float = HOST_CERT_DAYS) -> x509.Certificate:
        """Certify the CSR's key. The subject comes from the master, never from the CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        except (ValueError, TypeError):
            raise CaError("csr is not a PEM certificate signing request") from None
        try:
            ok = csr.is_signature_valid
        except (ValueError, InvalidSignature):
            ok = False
        if not ok:
            raise CaError("csr signature does not verify (proof of key possession failed)")
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise CaError("csr key is RSA below 2048 bits")
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey,
                                ed25519.Ed25519PublicKey)):
            raise CaError("csr key type is not EC, RSA or Ed25519")
        return self.issue_client(key, cn, ou, days)

    def issue_server(self, public_key, url: str) -> x509.Certificate:
        host = url_host(url)
        b = self._builder(_name(host, SERVER_OU), public_key, SERVER_DAYS)
        b = b.add_extension(x509.SubjectAlternativeName([_san_for(host)]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False)
        return self._sign(b)

    def issue_signer(self, public_key) -> x509.Certificate:
        b = self._builder(_name("policy signer", SIGNER_OU), public_key, SERVER_DAYS)
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                          False, False), critical=True)
        return self._sign(b)

    def issue_vm(self, public_key, name: str, vm_uuid: str, properties: dict[str, str],
                 days: float = VM_CERT_DAYS) -> x509.Certificate:
        """A VM certificate: SAN urn:uuid:<uuid>, properties as JSON in our extension."""
        u = str(uuidlib.UUID(vm_uuid))
        b = self._builder(_name(name, VM_OU), public_key, days)
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"urn:uuid:{u}")]), critical=False)
        b = b.add_extension(x509.UnrecognizedExtension(
            VM_PROPERTIES_OID, json.dumps(properties, sort_keys=True).encode()), critical=False)
        return self._sign(b)


def csr_key_sha256(csr_pem: str) -> str:
    """SHA-256 of the CSR's public key (DER SubjectPublicKeyInfo) if its signature proves
    possession of the key, else "": names the key a retried enrolment asks for again."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        if not csr.is_signature_valid:
            return ""
        der = csr.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError, InvalidSignature):
        return ""
    return hashlib.sha256(der).hexdigest()


def init_ca(directory: str, url: str) -> tuple[Ca, bool]:
    """Create the CA, server and signer certificates. Idempotent: an existing directory made
    for the same URL is kept (returns created=False); another URL is refused."""
    host = url_host(url)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    url_file = os.path.join(directory, "url")
    if os.path.exists(os.path.join(directory, "ca.pem")):
        try:
            with open(url_file) as f:
                old = f.read().strip()
        except FileNotFoundError:
            old = ""
        if old != url:
            raise CaError(f"{directory} was initialised for {old or 'an unknown URL'}, not "
                          f"{url}; use another --dir")
        return Ca.load(directory), False
    leftovers = [n for n in ("ca.key", "server.key", "signer.key")
                 if os.path.exists(os.path.join(directory, n))]
    if leftovers:
        raise CaError(f"{directory} holds keys ({', '.join(leftovers)}) but no ca.pem: an "
                      "earlier init was interrupted; remove the directory and run init again")
    key = new_ec_key()
    now = dt.datetime.now(dt.timezone.utc)
    subject = _name(f"xen-tvd master CA {host}", "xen-tvd-ca")
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    ca = Ca(cert, key)
    write_private_key(os.path.join(directory, "ca.key"), key)
    skey = new_ec_key()
    write_private_key(os.path.join(directory, "server.key"), skey)
    write_public(os.path.join(directory, "server.pem"),
                 pem(ca.issue_server(skey.public_key(), url)) + pem(cert))
    sigkey = ed25519.Ed25519PrivateKey.generate()
    write_private_key(os.path.join(directory, "signer.key"), sigkey)
    write_public(os.path.join(directory, "signer.pem"), pem(ca.issue_signer(sigkey.public_key())))
    write_public(url_file, url + "\n")
    # ca.pem last: its presence marks a complete init (a crash before it leaves a retryable dir)
    write_public(os.path.join(directory, "ca.pem"), pem(cert))
    return ca, True


def init_replica(directory: str, url: str, source: str) -> tuple[Ca, bool]:
    """Another replica of the master in `source`: the same CA and policy signer (copied, 0600),
    its own TLS key and a server certificate for its own URL. Idempotent like init_ca."""
    if os.path.exists(os.path.join(directory, "ca.pem")):
        return init_ca(directory, url)
    try:
        ca = Ca.load(source)
        files = {n: open(os.path.join(source, n), "rb").read()
                 for n in ("ca.key", "signer.key", "signer.pem")}
    except OSError as e:
        raise CaError(f"--ca-from {source}: {e.strerror}: {e.filename}") from None
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for n in ("ca.key", "signer.key"):
        fd = os.open(os.path.join(directory, n), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(files[n])
            f.flush()
            os.fsync(f.fileno())
    write_public(os.path.join(directory, "signer.pem"), files["signer.pem"].decode())
    skey = new_ec_key()
    write_private_key(os.path.join(directory, "server.key"), skey)
    write_public(os.path.join(directory, "server.pem"),
                 pem(ca.issue_server(skey.public_key(), url)) + pem(ca.cert))
    write_public(os.path.join(directory, "url"), url + "\n")
    write_public(os.path.join(directory, "ca.pem"), pem(ca.cert))
    return ca, True


def identity(cert: x509.Certificate) -> tuple[str, str, int]:
    """(OU, CN, serial) of a client certificate; empty strings when absent."""
    def one(oid):
        vals = cert.subject.get_attributes_for_oid(oid)
        return str(vals[0].value) if len(vals) == 1 else ""
    return one(NameOID.ORGANIZATIONAL_UNIT_NAME), one(NameOID.COMMON_NAME), cert.serial_number
