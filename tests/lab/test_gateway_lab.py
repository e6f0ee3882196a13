"""The gateway lab (xl-configs/lab-gateway.yaml) end to end on the host kernel: TVDs with a
gateway to a non-virtualized network "corp" (a namespace LAN on h1's NIC eth1), governed by
the flow policy like any pair. Brought up once for the module."""
from __future__ import annotations

import os

import pytest
from tests.lab.lab_helpers import REPO, assert_exact_matrix, blast_spoofed, running_lab

from xen_tvd.lab.isolation import flood_and_sniff

SPEC = os.path.join(REPO, "xl-configs", "lab-gateway.yaml")
POLICY = os.path.join(REPO, "xl-configs", "lab-gateway-policy.yaml")

# Written out by hand from lab-gateway-policy.yaml (not computed by the code under test):
# the TCP ports probed for controlled pairs (each rule range's edges +-1) ...
PORTS = {21, 22, 23, 442, 443, 444, 8442, 8443, 8444, 5431, 5432, 5433}
# ... and what must answer, per (src, dst); every other probe must not
ANSWERS = {
    ("app", "web"): {"icmp", "tcp"},          # open
    ("app", "corp"): {"tcp:443"},             # 8443: app's half only; 22: corp's half only
    ("corp", "app"): {"tcp:5432"},            # the external initiates only this, only to app
}
CONTROLLED = {("app", "corp"), ("corp", "app")}
VMS = {"web1": "web", "app1": "app", "mgmt1": "mgmt", "mgmt2": "mgmt", "corp1": "corp",
       "corp2": "corp"}


@pytest.fixture(scope="module")
def gw_lab(tmp_path_factory):
    with running_lab(SPEC, POLICY, "g", str(tmp_path_factory.mktemp("lab"))) as lab:
        yield lab


def test_exact_matrix_including_the_external(gw_lab):
    m = assert_exact_matrix(gw_lab, len(VMS) * (len(VMS) - 1), lambda pair: {"icmp", "tcp", "arp"} | (
        {f"tcp:{p}" for p in PORTS} if pair in CONTROLLED else set()), ANSWERS)
    for c in m["cells"]:
        assert (c["src_tvd"], c["dst_tvd"]) == (VMS[c["src"].split("/")[0]],
                                                VMS[c["dst"].split("/")[0]])


def test_external_leg_is_on_the_host_with_the_nic_only(gw_lab):
    import subprocess
    rtr = f"{gw_lab.name}-h-h1-rtr"
    out = subprocess.run(["ip", "netns", "exec", rtr, "ip", "-o", "-d", "link"],
                         capture_output=True, text=True, check=True).stdout
    assert "ext-corp@" in out and "macvlan" in out
    assert not os.path.exists(f"/run/netns/{gw_lab.name}-h-h2-rtr")   # mgmt only: no card


def test_a_closed_tvd_cannot_reach_the_external_even_spoofing_an_allowed_source(gw_lab):
    # web -> corp is closed (web has a card: app -> web is open), app -> corp is controlled:
    # web1 claims app1's address towards corp1 (udp, to its gateway MAC on h1)
    # positive control: app1 itself, same frames (udp 9999, allowed by both halves), arrives
    sent, got = blast_spoofed(gw_lab, "app1", "h1", "app", "10.120.0.11", "corp1", "198.51.100.10", 0.3)
    assert sent > 0 and got > 0
    sent, got = blast_spoofed(gw_lab, "web1", "h1", "web", "10.120.0.11", "corp1", "198.51.100.10")
    print(f"web1 spoofing app1 towards corp1: sent {sent}, arrived {got}")
    assert sent > 1000 and got == 0
    sent, got = blast_spoofed(gw_lab, "web1", "h1", "web", "10.110.0.11", "corp1", "198.51.100.10")
    print(f"web1 (own address) towards corp1: sent {sent}, arrived {got}")
    assert sent > 1000 and got == 0


@pytest.mark.parametrize("src_vm", ["web1", "app1", "corp1"])
def test_floods_cross_neither_into_nor_out_of_the_external(gw_lab, src_vm):
    from xen_tvd.policy import load_policy
    sent, results = flood_and_sniff(gw_lab.topology(), load_policy(POLICY), src_vm)
    leaked = {r.nic.key: r.marked for r in results if not r.same_tvd and r.total}
    assert not leaked, leaked
    same = [r for r in results if r.same_tvd]
    assert all(r.end_seen for r in same)          # the positive control arrived
    assert src_vm != "corp1" or same              # corp2 shares corp1's LAN
    assert sum(sent["sent"].values()) > 100
    print(f"flood from {src_vm}: sent {sum(sent['sent'].values())} marked frames towards "
          f"{sum(not r.same_tvd for r in results)} foreign NICs, arrived 0")
