"""Lab spec and topology for TVDs with subnets (xl-configs/lab-flows.yaml). No kernel."""
from __future__ import annotations

import os

import pytest

from lab_helpers import PAPER_SPEC, REPO
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
    ("10.120.0.11/24", "outside the subnets of TVD 'web' (10.110.0.0/24)"),
    ("10.130.0.254/24", "is the gateway of TVD 'db'"),
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
