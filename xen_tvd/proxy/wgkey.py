"""This Dom0's WireGuard key pair (issue #15, docs/wireguard.md): made here, never sent anywhere.

The private key is an X25519 key in WireGuard's own file format (base64 of 32 bytes and a
newline, as `wg genkey` writes it, so `wg pubkey < FILE` works on it), in STATE_DIR/wireguard.key.
It is created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600 (two proxies starting at once: one
creates it, the other reads it), and read back only if it is still a regular file owned by this
user and unreadable by group and others; anything else is refused, never repaired (someone may
have copied it). Only the public key leaves this module: into the capability report (master
mode) or for the administrator to put into the policy's capability model (standalone:
`hosts.NAME.wireguard-key`). The private key is handed to the kernel over netlink by the
dataplane, which reads this file itself; both read it with the same checks
(xen_tvd.desired.wireguard.read_key_file).

Rotation (docs/wireguard.md, "Key rotation"): rotate() makes the next pair beside it,
STATE_DIR/wireguard.key.next, the same way (O_EXCL, 0600); its public key goes where the
current one went (the capability report's wireguard-next-key, or the policy's
hosts.NAME.wireguard-next-key) and the peers accept both. The host runs with the next key only
once its plan says so (standalone: the policy lists it as wireguard-key; master: its peers told
the master they accept it), and promote() then renames it over the old one, which is gone:
the old private key is removed only after the peers have the new public key.
"""
from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from xen_tvd.desired.wireguard import KEY_BYTES, NEXT_SUFFIX, KeyFileError, key_tag, read_key_file

__all__ = ["FILE_NAME", "KEY_BYTES", "KeyFileError", "ensure", "keys", "load", "path_in",
           "promote", "public_key", "rotate"]

FILE_NAME = "wireguard.key"
_RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


def path_in(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def _public(private: X25519PrivateKey) -> str:
    return base64.b64encode(private.public_key().public_bytes(**_RAW)).decode()


def _create(path: str, avoid_tag: int | None = None) -> str:
    """Make a key pair in `path` (O_EXCL, 0600): its public key. FileExistsError if the file
    exists. avoid_tag: a key tag the new public key must not have (the current key's: the
    two keys' inner addresses must differ)."""
    while True:
        private = X25519PrivateKey.generate()
        if avoid_tag is None or key_tag(_public(private)) != avoid_tag:
            break
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        raise
    except OSError as e:
        raise KeyFileError(f"cannot create WireGuard key {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o600)     # the umask may have taken bits away, never added: be exact
        os.write(fd, base64.b64encode(raw) + b"\n")
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise KeyFileError(f"cannot write WireGuard key {path}: {e.strerror or e}") from None
    os.close(fd)
    return _public(private)


def ensure(state_dir: str) -> str:
    """This host's public key, making the key pair on first use."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = path_in(state_dir)
    try:
        return _create(path)
    except FileExistsError:
        return _public(load(path))


def next_path_in(state_dir: str) -> str:
    return path_in(state_dir) + NEXT_SUFFIX


def rotate(state_dir: str) -> str:
    """Start a rotation: the next key pair's public key, made now (STATE_DIR/wireguard.key.next,
    O_EXCL, 0600) or, while one is pending, the pending one's (one rotation at a time; asking
    again is harmless). The current key pair must exist and be sound."""
    current = public_key(state_dir)
    path = next_path_in(state_dir)
    try:
        return _create(path, avoid_tag=key_tag(current))
    except FileExistsError:
        return _public(load(path))


def keys(state_dir: str) -> tuple[str, str | None]:
    """(current public key, pending next public key or None); the pair made on first use."""
    current = ensure(state_dir)
    path = next_path_in(state_dir)
    if not os.path.lexists(path):
        return current, None
    return current, _public(load(path))


def promote(state_dir: str, public: str) -> bool:
    """The host runs with the pending key `public` and its peers accept it: make it the key
    (rename over the old one, which is gone). False if no pending key is `public`."""
    path = next_path_in(state_dir)
    if not os.path.lexists(path) or _public(load(path)) != public:
        return False
    os.rename(path, path_in(state_dir))
    dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def load(path: str) -> X25519PrivateKey:
    """The private key in `path`, after the file's checks (KeyFileError names what is wrong)."""
    return X25519PrivateKey.from_private_bytes(read_key_file(path))


def public_key(state_dir: str) -> str:
    """The public key of an existing key pair (KeyFileError if there is none or it is bad)."""
    return _public(load(path_in(state_dir)))
