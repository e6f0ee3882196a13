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
"""
from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from xen_tvd.desired.wireguard import KEY_BYTES, KeyFileError, read_key_file

__all__ = ["FILE_NAME", "KEY_BYTES", "KeyFileError", "ensure", "load", "path_in", "public_key"]

FILE_NAME = "wireguard.key"
_RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


def path_in(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def _public(private: X25519PrivateKey) -> str:
    return base64.b64encode(private.public_key().public_bytes(**_RAW)).decode()


def ensure(state_dir: str) -> str:
    """This host's public key, making the key pair on first use."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = path_in(state_dir)
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        return _public(load(path))
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


def load(path: str) -> X25519PrivateKey:
    """The private key in `path`, after the file's checks (KeyFileError names what is wrong)."""
    return X25519PrivateKey.from_private_bytes(read_key_file(path))


def public_key(state_dir: str) -> str:
    """The public key of an existing key pair (KeyFileError if there is none or it is bad)."""
    return _public(load(path_in(state_dir)))
