"""The WireGuard device of a Dom0, as the plan describes it (issue #15, docs/wireguard.md).

One device per host (DEVICE) carries the VXLAN of every encrypted segment: its peers are the
other hosts sharing such a segment, each with its public key, its underlay address as the
endpoint and one inner address (allowed IP), so WireGuard's cryptokey routing accepts from a
peer only packets with that peer's inner source address. Inner addresses need no plan or
configuration: a host's is its underlay IPv4 address and the first four bytes of its public key
inside a fixed IPv6 ULA prefix (INNER_PREFIX), unique because underlay addresses are (the
policy checks that). With the key in the address, a host that rotates its key pair has two
inner addresses for a while and its peers accept both keys, each from its own address: the
overlap that keeps traffic flowing while the host switches (docs/wireguard.md, "Key
rotation"). The private key is not here: the dataplane reads it from the host's own key file
(proxy/wgkey.py makes it); read_key_file() is the one reader of that file, for both.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import stat
from dataclasses import dataclass

DEVICE = "tvw-wg0"      # owned by its prefix, names.WIREGUARD_PREFIX
LISTEN_PORT = 51820
# fd + 40-bit global ID "tvdwg" (RFC 4193), subnet 0
INNER_PREFIX = ipaddress.IPv6Network("fd74:7664:7767::/64")
# what WireGuard adds on an IPv4 underlay: IPv4 20 + UDP 8 + data header 16 + Poly1305 tag 16
# (its padding to 16 bytes never grows a packet beyond the device MTU)
OVERHEAD_IPV4 = 60
# VXLAN inside it, over the inner IPv6 addresses: IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_INNER_OVERHEAD = 70


KEY_BYTES = 32
# the pending key pair of a rotation sits next to the key file: STATE_DIR/wireguard.key.next
NEXT_SUFFIX = ".next"


class KeyFileError(ValueError):
    """The key file is unusable; the message says what to fix (and never contains the key)."""


def read_key_file(path: str) -> bytes:
    """The raw 32-byte private key in `path` (WireGuard's format: base64 and a newline, as
    `wg genkey` writes it), read only if the file is a regular file of this process's uid that
    group and others cannot read; KeyFileError names what is wrong, never repairs it (someone
    may have copied the key) and never carries key material."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"WireGuard key {path} does not exist (tvd-proxy makes it at "
                           "start)") from None
    except OSError as e:
        raise KeyFileError(f"cannot open WireGuard key {path}: {e.strerror or e} (a symlink "
                           "is refused)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"WireGuard key {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise KeyFileError(f"WireGuard key {path} is owned by uid {st.st_uid}, not by "
                               f"this process's uid {os.geteuid()}")
        if st.st_mode & 0o077:
            raise KeyFileError(f"WireGuard key {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                               "group or others may have read it: remove the file to make a "
                               "new key pair (and let the master or the policy learn the new "
                               "public key)")
        data = os.read(fd, 128)
    finally:
        os.close(fd)
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise KeyFileError(f"WireGuard key {path} is not a base64 32-byte key (as `wg genkey` "
                           "writes); remove it to make a new key pair")
    return raw


def key_tag(public_key: str) -> int:
    """The first four bytes of a public key, as the inner address carries them."""
    return int.from_bytes(base64.b64decode(public_key)[:4], "big")


def inner_address(underlay: str, public_key: str) -> str:
    """A host's inner address for one of its keys: the IPv4 underlay address in the low 32
    bits, the key's first four bytes above it (10.0.0.1 and a key starting 0x1a2b3c4d ->
    fd74:7664:7767:0:1a2b:3c4d:a00:1)."""
    v4 = ipaddress.IPv4Address(underlay)
    return str(INNER_PREFIX[(key_tag(public_key) << 32) | int(v4)])


@dataclass(frozen=True)
class WgPeer:
    public_key: str          # base64, 32 bytes
    endpoint: str            # its underlay IPv4 address
    port: int = LISTEN_PORT

    @property
    def inner(self) -> str:
        return inner_address(self.endpoint, self.public_key)


@dataclass(frozen=True)
class WgDevice:
    """This host's end: the underlay address it listens on and the peers it talks to. A peer
    in the middle of a key rotation is there twice, once per key (each with its own inner
    address). `key`: the public key this host runs with (its key file or the pending one,
    STATE_DIR/wireguard.key.next); None: whatever its key file holds. `keys`: this host's keys
    its peers accept (the current and, while rotating, the other): the device keeps an inner
    address for each, so packets a peer still sends to the old one arrive."""
    local: str               # this host's underlay IPv4 address
    mtu: int                 # the device's MTU: the underlay's less OVERHEAD_IPV4
    peers: tuple[WgPeer, ...] = ()
    port: int = LISTEN_PORT
    key: str | None = None
    keys: tuple[str, ...] = ()
