"""`tvdctl libvirt networks POLICY`: the generated <network> documents (no libvirt needed)."""
from __future__ import annotations

from lxml import etree

from xen_tvd.cli.tvdctl import main as tvdctl
from xen_tvd.desired.names import bridge_name
from xen_tvd.libvirt import NS
from xen_tvd.libvirt.networks import network_element, network_uuid, owned_parts, to_string
from xen_tvd.policy import load_policy
from xen_tvd.policy.model import Tvd

from tests.libvirt.lv_helpers import HOSTS_POLICY, POLICY


def test_one_network_per_tvd_on_stdout(capsys):
    assert tvdctl(["libvirt", "networks", POLICY]) == 0
    out = capsys.readouterr().out
    docs = [etree.fromstring(d.encode()) for d in out.split("</network>\n")[:-1]
            for d in [d + "</network>"]]
    policy = load_policy(POLICY)
    assert [d.findtext("name") for d in docs] == ["tvd-alpha", "tvd-beta", "tvd-gamma"]
    for d in docs:
        tvd = policy.tvds[d.findtext("name")[4:]]
        assert d.find("forward").attrib == {"mode": "bridge"}
        assert d.find("bridge").attrib == {"name": bridge_name(tvd.name)}
        assert d.findtext("uuid") == network_uuid(tvd.name)
        (meta,) = d.find("metadata")
        assert meta.tag == f"{{{NS}}}tvd" and meta.prefix == "tvd"
        assert dict(meta.attrib) == {"name": tvd.name, "vlan": str(tvd.vlan), "vni": str(tvd.vni)}
        assert d.find("port") is None and d.find("ip") is None   # no isolation inside a TVD, no DHCP


def test_metadata_carries_the_plans_mtu(capsys):
    """alpha, beta, gamma may be carried by both Dom0s: VXLAN over a 1500-byte LAN leaves VMs
    1450; only dom0-b may carry vault, so its segment has no uplink and keeps 1500. (libvirt
    refuses <mtu> on a bridge-mode network: test_libvirtd.py.)"""
    assert tvdctl(["libvirt", "networks", HOSTS_POLICY]) == 0
    docs = [etree.fromstring((d + "</network>").encode())
            for d in capsys.readouterr().out.split("</network>\n")[:-1]]
    mtus = {d.findtext("name"): d.find(f"metadata/{{{NS}}}tvd").get("mtu") for d in docs}
    assert mtus == {"tvd-alpha": "1450", "tvd-beta": "1450", "tvd-gamma": "1450", "tvd-vault": "1500"}
    assert all(d.find("mtu") is None for d in docs)


def test_tvd_the_planner_cannot_place_is_refused(tmp_path, capsys):
    """alpha needs integrity; a LAN not trusted for it cannot carry alpha between the hosts."""
    untrusted = tmp_path / "p.yaml"
    untrusted.write_text(open(HOSTS_POLICY).read().replace("trusted-for: [integrity]", "trusted-for: []"))
    assert tvdctl(["libvirt", "networks", str(untrusted)]) == 1
    err = capsys.readouterr().err
    assert "tvd-alpha: the planner cannot place TVD 'alpha'" in err and "requires integrity" in err


def test_output_directory(tmp_path, capsys):
    out = tmp_path / "nets"
    assert tvdctl(["libvirt", "networks", POLICY, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tvd-alpha.xml", "tvd-beta.xml", "tvd-gamma.xml"]
    assert capsys.readouterr().out.count("wrote ") == 3
    assert etree.parse(str(out / "tvd-beta.xml")).find("bridge").get("name") == "tvd-beta"


def test_long_tvd_name_uses_the_planners_hashed_bridge():
    tvd = Tvd(name="finance-department-backoffice", vlan=7, vni=7007)
    el = network_element(tvd)
    assert el.findtext("name") == "tvd-finance-department-backoffice"
    br = el.find("bridge").get("name")
    assert br == bridge_name(tvd.name) and len(br) <= 15 and br != "tvd-finance-department-backoffice"


def test_uuid_is_stable_and_per_tvd():
    assert network_uuid("alpha") == network_uuid("alpha") != network_uuid("beta")


def test_owned_parts_ignore_uuid_whitespace_and_foreign_metadata():
    tvd = Tvd(name="alpha", vlan=100, vni=10100)
    ours = to_string(network_element(tvd))
    libvirt_style = ("<network>\n  <name>tvd-alpha</name>\n  <uuid>00000000-0000-4000-8000-000000000000</uuid>\n"
                     "  <metadata>\n    <other:x xmlns:other='https://example.org/o'/>\n"
                     f"    <t:tvd xmlns:t='{NS}' vni='10100' name='alpha' vlan='100'/>\n  </metadata>\n"
                     "  <forward mode='bridge'/>\n  <bridge name='tvd-alpha'/>\n</network>\n")
    assert owned_parts(libvirt_style) == owned_parts(ours)
    assert owned_parts(libvirt_style.replace("vlan='100'", "vlan='101'")) != owned_parts(ours)
    assert owned_parts(libvirt_style.replace("</network>", "<ip address='10.0.0.1'/></network>")) != owned_parts(ours)


def test_broken_policy_and_bad_flags(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntvds: {alpha: {vlan: 5000}}\n")
    assert tvdctl(["libvirt", "networks", str(bad)]) == 1
    assert tvdctl(["libvirt", "networks", POLICY, "--start"]) == 2
    assert "need --define" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("")
    assert tvdctl(["libvirt", "networks", POLICY, "-o", str(f / "sub")]) == 2
