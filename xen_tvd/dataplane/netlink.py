"""One rtnetlink socket per operation, opened in the target network namespace.

pyroute2 (0.9) opens IPRoute(netns=name) by forking a short-lived child that setns()es and
passes the socket back, so this process never changes namespace (thread-safe) and all later
calls on the handle act inside that namespace. Its default flags would *create* a missing
namespace; we pass flags=0 so a typo fails instead of silently building a new netns.
"""
from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass, field, replace
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import model
from .report import DataplaneError

IFF_UP = 0x1

# Name prefixes of devices xen-tvd creates; together with the ifalias prefix they mark ownership.
BRIDGE_PREFIX = "tvd-"
VXLAN_PREFIX = "tvx-"
VLAN_PREFIX = "tvl-"
LEG_PREFIX = "tvr-"       # host side of a router leg (router.py)
OWNED_NAME_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX, VLAN_PREFIX, LEG_PREFIX)
IFNAMSIZ_MAX = 15


def where(netns: str | None) -> str:
    return f"netns {netns}" if netns else "the current netns"


@contextlib.contextmanager
def open_ipr(netns: str | None = None) -> Iterator[IPRoute]:
    """Yield an IPRoute bound to `netns` (None: current namespace); always closed."""
    try:
        ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except FileNotFoundError:
        raise DataplaneError(f"network namespace {netns!r} does not exist (create it first)") from None
    except OSError as e:
        raise DataplaneError(f"cannot open netlink in {where(netns)}: {e.strerror or e}") from None
    try:
        yield ipr
    finally:
        ipr.close()


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

    @property
    def owned(self) -> bool:
        return is_owned(self.name, self.alias)


def is_owned(name: str, alias: str | None) -> bool:
    return bool(alias) and alias.startswith(model.OWNER_ALIAS_PREFIX) and name.startswith(OWNED_NAME_PREFIXES)


def parse_link(msg) -> Link:
    info = msg.get("IFLA_LINKINFO")
    kind, data = None, {}
    if info is not None:
        kind = info.get("IFLA_INFO_KIND")
        d = info.get("IFLA_INFO_DATA")
        if d is not None and hasattr(d, "get"):
            data = {k: v for k, v in d.get("attrs", []) if k != "UNKNOWN"}
    return Link(
        name=msg.get("IFLA_IFNAME"),
        index=msg["index"],
        kind=kind,
        alias=msg.get("IFLA_IFALIAS"),
        master=msg.get("IFLA_MASTER"),
        mtu=msg.get("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP),
        parent=msg.get("IFLA_LINK"),
        data=data,
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
