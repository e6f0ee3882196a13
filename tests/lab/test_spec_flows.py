"""Lab spec and topology for TVDs with subnets (xl-configs/lab-flows.yaml). No kernel."""
from __future__ import annotations

import os

import pytest

from tests.lab.lab_helpers import PAPER_SPEC, REPO
from xen_tvd.lab.ports import controlled_tcp_ports
from xen_tvd.lab.spec import SpecInvalid, load_lab
from xen_tvd.lab.topology import build

FLOWS_POLICY = os.path.join(REPO, "xl-configs", "lab-flows-policy.yaml")
FLOWS_SPEC = os.path.join(REPO, "xl-configs", "lab-flows.yaml")


def test_flows_spec_routers_only_where_a_vm_has_a_card():
    spec, policy = load_lab(FLOWS_SPEC)
    topo = build(spec, policy)
    assert {h: topo.hosts[h].router_ns for h in topo.hosts} == {
        "h1": "flows-h-h1-rtr", "h2": "flows-h-h2-rtr", "h3": "flows-h-h3-rtr"}
    assert "flows-h-h1-rtr" in topo.namespaces()
    assert controlled_tcp_ports(policy) == [21, 22, 23, 5431, 5432, 5433, 8079, 8080, 8081,
                                            9089, 9090, 9091]


def test_paper_spec_has_no_router():
    spec, policy = load_lab(PAPER_SPEC)
    topo = build(spec, policy)
    assert all(h.router_ns is None for h in topo.hosts.values())
    assert not [n for n in topo.namespaces() if n.endswith("-rtr")]


@pytest.mark.parametrize("address, fragment", [
    ("10.120.0.11/24", "outside the subnets of TVD 'web' (10.110.0.0/24, fd00:110::/64)"),
    ("10.130.0.254/24", "is the gateway of TVD 'db'"),
    # db's IPv4 gateway is .254, its IPv6 one the default fd00:130::1 (dual-stack lab)
    ("10.130.0.1/24", "would give this NIC IPv6 address fd00:130::1, the gateway of dual-stack"),
])
def test_nic_address_must_be_a_host_in_its_tvds_subnets(tmp_path, address, fragment):
    tvd = "db" if "130" in address else "web"
    p = tmp_path / "spec.yaml"
    p.write_text(f"policy: {FLOWS_POLICY}\nvms:\n  v1: {{host: h1, nics: [{{tvd: {tvd}, "
                 f"address: {address}}}]}}\n")
    with pytest.raises(SpecInvalid) as e:
        load_lab(str(p))
    [line] = str(e.value).splitlines()
    assert line.startswith(f"{p}:3:") and fragment in line, line


GW_POLICY = os.path.join(REPO, "xl-configs", "lab-gateway-policy.yaml")


def test_gateway_spec_wires_the_external_lan_to_its_host_only():
    spec, policy = load_lab(os.path.join(REPO, "xl-configs", "lab-gateway.yaml"))
    topo = build(spec, policy)
    assert topo.bridges["external:corp"] == "x-corp"
    assert [(w.ifname, w.network, w.address) for w in topo.hosts["h1"].wires] == [
        ("eth0", "lan", "10.77.1.11/24"), ("eth1", "external:corp", "")]
    assert [w.network for w in topo.hosts["h2"].wires] == ["lan"]
    assert topo.vms["corp1"].nics[0].vif == "xm-corp1"    # a port of the corp switch
    assert topo.hosts["h2"].router_ns is None


@pytest.mark.parametrize("vm, fragment", [
    ("{host: h2, nics: [{tvd: corp, address: 198.51.100.10/24}]}",
     "host 'h2' has no NIC on external 'corp'"),
    ("{host: h1, nics: [{tvd: corp, address: 198.51.100.2/24}]}",
     "is the address of host 'h1' on external 'corp'"),
    ("{host: h1, nics: [{tvd: corp, address: 192.0.2.5/24}]}",
     "outside the subnets of external 'corp' (198.51.100.0/24)"),
    ("{host: h1, nics: [{tvd: corp, address: 198.51.100.10/24}, "
     "{tvd: app, address: 10.120.0.9/24}]}", "has exactly one NIC"),
])
def test_machines_on_an_external_are_checked(tmp_path, vm, fragment):
    p = tmp_path / "spec.yaml"
    p.write_text(f"policy: {GW_POLICY}\nvms:\n  v1: {vm}\n")
    with pytest.raises(SpecInvalid) as e:
        load_lab(str(p))
    [line] = str(e.value).splitlines()
    assert line.startswith(f"{p}:3:") and fragment in line, line
