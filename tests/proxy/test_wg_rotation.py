"""The proxy's half of a WireGuard key rotation (docs/wireguard.md, "Key rotation"), without a
kernel: the pending key becomes the key file only after an apply() that ran the device on it,
and in master mode the proxy tells the master which rotating peers' keys its applied bundle
accepts (the master's cue for those peers to switch). The device itself: tier 2,
tests/dataplane/test_wireguard_rotation.py."""
from __future__ import annotations

import threading

from xen_tvd.dataplane import ApplyReport, DataplaneError
from xen_tvd.desired.model import HostState, Segment
from xen_tvd.desired.transports.wireguard import WireguardUplink
from xen_tvd.proxy import dataplane_port, wgkey
from xen_tvd.proxy.dataplane_port import KernelDataplane
from xen_tvd.proxy.master_authority import MasterAuthority

K_PEER = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
K_PEER_NEXT = "qpI2Hh6Zcs9Anfgj2VVC2dlMWuy2ukeE96ad9ZNTCQU="
K_OTHER = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="


def _state(key: str, peers=(("10.0.0.2", K_PEER),)) -> HostState:
    up = WireguardUplink(vni=100, local_ip="10.0.0.1", underlay_dev="eth0", peers=tuple(peers),
                         wg_mtu=1440, key=key, keys=(key,))
    return HostState(host="h1", segments=(Segment("alpha", "tvd-alpha", up, 1370),))


def test_the_pending_key_replaces_the_old_one_only_after_the_device_ran_on_it(tmp_path,
                                                                            monkeypatch):
    state = str(tmp_path)
    current = wgkey.ensure(state)
    nxt = wgkey.rotate(state)
    calls, fail = [], []

    def fake_apply(st, wireguard_key=None):
        calls.append(wireguard_key)
        if fail:
            raise DataplaneError("segment alpha could not be built")
        return ApplyReport()
    monkeypatch.setattr(dataplane_port, "apply", fake_apply)
    switched = []
    dp = KernelDataplane(state, on_key_switched=lambda: switched.append(1))
    # the plan still names the current key: the pending pair waits
    dp.apply(_state(current))
    assert calls == [wgkey.path_in(state)] and wgkey.keys(state) == (current, nxt)
    assert switched == []
    # a failed apply promotes nothing (the device may not run on the new key)
    fail.append(1)
    try:
        dp.apply(_state(nxt))
    except DataplaneError:
        pass
    assert wgkey.keys(state) == (current, nxt) and switched == []
    # the plan names the pending key and the apply went through: it becomes the key
    fail.clear()
    dp.apply(_state(nxt))
    assert wgkey.keys(state) == (nxt, None) and switched == [1]
    dp.apply(_state(nxt))
    assert switched == [1]                      # once
    # no encrypted segment here: nothing to promote
    wgkey.rotate(state)
    dp.apply(HostState(host="h1"))
    assert wgkey.keys(state)[1] is not None


class _Link:
    def __init__(self) -> None:
        self.report_again = threading.Event()


class _Core:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.vifs: dict = {}

    def recheck_ports(self): pass
    def keep_lingering(self, tvds): pass
    def reconcile(self, force=False): pass
    def save(self): pass


class _Bundle:
    generation = 7

    def __init__(self, peers) -> None:
        self.segments = {"alpha": _state(K_OTHER, peers).segments[0]}


def test_an_applied_bundle_with_a_rotating_peer_is_reported_to_the_master():
    link = _Link()
    auth = MasterAuthority(link, "h1")
    auth.bind(_Core())
    assert auth.wireguard_accepts() == frozenset()       # no bundle: nothing accepted
    # the peer at 10.0.0.2 is rotating: both its keys are in the bundle, so after applying
    # it the proxy reports again, and the report says it accepts both
    auth.on_bundle(_Bundle((("10.0.0.2", K_PEER), ("10.0.0.2", K_PEER_NEXT))))
    assert link.report_again.is_set()
    assert auth.wireguard_accepts() == {K_PEER, K_PEER_NEXT}
    # the same keys again: no new report
    link.report_again.clear()
    auth.on_bundle(_Bundle((("10.0.0.2", K_PEER), ("10.0.0.2", K_PEER_NEXT))))
    assert not link.report_again.is_set()
    # the peer finished: one key per address, nothing rotating, reported once more
    auth.on_bundle(_Bundle((("10.0.0.2", K_PEER_NEXT),)))
    assert link.report_again.is_set() and auth.wireguard_accepts() == frozenset()
