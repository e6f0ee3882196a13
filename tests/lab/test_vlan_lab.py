"""The 802.1Q lab (xl-configs/lab-vlan.yaml) end to end: TVD segments over VLANs on a
VLAN-capable LAN next to a VXLAN segment across a WAN router, routed gamma -> delta over VLAN
segments, and `tvdctl lab verify`'s exact reachability matrix.

Needs 8021q. This host kernel lacks it, so tier 1 skips the lab (and instead checks that the
lab fails closed with the reason); tier 2 runs it on Debian's stock kernel, where a skip of any
`vlan` test counts as a failure (tvd_testing.vmtier.DEFAULT_SELECTION).
"""
from __future__ import annotations

import os
import subprocess

import pytest
from tests.lab.lab_helpers import (REPO, assert_exact_matrix, lab_cli, need_root_and_tools,
                                   running_lab, unique_name, up_fails_closed, write_spec)

from xen_tvd.lab.isolation import flood_and_sniff
from xen_tvd.policy import load_policy
from xen_tvd.proxy.capabilities import probe

VLAN_SPEC = os.path.join(REPO, "xl-configs", "lab-vlan.yaml")
VLAN_POLICY = os.path.join(REPO, "xl-configs", "lab-vlan-policy.yaml")
NO_8021Q = "needs 8021q (this kernel cannot create VLAN devices); runs in the stock-kernel VM tier"

# Written out by hand from lab-vlan-policy.yaml, not computed by the code under test.
# transport per host and TVD: ("vlan", VID) or ("vxlan", VNI)
TRANSPORT = {
    "h1": {"alpha": ("vxlan", 10100), "beta": ("vlan", 200), "gamma": ("vlan", 300),
           "delta": ("vlan", 400)},
    "h2": {"beta": ("vlan", 200), "gamma": ("vlan", 300), "delta": ("vlan", 400)},
    "h3": {"beta": ("vlan", 200), "gamma": ("vlan", 300), "delta": ("vlan", 400)},
    "h4": {"alpha": ("vxlan", 10100)},
}
PORTS = {21, 22, 23}                        # the controlled rule's edges +-1
ANSWERS = {("gamma", "delta"): {"icmp", "tcp:22"}}   # every other pair of TVDs: nothing


@pytest.fixture(scope="module")
def vlan_lab(tmp_path_factory):
    need_root_and_tools()
    if not probe("vlan"):
        pytest.skip(NO_8021Q)
    with running_lab(VLAN_SPEC, VLAN_POLICY, "v", str(tmp_path_factory.mktemp("lab"))) as lab:
        yield lab


def _uplinks(status: dict, host: str) -> dict[str, tuple[str, int]]:
    out = {}
    for vs in status["hosts"][host]["vswitches"]:
        tvd = vs["name"].removeprefix("tvd-")
        for p in vs["ports"]:
            if p["kind"] == "vlan":
                out[tvd] = ("vlan", p["vid"])
            elif p["kind"] == "vxlan":
                out[tvd] = ("vxlan", p["vni"])
    return out


def _offloads(ns: str, dev: str) -> dict[str, str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", dev], capture_output=True,
                         text=True, check=True).stdout
    return {k.strip(): v.split()[0] for k, v in (l.split(":", 1) for l in out.splitlines()[1:]
                                                  if ":" in l) if v.split()}


def test_vlan_lab_transport_per_tvd_and_nic_offloads(vlan_lab):
    st = vlan_lab.status()
    for host, want in TRANSPORT.items():
        assert _uplinks(st, host) == want, host
        k = _offloads(st["hosts"][host]["namespace"], "eth0")
        # a NIC that carries TVD VLANs must not strip or insert tags itself (paper 6.1);
        # h4 carries none, so its NIC is left as it was (veth: on)
        vlan_nic = any(kind == "vlan" for kind, _ in want.values())
        for feat in ("rx-vlan-offload", "tx-vlan-offload"):
            assert k[feat] == ("off" if vlan_nic else "on"), (host, feat, k[feat])
    for vm in st["vms"].values():                # a VLAN uplink costs no MTU; VXLAN does
        for nic in vm["nics"]:
            assert nic["present"] and nic["mtu"] == (1450 if nic["tvd"] == "alpha" else 1500)


def test_vlan_lab_exact_reachability_matrix(vlan_lab):
    assert_exact_matrix(vlan_lab, 8 * 7, lambda pair: {"icmp", "tcp", "arp"} | (
        {f"tcp:{p}" for p in PORTS} if pair in ANSWERS else set()), ANSWERS)


@pytest.mark.parametrize("src_vm", ["b1", "a1", "g3"])
def test_vlan_lab_floods_reach_no_other_tvd(vlan_lab, src_vm):
    """Broadcast, unknown unicast, ARP, frames tagged with every other TVD's VID: from a VLAN
    segment (b1), the VXLAN segment sharing h1's NIC (a1) and a routed VLAN segment (g3)."""
    sent, results = flood_and_sniff(vlan_lab.topology(), load_policy(VLAN_POLICY), src_vm)
    leaked = {r.nic.key: r.marked for r in results if not r.same_tvd and r.total}
    assert not leaked, leaked
    same = [r for r in results if r.same_tvd]
    assert same and all(r.end_seen for r in same)        # the positive control arrived
    assert sent["sent"].get("vlan-tagged", 0) > 0
    print(f"flood from {src_vm}: {sum(sent['sent'].values())} marked frames to "
          f"{sum(not r.same_tvd for r in results)} foreign NICs, arrived 0")


def test_without_8021q_the_vlan_lab_fails_closed_with_the_reason(tmp_path):
    """Tier 1's side of the same lab: a kernel without 8021q gets no half-built VLAN segment,
    the VMs of VLAN TVDs are attached to nothing, `lab up` says what is missing, and the TVD
    that does not need VLANs keeps working on the same hosts."""
    need_root_and_tools()
    if probe("vlan"):
        pytest.skip("this kernel has 8021q: the lab runs instead (test_vlan_lab_* above)")
    name = unique_name("vn")
    spec = write_spec(str(tmp_path), name, spec_file=VLAN_SPEC, policy_file=VLAN_POLICY)
    try:
        st = up_fails_closed(spec, "needs the 8021q module")
        for host in ("h1", "h2", "h3"):
            assert not any(p["kind"] == "vlan" for vs in st["hosts"][host]["vswitches"]
                           for p in vs["ports"]), host
            for v in st["hosts"][host]["vifs"]:
                if TRANSPORT[host][v["tvd"]][0] == "vlan":
                    assert v.get("bridge") is None, v      # attached to nothing
                else:
                    assert v.get("bridge") == "tvd-alpha", v
        # alpha does not need VLANs (VXLAN to h4): h1's failed VLAN segments do not take it down
        assert _uplinks(st, "h1") == {"alpha": ("vxlan", 10100)}
        assert _uplinks(st, "h4") == TRANSPORT["h4"]
        ping = lab_cli("exec", str(spec), "a1", "--", "ping", "-c", "1", "-w", "5", "192.168.61.14")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        assert lab_cli("down", "--name", name).returncode == 0
