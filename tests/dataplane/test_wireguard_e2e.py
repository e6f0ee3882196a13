"""The WireGuard transport end to end: policy -> planner -> apply() on two hosts (issue #15).

The underlay network is trusted for nothing. alpha requires integrity and confidentiality, so
it rides WireGuard (VXLAN inside it); beta requires neither and rides plain VXLAN next to it,
the control. The two-host lab of the dishonest-VM tests (dishonest.Lab: hosts h1, h2 and a
rogue on one bridged underlay; VMs a1, a2, a3 in alpha, b1, b2 in beta).

Tier 1 (no wireguard module): alpha is attached to nothing and apply() says "needs the
wireguard module"; beta works. Tier 2 (stock 6.1): the exact matrix, the largest DF packet,
a sniffer on the underlay finds beta's payload markers and none of alpha's, and a rogue that
spoofs h1's underlay (and inner) address injects 0 frames into alpha's VMs, while the same
forgery reaches beta's (what the source filter cannot stop) and, with the underlay filter
deleted by hand, alpha's too (what the filter's WireGuard part stops).
"""
from __future__ import annotations

import time

import pytest

from tests.dataplane.dishonest import (BCAST, ETH_IP, ETH_IP6, VMS, Injector, Lab, MarkSniffer, eth, marker,
                       udp4, udp6, vxlan)
from tests.dataplane.dp_helpers import link, mac, ping, sh
from xen_tvd.dataplane import DataplaneError, apply, nftables
from xen_tvd.desired.transports.vxlan import VxlanUplink
from xen_tvd.desired.transports.wireguard import WireguardUplink
from xen_tvd.desired.wireguard import DEVICE, inner_address
from xen_tvd.planner import PlanError, plan
from xen_tvd.policy import load_policy
from xen_tvd.proxy import capabilities, wgkey

HAS_WIREGUARD = capabilities.probe("wireguard")
SKIP_NO_MODULE = "needs the wireguard module (this kernel lacks it); runs in the stock-kernel VM tier"
PER_KIND = 20

POLICY = """
version: 1
tvds:
  alpha: {vlan: 100, protection: [isolation, integrity, confidentiality]}
  beta: {vlan: 200}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true, mtu: 1500, max-mtu: 1500%(extra)s}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip, wireguard], wireguard-key: %(k1)s,
       nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip, wireguard], wireguard-key: %(k2)s,
       nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""


@pytest.fixture
def keys(tmp_path):
    """host -> (key file, public key): each host's pair, made by tvd-proxy's key code."""
    return {h: (wgkey.path_in(str(tmp_path / h)), wgkey.ensure(str(tmp_path / h)))
            for h in ("h1", "h2")}


def _policy(keys, extra=""):
    return POLICY % {"k1": keys["h1"][1], "k2": keys["h2"][1], "extra": extra}


def _plan(tmp_path, text):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    from xen_tvd.desired.model import VifPort
    return plan(load_policy(str(f)), {h: [VifPort("vif1.0", "alpha"), VifPort("vif2.0", "beta")]
                                      for h in ("h1", "h2")})


def test_planner_puts_only_the_tvd_needing_protection_on_wireguard(tmp_path, keys):
    st = _plan(tmp_path, _policy(keys))
    a1, a2 = st["h1"].segment("alpha"), st["h2"].segment("alpha")
    assert isinstance(a1.uplink, WireguardUplink) and isinstance(a2.uplink, WireguardUplink)
    assert a1.uplink.peers == (("10.0.0.2", keys["h2"][1]),)
    assert a2.uplink.peers == (("10.0.0.1", keys["h1"][1]),)
    assert a1.uplink.remotes == (inner_address("10.0.0.2", keys["h2"][1]),)
    # both overheads: WireGuard 60 + VXLAN over IPv6 70; the device gets the underlay less 60
    assert a1.mtu == 1500 - 130 and a1.uplink.wg_mtu == 1440
    assert isinstance(st["h1"].segment("beta").uplink, VxlanUplink)
    assert st["h1"].segment("beta").mtu == 1450


def test_planner_gives_a_rotating_hosts_both_keys_to_its_peers(tmp_path, keys):
    """Standalone rotation (docs/wireguard.md): hosts.h1.wireguard-next-key makes h2 accept
    both of h1's keys, each from its own inner address; h1 runs with its wireguard-key and
    answers on both. Swapping the two entries is the switch; h2's plan stays the same."""
    nxt = wgkey.rotate(str(tmp_path / "h1"))
    k1, k2 = keys["h1"][1], keys["h2"][1]
    text = _policy(keys).replace(f"wireguard-key: {k1},",
                                 f"wireguard-key: {k1}, wireguard-next-key: {nxt},")
    st = _plan(tmp_path, text)
    a1, a2 = st["h1"].segment("alpha").uplink, st["h2"].segment("alpha").uplink
    assert a2.peers == tuple(sorted((("10.0.0.1", k1), ("10.0.0.1", nxt))))
    assert a2.remotes == tuple(inner_address("10.0.0.1", k) for _, k in a2.peers)
    assert len(set(a2.remotes)) == 2 and (a2.key, a2.keys) == (k2, (k2,))
    assert (a1.key, set(a1.keys)) == (k1, {k1, nxt}) and a1.peers == (("10.0.0.2", k2),)
    assert st["h2"].segment("alpha").mtu == 1370          # a rotation costs no MTU
    swapped = _plan(tmp_path, text.replace(f"wireguard-key: {k1}, wireguard-next-key: {nxt},",
                                           f"wireguard-key: {nxt}, wireguard-next-key: {k1},"))
    assert swapped["h1"].segment("alpha").uplink.key == nxt
    assert swapped["h2"].segment("alpha") == st["h2"].segment("alpha")
    assert st["h1"].underlay_peers == ("10.0.0.2",)
    # a network that may be raised keeps VMs at 1500: 1630 on the underlay
    raised = _plan(tmp_path, _policy(keys).replace("max-mtu: 1500", "max-mtu: 9000"))
    assert raised["h1"].segment("alpha").mtu == 1500
    assert raised["h1"].underlay_mtu == {"ul0": 1630}
    assert raised["h1"].segment("alpha").uplink.wg_mtu == 1570
    # a network that requires encryption puts every TVD crossing it on WireGuard
    enc = _plan(tmp_path, _policy(keys, ", require-encryption: true"))
    assert all(isinstance(enc[h].segment(t).uplink, WireguardUplink)
               for h in ("h1", "h2") for t in ("alpha", "beta"))


@pytest.mark.parametrize("change, why", [
    (lambda t, k: t.replace(f", wireguard-key: {k['h2'][1]}", ""),
     "WireGuard would, but host 'h2' has no WireGuard public key"),
    (lambda t, k: t.replace("[ethernet, ip, wireguard], wireguard-key: " + k["h1"][1],
                            "[ethernet, ip], wireguard-key: " + k["h1"][1]),
     "WireGuard would, but host 'h1' has no wireguard capability"),
])
def test_without_wireguard_on_both_hosts_the_tvd_is_refused_with_the_reason(tmp_path, keys,
                                                                           change, why):
    with pytest.raises(PlanError) as e:
        _plan(tmp_path, change(_policy(keys), keys))
    msg = str(e.value)
    assert msg.startswith("TVD 'alpha' requires integrity") and why in msg
    assert "trusted-for: [integrity]" in msg


def test_without_the_module_encrypted_segments_attach_to_nothing_plain_ones_work(mkns, tmp_path,
                                                                                 keys):
    if HAS_WIREGUARD:
        pytest.skip("this kernel has the wireguard module; the fail-closed path is tier 1's")
    lab_fails: list[str] = []
    lab = Lab(mkns, tmp_path, policy=_policy(keys), apply_errors=lab_fails,
              wireguard_keys={h: keys[h][0] for h in keys})
    try:
        print("\n".join(lab_fails))
        built = [f for f in lab_fails if f.startswith("encrypted segment not built")]
        assert len(built) == 2 and all("needs the wireguard module" in f for f in built)
        assert all("segment(s) alpha removed" in f for f in built)   # beta is not
        # h1 (apply) leaves alpha's vifs detached; h2 (hotplug) refuses to plug its alpha vif
        assert "vif1.0 left detached: segment alpha could not be built" in lab_fails
        assert any(f.startswith("cannot plug vif1.0 into TVD alpha") for f in lab_fails)
        for h, ns in lab.hosts.items():
            assert link(ns, "tvd-alpha") is None and link(ns, "tve-alpha") is None
            assert link(ns, DEVICE) is None
            assert link(ns, "tvd-beta")["up"]
        for vm in ("a1", "a2"):
            assert link(lab.hosts["h1"], VMS[vm][1])["master"] is None
        assert link(lab.hosts["h1"], VMS["b1"][1])["master"] == "tvd-beta"
        assert ping(lab.ns("b1"), VMS["b2"][3])
        assert not ping(lab.ns("a1"), VMS["a3"][3], count=2)
    finally:
        lab.close()


def _forge(lab: Lab, kind: str, frame_of) -> int:
    inj = Injector(lab.rogue, "ul0")
    try:
        for i in range(PER_KIND):
            inj.send(frame_of(marker(kind, i)))
    finally:
        inj.close()
    return PER_KIND


def _bcast_inner(src_mac: str, mark: bytes) -> bytes:
    return eth(BCAST, src_mac, ETH_IP, udp4("192.168.10.66", "192.168.10.255", 9, 9, mark))


@pytest.mark.skipif(not HAS_WIREGUARD, reason=SKIP_NO_MODULE)
def test_encrypted_tvd_over_an_untrusted_underlay(mkns, tmp_path, keys):
    # IPv6 on the hosts' NICs, as on a real Dom0: the forged IPv6 VXLAN below must meet the
    # underlay filter, not a disabled stack
    lab = Lab(mkns, tmp_path, policy=_policy(keys),
              wireguard_keys={h: keys[h][0] for h in keys})
    wire = {h: MarkSniffer(lab.fab, f"p{i}") for i, h in enumerate(("h1", "h2"))}
    try:
        for h, ns in lab.hosts.items():
            up = link(ns, "tve-alpha")
            assert up["kind"] == "vxlan" and up["master"] == "tvd-alpha" and up["mtu"] == 1370
            assert link(ns, DEVICE)["kind"] == "wireguard" and link(ns, DEVICE)["mtu"] == 1440
            assert link(ns, "tvx-beta")["master"] == "tvd-beta"
            sh(ns, "sysctl", "-qw", "net.ipv6.conf.ul0.disable_ipv6=0")
            st = lab.states[h]
            assert apply(st, netns=ns, wireguard_key=keys[h][0]).changes == []   # converged
        # the matrix: alpha and beta within, nothing across (one IP subnet on purpose)
        ip = {n: VMS[n][3] for n in VMS}
        assert ping(lab.ns("a1"), ip["a3"]) and ping(lab.ns("a3"), ip["a2"])
        assert ping(lab.ns("b1"), ip["b2"])
        for a in ("a1", "a2", "a3"):
            for b in ("b1", "b2"):
                assert not ping(lab.ns(a), ip[b], count=1), (a, b)
        # the largest DF packet crosses, one byte more does not (VM MTU 1370 = 1500 - 130)
        assert ping(lab.ns("a1"), ip["a3"], size=1370 - 28)
        assert not ping(lab.ns("a1"), ip["a3"], size=1370 - 27, count=1)
        # honest marked broadcasts in both TVDs: the underlay shows beta's in clear, no alpha's
        for vm in ("a1", "a3", "b1", "b2"):
            inj = Injector(lab.ns(vm))
            try:
                inj.send(eth(BCAST, VMS[vm][5], ETH_IP,
                             udp4(ip[vm], "192.168.10.255", 9, 9, marker(f"honest-{vm}"))), 5)
            finally:
                inj.close()
        lab.barrier(1)
        for vm in ("a1", "a3", "b1", "b2"):
            peers = [r for r in VMS if r != vm and VMS[r][2] == VMS[vm][2]]
            assert all(lab.arrivals(f"honest-{vm}")[r] == 5 for r in peers), vm
        seen_on_wire = {vm: sum(s.count(f"honest-{vm}") for s in wire.values())
                        for vm in ("a1", "a3", "b1", "b2")}
        print("\nhonest marker frames seen on the underlay:", seen_on_wire)
        assert seen_on_wire["b1"] > 0 and seen_on_wire["b2"] > 0     # control: plain VXLAN
        assert seen_on_wire["a1"] == 0 and seen_on_wire["a3"] == 0
        # the rogue spoofs h1 (its underlay and inner address) towards h2
        h1_inner = inner_address("10.0.0.1", keys["h1"][1])
        h2_inner = inner_address("10.0.0.2", keys["h2"][1])
        to_h2 = mac(lab.hosts["h2"], "ul0")
        rogue_mac = mac(lab.rogue, "ul0")
        vni = {t: lab.policy.tvds[t].vni for t in ("alpha", "beta")}

        def v4_vxlan(t):
            return lambda m: eth(to_h2, rogue_mac, ETH_IP, udp4(
                "10.0.0.1", "10.0.0.2", 40000, 4789, vxlan(vni[t], _bcast_inner(rogue_mac, m))))

        def v6_vxlan(t):
            return lambda m: eth(to_h2, rogue_mac, ETH_IP6, udp6(
                h1_inner, h2_inner, 40000, 4789, vxlan(vni[t], _bcast_inner(rogue_mac, m))))

        def wg_garbage(m):   # a WireGuard data message with no session behind it
            return eth(to_h2, rogue_mac, ETH_IP, udp4("10.0.0.1", "10.0.0.2", 51820, 51820,
                                                      b"\x04\0\0\0" + bytes(12) + m + bytes(32)))

        kinds = {"spoofed IPv4 VXLAN, alpha's VNI": v4_vxlan("alpha"),
                 "spoofed IPv6 VXLAN to the inner address, alpha's VNI": v6_vxlan("alpha"),
                 "spoofed WireGuard message": wg_garbage,
                 "spoofed IPv4 VXLAN, beta's VNI (plain: the known limit)": v4_vxlan("beta")}

        def attack(seq):
            for k, f in kinds.items():
                _forge(lab, f"{k} r{seq}", f)
            lab.barrier(10 + seq)
            time.sleep(0.3)
            return {k: lab.arrivals(f"{k} r{seq}") for k in kinds}

        got = attack(1)
        print("\nforged frames (20 per kind) arriving per VM, filter in place:")
        for k, per_vm in got.items():
            print(f"  {k:58} {per_vm}")
        for k, per_vm in got.items():
            assert all(per_vm[v] == 0 for v in ("a1", "a2", "a3")), (k, per_vm)
        # control: the spoofed plain VXLAN does get into beta on h2 (source filters cannot
        # tell a spoofed peer), so the forgeries above were deliverable frames
        assert got["spoofed IPv4 VXLAN, beta's VNI (plain: the known limit)"]["b2"] == PER_KIND
        # control: without the underlay filter the IPv6 forgery reaches alpha on h2 (the
        # VXLAN socket listens on every address): the filter's WireGuard part is what stops it
        nftables.run(lab.hosts["h2"], "delete table inet xen_tvd_underlay\n", "test: unfilter")
        open_door = attack(2)
        assert open_door["spoofed IPv6 VXLAN to the inner address, alpha's VNI"]["a3"] == PER_KIND
        assert open_door["spoofed IPv4 VXLAN, alpha's VNI"]["a3"] == 0
        assert open_door["spoofed WireGuard message"]["a3"] == 0
    finally:
        for s in wire.values():
            s.close()
        lab.close()
