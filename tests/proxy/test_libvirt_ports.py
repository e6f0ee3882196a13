"""tvd-proxy's libvirt port operations (port-online, port-offline, check), the proxy side of
the libvirt network hook and of `reconnect`, against the real proxy in the lab's namespaces
(xl-configs/tvd-hosts-policy.yaml, Dom0 dom0-a). libvirt itself drives them in
tests/libvirt/test_libvirtd_ports.py."""
from __future__ import annotations

import uuid as uuidlib

import pytest

from xen_tvd.proxy import requests as rq

from tests.hotplug.tvd_harness import link_info

VM = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def port_online(p, tvd, port=None, uuid=VM, bridge=None, network=None, mac="52:54:00:00:00:01"):
    port = port or str(uuidlib.uuid4())
    net = network or (f"tvd-{tvd}" if tvd else "default")
    r = p.client.send(rq.PortOnline(port=port, uuid=uuid, tvd=tvd, name="web", mac=mac, network=net,
                                    bridge=bridge or (f"tvd-{tvd}" if tvd else "virbr0")))
    return port, r


def register(p, tvds, props=None, uuid=VM):
    r = p.client.send(rq.Register(uuid, "web", tuple(rq.Nic(t, i) for i, t in enumerate(tvds)),
                                  props if props is not None else {"tpm-measured-boot": "immutable-log"}))
    assert r["ok"], r


@pytest.fixture
def proxy(lab):
    return lab.proxy(args=["--segment-grace", "0"])


def test_port_online_builds_the_segment_with_the_plans_mtu_and_offline_releases_it(lab, proxy):
    ns = lab.host_ns["dom0-a"]
    assert link_info(ns, "tvd-alpha") is None
    register(proxy, ["alpha"])
    port, r = port_online(proxy, "alpha")
    # dom0-b may carry alpha too: a VXLAN segment over the 1500-byte LAN, so VMs get 1450, and
    # libvirt gives its tap the bridge's MTU
    assert r == {"v": 1, "ok": True, "tvd": "alpha", "bridge": "tvd-alpha", "mtu": 1450}
    assert link_info(ns, "tvd-alpha")["mtu"] == 1450
    st = proxy.client.status()
    assert st["ports"] == [{"port": port, "uuid": VM, "tvd": "alpha", "name": "web",
                            "mac": "52:54:00:00:00:01", "network": "tvd-alpha"}]
    assert [s["tvd"] for s in st["segments"]] == ["alpha"]
    # again (libvirtd restarting re-announces its ports): harmless
    assert port_online(proxy, "alpha", port)[1]["ok"]
    assert proxy.client.send(rq.PortOffline(port)) == {"v": 1, "ok": True}
    assert proxy.client.send(rq.PortOffline(port))["ok"]          # idempotent
    st = proxy.client.status()
    assert st["ports"] == [] and st["segments"] == []
    assert link_info(ns, "tvd-alpha") is None


def test_port_records_survive_a_proxy_restart(lab, proxy):
    register(proxy, ["beta"], {})
    port, r = port_online(proxy, "beta")
    assert r["ok"], r
    proxy.stop()
    proxy.start()
    assert [p["port"] for p in proxy.client.status()["ports"]] == [port]
    assert link_info(lab.host_ns["dom0-a"], "tvd-beta") is not None


@pytest.mark.parametrize("tvd,props,bridge,reason", [
    ("delta", {}, None, "unknown TVD 'delta'"),
    ("vault", {"pci-audited": None}, None, "host 'dom0-a' may not carry TVD 'vault'"),
    ("gamma", {}, None, "does not satisfy M(t) of TVD gamma"),
    ("beta", {}, "tvd-alpha", "attaches to bridge tvd-alpha, but TVD 'beta''s vSwitch is tvd-beta"),
], ids=["unknown", "host", "vm", "bridge"])
def test_refused_ports_are_not_recorded(lab, proxy, tvd, props, bridge, reason):
    register(proxy, [], props)
    _, r = port_online(proxy, tvd, bridge=bridge)
    assert not r["ok"] and reason in r["error"], r
    assert proxy.client.status()["ports"] == []
    assert link_info(lab.host_ns["dom0-a"], "tvd-beta") is None


def test_a_port_counts_among_the_vms_tvds(lab, proxy):
    """alpha + gamma may share a VM (shared-membership); alpha + beta may not."""
    register(proxy, ["alpha"])
    assert port_online(proxy, "gamma")[1]["ok"]
    _, r = port_online(proxy, "beta")
    assert not r["ok"] and "TVDs alpha, beta, gamma together" in r["error"], r
    # and a registration that would put the VM with its port in beta is refused too
    r = proxy.client.send(rq.Register(VM, "web", (rq.Nic("beta", 0),), {}))
    assert not r["ok"] and "together" in r["error"], r


def test_port_outside_every_tvd(lab, proxy):
    other = str(uuidlib.uuid4())
    assert port_online(proxy, None, uuid=other)[1] == {"v": 1, "ok": True, "tvd": None}
    assert proxy.client.status()["ports"] == []
    # a VM in a TVD gets no NIC outside it
    register(proxy, ["alpha"])
    _, r = port_online(proxy, None)
    assert not r["ok"] and "is in TVD alpha and this network is in none" in r["error"], r
    # nor does anyone through a foreign network that points at a TVD's vSwitch
    _, r = port_online(proxy, None, uuid=other, bridge="tvd-beta", network="sneaky")
    assert not r["ok"] and "TVD 'beta''s vSwitch, but is not a TVD network" in r["error"], r


def test_check_rechecks_without_changing_anything(lab, proxy):
    register(proxy, ["alpha", "gamma"])
    port, _ = port_online(proxy, "gamma")
    before = proxy.client.status()
    assert proxy.client.send(rq.Check(VM, ("alpha", "gamma"))) == {"v": 1, "ok": True}
    after = proxy.client.status()
    assert (after["registrations"], after["ports"]) == (before["registrations"], before["ports"])
    # the listed TVDs are checked together: beta is in no shared-membership set with them
    r = proxy.client.send(rq.Check(VM, ("alpha", "beta")))
    assert not r["ok"] and "together" in r["error"], r
    # leaving alpha is sticky; the libvirt port in gamma is reported, as the proxy cannot detach it
    r = proxy.client.send(rq.Leave(VM, "gamma"))
    assert r == {"v": 1, "ok": True, "detached": [], "libvirt_ports": [port]}
    r = proxy.client.send(rq.Check(VM, ("alpha", "gamma")))
    assert not r["ok"] and "left TVD 'gamma'" in r["error"], r
    # an unregistered VM has no properties
    r = proxy.client.send(rq.Check(str(uuidlib.uuid4()), ("gamma",)))
    assert not r["ok"] and "not registered, no properties" in r["error"], r


@pytest.mark.parametrize("req,reason", [
    ({"op": "port-online", "port": "x", "uuid": VM, "tvd": "alpha"}, "'port' is missing or malformed"),
    ({"op": "port-online", "port": VM, "uuid": VM, "tvd": "Alpha!"}, "'tvd' is missing or malformed"),
    ({"op": "port-online", "port": VM, "uuid": VM, "tvd": "alpha", "mac": "zz"}, "'mac' must be"),
    ({"op": "port-offline"}, "'port' is missing or malformed"),
    ({"op": "check", "uuid": VM, "tvds": []}, "'tvds' must be a list of 1-64 TVD names"),
    ({"op": "check", "uuid": VM, "tvds": "alpha"}, "'tvds' must be a list"),
])
def test_malformed_requests_get_a_clear_refusal(lab, proxy, req, reason):
    r = proxy.request(req)
    assert not r["ok"] and reason in r["error"], r
