"""The routed-flows lab (xl-configs/lab-flows.yaml) end to end on the host kernel: open,
controlled (per port, different sender/receiver halves) and closed pairs across three hosts
over VXLAN, and dishonest VMs trying to get around them. Brought up once for the module."""
from __future__ import annotations

import os
import subprocess

import pytest
from tests.lab.lab_helpers import REPO, assert_exact_matrix, blast_spoofed, running_lab

from xen_tvd.lab.isolation import flood_and_sniff

FLOWS_SPEC = os.path.join(REPO, "xl-configs", "lab-flows.yaml")
FLOWS_POLICY = os.path.join(REPO, "xl-configs", "lab-flows-policy.yaml")

# Written out by hand from lab-flows-policy.yaml (not computed by the code under test):
# the TCP ports the lab probes for controlled pairs (each rule range's edges +-1) ...
PORTS = {21, 22, 23, 8079, 8080, 8081, 9089, 9090, 9091, 5431, 5432, 5433}
# ... and what must answer, per (src TVD, dst TVD); every other probe must not
ANSWERS = {
    ("app", "web"): {"icmp", "tcp", "icmp6", "tcp6"},   # open (ARP never crosses TVDs)
    ("web", "app"): {"tcp:8080"},           # 9090: sender only; 22: receiver only
    ("app", "db"): {"icmp", "tcp:5432", "icmp6"},       # icmp and icmpv6 both allowed
    ("db", "app"): set(),                   # udp 514 one way: nothing answers
}
# every TVD of the lab is dual-stack: every pair is probed over IPv6 as well (issue #16.6)
KINDS = {"icmp", "tcp", "arp", "icmp6", "tcp6"}
CONTROLLED = {("web", "app"), ("app", "db"), ("db", "app")}


@pytest.fixture(scope="module")
def flows_lab(tmp_path_factory):
    with running_lab(FLOWS_SPEC, FLOWS_POLICY, "f", str(tmp_path_factory.mktemp("lab"))) as lab:
        yield lab


def _policy():
    from xen_tvd.policy import load_policy
    return load_policy(FLOWS_POLICY)


def test_exact_reachability_matrix(flows_lab):
    assert_exact_matrix(flows_lab, 8 * 7, lambda pair: KINDS | (
        {f"tcp:{p}" for p in PORTS} if pair in CONTROLLED else set()), ANSWERS)
    # every probe that got no answer between two routed TVDs was counted where it died, under
    # its pair and the rule that dropped it (issue #16.7): the lab's status shows it
    st = flows_lab.status()
    seen: dict = {}
    for h in st["hosts"].values():
        for d in h["drops"]["flows"]:
            k = (d["reason"], d["from"], d["to"])
            seen[k] = seen.get(k, 0) + d["packets"]
    assert seen.get(("closed", "web", "db"), 0) > 0, seen        # closed pair
    assert seen.get(("closed", "db", "web"), 0) > 0, seen
    assert seen.get(("sender", "web", "app"), 0) > 0, seen       # tcp 22: receiver allows only
    assert seen.get(("receiver", "web", "app"), 0) > 0, seen     # tcp 9090: sender allows only
    text = flows_lab.cli("status", check=True).stdout
    assert "drops: " in text and "closed web->db" in text, text


def test_routers_have_cards_only_for_tvds_with_a_permitted_pair(flows_lab):
    for host in ("h1", "h2", "h3"):
        ns = f"{flows_lab.name}-h-{host}-rtr"
        out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "-4", "addr"],
                             capture_output=True, text=True, check=True).stdout
        legs = {l.split()[1].split("@")[0] for l in out.splitlines() if "leg-" in l}
        assert legs == {"leg-110", "leg-120", "leg-130"}     # never mgmt (140)
        assert "10.130.0.254/24" in out and "10.140." not in out


@pytest.mark.parametrize("src_vm", ["web1", "app3", "db2", "mgmt1"])
def test_floods_from_every_tvd_reach_no_other_tvd(flows_lab, src_vm):
    topo = flows_lab.topology()
    sent, results = flood_and_sniff(topo, _policy(), src_vm)
    leaked = {r.nic.key: r.marked for r in results if not r.same_tvd and r.total}
    assert not leaked, leaked
    same = [r for r in results if r.same_tvd]
    assert same and all(r.end_seen for r in same)        # the positive control arrived
    kinds = sent["sent"]
    assert sum(kinds.values()) > 100
    print(f"flood from {src_vm}: sent {sum(kinds.values())} marked frames ({kinds}) towards "
          f"{sum(not r.same_tvd for r in results)} foreign NICs, arrived 0")


def test_spoofing_an_open_tvds_address_does_not_open_a_closed_pair(flows_lab):
    # db -> web is closed, app -> web is open: db2 claims an app address towards web2
    sent, got = blast_spoofed(flows_lab, "db2", "h2", "db", "10.120.0.99", "web2", "10.110.0.12")
    assert sent > 1000 and got == 0
    print(f"spoofed app source from db2 to web2: sent {sent}, arrived {got}")
    # control: the honest app VM on the same path does arrive
    sent, got = blast_spoofed(flows_lab, "app1", "h1", "app", "10.120.0.11", "web2", "10.110.0.12", 0.3)
    assert got > 0
