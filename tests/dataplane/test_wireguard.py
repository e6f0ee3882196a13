"""The host's WireGuard device (xen_tvd/dataplane/wireguard.py; issue #15).

Tier 1's kernel has no wireguard module: there the probe says so and sync() fails closed with
"needs the wireguard module", leaving nothing behind. The stock 6.1 kernel has it (tier 2,
tvd_testing/vmtier.py; a skip there is a failure): two hosts on a veth wire, each with its own
key pair from tvd-proxy's key code, talk over their inner addresses only as their peer lists
say — a DF ping of the largest inner packet crosses, a sniffer on the wire sees only WireGuard
(no payload marker), a re-keyed host is cut off until its peer learns the new key, and a peer
dropped from the plan (a revoked host) is removed from the device.
"""
from __future__ import annotations

import math
import os

import pytest

from tests.dataplane.dp_helpers import Sniffer, addr, sh, veth
from xen_tvd.dataplane import DataplaneError
from xen_tvd.dataplane import wireguard as wgdp
from xen_tvd.desired.wireguard import DEVICE, LISTEN_PORT, WgDevice, WgPeer, inner_address
from xen_tvd.proxy import capabilities, wgkey

HAS_WIREGUARD = capabilities.probe("wireguard")
SKIP_NO_MODULE = "needs the wireguard module (this kernel lacks it); runs in the stock-kernel VM tier"
MTU = 1440                       # a 1500 underlay less WireGuard's 60
MARKER = "7476647761726b21"      # ping -p pattern: in every ICMPv6 payload, in clear inside only


def _independent_attempt(mkns) -> bool:
    ns = mkns("wgprobe")
    return sh(ns, "ip", "link", "add", "wgx", "type", "wireguard", check=False).returncode == 0


def test_probe_reports_wireguard_exactly_where_the_kernel_can_make_the_device(mkns):
    assert HAS_WIREGUARD == _independent_attempt(mkns)


def test_sync_makes_the_device_where_the_kernel_can_and_fails_closed_where_not(mkns, tmp_path):
    ns = mkns("h1")
    dev = WgDevice("10.0.0.1", MTU)
    wgkey.ensure(str(tmp_path))
    key = wgkey.path_in(str(tmp_path))
    if HAS_WIREGUARD:
        report = wgdp.converge(dev, key, ns)
        assert f"created wireguard {DEVICE}" in report.changes
        assert wgdp.converge(dev, key, ns).changes == []
        return
    with pytest.raises(DataplaneError, match="needs the wireguard module") as e:
        wgdp.converge(dev, key, ns)
    assert e.value.report.changes == []
    assert DEVICE not in sh(ns, "ip", "-o", "link").stdout


def test_an_unsafe_key_file_configures_nothing(mkns, tmp_path):
    ns = mkns("h1")
    wgkey.ensure(str(tmp_path))
    key = wgkey.path_in(str(tmp_path))
    os.chmod(key, 0o644)
    with pytest.raises(DataplaneError, match="mode 0600; not used") as e:
        wgdp.converge(WgDevice("10.0.0.1", MTU), key, ns)
    private = open(key).read().strip()
    assert private not in str(e.value) and e.value.report.changes == []
    assert DEVICE not in sh(ns, "ip", "-o", "link").stdout


# WireGuard sends a new handshake initiation at most every REKEY_TIMEOUT (5 s) plus up to 1/3 s
# of jitter; a packet sent in between waits for the next retry (wireguard's messages.h/timers.c)
REKEY_RETRY = 5 + 1 / 3


def _ping6(ns: str, to: str, size: int = 56, count: int = 2, until: float | None = None) -> bool:
    """`count` DF pings, 2 s each for an answer; `until` S: ping until the first answer, for at
    most S seconds (a peer that just learnt a key answers after the sender's next handshake)."""
    # ping's -w takes whole seconds ("invalid argument" otherwise)
    tries = ["-c", str(count), "-W", "2"] if until is None else ["-c", "1", "-w", str(math.ceil(until))]
    r = sh(ns, "ping", "-6", "-n", "-q", *tries, "-i", "0.2", "-M", "do",
           "-s", str(size), "-p", MARKER, to, check=False)
    # 1 is "no answer"; anything else is ping failing to run, which must not pass for "cut off"
    assert r.returncode in (0, 1), f"ping exited {r.returncode}: {r.stderr.strip()}"
    return r.returncode == 0


def _peers(ns: str) -> list[str]:
    """The device's peers as `wg show` would list them, read with pyroute2 independently."""
    from pyroute2 import WireGuard
    with WireGuard(netns=ns, flags=0) as wg:
        return sorted(p.get_attr("WGPEER_A_PUBLIC_KEY").decode()
                      for m in wg.info(DEVICE) for p in m.get_attr("WGDEVICE_A_PEERS") or [])


@pytest.mark.skipif(not HAS_WIREGUARD, reason=SKIP_NO_MODULE)
def test_two_hosts_reach_each_other_only_with_the_keys_their_plans_name(mkns, tmp_path):
    h1, h2 = mkns("h1"), mkns("h2")
    veth(h1, "ul0", "ul0", peer_ns=h2)
    addr(h1, "ul0", "10.0.0.1")
    addr(h2, "ul0", "10.0.0.2")
    keys = {h: wgkey.path_in(str(tmp_path / h)) for h in ("h1", "h2")}
    pub = {h: wgkey.ensure(str(tmp_path / h)) for h in ("h1", "h2")}
    private = {h: open(keys[h]).read().strip() for h in keys}

    def plan(me, ip, peer, peer_ip):
        return WgDevice(ip, MTU, (WgPeer(pub[peer], peer_ip),))

    reports = [wgdp.converge(plan("h1", "10.0.0.1", "h2", "10.0.0.2"), keys["h1"], h1),
               wgdp.converge(plan("h2", "10.0.0.2", "h1", "10.0.0.1"), keys["h2"], h2)]
    inner2 = inner_address("10.0.0.2", pub["h2"])
    # the largest inner packet with DF crosses: MTU less IPv6 40 and ICMPv6 8
    wire = Sniffer(h2, "ul0")
    clear = Sniffer(h2, DEVICE)
    assert _ping6(h1, inner2) and _ping6(h1, inner2, size=MTU - 48)
    assert not _ping6(h1, inner2, size=MTU - 47, count=1)      # one byte more: too big
    marker = bytes.fromhex(MARKER)
    on_wire, inside = wire.frames(), clear.frames()
    assert any(marker in f for f in inside)                     # control: the marker was sent
    assert on_wire and not any(marker in f for f in on_wire)
    # on the wire: IPv4/UDP to or from WireGuard's port only (ARP aside)
    udp = [f for f in on_wire if f[12:14] == b"\x08\x00"]
    assert udp and all(f[23] == 17 and LISTEN_PORT in (int.from_bytes(f[34:36], "big"),
                                                       int.from_bytes(f[36:38], "big"))
                       for f in udp)
    # converged: nothing to do; no report line carries a private key
    again = wgdp.converge(plan("h1", "10.0.0.1", "h2", "10.0.0.2"), keys["h1"], h1)
    assert again.changes == []
    for r in reports:
        assert not any(private[h] in line for h in private for line in r.changes)
    # h1 makes a new key pair: h2 does not know it, so nothing from h1 gets through ...
    os.unlink(keys["h1"])
    old_inner1 = inner_address("10.0.0.1", pub["h1"])
    pub["h1"] = wgkey.ensure(str(tmp_path / "h1"))
    new_inner1 = inner_address("10.0.0.1", pub["h1"])
    rekey = wgdp.converge(plan("h1", "10.0.0.1", "h2", "10.0.0.2"), keys["h1"], h1)
    # the key's inner address comes with it (docs/wireguard.md: the key is in the address)
    assert rekey.changes == [f"added {new_inner1}/64 to {DEVICE}",
                             f"removed {old_inner1}/64 from {DEVICE}",
                             f"set {DEVICE}'s private key and port {LISTEN_PORT}"]
    assert not _ping6(h1, inner2, count=2)
    # ... until h2's plan names it: then h1's next handshake retry gets through (the failed
    # pings above started one; the next comes up to REKEY_RETRY later, not at the next packet)
    wgdp.converge(plan("h2", "10.0.0.2", "h1", "10.0.0.1"), keys["h2"], h2)
    assert _ping6(h1, inner2, until=2 * REKEY_RETRY)
    # h1 revoked: h2's next plan has no peer, the device drops it and h1 is cut off
    assert _peers(h2) == [pub["h1"]]
    cut = wgdp.converge(WgDevice("10.0.0.2", MTU), keys["h2"], h2)
    assert cut.changes == ["removed WireGuard peer at 10.0.0.1 (not in the plan)"]
    assert _peers(h2) == [] and not _ping6(h1, inner2, count=2)
    for s in (wire, clear):
        s.close()
