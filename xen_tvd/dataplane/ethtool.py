"""Minimal SIOCETHTOOL feature get/set by name (what `ethtool -k/-K` does).

The ioctl is issued on the rtnetlink socket we already hold: the kernel routes unknown socket
ioctls to dev_ioctl() in the *socket's* network namespace, so no extra socket (and no extra
fork into the namespace) is needed. Features are addressed by their kernel string names
(ETH_SS_FEATURES), e.g. "tx-checksum-ip-generic", "rx-vlan-hw-parse".
"""
from __future__ import annotations

import ctypes
import fcntl
import struct
from dataclasses import dataclass

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETHTOOL_SFEATURES = 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32


@dataclass(frozen=True)
class Feature:
    available: bool   # changeable by the user (in hw_features)
    active: bool
    fixed: bool       # never_changed: driver pins it
    requested: bool = False   # wanted by the user; may become active later (see offload.py)


def _ioctl(fd: int, ifname: str, buf) -> int:
    # struct ifreq: char ifr_name[16]; union { void *ifr_data; ... } padded to 40 bytes.
    ifr = bytearray(struct.pack("16sP", ifname.encode(), ctypes.addressof(buf)).ljust(40, b"\0"))
    return fcntl.ioctl(fd, SIOCETHTOOL, ifr)


def _feature_names(fd: int, ifname: str) -> list[str]:
    info = (ctypes.c_uint32 * 5)(ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0, 0)
    _ioctl(fd, ifname, info)
    count = info[4]  # cmd, reserved, sset_mask(u64 = 2 words), data[0]
    raw = ctypes.create_string_buffer(12 + count * ETH_GSTRING_LEN)
    struct.pack_into("III", raw, 0, ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
    _ioctl(fd, ifname, raw)
    names = []
    for i in range(count):
        chunk = raw.raw[12 + i * ETH_GSTRING_LEN: 12 + (i + 1) * ETH_GSTRING_LEN]
        names.append(chunk.split(b"\0", 1)[0].decode())
    return names


def get_features(fd: int, ifname: str) -> dict[str, Feature]:
    names = _feature_names(fd, ifname)
    blocks = (len(names) + 31) // 32
    buf = (ctypes.c_uint32 * (2 + 4 * blocks))(ETHTOOL_GFEATURES, blocks)
    _ioctl(fd, ifname, buf)
    out = {}
    for i, name in enumerate(names):
        if not name:
            continue
        b, bit = divmod(i, 32)
        avail, req, active, never = buf[2 + 4 * b: 6 + 4 * b]
        m = 1 << bit
        out[name] = Feature(bool(avail & m), bool(active & m), bool(never & m), bool(req & m))
    return out


def set_features(fd: int, ifname: str, wanted: dict[str, bool]) -> None:
    """Request features on/off by name; the kernel may adjust dependents (check by re-reading)."""
    names = _feature_names(fd, ifname)
    blocks = (len(names) + 31) // 32
    buf = (ctypes.c_uint32 * (2 + 2 * blocks))(ETHTOOL_SFEATURES, blocks)
    for name, on in wanted.items():
        b, bit = divmod(names.index(name), 32)
        buf[2 + 2 * b] |= 1 << bit          # valid
        if on:
            buf[3 + 2 * b] |= 1 << bit      # requested
    _ioctl(fd, ifname, buf)


ETHTOOL_GDRVINFO = 0x03
_DRVINFO_LEN = 196   # struct ethtool_drvinfo: cmd, 5 x char[32], reserved2[12], 5 x u32


def driver_info(fd: int, ifname: str) -> tuple[str, str]:
    """(driver, bus_info) as `ethtool -i` shows them. Xen netback: ("vif", "vif-DOMID-DEVID"),
    a tap: ("tun", "tap"), a veth: ("veth", "")."""
    buf = ctypes.create_string_buffer(_DRVINFO_LEN)
    struct.pack_into("I", buf, 0, ETHTOOL_GDRVINFO)
    _ioctl(fd, ifname, buf)

    def text(offset: int) -> str:
        return buf.raw[offset:offset + 32].split(b"\0", 1)[0].decode("ascii", "replace")
    return text(4), text(4 + 3 * 32)
