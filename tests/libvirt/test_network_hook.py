"""hotplug/libvirt-network-hook run as libvirtd runs it (`network NETNAME OP begin -`, hook data
on stdin) against lv_fakeproxy.FakeProxy. The same hook under a real libvirtd, with the real
tvd-proxy, is in test_libvirtd_ports.py."""
from __future__ import annotations

import pytest

from tests.libvirt.lv_helpers import NETWORK_HOOK, domain_xml, hook_data, nic

OWNER = "11111111-2222-4333-8444-555555555555"
PORT = "2bb7f7c1-08ed-4cd7-a771-62b912fa4251"


@pytest.fixture
def net_hook(run_hook):
    def run(op: str, data: str | bytes, sock: str, network: str = "tvd-alpha"):
        return run_hook([network, op, "begin", "-"], data, sock, hook=NETWORK_HOOK)
    return run


def test_port_on_a_tvd_network_is_admitted_by_the_proxy(net_hook, fake_proxy):
    r = net_hook("port-created", hook_data(), fake_proxy.path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert fake_proxy.requests == [{"v": 1, "op": "port-online", "port": PORT, "uuid": OWNER,
                                    "name": "vm1", "tvd": "alpha", "mac": "52:54:00:00:00:01",
                                    "network": "tvd-alpha", "bridge": "tvd-alpha"}]
    r = net_hook("port-deleted", hook_data(), fake_proxy.path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert fake_proxy.requests[-1] == {"v": 1, "op": "port-offline", "port": PORT}
    assert fake_proxy.ports == {}


def test_refused_port_fails_with_the_proxys_reason(net_hook, fake_proxy):
    """gamma asks for tpm-measured-boot; vm1 is not registered, so it has no properties."""
    r = net_hook("port-created", hook_data("tvd-gamma", "gamma"), fake_proxy.path, "tvd-gamma")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1
    assert err.startswith("xen-tvd: refusing the NIC 52:54:00:00:00:01 of domain vm1 on network "
                          "tvd-gamma: admission denied")
    assert "tpm-measured-boot" in err and fake_proxy.ports == {}


def test_unreachable_proxy_fails_closed(net_hook, tmp_path):
    r = net_hook("port-created", hook_data(), str(tmp_path / "gone.sock"))
    assert r.returncode == 1 and "tvd-proxy is not running" in r.stderr.decode()
    # any network: whether its owner is in a TVD only the proxy knows
    r = net_hook("port-created", hook_data("default", None, "virbr0"), str(tmp_path / "gone.sock"),
                 "default")
    assert r.returncode == 1 and "tvd-proxy is not running" in r.stderr.decode()


def test_port_outside_every_tvd_is_the_proxys_call(net_hook, fake_proxy, run_hook):
    data = hook_data("default", None, "virbr0")
    r = net_hook("port-created", data, fake_proxy.path, "default")
    assert r.returncode == 0, r.stderr
    assert fake_proxy.requests[-1]["tvd"] is None and fake_proxy.requests[-1]["bridge"] == "virbr0"
    # once the VM is in a TVD, a NIC on a network in none is a way out of it
    xml = domain_xml(nic("network", "tvd-alpha", "52:54:00:00:00:09"), uuid=OWNER)
    assert run_hook(["vm1", "prepare", "begin", "-"], xml, fake_proxy.path).returncode == 0
    r = net_hook("port-created", data, fake_proxy.path, "default")
    assert r.returncode == 1 and "the VM is in a TVD and this network in none" in r.stderr.decode()


def test_tvd_from_metadata_or_name(net_hook, fake_proxy):
    r = net_hook("port-created", hook_data("lab-net", "beta", "br-lab"), fake_proxy.path, "lab-net")
    assert r.returncode == 0 and fake_proxy.requests[-1]["tvd"] == "beta"
    r = net_hook("port-created", hook_data("tvd-beta", None), fake_proxy.path, "tvd-beta")
    assert r.returncode == 0 and fake_proxy.requests[-1]["tvd"] == "beta"


@pytest.mark.parametrize("data,reason", [
    (hook_data("tvd-alpha", "beta"), "named for TVD 'alpha' but its xen-tvd metadata says 'beta'"),
    (hook_data("tvd-alpha", "Bad!"), "is not a TVD name"),
    (hook_data("tvd-0a1b2c3d4e5", None), "hashed vSwitch of a long TVD name"),
    (hook_data(owner="not-a-uuid"), "no valid port or owner UUID"),
    (hook_data(mac="52:54:00:00:00"), "malformed MAC"),
    (hook_data().replace("<networkport>", "<port>").replace("</networkport>", "</port>"),
     "has no <hookData><network/><networkport/>"),
    ("<hookData><network>", "not well-formed"),
], ids=["contradiction", "bad-name", "hashed", "owner", "mac", "no-port", "garbage"])
def test_unreadable_port_is_refused_without_asking(net_hook, fake_proxy, data, reason):
    r = net_hook("port-created", data, fake_proxy.path)
    assert r.returncode == 1 and reason in r.stderr.decode(), r.stderr
    assert fake_proxy.requests == []


def test_port_deleted_never_fails(net_hook, tmp_path):
    gone = str(tmp_path / "gone.sock")
    r = net_hook("port-deleted", hook_data(), gone)
    assert r.returncode == 0 and "tvd-proxy is not running" in r.stderr.decode()
    assert net_hook("port-deleted", b"garbage", gone).returncode == 0


@pytest.mark.parametrize("op", ["start", "started", "stopped", "updated", "plugged"])
def test_other_operations_pass_silently(net_hook, fake_proxy, op):
    r = net_hook(op, b"<hookData><network/></hookData>", fake_proxy.path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert fake_proxy.requests == []


def test_bad_arguments_are_a_usage_error(run_hook):
    r = run_hook(["tvd-alpha"], hook=NETWORK_HOOK)
    assert r.returncode == 2 and "usage" in r.stderr.decode()
