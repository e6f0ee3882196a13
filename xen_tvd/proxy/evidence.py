"""Evidence a VM's properties come from in master mode (docs/master-protocol.md, steps 5-6).

The proxy never takes a VM's word for its properties when it has a master: it checks
- the VM certificate (issued by the master's CA, pinned at enrolment): chains to that CA, is
  valid now, its serial is not revoked in the bundle, its SAN `urn:uuid:` is the VM's UUID; its
  properties are the JSON object in extension 1.3.6.1.4.1.57264.1.1 (the checks are
  xen_tvd.master.vmcert's, so master and proxy cannot disagree on what a valid one is);
- the VM's image files: the proxy hashes them itself (SHA-256, streaming) and looks the digests
  up in the bundle's `evidence.images`.
Everything raises EvidenceError with one line that says what to fix. No I/O but reading the
named image files.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field

from cryptography import x509

from xen_tvd.master.vmcert import VmCertRejected, vm_properties as _cert_properties

MAX_CERT_PEM = 16 * 1024
_CHUNK = 1 << 20


class EvidenceError(Exception):
    """Evidence that does not hold; the message is the one-line reason."""


@dataclass(frozen=True)
class Evidence:
    """The bundle's evidence rules (payload.evidence)."""
    images: dict[str, dict[str, str]] = field(default_factory=dict, hash=False)
    revoked_vm_certs: frozenset[int] = frozenset()
    revoked_vms: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, d) -> "Evidence":
        if not isinstance(d, dict):
            raise EvidenceError("bundle evidence is not an object")
        images = d.get("images") or {}
        if not isinstance(images, dict) or not all(
                isinstance(k, str) and isinstance(v, dict) and
                all(isinstance(p, str) and isinstance(a, str) for p, a in v.items())
                for k, v in images.items()):
            raise EvidenceError("bundle evidence.images must map sha256:<hex> to {property: assurance}")
        serials = d.get("revoked_vm_certs") or []
        vms = d.get("revoked_vms") or []
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in serials):
            raise EvidenceError("bundle evidence.revoked_vm_certs must be a list of integers")
        if not all(isinstance(u, str) for u in vms):
            raise EvidenceError("bundle evidence.revoked_vms must be a list of UUIDs")
        return cls({k.lower(): dict(v) for k, v in images.items()}, frozenset(serials),
                   frozenset(u.lower() for u in vms))


def load_ca(path: str) -> x509.Certificate:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise EvidenceError(f"pinned CA {path}: {e.strerror or e}; run 'tvd-proxy enroll'") from None
    except ValueError:
        raise EvidenceError(f"pinned CA {path} is not a PEM certificate; re-enrol") from None


def check_cert(pem: str, ca: x509.Certificate, vm_uuid: str, ev: Evidence) -> dict[str, str]:
    """The certificate's properties if it holds for this VM now; EvidenceError otherwise.
    The checks themselves are the master package's (one implementation for both ends)."""
    if not isinstance(pem, str) or len(pem) > MAX_CERT_PEM:
        raise EvidenceError("VM certificate is not a PEM certificate (tvd_cert must name the .pem "
                            "file 'tvd-master vm-cert' wrote)")
    try:
        return _cert_properties(pem, ca, vm_uuid, ev.revoked_vm_certs)
    except VmCertRejected as e:
        fix = "" if "revoked" in str(e) else "; issue one with 'tvd-master vm-cert NAME --uuid UUID'"
        raise EvidenceError(f"{e}{fix}") from None


def hash_file(path: str) -> str:
    """'sha256:<hex>' of the file's content, read in 1 MiB chunks (disk images are large)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
    except OSError as e:
        raise EvidenceError(f"image {path}: {e.strerror or e}; fix the kernel/disk path of the "
                            "VM's config") from None
    return "sha256:" + h.hexdigest()


class DigestCache:
    """path -> digest, valid while the file's (dev, inode, size, mtime, ctime) is unchanged.

    Admissions and bundle re-checks run under the daemon's writer lock and must not re-read a
    multi-GB disk image each time; any write to the file changes its ctime, which nobody but
    the kernel sets. The session thread calls refresh() outside the lock, which always
    re-hashes (the contract's periodic re-check), so the lock only ever sees cache hits."""

    def __init__(self) -> None:
        self._d: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: str) -> tuple:
        try:
            st = os.stat(path)
        except OSError as e:
            raise EvidenceError(f"image {path}: {e.strerror or e}; fix the kernel/disk path of "
                                "the VM's config") from None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def refresh(self, path: str) -> str:
        key = self._key(path)    # before reading: a write during the hash changes the key
        digest = hash_file(path)
        with self._lock:
            self._d[path] = (key, digest)
        return digest

    def get(self, path: str) -> str:
        key = self._key(path)
        with self._lock:
            hit = self._d.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        return self.refresh(path)


def image_properties(paths: list[str], ev: Evidence,
                     digests: DigestCache | None = None) -> tuple[dict[str, str], list[str]]:
    """(properties the master grants these images, notes on digests it does not know)."""
    props: dict[str, str] = {}
    unknown = []
    for p in paths:
        digest = digests.get(p) if digests is not None else hash_file(p)
        granted = ev.images.get(digest)
        if granted is None:
            unknown.append(f"{os.path.basename(p)} {digest[:19]}… is not in the master's image list")
            continue
        for prop, assurance in granted.items():
            props.setdefault(prop, assurance)
    return props, unknown


def vm_properties(uuid: str, cert_pem: str | None, images: list[str], ca: x509.Certificate | None,
                  ev: Evidence, digests: DigestCache | None = None) -> tuple[dict[str, str], list[str]]:
    """(the VM's properties, notes). The certificate's claims come first; image digests only
    add properties it does not name (one assurance kind per property is all M(t) can use).
    EvidenceError when the VM is revoked or its certificate is bad: presenting a bad
    certificate is refused outright, not treated as 'no properties'."""
    if uuid.lower() in ev.revoked_vms:
        raise EvidenceError(f"VM {uuid} is revoked by the master")
    props: dict[str, str] = {}
    if cert_pem:
        if ca is None:
            raise EvidenceError("no pinned CA to check the VM certificate against; run 'tvd-proxy enroll'")
        props.update(check_cert(cert_pem, ca, uuid, ev))
    img, notes = image_properties(images, ev, digests)
    for p, a in img.items():
        props.setdefault(p, a)
    return props, notes
