"""A program on a device's tc ingress: clsact qdisc, one cls_bpf direct-action filter.

One filter (prio 1, handle 1) per device; `replace` swaps its program in one netlink request,
so frames meet either the old program or the new one, never none. The kernel is the only
state: the filter's program name says which rules are in force.
"""
from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

from ..netlink import open_ipr, where
from ..report import DataplaneError

INGRESS = 0xFFFFFFF2          # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
_PRIO, _HANDLE, _ETH_P_ALL = 1, 1, 0x0003


def _index(ipr, netns: str | None, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def attach(netns: str | None, ifname: str, prog_fd: int, name: str) -> None:
    """Make `name` (loaded as prog_fd) the program at ifname's ingress."""
    with open_ipr(netns) as ipr:
        idx = _index(ipr, netns, ifname)
        if idx is None:
            raise DataplaneError(f"cannot attach {name} to {ifname}: no such device in {where(netns)}")
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise DataplaneError(f"cannot add a clsact qdisc to {ifname}: {e}") from None
        try:
            ipr.tc("replace-filter", "bpf", idx, handle=_HANDLE, prio=_PRIO, parent=INGRESS,
                   protocol=_ETH_P_ALL, fd=prog_fd, name=name, direct_action=True)
        except NetlinkError as e:
            raise DataplaneError(f"cannot attach BPF program {name} to {ifname}: {e}") from None


def attached(netns: str | None, ifname: str) -> str | None:
    """The name of the program at ifname's ingress filter; None: none (or no device)."""
    with open_ipr(netns) as ipr:
        idx = _index(ipr, netns, ifname)
        if idx is None:
            return None
        try:
            filters = ipr.get_filters(index=idx, parent=INGRESS)
        except NetlinkError as e:
            if e.code in (errno.EINVAL, errno.ENOENT):     # no clsact qdisc
                return None
            raise DataplaneError(f"cannot read {ifname}'s ingress filters: {e}") from None
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            if f.get_attr("TCA_KIND") == "bpf" and opts is not None and f["handle"] == _HANDLE:
                return opts.get_attr("TCA_BPF_NAME")
        return None


def detach(netns: str | None, ifname: str) -> None:
    """No program at ifname's ingress (the clsact qdisc goes, with its filters)."""
    with open_ipr(netns) as ipr:
        idx = _index(ipr, netns, ifname)
        if idx is None:
            return
        try:
            ipr.tc("del", "clsact", idx)
        except NetlinkError as e:
            if e.code not in (errno.EINVAL, errno.ENOENT):
                raise DataplaneError(f"cannot remove {ifname}'s clsact qdisc: {e}") from None
