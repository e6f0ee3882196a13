"""What an interface is, read-only: the facts the proxy checks before it treats a device as a
VM's vif (issue #16.2: a request naming the host's uplink must not get it into a TVD).

One RTM_GETLINK, one ethtool GDRVINFO and one address dump per question; all in the
namespace `netns` (None: the current one, which follows a setns()'d proxy, unlike /sys).
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from pyroute2 import NetlinkError

from . import ethtool
from .netlink import Links, describe, open_ipr, where
from .report import DataplaneError

RT_SCOPE_LINK = 253


@dataclass(frozen=True)
class DeviceFacts:
    ifname: str
    driver: str              # the kernel driver: "vif" (Xen netback), "tun", "veth", a NIC's
    bus_info: str            # netback: "vif-<domid>-<devid>", the backend device it serves
    kind: str | None         # rtnetlink kind (None for netback and physical NICs)
    owned: bool              # a device xen-tvd made (bridge, uplink, router leg)
    master: str | None       # the device it is enslaved to, if any
    master_owned: bool       # ... and that is a xen-tvd device (a TVD vSwitch)
    routable_addresses: int  # IPv4 and non-link-local IPv6 addresses on it


def identify(ifname: str, netns: str | None = None) -> DeviceFacts | None:
    """The device's facts; None when there is no such interface."""
    with open_ipr(netns) as ipr:
        links = Links(ipr, dump=False)
        link = links.get(ifname)
        if link is None:
            return None
        try:
            driver, bus = ethtool.driver_info(ipr.fileno(), ifname)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            driver, bus = "", ""    # no ethtool at all: matches no vif driver (fail closed)
        master = links.by_index(link.master) if link.master else None
        try:
            addrs = [a for fam in (socket.AF_INET, socket.AF_INET6)
                     for a in ipr.get_addr(family=fam, index=link.index)
                     if a["scope"] != RT_SCOPE_LINK]
        except NetlinkError as e:
            raise DataplaneError(f"reading the addresses of {ifname} in {where(netns)} failed "
                                 f"({describe(e)})") from None
    return DeviceFacts(ifname=ifname, driver=driver, bus_info=bus, kind=link.kind,
                       owned=link.owned, master=master.name if master else None,
                       master_owned=bool(master and master.owned),
                       routable_addresses=len(addrs))
