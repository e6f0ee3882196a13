"""The WireGuard lab (xl-configs/lab-wireguard.yaml) end to end: an encrypted TVD (alpha, three
hosts) next to a plain one (beta) over a LAN trusted for nothing, through `tvdctl lab up` in
direct mode (the lab makes each host's key pair with tvd-proxy's code and plans with the public
keys) and `tvdctl lab verify`'s exact matrix. (Sniffer and spoofing rogue:
tests/dataplane/test_wireguard_e2e.py.)

Needs the wireguard module. This host kernel lacks it, so tier 1 checks that the lab fails
closed with the reason instead; tier 2 runs it on Debian's stock kernel, where a skip of any
`wireguard` test counts as a failure (tvd_testing.vmtier.DEFAULT_SELECTION).
"""
from __future__ import annotations

import os

import pytest
from tests.lab.lab_helpers import (REPO, assert_exact_matrix, lab_cli, need_root_and_tools,
                                   running_lab, unique_name, up_fails_closed, write_spec)

from xen_tvd.proxy.capabilities import probe

WG_SPEC = os.path.join(REPO, "xl-configs", "lab-wireguard.yaml")
WG_POLICY = os.path.join(REPO, "xl-configs", "lab-wireguard-policy.yaml")
NO_MODULE = ("needs the wireguard module (this kernel cannot create WireGuard devices); runs in "
             "the stock-kernel VM tier")
# written out by hand from lab-wireguard-policy.yaml: uplink device per host and TVD
UPLINKS = {"h1": {"alpha": "tve-alpha", "beta": "tvx-beta"},
           "h2": {"alpha": "tve-alpha", "beta": "tvx-beta"},
           "h3": {"alpha": "tve-alpha"}}          # beta has no VM on h3
MTU = {"alpha": 1370, "beta": 1450}               # 1500 less 130 (WireGuard + VXLAN/IPv6), 50


def _uplinks(status: dict, host: str) -> dict[str, str | None]:
    out = {}
    for vs in status["hosts"][host]["vswitches"]:
        tvd = vs["name"].removeprefix("tvd-")
        out[tvd] = next((p["name"] for p in vs["ports"] if p["kind"] == "vxlan"), None)
    return out


@pytest.fixture(scope="module")
def wg_lab(tmp_path_factory):
    need_root_and_tools()
    if not probe("wireguard"):
        pytest.skip(NO_MODULE)
    with running_lab(WG_SPEC, WG_POLICY, "w", str(tmp_path_factory.mktemp("lab"))) as lab:
        yield lab


def test_wireguard_lab_uplinks_mtus_and_exact_matrix(wg_lab):
    st = wg_lab.status()
    for host, want in UPLINKS.items():
        assert {t: u for t, u in _uplinks(st, host).items() if t in want} == want, host
    for vm in st["vms"].values():
        for nic in vm["nics"]:
            assert nic["present"] and nic["mtu"] == MTU[nic["tvd"]], (vm, nic)
    assert_exact_matrix(wg_lab, 5 * 4, lambda pair: {"icmp", "tcp", "arp"}, {})
    # the largest DF packet of alpha's MTU crosses the tunnel between two hosts
    big = wg_lab.exec("a1", "ping", "-c", "1", "-w", "5", "-M", "do", "-s", str(1370 - 28),
                      "192.168.62.13")
    assert big.returncode == 0, big.stdout + big.stderr


def test_without_the_wireguard_module_the_lab_fails_closed_with_the_reason(tmp_path):
    """Tier 1's side of the same lab: alpha's VMs are attached to nothing, `lab up` says
    "needs the wireguard module", and beta keeps working on the same hosts."""
    need_root_and_tools()
    if probe("wireguard"):
        pytest.skip("this kernel has the wireguard module: the lab runs instead (above)")
    name = unique_name("wn")
    spec = write_spec(str(tmp_path), name, spec_file=WG_SPEC, policy_file=WG_POLICY)
    try:
        st = up_fails_closed(spec, "needs the wireguard module")
        for host in ("h1", "h2", "h3"):
            assert "alpha" not in _uplinks(st, host), host
            for v in st["hosts"][host]["vifs"]:
                assert v.get("bridge") == ("tvd-beta" if v["tvd"] == "beta" else None), v
        ping = lab_cli("exec", str(spec), "b1", "--", "ping", "-c", "1", "-w", "5", "192.168.62.22")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        no = lab_cli("exec", str(spec), "a1", "--", "ping", "-c", "1", "-w", "2", "192.168.62.12")
        assert no.returncode != 0
    finally:
        assert lab_cli("down", "--name", name).returncode == 0
