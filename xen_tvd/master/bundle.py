"""Signed bundles: canonical JSON, Ed25519 signature, and the checks a proxy makes.

Contract: docs/master-protocol.md, "Bundle". Stable API (the proxy imports it):

    canonical(obj) -> bytes
    sign_bundle(payload, signer_key, signer_pem) -> envelope dict
    verify_bundle(envelope, ca_cert, host, master_url, min_generation) -> payload dict
        raises BundleRejected (one line) for anything it does not accept.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

BUNDLE_FORMAT = 1
SIGNER_OU = "xen-tvd-policy-signer"


class BundleRejected(Exception):
    """The bundle must not be applied; the message says why in one line."""


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def sign_bundle(payload: dict, signer_key: Ed25519PrivateKey, signer_pem: str) -> dict:
    body = canonical(payload)
    return {"payload": base64.b64encode(body).decode("ascii"),
            "signature": base64.b64encode(signer_key.sign(body)).decode("ascii"),
            "signer": signer_pem}


def as_cert(ca_cert) -> x509.Certificate:
    """A certificate from an x509.Certificate or PEM text/bytes (callers hold either)."""
    if isinstance(ca_cert, x509.Certificate):
        return ca_cert
    if isinstance(ca_cert, str):
        ca_cert = ca_cert.encode()
    return x509.load_pem_x509_certificate(ca_cert)


def _ou(cert: x509.Certificate) -> list[str]:
    return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]


def not_before(cert: x509.Certificate) -> dt.datetime:
    """Start of validity, timezone-aware (cryptography < 42, e.g. Debian 12's 38, has only the
    naive UTC attribute)."""
    when = getattr(cert, "not_valid_before_utc", None)
    return when if when is not None else cert.not_valid_before.replace(tzinfo=dt.timezone.utc)


def not_after(cert: x509.Certificate) -> dt.datetime:
    """End of validity, timezone-aware (see not_before)."""
    when = getattr(cert, "not_valid_after_utc", None)
    return when if when is not None else cert.not_valid_after.replace(tzinfo=dt.timezone.utc)


def verify_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """Raise ValueError/InvalidSignature unless `ca` issued `cert`: issuer name and the ECDSA
    signature of the master's CA (ca.py makes only P-256 keys). Written out rather than
    cert.verify_directly_issued_by(), which needs cryptography >= 40 (Debian 12 has 38)."""
    if cert.issuer != ca.subject:
        raise ValueError("issuer is not the CA's subject")
    key = ca.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        raise ValueError("not an ECDSA-signed certificate from an EC CA")
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def issued_cert(cert_pem, ca_cert, what: str, error: type[Exception]) -> x509.Certificate:
    """`cert_pem` parsed, issued by the pinned CA and valid now; else `error` with one line
    naming `what` ("bundle signer certificate", "VM certificate"). Shared by the bundle and
    the VM-certificate checks so both refuse the same way."""
    ca = as_cert(ca_cert)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode()
                                              if isinstance(cert_pem, str) else cert_pem)
    except (ValueError, TypeError):
        raise error(f"{what} is not a PEM certificate") from None
    try:
        verify_issued_by(cert, ca)
    except (ValueError, TypeError, InvalidSignature):
        raise error(f"{what} was not issued by the master's CA") from None
    now = dt.datetime.now(dt.timezone.utc)
    start, end = not_before(cert), not_after(cert)
    if not start <= now <= end:
        raise error(f"{what} is not valid now, expired or not yet valid (valid "
                    f"{start:%Y-%m-%dT%H:%M:%SZ} to {end:%Y-%m-%dT%H:%M:%SZ})")
    return cert


def check_signer(signer_pem, ca_cert) -> x509.Certificate:
    """The signer certificate if the pinned CA issued it, it is valid now and it is marked
    as the policy signer; else BundleRejected."""
    signer = issued_cert(signer_pem, ca_cert, "bundle signer certificate", BundleRejected)
    if SIGNER_OU not in _ou(signer):
        raise BundleRejected(f"bundle signer certificate lacks OU {SIGNER_OU}: "
                             "it is not the master's policy-signing certificate")
    if not isinstance(signer.public_key(), Ed25519PublicKey):
        raise BundleRejected("bundle signer key is not Ed25519")
    return signer


def verify_bundle(envelope, ca_cert, host: str, master_url: str, min_generation: int) -> dict:
    """The payload of a bundle this host may apply; BundleRejected otherwise.

    ca_cert: the pinned CA (x509.Certificate or PEM str/bytes). min_generation: the generation
    of the bundle in force (0 if none); an older one is a rollback and refused.
    """
    if not isinstance(envelope, dict):
        raise BundleRejected("bundle is not a JSON object")
    for k in ("payload", "signature", "signer"):
        if not isinstance(envelope.get(k), str):
            raise BundleRejected(f"bundle has no '{k}' string")
    signer = check_signer(envelope["signer"], ca_cert)
    try:
        body = base64.b64decode(envelope["payload"], validate=True)
        sig = base64.b64decode(envelope["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise BundleRejected("bundle payload or signature is not base64") from None
    try:
        signer.public_key().verify(sig, body)
    except InvalidSignature:
        raise BundleRejected("bundle signature does not verify over its payload") from None
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BundleRejected("bundle payload is not UTF-8 JSON") from None
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise BundleRejected(f"bundle payload format is not {BUNDLE_FORMAT}")
    if payload.get("host") != host:
        raise BundleRejected(f"bundle is for host {payload.get('host')!r}, not {host!r}")
    if payload.get("master") != master_url:
        raise BundleRejected(f"bundle is from master {payload.get('master')!r}, "
                             f"not {master_url!r}")
    gen = payload.get("generation")
    if not isinstance(gen, int) or isinstance(gen, bool):
        raise BundleRejected("bundle generation is not an integer")
    if gen < min_generation:
        raise BundleRejected(f"bundle generation {gen} is older than the one in force "
                             f"({min_generation}): rollback refused")
    return payload
