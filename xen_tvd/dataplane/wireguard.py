"""The host's WireGuard device (desired.wireguard.WgDevice): link, key, port, peers, address.

    sync(ctx, dev, key_path)    create or converge tvw-wg0; idempotent (a converged device
                                gets no writes and reports nothing); returns the public key
                                it runs with
    remove(ctx, why)            delete it (no encrypted segment left)
    converge(dev, key_path, netns)   sync() alone, with its own netlink socket

The link is made over rtnetlink (kind wireguard); key, listen port and peers over WireGuard's
generic netlink family, with a socket opened inside the target namespace. The private key is
read from the host's key file (made by tvd-proxy, proxy/wgkey.py) with the same checks as the
proxy's (desired.wireguard.read_key_file), handed to the kernel and dropped: it is never
logged, never in a report or an exception, and never read back (the device's public key is compared instead). Peers are exactly dev.peers: each with
its endpoint and its one inner address as allowed IP (cryptokey routing then drops whatever a
peer sends from another inner address); a peer not in the plan (a revoked host) is removed.

Key rotation: dev.key names the public key to run with, found in the key file or in the pending
one next to it (key_path + NEXT_SUFFIX); the device keeps an inner address for each of
dev.keys. A switch writes the new address first, then the peers, then the private key, and
calls `switched` at once, so the VXLAN devices take the new source address within the same
few milliseconds (docs/wireguard.md, "Key rotation").
"""
from __future__ import annotations

import base64
import ipaddress
import os
import socket

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from xen_tvd.desired import names
from xen_tvd.desired.wireguard import (DEVICE, INNER_PREFIX, NEXT_SUFFIX, KeyFileError, WgDevice,
                                      inner_address, read_key_file)

from . import common, sysctl
from .common import Ctx
from .netlink import Link, Links, describe, doing, open_ipr, opened_inside
from .report import ApplyReport, DataplaneError

KIND = "wireguard"
ALIAS = f"{names.OWNER_ALIAS_PREFIX}wireguard"
MODULE_HINT = "needs the wireguard module (Linux >= 5.6; Debian 12's kernel has it)"


def read_private_key(path: str) -> tuple[str, str]:
    """(private key, public key), base64, from the host's key file; DataplaneError if the file
    is missing, not a private regular file of ours, or not a key (the message has no key)."""
    try:
        raw = read_key_file(path)
    except KeyFileError as e:
        raise DataplaneError(f"{e} (the dataplane takes only a regular file of uid "
                             f"{os.geteuid()} with mode 0600; not used)") from None
    public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode(), base64.b64encode(public).decode()


def running_key(dev: WgDevice, key_path: str) -> tuple[str, str]:
    """(private, public) of the key the device is to run with: the key file's, or, where the
    plan names a key, whichever of the key file and the pending one holds it."""
    private, public = read_private_key(key_path)
    if dev.key is None or public == dev.key:
        return private, public
    pending = key_path + NEXT_SUFFIX
    if os.path.lexists(pending):
        private, public = read_private_key(pending)
        if public == dev.key:
            return private, public
    raise DataplaneError(f"the plan has this host run with a WireGuard key that neither "
                         f"{key_path} nor {pending} holds (the policy's or the master's key "
                         "for this host is another host's, or an old one): put this host's "
                         "`tvd-proxy wireguard-key` into the policy")


def _wg_socket(netns: str | None):
    from pyroute2 import WireGuard
    if not netns:
        return WireGuard()
    try:
        return WireGuard(netns=netns, flags=0)
    except TypeError:     # pyroute2 < 0.8: no netns= here; open it from a thread inside
        return opened_inside(netns, WireGuard)


def _text(v) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _device_state(msgs) -> tuple[str | None, int | None, dict[str, tuple]]:
    """(public key, listen port, {peer key: (endpoint, port, allowed IPs)}) from a dump (the
    kernel may split the peers over several messages)."""
    public = port = None
    peers: dict[str, tuple] = {}
    for m in msgs:
        public = public or _text(m.get_attr("WGDEVICE_A_PUBLIC_KEY"))
        port = port or m.get_attr("WGDEVICE_A_LISTEN_PORT")
        for p in m.get_attr("WGDEVICE_A_PEERS") or []:
            key = _text(p.get_attr("WGPEER_A_PUBLIC_KEY"))
            ep = p.get_attr("WGPEER_A_ENDPOINT") or {}
            allowed = {str(ipaddress.ip_network(a.get("addr"), strict=False))
                       for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or [] if a.get("addr")}
            old = peers.get(key)
            if old is not None:
                allowed |= old[2]
            peers[key] = (ep.get("addr"), ep.get("port"), frozenset(allowed))
    return public, port, peers


def validate(ctx: Ctx, dev: WgDevice) -> None:
    link = ctx.links.get(DEVICE)
    if link is not None and not link.owned:
        raise DataplaneError(f"{DEVICE} already exists in {ctx.where} but is not owned by "
                             "xen-tvd; rename or delete it, xen-tvd will not touch it")
    if not 1280 <= dev.mtu <= 65535:
        raise DataplaneError(f"WireGuard MTU {dev.mtu} outside 1280..65535 (IPv6 inside needs "
                             "1280)")


def sync(ctx: Ctx, dev: WgDevice, key_path: str, switched=None) -> str:
    """Create or converge the device; the public key it runs with. `switched(public)` is
    called right after the private key of an existing device changed."""
    validate(ctx, dev)
    private, public = running_key(dev, key_path)
    link = ctx.links.get(DEVICE)
    if link is not None and link.kind != KIND:
        common.delete(ctx, link, f"is {link.kind}, want {KIND}")
        link = None
    if link is None:
        with doing(f"creating WireGuard device {DEVICE} in {ctx.where}", MODULE_HINT):
            ctx.ipr.link("add", ifname=DEVICE, kind=KIND)
        ctx.changed(f"created {KIND} {DEVICE}")
        link = ctx.require(DEVICE)
        switched = None          # nothing rode the device yet
    link = common.set_alias(ctx, link, ALIAS)
    link = common.set_mtu(ctx, link, dev.mtu, "the underlay's MTU less WireGuard's 60 bytes")
    # IPv6 on this device only (a Dom0 may have it off elsewhere): the inner addresses are IPv6
    for k in sysctl.ensure(ctx.netns, {f"net/ipv6/conf/{DEVICE}/disable_ipv6": "0"},
                           f"enabling IPv6 on {DEVICE}"):
        ctx.changed(f"set {k}=0")
    # every key's address before the key itself: a switch's new source address must exist
    _address(ctx, link, {inner_address(dev.local, k) for k in set(dev.keys) | {public}})
    if _configure(ctx, dev, private, public) and switched is not None:
        switched(public)
    common.set_up(ctx, link)
    return public


def _configure(ctx: Ctx, dev: WgDevice, private: str, public: str) -> bool:
    """Peers, then port and private key; whether the private key changed."""
    try:
        wg = _wg_socket(ctx.netns)
    except (OSError, ValueError) as e:
        raise DataplaneError(f"cannot open WireGuard's netlink family in {ctx.where} "
                             f"({describe(e)}); {MODULE_HINT}") from None
    try:
        with doing(f"reading WireGuard device {DEVICE} in {ctx.where}", MODULE_HINT):
            have_public, have_port, have_peers = _device_state(wg.info(DEVICE))
        want = {p.public_key: p for p in dev.peers}
        for key in sorted(set(have_peers) - set(want)):
            with doing(f"removing a peer from {DEVICE}"):
                wg.set(DEVICE, peer={"public_key": key, "remove": True})
            ctx.changed(f"removed WireGuard peer at {have_peers[key][0]} (not in the plan)")
        for key, p in sorted(want.items()):
            allowed = frozenset({f"{p.inner}/128"})
            if have_peers.get(key) == (p.endpoint, p.port, allowed):
                continue
            with doing(f"setting WireGuard peer {p.endpoint} on {DEVICE}"):
                wg.set(DEVICE, peer={"public_key": key, "endpoint_addr": p.endpoint,
                                     "endpoint_port": p.port, "allowed_ips": sorted(allowed),
                                     "replace_allowed_ips": True})
            ctx.changed(f"{'updated' if key in have_peers else 'added'} WireGuard peer "
                        f"{p.endpoint} ({p.inner})")
        # last: a new private key makes the device handshake again with every peer
        if have_public != public or have_port != dev.port:
            with doing(f"setting the private key and port {dev.port} of {DEVICE}"):
                wg.set(DEVICE, private_key=private, listen_port=dev.port)
            ctx.changed(f"set {DEVICE}'s private key and port {dev.port}"
                        if have_public != public else f"set {DEVICE}'s port {dev.port}")
        return have_public is not None and have_public != public
    finally:
        wg.close()


def _address(ctx: Ctx, link: Link, inner: set[str]) -> None:
    """Exactly the inner addresses (one per key the peers accept), with the inner prefix: the
    peers are on-link through it."""
    with doing(f"reading the addresses of {DEVICE}"):
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ctx.ipr.get_addr(index=link.index, family=socket.AF_INET6)}
    want = {(str(ipaddress.IPv6Address(a)), INNER_PREFIX.prefixlen) for a in inner}
    for a, plen in sorted(want - have):
        with doing(f"adding address {a}/{plen} to {DEVICE}"):
            # no DAD: the kernel skips it on an IFF_NOARP device such as WireGuard's
            ctx.ipr.addr("add", index=link.index, address=a, prefixlen=plen,
                         family=socket.AF_INET6)
        ctx.changed(f"added {a}/{plen} to {DEVICE}")
    for a, plen in sorted(have - want):
        if ipaddress.ip_address(a).is_link_local:
            continue
        with doing(f"removing address {a}/{plen} from {DEVICE}"):
            ctx.ipr.addr("del", index=link.index, address=a, prefixlen=plen,
                         family=socket.AF_INET6)
        ctx.changed(f"removed {a}/{plen} from {DEVICE}")


def forget_cached_routes(ctx: Ctx) -> None:
    """Make every VXLAN device over the tunnel look its route up again. A VXLAN device caches
    its route to each remote together with the source address it had then (the kernel's
    dst_cache), so a changed source (a key switch's new inner address) is not used until
    that cache is dropped; measured on 6.1: the old source went on for as long as the old
    address stayed, and the peer refused it. Removing an IPv6 address drops every cached
    IPv6 route of the namespace (addrconf bumps the route generation), so a throwaway address,
    one no host has (the inner prefix's first), is added and removed at once."""
    link = ctx.require(DEVICE)
    spare = str(INNER_PREFIX[0])
    with doing(f"refreshing the cached routes over {DEVICE}"):
        ctx.ipr.addr("add", index=link.index, address=spare, prefixlen=128,
                     family=socket.AF_INET6)
        ctx.ipr.addr("del", index=link.index, address=spare, prefixlen=128,
                     family=socket.AF_INET6)


def remove(ctx: Ctx, why: str) -> None:
    link = ctx.links.get(DEVICE)
    if link is not None and link.owned:
        common.delete(ctx, link, why)


def converge(dev: WgDevice, key_path: str, netns: str | None = None) -> ApplyReport:
    """sync() on a netlink socket of its own: the device alone, outside an apply() run."""
    report = ApplyReport()
    with open_ipr(netns) as ipr:
        ctx = Ctx(ipr, Links(ipr), report, netns)
        try:
            sync(ctx, dev, key_path)
        except DataplaneError as e:
            e.report = report
            raise
    return report
