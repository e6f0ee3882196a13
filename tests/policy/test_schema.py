"""Schema-level rules that shape the model: ids, defaults, multicast, the capability model."""
from __future__ import annotations

import pytest

from xen_tvd.policy.schema import default_multicast_group

from tests.policy.policy_helpers import check_text, errors, warnings, where


def _tvds(tmp_path, body):
    return check_text(tmp_path, "version: 1\ntvds:\n" + body)


def test_vni_defaults_to_10000_plus_vlan(tmp_path):
    pol, diags = _tvds(tmp_path, "  a: {vlan: 100}\n  b: {vlan: 4094}\n  c: {vlan: 7, vni: 42}\n")
    assert diags == []
    assert (pol.tvds["a"].vni, pol.tvds["b"].vni, pol.tvds["c"].vni) == (10100, 14094, 42)


def test_explicit_vni_colliding_with_a_default_is_a_duplicate(tmp_path):
    _, diags = _tvds(tmp_path, "  a: {vlan: 100}\n  b: {vlan: 200, vni: 10100}\n")
    [e] = errors(diags)
    assert e.code == "duplicate-vni" and where(e) == (4, 3)
    assert e.message == "TVD 'b' reuses VNI 10100 of TVD 'a'"


def test_duplicate_vlan(tmp_path):
    _, diags = _tvds(tmp_path, "  a: {vlan: 100}\n  b: {vlan: 100, vni: 5}\n")
    [e] = errors(diags)
    assert e.code == "duplicate-vlan" and where(e) == (4, 3)
    assert "TVD 'b' reuses VLAN 100 of TVD 'a'" in e.message


def test_dummy_vlan_colliding_with_tvd(tmp_path):
    _, diags = check_text(tmp_path, "version: 1\ntvds: {a: {vlan: 100}}\ndummy: {vlans: [1, 100]}\n")
    [e] = errors(diags)
    assert where(e) == (3, 20) and e.message == "dummy VLAN 100 belongs to TVD 'a'"


@pytest.mark.parametrize("vni, group", [(1, "239.0.0.1"), (10100, "239.0.39.116"),
                                        (16777215, "239.255.255.255"), (65536, "239.1.0.0")])
def test_default_multicast_group(vni, group):
    assert default_multicast_group(vni) == group


def test_multicast_default_follows_vni(tmp_path):
    pol, _ = _tvds(tmp_path, "  a: {vlan: 100}\n  b: {vlan: 5, vni: 70000}\n"
                             "  c: {vlan: 6, multicast-group: 239.9.9.9}\n")
    assert pol.tvds["a"].multicast_group == "239.0.39.116"
    assert pol.tvds["b"].multicast_group == "239.1.17.112"
    assert pol.tvds["c"].multicast_group == "239.9.9.9"


@pytest.mark.parametrize("value, fragment", [
    ("224.0.0.5", "must be a routable multicast address"),       # link-local control block
    ("10.0.0.1", "must be a routable multicast address"),
    ("239.1.2", "is not an IPv4 address"),
    ("ff02::1", "is not an IPv4 address"),
    ("5", "must be a string, not an integer"),
])
def test_multicast_group_validation(tmp_path, value, fragment):
    _, diags = _tvds(tmp_path, f"  a: {{vlan: 100, multicast-group: {value}}}\n")
    [e] = errors(diags)
    assert fragment in e.message and where(e) == (3, 35)


def test_shared_multicast_group_is_a_warning(tmp_path):
    _, diags = _tvds(tmp_path, "  a: {vlan: 1, multicast-group: 239.1.1.1}\n"
                               "  b: {vlan: 2, multicast-group: 239.1.1.1}\n")
    assert errors(diags) == []
    [w] = warnings(diags)
    assert w.code == "shared-group" and where(w) == (4, 3)


CAP = """
version: 1
tvds: {a: {vlan: 100}}
networks:
  lan: {subnet: 10.0.1.0/24}
hosts:
  h1:
    address: 10.0.1.1
    capabilities: [vlan, ip]
    nics: [{network: %s, nic: eth0, address: %s}]
  h2:
    address: %s
    capabilities: [ip]
    nics: [{network: lan, nic: eth0, address: 10.0.1.2}]
"""


def _cap(tmp_path, net="lan", nic_addr="10.0.1.1", h2="10.0.1.2"):
    return check_text(tmp_path, CAP % (net, nic_addr, h2))


def test_capability_model_clean(tmp_path):
    pol, diags = _cap(tmp_path)
    assert diags == []
    assert pol.hosts["h1"].nic_on("lan").address == "10.0.1.1"


def test_nic_address_outside_subnet(tmp_path):
    _, diags = _cap(tmp_path, nic_addr="10.0.2.5")
    [e] = errors(diags)
    assert where(e) == (9, 12)
    assert e.message == "host 'h1' address 10.0.2.5 is outside network 'lan' (10.0.1.0/24)"


def test_unknown_network(tmp_path):
    _, diags = _cap(tmp_path, net="wan")
    [e] = errors(diags)
    assert e.code == "unknown-name" and where(e) == (9, 22)
    assert e.message == "unknown network 'wan' in host 'h1'"


def test_duplicate_nic_address(tmp_path):
    _, diags = _cap(tmp_path, nic_addr="10.0.1.2", h2="10.0.1.3")
    [e] = errors(diags)
    assert where(e) == (13, 12)
    assert e.message == "address 10.0.1.2 of host 'h2' is already host 'h1's"


def test_duplicate_primary_address(tmp_path):
    _, diags = _cap(tmp_path, h2="10.0.1.1")
    [e] = errors(diags)
    assert where(e) == (11, 14)
    assert e.message == "address 10.0.1.1 of host 'h2' is already host 'h1's"


def test_bad_subnet_and_address(tmp_path):
    _, diags = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 100}}
        networks: {lan: {subnet: 10.0.1.0/33}}
        hosts: {h: {address: 10.0.1.300, capabilities: [ip]}}
    """)
    got = {(where(d), d.message) for d in errors(diags)}
    assert got == {((3, 26), "subnet '10.0.1.0/33' is not an IPv4 network like 10.0.1.0/24"),
                   ((4, 22), "address of host 'h' '10.0.1.300' is not an IPv4 address")}


def test_confidentiality_over_untrusted_network_warns(tmp_path):
    text = (CAP % ("lan", "10.0.1.1", "10.0.1.2")).replace(
        "tvds: {a: {vlan: 100}}", "tvds: {a: {vlan: 100, protection: [confidentiality]}}")
    _, diags = check_text(tmp_path, text)
    assert errors(diags) == []
    # one warning per host that reaches others over the untrusted network
    assert [(w.code, where(w)) for w in warnings(diags)] == [("confidentiality", (2, 8))] * 2
    assert "host 'h1' reaches others over network 'lan'" in warnings(diags)[0].message


WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def test_wireguard_key_of_a_host_is_a_public_key_once_per_host(tmp_path):
    text = CAP % ("lan", "10.0.1.1", "10.0.1.2")
    pol, diags = check_text(tmp_path, text.replace(
        "    capabilities: [ip]\n", f"    capabilities: [ip]\n    wireguard-key: {WG_KEY}\n"))
    assert diags == [] and pol.hosts["h2"].wireguard_key == WG_KEY
    assert pol.hosts["h1"].wireguard_key is None
    # not a key (a typo; a private key has the same form and cannot be told apart here)
    _, diags = check_text(tmp_path, text.replace(
        "    capabilities: [ip]\n", "    capabilities: [ip]\n    wireguard-key: abc=\n"))
    [e] = errors(diags)
    assert where(e) == (13, 20) and "wireguard-key of host 'h2' is not a WireGuard public key" \
        in e.message
    # the same key twice is a copy-paste error: each host has its own pair
    both = text.replace("    capabilities: [vlan, ip]\n",
                        f"    capabilities: [vlan, ip]\n    wireguard-key: {WG_KEY}\n").replace(
        "    capabilities: [ip]\n", f"    capabilities: [ip]\n    wireguard-key: {WG_KEY}\n")
    _, diags = check_text(tmp_path, both)
    [e] = errors(diags)
    assert "wireguard-key of host 'h2' is host 'h1's too" in e.message


NEXT_KEY = "qpI2Hh6Zcs9Anfgj2VVC2dlMWuy2ukeE96ad9ZNTCQU="
SAME_TAG = "xTIBA2rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="   # WG_KEY's first four bytes


def test_wireguard_next_key_is_a_second_key_of_the_host_for_a_rotation(tmp_path):
    text = CAP % ("lan", "10.0.1.1", "10.0.1.2")

    def h2(lines):
        return check_text(tmp_path, text.replace(
            "    capabilities: [ip]\n", "    capabilities: [ip]\n" + lines))
    pol, diags = h2(f"    wireguard-key: {WG_KEY}\n    wireguard-next-key: {NEXT_KEY}\n")
    assert diags == [] and pol.hosts["h2"].wireguard_next_key == NEXT_KEY
    assert pol.hosts["h1"].wireguard_next_key is None
    cases = {
        f"    wireguard-next-key: {NEXT_KEY}\n": "needs its wireguard-key too",
        f"    wireguard-key: {WG_KEY}\n    wireguard-next-key: {WG_KEY}\n": "is its wireguard-key",
        f"    wireguard-key: {WG_KEY}\n    wireguard-next-key: {SAME_TAG}\n":
            "begins with the same four bytes",
        f"    wireguard-key: {WG_KEY}\n    wireguard-next-key: abc=\n":
            "wireguard-next-key of host 'h2' is not a WireGuard public key",
    }
    for lines, needle in cases.items():
        _, diags = h2(lines)
        [e] = errors(diags)
        assert needle in e.message, (lines, e.message)
    # another host's key as the next key: the copy-paste error, as for wireguard-key
    both = text.replace("    capabilities: [vlan, ip]\n",
                        f"    capabilities: [vlan, ip]\n    wireguard-key: {NEXT_KEY}\n").replace(
        "    capabilities: [ip]\n",
        f"    capabilities: [ip]\n    wireguard-key: {WG_KEY}\n    wireguard-next-key: {NEXT_KEY}\n")
    _, diags = check_text(tmp_path, both)
    [e] = errors(diags)
    assert "wireguard-next-key of host 'h2' is host 'h1's too" in e.message


def test_no_confidentiality_warning_for_hosts_that_can_ride_wireguard(tmp_path):
    text = (CAP % ("lan", "10.0.1.1", "10.0.1.2")).replace(
        "tvds: {a: {vlan: 100}}", "tvds: {a: {vlan: 100, protection: [confidentiality]}}")
    text = text.replace("    capabilities: [ip]\n",
                        f"    capabilities: [ip, wireguard]\n    wireguard-key: {WG_KEY}\n")
    _, diags = check_text(tmp_path, text)
    # h2 can (wireguard and a key); h1 cannot
    assert [w.message.split(" reaches")[0] for w in warnings(diags)] == [
        "TVD 'a' requires confidentiality but host 'h1'"]
    assert "wireguard capability and a wireguard-key" in warnings(diags)[0].message


def test_require_encryption_is_a_boolean_of_a_network(tmp_path):
    text = CAP % ("lan", "10.0.1.1", "10.0.1.2")
    pol, diags = check_text(tmp_path, text.replace("lan: {subnet: 10.0.1.0/24}",
                                                   "lan: {subnet: 10.0.1.0/24, require-encryption: true}"))
    assert diags == [] and pol.networks["lan"].require_encryption
    pol, _ = check_text(tmp_path, text)
    assert not pol.networks["lan"].require_encryption
    _, diags = check_text(tmp_path, text.replace("lan: {subnet: 10.0.1.0/24}",
                                                 "lan: {subnet: 10.0.1.0/24, require-encryption: 1}"))
    assert errors(diags)
