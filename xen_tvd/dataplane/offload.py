"""NIC offload policies (paper 6.1/6.2), on top of the SIOCETHTOOL helper.

- vif tx checksum offload: on unless the TVD turns it off (policy `tx-checksum-offload: false`,
  paper 6.2's workaround for a 2007 netfront/netback bug that tier 3 no longer shows: scenarios
  checksum and checksum-optout, a routing domU, tvd_testing/xen_scenarios/checksum.py) or the
  VM does (xl.cfg `tvd_tx_checksum_offload = 0`, VifPort.tx_csum_offload; the stricter wins).
  "Off" means every tx-checksum-* feature off (what `ethtool -K dev tx off` does); the kernel
  then also drops TSO, which depends on it, which costs most of the TVD's TCP throughput.
- rx/tx VLAN offload on NICs carrying TVD VLANs: off, so tags reach the VLAN device intact.
- generic receive offload on a VXLAN underlay NIC: on, so a burst of VXLAN packets of one flow
  is decapsulated and bridged once, as one large packet (the UDP tunnel GRO of the VXLAN
  socket). Physical NICs have it on by default; veth (the lab's wires) has it off.
"""
from __future__ import annotations

from . import ethtool
from .common import Ctx
from .netlink import Link, doing
from .report import DataplaneError

TX_CSUM_PREFIX = "tx-checksum-"
# Checksum features that actually mean "the device finishes L4 checksums for IP".
TX_CSUM_IP = ("tx-checksum-ipv4", "tx-checksum-ip-generic", "tx-checksum-ipv6")
VLAN_OFFLOADS = ("rx-vlan-hw-parse", "tx-vlan-hw-insert")


def _features(ctx: Ctx, link: Link) -> dict[str, ethtool.Feature]:
    with doing(f"reading offload features of {link.name} in {ctx.where}"):
        return ethtool.get_features(ctx.ipr.fileno(), link.name)


def _tx_csum_ok(feats: dict[str, ethtool.Feature], on: bool) -> bool:
    if on:
        return any(feats[n].active for n in TX_CSUM_IP if n in feats)
    # "off" also means not *requested*: xen-netback masks tx-checksum-ipv6 while the frontend
    # is not connected (vif-tvd runs then) and turns it on when the frontend connects, if it
    # is still requested (seen under real Xen 4.17, tier 3).
    return not any(f.active or (f.requested and f.available)
                   for n, f in feats.items() if n.startswith(TX_CSUM_PREFIX))


def ensure_tx_csum(ctx: Ctx, link: Link, on: bool) -> None:
    """Make tx checksum offload on/off; raise DataplaneError if the driver will not."""
    feats = _features(ctx, link)
    if _tx_csum_ok(feats, on):
        return
    names = [n for n, f in feats.items() if n.startswith(TX_CSUM_PREFIX) and f.available
             and (f.active != on or (not on and f.requested))]
    if names:
        with doing(f"turning tx checksum offload {'on' if on else 'off'} on {link.name}"):
            ethtool.set_features(ctx.ipr.fileno(), link.name, {n: on for n in names})
    if not _tx_csum_ok(_features(ctx, link), on):
        raise DataplaneError(
            f"{link.name}: driver does not allow tx checksum offload {'on' if on else 'off'}; "
            f"set Segment.vif_tx_csum_offload to match the driver or use another backend")
    ctx.changed(f"set tx checksum offload {'on' if on else 'off'} on {link.name}")


def ensure_vlan_offload_off(ctx: Ctx, link: Link) -> None:
    """Best effort: a NIC that cannot change it is reported as a warning, not an error."""
    feats = _features(ctx, link)
    active = [n for n in VLAN_OFFLOADS if n in feats and feats[n].active]
    if not active:
        return
    fixed = [n for n in active if not feats[n].available]
    changeable = [n for n in active if feats[n].available]
    if changeable:
        with doing(f"turning VLAN offload off on {link.name}"):
            ethtool.set_features(ctx.ipr.fileno(), link.name, {n: False for n in changeable})
        now = _features(ctx, link)
        done = [n for n in changeable if not now[n].active]
        if done:
            ctx.changed(f"turned off {', '.join(done)} on {link.name}")
        fixed += [n for n in changeable if now[n].active]
    if fixed:
        ctx.report.warnings.append(
            f"{link.name}: driver does not allow turning off {', '.join(fixed)}; "
            f"VLAN tags may be stripped before the TVD VLAN device sees them")


def ensure_gro_on(ctx: Ctx, link: Link) -> None:
    """Best effort: a NIC that cannot do GRO is a warning (VXLAN works, one packet at a time)."""
    feats = _features(ctx, link)
    gro = feats.get("rx-gro")
    if gro is None or gro.active:
        return
    if gro.available:
        with doing(f"turning generic receive offload on on {link.name}"):
            ethtool.set_features(ctx.ipr.fileno(), link.name, {"rx-gro": True})
        if _features(ctx, link)["rx-gro"].active:
            ctx.changed(f"turned rx-gro on on {link.name}")
            return
    ctx.report.warnings.append(f"{link.name}: driver does not allow generic receive offload; "
                               f"VXLAN is received one packet at a time")
