"""Shared per-operation context and the primitive link changes every plugin uses.

Each primitive compares first and only then writes, and records what it changed: that is what
makes apply() idempotent (a rerun on a converged host issues no writes and reports nothing).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

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


def detach(ctx: Ctx, link: Link) -> Link | None:
    """nomaster + down: the fail-closed resting state of a port. Never deletes (Xen owns vifs)."""
    old = ctx.links.by_index(link.master) if link.master else None
    try:
        if link.master:
            ctx.ipr.link("set", index=link.index, master=0)
            ctx.changed(f"detached {link.name} from {old.name if old else link.master}")
            link = ctx.links.update(link, master=None)
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
