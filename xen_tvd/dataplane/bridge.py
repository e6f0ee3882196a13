"""The per-segment Linux bridge (the TVD's vSwitch on this host)."""
from __future__ import annotations

from xen_tvd.desired import model, names
from xen_tvd.desired.names import BRIDGE_PREFIX, IFNAME_MAX
from xen_tvd.desired.patterns import IFNAME_RE

from . import common
from .common import Ctx
from .netlink import Link, doing
from .report import DataplaneError

KIND = "bridge"
# STP off + forward delay 0: a vSwitch with one uplink cannot loop, and a 15 s listening
# phase after every plug would eat the first packets of each booting VM.
SETTINGS = {"IFLA_BR_STP_STATE": 0, "IFLA_BR_FORWARD_DELAY": 0}


def ifname(seg: model.Segment) -> str:
    return seg.bridge


def alias(seg: model.Segment) -> str:
    return f"{names.OWNER_ALIAS_PREFIX}segment={seg.tvd}"


def validate_name(seg: model.Segment) -> None:
    name = seg.bridge
    if not (name.startswith(BRIDGE_PREFIX) and len(name) > len(BRIDGE_PREFIX)
            and IFNAME_RE.match(name)):
        raise DataplaneError(
            f"segment {seg.tvd}: bridge name {name!r} must be '{BRIDGE_PREFIX}<x>', an interface "
            f"name (at most {IFNAME_MAX} of A-Z a-z 0-9 _ . -)")


def ensure(ctx: Ctx, seg: model.Segment) -> Link:
    """Bridge exists, is ours, has our settings, MTU and is up. Returns its fresh Link."""
    name = ifname(seg)
    link = ctx.links.get(name)
    if link is not None and link.kind != KIND:
        common.delete(ctx, link, f"was a {link.kind}, want a bridge")
        link = None
    if link is None:
        with doing(f"creating bridge {name} in {ctx.where}"):
            ctx.ipr.link("add", ifname=name, kind=KIND, br_stp_state=0, br_forward_delay=0)
        ctx.changed(f"created bridge {name}")
        link = ctx.require(name)
    link = common.set_alias(ctx, link, alias(seg))
    # One attribute per message, STP first: the kernel applies forward_delay before stp_state
    # and rejects a delay of 0 (ERANGE) while STP is still on.
    for attr, kw in (("IFLA_BR_STP_STATE", "br_stp_state"), ("IFLA_BR_FORWARD_DELAY", "br_forward_delay")):
        if link.data.get(attr) != SETTINGS[attr]:
            with doing(f"setting {kw} {SETTINGS[attr]} on bridge {name}"):
                ctx.ipr.link("set", index=link.index, kind=KIND, **{kw: SETTINGS[attr]})
            ctx.changed(f"set {kw[3:]} {SETTINGS[attr]} on {name}")
            link = ctx.require(name)
    # A bridge MTU set via changelink is sticky; an untouched one follows min(port MTUs). Every
    # port we attach carries seg.mtu, so both agree; apply() re-checks it after the ports.
    link = common.set_mtu(ctx, link, seg.mtu)
    link = common.make_port(ctx, link)   # the bridge device too: Dom0 has no address on it
    return common.set_up(ctx, link)
