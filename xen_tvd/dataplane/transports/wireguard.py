"""WireGuard uplink plugin: per encrypted segment a VXLAN device (tve-<segment>) between the
hosts' inner IPv6 addresses, over the host's one WireGuard device (dataplane/wireguard.py).

The WireGuard device is built on the first encrypted segment's plug, from the whole HostState
(ctx.state: every encrypted segment's peers) and the host's key file (ctx.wireguard_key); if that
fails (no wireguard module, no key) every encrypted segment fails, is left attached to nothing,
and apply() says why; plain segments are built as usual. BUM frames are head-end replicated to
the peers' inner addresses (all-zero FDB entries); unicast is learned. Each VXLAN device sends
from the inner address of the key the host runs with, changed in place when the key is
(docs/wireguard.md, "Key rotation").

Its underlay part: WireGuard (UDP to its listen port) only from the underlay peers, and nothing
to the inner prefix or to VXLAN over IPv6 except through the WireGuard device — the VXLAN
socket listens on every address, and WireGuard's cryptokey routing only guards what comes out
of the tunnel. The peers' inner addresses join the admitted sources, so a plain VXLAN segment's
source rule (the same UDP port) lets the tunnel's VXLAN through.
"""
from __future__ import annotations

from pyroute2.netlink.exceptions import NetlinkError

from xen_tvd.desired import model
from xen_tvd.desired.transports import wireguard as contract
from xen_tvd.desired.wireguard import DEVICE, INNER_PREFIX, WgDevice, WgPeer, inner_address

from .. import common
from .. import wireguard as wgdev
from ..common import Ctx
from ..netlink import Link, doing
from ..report import DataplaneError
from .base import UnderlayPart, UplinkPlugin
from .vxlan import ZERO_MAC, sync_flood_list


def device_of(state: model.HostState) -> WgDevice | None:
    """The host's WireGuard device: the union of its encrypted segments' peers (a rotating
    peer's two keys included); the key to run with and the keys to answer on."""
    ups = [s.uplink for s in state.segments if isinstance(s.uplink, contract.WireguardUplink)]
    if not ups:
        return None
    owner: dict[str, str] = {}
    for u in ups:
        for addr, key in u.peers:
            if owner.setdefault(key, addr) != addr:
                raise DataplaneError(f"the plan gives WireGuard peers {owner[key]} and {addr} "
                                     "one key")
    if len({(u.key, u.keys) for u in ups}) > 1:
        raise DataplaneError("the plan's encrypted segments disagree on this host's "
                             "WireGuard key")
    peers = sorted((a, k) for k, a in owner.items())
    return WgDevice(ups[0].local_ip, max(u.wg_mtu for u in ups),
                    tuple(WgPeer(k, a, ups[0].listen_port) for a, k in peers),
                    ups[0].listen_port, ups[0].key or None, ups[0].keys)


class WireguardPlugin(UplinkPlugin):
    transport = contract.TRANSPORT
    kind = "vxlan"

    def host_devices(self, state: model.HostState) -> dict[str, str]:
        return {DEVICE: wgdev.KIND} if device_of(state) is not None else {}

    def validate(self, ctx: Ctx, seg: model.Segment) -> None:
        up: contract.WireguardUplink = seg.uplink
        if not 0 < up.vni < 1 << 24:
            raise DataplaneError(f"segment {seg.tvd}: VNI {up.vni} outside 1..16777215")

    def _device(self, ctx: Ctx) -> str:
        """tvw-wg0, converged once per apply; the public key it runs with. Its failure fails
        every encrypted segment."""
        if "wireguard" not in ctx.once:
            try:
                if ctx.wireguard_key is None:
                    raise DataplaneError("no WireGuard key file was given to apply() (tvd-proxy "
                                         "passes STATE_DIR/wireguard.key)")
                ctx.once["wireguard-public"] = wgdev.sync(
                    ctx, device_of(ctx.state), ctx.wireguard_key,
                    switched=lambda public: self._switch_sources(ctx, public))
                ctx.once["wireguard"] = None
            except DataplaneError as e:
                ctx.once["wireguard"] = str(e)
        if ctx.once["wireguard"] is not None:
            raise DataplaneError(f"encrypted segment not built: {ctx.once['wireguard']}")
        return ctx.once["wireguard-public"]

    def _local6(self, ctx: Ctx, seg: model.Segment) -> str:
        return inner_address(seg.uplink.local_ip, ctx.once["wireguard-public"])

    def _switch_sources(self, ctx: Ctx, public: str) -> None:
        """Right after a key switch: every encrypted segment's VXLAN device sends from the new
        key's inner address (the peers accept that key only from it)."""
        ctx.once["wireguard-public"] = public
        for seg in ctx.state.segments:
            if isinstance(seg.uplink, contract.WireguardUplink):
                link = ctx.links.get(self.ifname(seg))
                if link is not None and link.owned and link.kind == self.kind:
                    self._set_local6(ctx, link, self._local6(ctx, seg))

    def _set_local6(self, ctx: Ctx, link: Link, local6: str) -> bool:
        """The VXLAN device's source address, changed in place (its learned forwarding entries
        stay); False where the kernel refuses (the caller recreates the device)."""
        have = link.data.get("IFLA_VXLAN_LOCAL6")
        if have == local6:
            return True
        try:
            ctx.ipr.link("set", index=link.index, kind="vxlan", vxlan_local6=local6)
        except NetlinkError:
            return False
        ctx.links.update(link, data=dict(link.data, IFLA_VXLAN_LOCAL6=local6))
        ctx.changed(f"set {link.name}'s source {have} -> {local6}")
        # its cached routes still carry the old source: drop them (once per source change)
        wgdev.forget_cached_routes(ctx)
        return True

    def plug(self, ctx: Ctx, seg: model.Segment, br: Link) -> Link:
        self._device(ctx)
        link = ctx.links.get(self.ifname(seg))
        if link is not None and link.owned and \
                not self._set_local6(ctx, link, self._local6(ctx, seg)):
            common.delete(ctx, link, "recreating: its source address cannot be changed in "
                          "place")
        return super().plug(ctx, seg, br)

    def mismatch(self, ctx: Ctx, link: Link, seg: model.Segment) -> list[str]:
        # the source address (the key's inner address) is changed in place by plug()
        up: contract.WireguardUplink = seg.uplink
        want = {"IFLA_VXLAN_ID": up.vni, "IFLA_VXLAN_PORT": up.port}
        return [f"{k[11:].lower()} {link.data.get(k)}->{v}" for k, v in want.items()
                if link.data.get(k) != v]

    def create(self, ctx: Ctx, seg: model.Segment, name: str) -> None:
        up: contract.WireguardUplink = seg.uplink
        with doing(f"creating VXLAN {name} (vni {up.vni}) over {DEVICE} in {ctx.where}",
                   "another VXLAN device with this VNI/port may exist"):
            ctx.ipr.link("add", ifname=name, kind="vxlan", vxlan_id=up.vni,
                         vxlan_local6=self._local6(ctx, seg),
                         vxlan_link=ctx.links.get(DEVICE).index, vxlan_port=up.port,
                         vxlan_learning=1)

    def mtu_hint(self, seg: model.Segment) -> str:
        return f"VXLAN over IPv6 needs {DEVICE}'s MTU >= Segment.mtu + 70"

    def sync(self, ctx: Ctx, seg: model.Segment, link: Link) -> None:
        """Head-end replication list = exactly the peers' inner addresses; what was learned
        behind an address no longer in it (a rotated peer's old key, a revoked host) is
        forgotten, so unicast to those VMs floods to the addresses that still answer."""
        remotes = set(seg.uplink.remotes)
        sync_flood_list(ctx, link, remotes)
        for e in common.fdb(ctx):
            dst, mac = e.get_attr("NDA_DST"), e.get_attr("NDA_LLADDR")
            if e["ifindex"] != link.index or not dst or mac == ZERO_MAC or dst in remotes:
                continue
            try:
                ctx.ipr.fdb("del", ifindex=link.index, lladdr=mac, dst=dst)
            except NetlinkError:
                continue      # aged out meanwhile
            ctx.changed(f"forgot {mac} behind {dst} on {link.name} (not a remote)")

    def underlay(self, uplinks: list) -> UnderlayPart:
        listen = sorted({u.listen_port for u in uplinks})
        vxlan = sorted({u.port for u in uplinks})
        return UnderlayPart(
            sets=(f"  set wireguard_ports {{ type inet_service; elements = {{ "
                  f"{', '.join(map(str, listen))} }}; }}\n"
                  f"  set wireguard_vxlan_ports {{ type inet_service; elements = {{ "
                  f"{', '.join(map(str, vxlan))} }}; }}\n"),
            rules=("udp dport @wireguard_ports ip saddr != @peers4 counter drop",
                   "udp dport @wireguard_ports ip6 saddr != @peers6 counter drop",
                   f'ip6 daddr {INNER_PREFIX} iifname != "{DEVICE}" counter drop',
                   f'meta nfproto ipv6 udp dport @wireguard_vxlan_ports iifname != "{DEVICE}" '
                   "counter drop"),
            # the peers' inner addresses: VXLAN out of the tunnel passes a plain VXLAN
            # segment's source rule (same port); the rules above keep them to tvw-wg0
            sources=frozenset(r for u in uplinks for r in u.remotes))


PLUGIN = WireguardPlugin()
