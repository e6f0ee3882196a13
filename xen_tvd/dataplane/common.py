"""Shared per-operation context and the primitive link changes every plugin uses.

Each primitive compares first and only then writes, and records what it changed: that is what
makes apply() idempotent (a rerun on a converged host issues no writes and reports nothing).
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

from .netlink import Link, Links, describe, doing, where
from .report import ApplyReport, DataplaneError


@dataclass
class Ctx:
    ipr: object
    links: Links
    report: ApplyReport
    netns: str | None
    fdb: list | None = None  # AF_BRIDGE neighbour dump, read once per apply when needed
    brports: dict | None = None  # ifindex -> unicast flood flag, one AF_BRIDGE link dump per apply
    state: object = None     # the whole HostState, for a plugin's host-wide device (WireGuard)
    wireguard_key: str | None = None   # this host's WireGuard private key file (proxy/wgkey.py)
    once: dict = field(default_factory=dict)   # a plugin's per-apply results (done once)

    @property
    def where(self) -> str:
        return where(self.netns)

    def changed(self, msg: str) -> None:
        self.report.changes.append(msg)

    def require(self, name: str) -> Link:
        link = self.links.refresh(name)
        if link is None:
            raise DataplaneError(f"{name} vanished from {self.where} while being configured")
        return link


def set_alias(ctx: Ctx, link: Link, alias: str) -> Link:
    if link.alias == alias:
        return link
    with doing(f"setting ifalias of {link.name}"):
        ctx.ipr.link("set", index=link.index, ifalias=alias)
    ctx.changed(f"set alias of {link.name} to {alias}")
    return ctx.links.update(link, alias=alias)


def set_mtu(ctx: Ctx, link: Link, mtu: int, hint: str = "") -> Link:
    if link.mtu == mtu:
        return link
    with doing(f"setting MTU {mtu} on {link.name} in {ctx.where}", hint):
        ctx.ipr.link("set", index=link.index, mtu=mtu)
    ctx.changed(f"set mtu of {link.name} {link.mtu} -> {mtu}")
    return ctx.links.update(link, mtu=mtu)


def set_master(ctx: Ctx, link: Link, master: Link) -> Link:
    if link.master == master.index:
        return link
    with doing(f"enslaving {link.name} to bridge {master.name} in {ctx.where}"):
        ctx.ipr.link("set", index=link.index, master=master.index)
    ctx.changed(f"attached {link.name} to {master.name}")
    return ctx.links.update(link, master=master.index)


def set_up(ctx: Ctx, link: Link) -> Link:
    if link.up:
        return link
    with doing(f"setting {link.name} up in {ctx.where}"):
        ctx.ipr.link("set", index=link.index, state="up")
    ctx.changed(f"set {link.name} up")
    return ctx.links.update(link, up=True)


# Every port of a TVD vSwitch is in this device group (IFLA_GROUP): hostguard.py drops what the
# bridge would hand up to Dom0's own stack from such a port. Outside the 0..255 range that
# /etc/iproute2/group names, so no admin's group means it by accident.
PORT_GROUP = 0x7476


def make_port(ctx: Ctx, link: Link) -> Link:
    """Before a device forwards on a TVD vSwitch (or is one): in PORT_GROUP, so nothing that
    enters through it reaches Dom0's stack, and without IPv6 address generation, so Dom0 has
    no link-local address there and sends nothing of its own (RS, DAD, MLD) into the TVD."""
    if link.group == PORT_GROUP and link.addrgen == 1:
        return link
    with doing(f"making {link.name} a TVD port (device group, no IPv6 address) in {ctx.where}"):
        ctx.ipr.link("set", index=link.index, group=PORT_GROUP, IFLA_AF_SPEC={
            "attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]})
    ctx.changed(f"made {link.name} a TVD port (group {PORT_GROUP}, addrgenmode none)")
    return ctx.links.update(link, group=PORT_GROUP, addrgen=1)


NTF_MASTER = 0x04
NUD_NOARP = 0x40       # a static bridge FDB entry (NUD_PERMANENT would mean "the bridge's own")


def pin_mac(ctx: Ctx, port: Link, mac: str) -> None:
    """A vif with a declared MAC: that MAC as a static FDB entry on its port, and no unknown
    unicast flooded to the port. Its own frames always find it (its host knows it before it
    sends; other hosts reach it through the uplink, which still floods), while a VM blasting
    frames at unknown MACs floods none of them into its peers (issue #16: a storm of 199,000
    frames reached every peer). Checked against the apply's FDB dump; the hotplug path (no
    dump, a fresh port) just writes."""
    mac = mac.lower()
    fresh = ctx.fdb is None and not ctx.links.dumped
    if fresh or not any(e["ifindex"] == port.index and e.get_attr("NDA_LLADDR") == mac
                        and e["state"] & NUD_NOARP for e in fdb(ctx)):
        with doing(f"pinning {mac} to {port.name} in the bridge FDB in {ctx.where}"):
            ctx.ipr.fdb("replace", ifindex=port.index, lladdr=mac, flags=NTF_MASTER, state=NUD_NOARP)
        if not fresh:
            ctx.changed(f"pinned {mac} to {port.name}")
    flood = None if fresh else brport_flags(ctx).get(port.index)
    if flood != 0:
        with doing(f"turning unknown-unicast flooding off towards {port.name} in {ctx.where}"):
            ctx.ipr.brport("set", index=port.index, unicast_flood=0)
        if ctx.brports is not None:
            ctx.brports[port.index] = 0
        if not fresh:
            ctx.changed(f"no unknown-unicast flooding to {port.name}")


def brport_flags(ctx: Ctx) -> dict:
    """ifindex -> IFLA_BRPORT_UNICAST_FLOOD of every bridge port, from one dump per apply: the
    bridge family's link query is a dump (pyroute2's brport "show" dumps every port and filters
    in Python), so a read per vif made an apply of N pinned vifs decode N x N messages (1,000 vifs: > 10 min)."""
    if ctx.brports is None:
        with doing(f"reading the bridge port flags in {ctx.where}"):
            ctx.brports = {}
            for m in ctx.ipr.brport("dump"):
                info = m.get_attr("IFLA_PROTINFO")
                if info is not None:
                    ctx.brports[m["index"]] = info.get_attr("IFLA_BRPORT_UNICAST_FLOOD")
    return ctx.brports


def fdb(ctx: Ctx) -> list:
    if ctx.fdb is None:   # one dump per apply, shared with vxlan.sync
        with doing(f"reading the bridge FDB in {ctx.where}"):
            ctx.fdb = list(ctx.ipr.get_neighbours(family=socket.AF_BRIDGE))
    return ctx.fdb


def detach(ctx: Ctx, link: Link) -> Link | None:
    """nomaster + down (+ out of PORT_GROUP): the fail-closed resting state of a port. Never
    deletes (Xen owns vifs)."""
    old = ctx.links.by_index(link.master) if link.master else None
    try:
        if link.master:
            ctx.ipr.link("set", index=link.index, master=0)
            ctx.changed(f"detached {link.name} from {old.name if old else link.master}")
            link = ctx.links.update(link, master=None)
        if link.group == PORT_GROUP and not link.owned:
            ctx.ipr.link("set", index=link.index, group=0)
            link = ctx.links.update(link, group=0)
        if link.up:
            ctx.ipr.link("set", index=link.index, state="down")
            ctx.changed(f"set {link.name} down")
            link = ctx.links.update(link, up=False)
    except NetlinkError as e:
        if e.code == errno.ENODEV:  # it went away meanwhile: detached by definition
            ctx.links.forget(link.name)
            return None
        raise DataplaneError(f"detaching {link.name} in {ctx.where} failed ({describe(e)})") from None
    return link


def delete(ctx: Ctx, link: Link, why: str) -> None:
    assert link.owned, link  # the single place devices are deleted: owned ones only
    try:
        ctx.ipr.link("del", index=link.index)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise DataplaneError(f"deleting {link.kind or 'device'} {link.name} in {ctx.where} failed ({describe(e)})") from None
    ctx.links.forget(link.name)
    ctx.changed(f"deleted {link.kind or 'device'} {link.name} ({why})")
