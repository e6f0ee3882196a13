"""Gateways from TVDs to a non-virtualized network (paper 4.2) on real namespaces: host h1 has
a Dom0 NIC `eth1` on the external network "corp" (a namespace we create: 198.51.100.1 on its
LAN, 203.0.113.10 behind it, reached via the policy's gateway 198.51.100.1).

  a -> corp open; b -> corp controlled (b's sender half: tcp 22, 80; corp's receiver half:
  tcp 22, 8080, so only tcp 22 passes); corp -> c controlled tcp 8080 (corp initiates);
  d -> a controlled tcp 7 (d has a router card) and nothing with corp: closed.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.dataplane.dp_helpers import addr, link, names, sh, veth
from tests.common.paths import REPO
from tests.dataplane.flow_helpers import Bg, agent_argv, agent, build, leg_mac, nft, ping_ok, tcp_ok, teardown

POLICY = """
version: 1
tvds:
  a: {vlan: 100, subnets: [10.1.0.0/24]}
  b: {vlan: 200, subnets: [10.2.0.0/24]}
  c: {vlan: 300, subnets: [10.3.0.0/24]}
  d: {vlan: 400, subnets: [10.4.0.0/24]}
  e: {vlan: 500}
externals:
  corp: {subnets: [198.51.100.0/24, 203.0.113.0/24]}
flows:
  - {from: a, to: corp, policy: open}
  - from: b
    to: corp
    policy: controlled
    sender: {allow: [{proto: tcp, port: 22}, {proto: tcp, port: 80}]}
    receiver: {allow: [{proto: tcp, port: 22}, {proto: tcp, port: 8080}]}
  - {from: corp, to: c, policy: controlled, allow: [{proto: tcp, port: 8080}]}
  - {from: d, to: a, policy: controlled, allow: [{proto: tcp, port: 7}]}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true}
hosts:
  h1:
    address: 10.0.0.1
    capabilities: [ethernet, ip]
    nics: [{network: lan, nic: ul0, address: 10.0.0.1}]
    externals: [{external: corp, nic: eth1, address: 198.51.100.2/24, gateway: 198.51.100.1}]
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""
# every routed TVD's VMs on h1 (the host with the corp NIC); h2 only carries e (no router)
VMS = {"a1": ("h1", "a", "10.1.0.11", 1), "b1": ("h1", "b", "10.2.0.11", 2),
       "c1": ("h1", "c", "10.3.0.11", 3), "d1": ("h1", "d", "10.4.0.11", 4),
       "e2": ("h2", "e", "10.5.0.12", 1)}
CORP_IPS = ("198.51.100.1", "203.0.113.10")
PORTS = (22, 80, 8080)
# written out by hand from POLICY: (icmp, tcp 22, tcp 80, tcp 8080)
TO_CORP = {"a": (True, True, True, True), "b": (False, True, False, False)}
FROM_CORP = {"c": (False, False, False, True)}
NOTHING = (False, False, False, False)


def _corp(rig, mkns) -> str:
    """The external network: its LAN is a veth from h1's eth1; it routes the TVD subnets back
    to h1's external leg (no NAT), and holds 203.0.113.10 behind itself (the via-gateway net)."""
    corp = mkns("corp")
    veth(rig.hosts["h1"], "eth1", "lan0", peer_ns=corp)
    addr(corp, "lan0", "198.51.100.1")
    addr(corp, "lo", "203.0.113.10", 32)
    sh(corp, "ip", "route", "add", "10.0.0.0/8", "via", "198.51.100.2")
    rig.vms["corp"] = corp
    return corp


@contextlib.contextmanager
def _rig(mkns, tmp_path, corp: bool = True, **kw):
    """The rig of this module; `corp=False` leaves h1's external NIC to the test."""
    from tests.dataplane import flow_helpers
    saved = dict(flow_helpers.VMS)
    flow_helpers.VMS.clear()
    flow_helpers.VMS.update(VMS)       # Rig.ip() and mac_of() read it
    r = None
    try:
        r = build(mkns, tmp_path, POLICY, vms=VMS, **kw)
        if corp:
            _corp(r, mkns)
            changes = r.apply_all()["h1"]
            assert any("created external leg ext-corp on eth1" in c for c in changes), changes
        yield r
    finally:
        if r is not None:
            teardown(r)
        flow_helpers.VMS.clear()
        flow_helpers.VMS.update(saved)


@pytest.fixture
def rig(mkns, tmp_path):
    with _rig(mkns, tmp_path) as r:
        yield r


def _corp_tcp(rig, src, vm, port) -> bool:
    r = subprocess.run(agent_argv(rig.vms["corp"], "connect", rig.ip(vm), str(port), "1", src),
                       capture_output=True, text=True, cwd=REPO)
    return r.stdout.strip() == "ok"


def _corp_ping(rig, src, vm) -> bool:
    return sh(rig.vms["corp"], "ping", "-n", "-q", "-c", "1", "-W", "1", "-I", src, rig.ip(vm),
              check=False).returncode == 0


def _to_corp(rig, vm, ip) -> tuple:
    r = [sh(rig.vms[vm], "ping", "-n", "-q", "-c", "1", "-W", "1", ip, check=False).returncode == 0]
    for p in PORTS:
        out = agent(rig, vm, "connect", ip, str(p), "1")
        r.append(out == "ok")
    return tuple(r)


def test_leg_is_a_macvlan_with_routes_idempotent_and_cleaned_up(mkns, tmp_path):
    with _rig(mkns, tmp_path, corp=False) as rig:
        rtr = rig.hosts["h1"] + "-rtr"
        # the NIC is missing: no leg (no path), a warning, and nothing else breaks
        assert "ext-corp" not in names(rtr)
        _corp(rig, mkns)
        rig.apply_all()
        assert {"lo", "leg-100", "leg-200", "leg-300", "leg-400", "ext-corp"} == names(rtr)
        leg = link(rtr, "ext-corp")
        assert leg["kind"] == "macvlan" and leg["alias"] == "xen-tvd:external=corp nic=eth1"
        assert "eth1" in names(rig.hosts["h1"])          # Dom0 keeps its NIC
        out = sh(rtr, "ip", "-4", "-o", "addr", "show", "dev", "ext-corp").stdout
        assert "198.51.100.2/24" in out
        routes = sh(rtr, "ip", "-4", "route").stdout
        assert "203.0.113.0/24 via 198.51.100.1 dev ext-corp" in routes
        assert "default" not in routes
        assert rig.states["h2"].router is None             # e has no card, h2 no router
        assert rig.apply_all() == {"h1": [], "h2": []}      # converged: no writes
        # a stray route and a deleted leg are repaired
        sh(rtr, "ip", "link", "del", "ext-corp")
        changes = rig.apply_all()["h1"]
        assert any("created external leg" in c for c in changes), changes
        assert "203.0.113.0/24 via 198.51.100.1" in sh(rtr, "ip", "-4", "route").stdout
        sh(rtr, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
        changes = rig.apply_all()["h1"]
        assert any("deleted route 192.0.2.0/24" in c for c in changes), changes
        assert "192.0.2.0" not in sh(rtr, "ip", "-4", "route").stdout
        assert rig.apply_all() == {"h1": [], "h2": []}
    assert not os.path.exists(f"/run/netns/{rig.hosts['h1']}-rtr")
    assert "eth1" in names(rig.hosts["h1"])                 # the NIC itself is never touched
    for t in ("inet xen_tvd_flows", "bridge xen_tvd_gw"):
        assert nft(rig.hosts["h1"], "list", "table", *t.split()).returncode != 0


def test_exact_matrix_with_the_external(rig):
    corp_l = Bg(rig, "corp", "listen", *map(str, PORTS))
    vm_l = [Bg(rig, vm, "listen", *map(str, PORTS)) for vm in VMS]
    try:
        with ThreadPoolExecutor(12) as ex:
            out = dict(ex.map(lambda k: (k, _to_corp(rig, k[0], k[1])),
                              itertools.product([v for v in VMS if v != "e2"], CORP_IPS)))
            inn = dict(ex.map(lambda k: (k, (_corp_ping(rig, k[1], k[0]),
                                              *(_corp_tcp(rig, k[1], k[0], p) for p in PORTS))),
                              itertools.product(VMS, CORP_IPS)))
        # TVD <-> TVD through the same router: d -> a controlled tcp 7 only, the rest closed
        assert not ping_ok(rig, "d1", "a1") and not tcp_ok(rig, "d1", "a1", 22)
    finally:
        corp_l.stop()
        for l in vm_l:
            l.stop()
    wrong = []
    for (vm, ip), got in out.items():
        want = TO_CORP.get(VMS[vm][1], NOTHING)
        if got != want:
            wrong.append(f"{vm} -> corp {ip}: got {got}, want {want}")
    for (vm, ip), got in inn.items():
        want = FROM_CORP.get(VMS[vm][1], NOTHING)
        if got != want:
            wrong.append(f"corp {ip} -> {vm}: got {got}, want {want}")
    assert not wrong, "\n".join(wrong)
    assert len(out) == 8 and len(inn) == 10


def _blast_to_corp(rig, src, src_ip, seconds=1.0):
    magic = f"xen-tvd-ext-{os.getpid()}-{src_ip}"
    sn = Bg(rig, "corp", "sniff", "lan0", magic)
    try:
        sent = int(agent(rig, src, "blast", "eth0", leg_mac(rig, "h1", VMS[src][1]), src_ip,
                         "198.51.100.1", str(seconds), magic))
    finally:
        got = int(sn.stop())
    return sent, got


def test_closed_tvd_cannot_reach_the_external_by_spoofing(mkns, tmp_path):
    with _rig(mkns, tmp_path, unpinned=("d1",)) as rig:   # no port security on d1
        sent, got = _blast_to_corp(rig, "a1", "10.1.0.11", 0.3)      # positive control
        assert sent > 0 and got > 0
        # d (closed with corp) claims a's address (a -> corp is open): the flow filter drops
        sent, got = _blast_to_corp(rig, "d1", "10.1.0.77")
        print(f"d1 spoofing a towards corp: sent {sent}, arrived {got}")
        assert sent > 1000 and got == 0
        # honest source of its own: closed pair, dropped as well
        sent, got = _blast_to_corp(rig, "d1", "10.4.0.11")
        print(f"d1 (own address) towards corp: sent {sent}, arrived {got}")
        assert sent > 1000 and got == 0
        # without h1's flow filter the router still drops both: reverse path for the spoofed
        # source, and the external leg's own filter (no d -> corp pair) for the honest one
        assert nft(rig.hosts["h1"], "delete", "table", "inet", "xen_tvd_flows").returncode == 0
        for src_ip in ("10.1.0.78", "10.4.0.11"):
            sent, got = _blast_to_corp(rig, "d1", src_ip)
            print(f"d1 ({src_ip}) towards corp without h1's flow table: sent {sent}, arrived {got}")
            assert sent > 1000 and got == 0


def test_external_halves_are_enforced_at_the_leg_and_the_tvd_halves_at_the_vswitch(rig):
    listeners = [Bg(rig, "corp", "listen", *map(str, PORTS)), Bg(rig, "c1", "listen", "8080", "22")]
    try:
        # h1's vSwitch filter gone (compromised Dom0 bridge rules): corp's receiver half still
        # refuses b's tcp 80 at the leg; b's own sender half (no 8080) is gone with it
        assert nft(rig.hosts["h1"], "delete", "table", "inet", "xen_tvd_flows").returncode == 0
        assert agent(rig, "b1", "connect", "198.51.100.1", "80", "1") != "ok"
        assert agent(rig, "b1", "connect", "198.51.100.1", "8080", "1") == "ok"
        assert _corp_tcp(rig, "198.51.100.1", "c1", 8080)
        assert not _corp_tcp(rig, "198.51.100.1", "c1", 22)     # corp's sender half, at the leg
        assert not _corp_tcp(rig, "198.51.100.1", "a1", 22)     # no corp -> a pair at all
        rig.apply_all()
        assert agent(rig, "b1", "connect", "198.51.100.1", "8080", "1") != "ok"   # restored
    finally:
        for l in listeners:
            l.stop()


def test_a_host_without_a_nic_on_the_external_is_refused(tmp_path):
    from xen_tvd.desired.model import VifPort
    from xen_tvd.planner import PlanError, plan
    from xen_tvd.policy import load_policy
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(POLICY))
    pol = load_policy(str(f))
    with pytest.raises(PlanError, match=r"host 'h2' carries TVD a, .* no NIC on 'corp'.*"
                                        r"hosts\.h2\.externals"):
        plan(pol, {"h2": [VifPort("vif1.0", "a")]})
    # a TVD outside the external's component is fine there
    assert plan(pol, {"h2": [VifPort("vif1.0", "e")]})["h2"].router is None
