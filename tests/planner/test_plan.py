"""Planner decisions (pure): transport choice, multicast vs head-end replication, MTU,
protection refusals, VLAN offload NICs, single-host segments."""

import pytest

from xen_tvd.desired.model import VifPort, VlanUplink, VxlanUplink
from xen_tvd.planner import PlanError, plan
from xen_tvd.policy import load_policy

BASE = """
version: 1
tvds:
  alpha: {{vlan: 100, protection: [isolation{alpha_extra}]}}
  beta: {{vlan: 200}}
networks:
  lan: {{subnet: 10.0.1.0/24, multicast: true, vlan-capable: {vlan_capable}, mtu: {mtu}, max-mtu: {max_mtu}{trusted}}}
  far: {{subnet: 10.0.2.0/24, multicast: true, mtu: {mtu}, max-mtu: {max_mtu}{trusted}}}
hosts:
  h1: {{address: 10.0.1.1, capabilities: [{caps}], nics: [{{network: lan, nic: eth0, address: 10.0.1.1}}]}}
  h2: {{address: 10.0.1.2, capabilities: [{caps}], nics: [{{network: lan, nic: eth0, address: 10.0.1.2}}]}}
  h3: {{address: 10.0.2.3, capabilities: [ethernet, ip], nics: [{{network: far, nic: eth1, address: 10.0.2.3}}]}}
"""


def policy(tmp_path, alpha_extra="", vlan_capable="false", mtu=1500, max_mtu=1500, trusted="",
           caps="ethernet, ip"):
    f = tmp_path / "p.yaml"
    f.write_text(BASE.format(alpha_extra=alpha_extra, vlan_capable=vlan_capable, mtu=mtu,
                             max_mtu=max_mtu, trusted=trusted, caps=caps))
    return load_policy(str(f))


def ports(**placement):
    out = {}
    for host, tvds in placement.items():
        out[host] = [VifPort(f"vif{i + 1}.0", t) for i, t in enumerate(tvds)]
    return out


def test_lan_peers_use_the_tvd_multicast_group_and_wan_peer_gets_head_end_replication(tmp_path):
    p = policy(tmp_path)
    states = plan(p, ports(h1=["alpha"], h2=["alpha"], h3=["alpha"]))
    up1 = states["h1"].segment("alpha").uplink
    assert isinstance(up1, VxlanUplink)
    assert up1.vni == 10100 and up1.group == p.tvds["alpha"].multicast_group
    assert up1.local_ip == "10.0.1.1" and up1.underlay_dev == "eth0"
    assert up1.remotes == ("10.0.2.3",)          # across the WAN: unicast flood
    up3 = states["h3"].segment("alpha").uplink
    assert up3.group is None                      # nobody shares h3's network
    assert up3.remotes == ("10.0.1.1", "10.0.1.2")


def test_single_host_segment_has_no_uplink_and_other_hosts_carry_nothing(tmp_path):
    states = plan(policy(tmp_path), ports(h1=["alpha", "alpha", "beta"]))
    assert set(states) == {"h1"}
    assert all(s.uplink is None for s in states["h1"].segments)
    assert [s.tvd for s in states["h1"].segments] == ["alpha", "beta"]
    assert states["h1"].segment("alpha").mtu == 1500


def test_vxlan_mtu_is_underlay_minus_overhead(tmp_path):
    states = plan(policy(tmp_path), ports(h1=["beta"], h2=["beta"]))
    assert states["h1"].segment("beta").mtu == 1450
    assert states["h1"].underlay_mtu == {}


def test_underlay_is_raised_when_the_capability_model_allows_it(tmp_path):
    states = plan(policy(tmp_path, max_mtu=9000), ports(h1=["beta"], h3=["beta"]))
    assert states["h1"].segment("beta").mtu == 1500
    assert states["h1"].underlay_mtu == {"eth0": 1550}
    assert states["h3"].underlay_mtu == {"eth1": 1550}


def test_vlan_transport_when_all_hosts_tag_on_one_vlan_capable_network(tmp_path):
    p = policy(tmp_path, vlan_capable="true", caps="vlan, ethernet, ip")
    states = plan(p, ports(h1=["alpha"], h2=["alpha"]))
    up = states["h1"].segment("alpha").uplink
    assert up == VlanUplink(100, "eth0")
    assert states["h1"].vlan_offload_off == ("eth0",)
    assert states["h1"].segment("alpha").mtu == 1500


def test_one_host_off_the_vlan_network_forces_vxlan(tmp_path):
    p = policy(tmp_path, vlan_capable="true", caps="vlan, ethernet, ip")
    states = plan(p, ports(h1=["alpha"], h3=["alpha"]))
    assert isinstance(states["h1"].segment("alpha").uplink, VxlanUplink)
    assert states["h1"].vlan_offload_off == ()


def test_integrity_over_untrusted_network_is_refused_with_what_to_fix(tmp_path):
    p = policy(tmp_path, alpha_extra=", integrity")
    with pytest.raises(PlanError, match=r"TVD 'alpha' requires integrity.*trusted-for: \[integrity\]"):
        plan(p, ports(h1=["alpha"], h2=["alpha"]))
    # on one host nothing crosses a network: allowed
    assert plan(p, ports(h1=["alpha", "alpha"]))["h1"].segment("alpha").uplink is None


def test_trusted_networks_carry_protected_tvds(tmp_path):
    p = policy(tmp_path, alpha_extra=", integrity, confidentiality",
               trusted=", trusted-for: [integrity, confidentiality]")
    assert plan(p, ports(h1=["alpha"], h3=["alpha"]))["h3"].segment("alpha").uplink.remotes


def test_unknown_tvd_or_host_is_refused(tmp_path):
    p = policy(tmp_path)
    with pytest.raises(PlanError, match="unknown TVD 'zeta'"):
        plan(p, {"h1": [VifPort("vif1.0", "zeta")]})
    with pytest.raises(PlanError, match="host 'h9' is not in the policy"):
        plan(p, {"h9": [VifPort("vif1.0", "alpha")]})


def test_plan_is_deterministic(tmp_path):
    p = policy(tmp_path)
    a = plan(p, ports(h1=["alpha", "beta"], h2=["beta"], h3=["alpha"]))
    b = plan(p, ports(h3=["alpha"], h2=["beta"], h1=["alpha", "beta"]))
    assert a == b


def test_flood_limit_is_1000_a_second_unless_the_tvd_sets_its_own(tmp_path):
    """The default every TVD's vifs get (the storm test sets its own, lower one)."""
    text = BASE.format(alpha_extra="", vlan_capable="false", mtu=1500, max_mtu=1500, trusted="",
                       caps="ethernet, ip")
    f = tmp_path / "p.yaml"
    f.write_text(text.replace("beta: {vlan: 200}", "beta: {vlan: 200, flood-limit: 200}"))
    states = plan(load_policy(str(f)), ports(h1=["alpha", "beta"]))
    assert states["h1"].segment("alpha").flood_limit == 1000
    assert states["h1"].segment("beta").flood_limit == 200
