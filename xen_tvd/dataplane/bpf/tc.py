"""A program on a device's tc ingress: clsact qdisc, one cls_bpf direct-action filter.

One filter (prio 1, handle 1) per device; `attach` over an existing one replaces its program
in one netlink request, so frames meet either the old program or the new one, never none.
The kernel is the only state: the filter's program name says which rules are in force.
Every function takes an rtnetlink handle from socket() and the device's index.
"""
from __future__ import annotations

import contextlib
import errno
import struct
from dataclasses import dataclass
from typing import Iterator

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from ..netlink import open_ipr
from ..report import DataplaneError

INGRESS = 0xFFFFFFF2          # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
_PRIO, _HANDLE, _ETH_P_ALL = 1, 1, 0x0003
_TCA_BPF_ID = 11              # pyroute2 0.9 does not decode it: read from the raw attribute


@contextlib.contextmanager
def socket(netns: str | None, reuse=None) -> Iterator[IPRoute]:
    """An rtnetlink socket of this process in `netns` (a request carries a program's fd).
    `reuse`: the caller's open_ipr handle, used as it is unless it is pyroute2 0.7's NetNS
    (a helper process); opening one more in a namespace forks a child with pyroute2 0.9,
    slow in a big process on an emulated CPU."""
    if reuse is not None and not isinstance(reuse, NetNS):
        yield reuse
        return
    with open_ipr(netns, in_process=True) as ipr:
        yield ipr


@dataclass(frozen=True)
class Attached:
    name: str                 # the program's name (ours: xtvd + digest of its rules)
    prog_id: int | None       # the kernel's id of the program (None: not reported)


def _prog_id(opts) -> int | None:
    for name, nla in opts["attrs"]:
        if name == "UNKNOWN" and getattr(nla, "offset", None) is not None \
                and nla["header"]["type"] == _TCA_BPF_ID and nla["header"]["length"] == 8:
            return struct.unpack_from("<I", opts.data, nla.offset + 4)[0]
    return None


def attach(ipr, index: int, ifname: str, prog_fd: int, name: str) -> None:
    """Make `name` (loaded as prog_fd) the program at the device's ingress."""
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise DataplaneError(f"cannot add a clsact qdisc to {ifname}: {e}") from None
    try:
        ipr.tc("replace-filter", "bpf", index, handle=_HANDLE, prio=_PRIO, parent=INGRESS,
               protocol=_ETH_P_ALL, fd=prog_fd, name=name, direct_action=True)
    except NetlinkError as e:
        raise DataplaneError(f"cannot attach BPF program {name} to {ifname}: {e}") from None


def attached(ipr, index: int, ifname: str) -> Attached | None:
    """The program at the device's ingress filter; None: none."""
    try:
        filters = ipr.get_filters(index=index, parent=INGRESS)
    except NetlinkError as e:
        if e.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):     # no clsact qdisc, or device
            return None
        raise DataplaneError(f"cannot read {ifname}'s ingress filters: {e}") from None
    for f in filters:
        opts = f.get_attr("TCA_OPTIONS")
        if f.get_attr("TCA_KIND") == "bpf" and opts is not None and f["handle"] == _HANDLE:
            return Attached(opts.get_attr("TCA_BPF_NAME") or "", _prog_id(opts))
    return None


def detach(ipr, index: int, ifname: str) -> None:
    """No program at the device's ingress (the clsact qdisc goes, with its filters)."""
    try:
        ipr.tc("del", "clsact", index)
    except NetlinkError as e:
        if e.code not in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
            raise DataplaneError(f"cannot remove {ifname}'s clsact qdisc: {e}") from None
