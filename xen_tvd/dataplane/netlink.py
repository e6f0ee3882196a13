"""One rtnetlink socket per operation, opened in the target network namespace.

pyroute2 (0.9) opens IPRoute(netns=name) by forking a short-lived child that setns()es and
passes the socket back, so this process never changes namespace (thread-safe) and all later
calls on the handle act inside that namespace. Its default flags would *create* a missing
namespace; we pass flags=0 so a typo fails instead of silently building a new netns.
pyroute2 0.7 (Debian 12's python3-pyroute2 is 0.7.2) has no IPRoute(netns=); there NetNS, a
helper process inside the namespace that runs each call, does the same job, more slowly.
Netlink attributes are read with get_attr(), which both versions have.
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from dataclasses import dataclass, field, replace
from typing import Iterator

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from xen_tvd.desired.names import OWNED_NAME_PREFIXES, OWNER_ALIAS_PREFIX
from .report import DataplaneError

IFF_UP = 0x1


def where(netns: str | None) -> str:
    return f"netns {netns}" if netns else "the current netns"


@contextlib.contextmanager
def open_ipr(netns: str | None = None, in_process: bool = False) -> Iterator[IPRoute]:
    """Yield an IPRoute bound to `netns` (None: current namespace); always closed.
    in_process: a socket of this process even with pyroute2 0.7, whose NetNS runs each call
    in a helper process, where a request carrying a file descriptor (a BPF program's) means
    nothing; it is opened on a thread inside the namespace instead."""
    try:
        ipr = _open(netns, in_process)
    except FileNotFoundError:
        raise DataplaneError(f"network namespace {netns!r} does not exist (create it first)") from None
    except OSError as e:
        raise DataplaneError(f"cannot open netlink in {where(netns)}: {e.strerror or e}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _open(netns: str | None, in_process: bool = False):
    if not netns:
        return IPRoute()
    try:
        return IPRoute(netns=netns, flags=0)
    except TypeError:     # pyroute2 < 0.8: no netns= on IPRoute
        return opened_inside(netns, IPRoute) if in_process else NetNS(netns, flags=0)


def opened_inside(netns: str, factory):
    """factory() called on a thread that has entered /run/netns/`netns` (setns is per
    thread); what it opens (a socket) stays in that namespace and this thread never changes
    its own."""
    import ctypes
    out: dict = {}

    def run():
        try:
            fd = os.open(os.path.join("/run/netns", netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:   # NEWNET
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
            out["sock"] = factory()
        except BaseException as e:   # handed to the caller's thread
            out["error"] = e
    t = threading.Thread(target=run, name="netns-open")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


def describe(e: BaseException) -> str:
    if isinstance(e, NetlinkError):
        return f"{errno.errorcode.get(e.code, e.code)}: {e.args[1] if len(e.args) > 1 else e}"
    if isinstance(e, OSError):
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
    return str(e)


@contextlib.contextmanager
def doing(what: str, hint: str = "") -> Iterator[None]:
    """Turn kernel errors into one-line DataplaneErrors naming the failed step."""
    try:
        yield
    except DataplaneError:
        raise
    except (NetlinkError, OSError) as e:
        raise DataplaneError(f"{what} failed ({describe(e)}){'; ' + hint if hint else ''}") from None


@dataclass
class Link:
    """The few attributes of an interface the reconciler looks at."""
    name: str
    index: int
    kind: str | None
    alias: str | None
    master: int | None
    mtu: int
    up: bool
    parent: int | None              # IFLA_LINK (lower device of vlan)
    data: dict = field(default_factory=dict)  # IFLA_INFO_DATA as {attr name: value}
    group: int = 0                  # IFLA_GROUP (hostguard.py)
    addrgen: int | None = None      # IPv6 address generation mode; 1 = none (no link-local)

    @property
    def owned(self) -> bool:
        return is_owned(self.name, self.alias)


def is_owned(name: str, alias: str | None) -> bool:
    return bool(alias) and alias.startswith(OWNER_ALIAS_PREFIX) and name.startswith(OWNED_NAME_PREFIXES)


def parse_link(msg) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind, data = None, {}
    if info is not None:
        kind = info.get_attr("IFLA_INFO_KIND")
        d = info.get_attr("IFLA_INFO_DATA")
        if d is not None and hasattr(d, "get"):
            data = {k: v for k, v in d.get("attrs", []) if k != "UNKNOWN"}
    spec = msg.get_attr("IFLA_AF_SPEC")
    inet6 = spec.get_attr("AF_INET6") if spec is not None else None
    return Link(
        name=msg.get_attr("IFLA_IFNAME"),
        index=msg["index"],
        kind=kind,
        alias=msg.get_attr("IFLA_IFALIAS"),
        master=msg.get_attr("IFLA_MASTER"),
        mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP),
        parent=msg.get_attr("IFLA_LINK"),
        data=data,
        group=msg.get_attr("IFLA_GROUP") or 0,
        addrgen=inet6.get_attr("IFLA_INET6_ADDR_GEN_MODE") if inet6 is not None else None,
    )


class Links:
    """Snapshot of the namespace's interfaces, refreshed per device after we change it."""

    def __init__(self, ipr: IPRoute, dump: bool = True):
        # dump=False: per-vif paths (plug/unplug) look up just the names they need, so a
        # hotplug event costs O(1) netlink messages however many vifs the host has.
        self.ipr = ipr
        self.dumped = dump
        self.by_name: dict[str, Link] = {}
        if dump:
            with doing("listing network interfaces"):
                for msg in ipr.get_links():
                    link = parse_link(msg)
                    self.by_name[link.name] = link

    def get(self, name: str) -> Link | None:
        if name in self.by_name or self.dumped:
            return self.by_name.get(name)
        return self.refresh(name)

    def by_index(self, index: int | None) -> Link | None:
        for link in self.by_name.values():
            if link.index == index:
                return link
        if index and not self.dumped:
            link = self._get(index=index)
            if link is not None:
                self.by_name[link.name] = link
            return link
        return None

    def refresh(self, name: str) -> Link | None:
        """Re-read one interface (None if it is gone).

        Uses a targeted RTM_GETLINK: pyroute2 0.9's get_links(ifname=...) dumps and parses
        every interface, which costs ~100 ms per lookup on a host with 100 vifs.
        """
        self.by_name.pop(name, None)
        link = self._get(ifname=name)
        if link is not None:
            self.by_name[name] = link
        return link

    def _get(self, **key) -> Link | None:
        try:
            msgs = self.ipr.link("get", **key)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise DataplaneError(f"reading interface {key} failed ({describe(e)})") from None
        return parse_link(msgs[0]) if msgs else None

    def update(self, link: Link, **changes) -> Link:
        """Record a change we just made (the kernel acked it) without re-reading."""
        link = replace(link, **changes)
        self.by_name[link.name] = link
        return link

    def forget(self, name: str) -> None:
        self.by_name.pop(name, None)

    def members(self, master_index: int) -> list[Link]:
        assert self.dumped
        return [l for l in self.by_name.values() if l.master == master_index]
