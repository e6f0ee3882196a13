"""The libvirt hook (xen_tvd/data/hotplug/libvirt-hook) run as libvirtd runs it (argv + domain
XML on stdin) against lv_fakeproxy.FakeProxy, a stand-in for tvd-proxy speaking protocol v1 on a
temp UNIX socket. The same hook against the real `tvd-proxy run` is in test_hook_realproxy.py;
what both hook scripts share (light imports, install-hook, a Python without xen_tvd) in
test_hook_scripts.py."""
from __future__ import annotations

import pytest

from tests.libvirt.lv_helpers import domain_xml, membership, nic

UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.mark.parametrize("event", [("prepare", "begin"), ("start", "begin")])
def test_admitted_start_registers_the_vm(run_hook, fake_proxy, example, event):
    r = run_hook(["web-frontend", *event, "-"], example, fake_proxy.path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"" and r.stderr == b""
    assert fake_proxy.requests == [{"v": 1, "op": "register", "uuid": UUID, "name": "web-frontend",
                               "nics": [{"devid": 0, "tvd": "alpha"}, {"devid": 1, "tvd": "gamma"}],
                               "properties": {"tpm-measured-boot": "immutable-log"}}]
    assert UUID in fake_proxy.registrations


def test_denied_start_fails_with_the_proxys_reason(run_hook, fake_proxy, example):
    xml = example.replace(b"<tvd:property name='tpm-measured-boot' assurance='immutable-log'/>", b"")
    r = run_hook(["web-frontend", "prepare", "begin", "-"], xml, fake_proxy.path)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1
    assert "refusing to prepare domain web-frontend: admission denied" in err
    assert "tpm-measured-boot" in err
    assert UUID not in fake_proxy.registrations


def test_unknown_tvd_fails_the_start(run_hook, fake_proxy):
    xml = domain_xml(nic("network", "tvd-delta", "00:16:3e:00:00:01"))
    r = run_hook(["vm1", "start", "begin", "-"], xml, fake_proxy.path)
    assert r.returncode == 1
    assert "unknown TVD 'delta'" in r.stderr.decode()


def test_unreachable_proxy_fails_closed(run_hook, example, tmp_path):
    r = run_hook(["web-frontend", "prepare", "begin", "-"], example, str(tmp_path / "gone.sock"))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "tvd-proxy is not running" in err


def test_proxy_that_hangs_up_fails_closed(run_hook, example, tmp_path):
    import socket
    import threading
    path = str(tmp_path / "mute.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)

    def hang_up():
        c, _ = s.accept()
        c.recv(65536)
        c.close()
    t = threading.Thread(target=hang_up, daemon=True)
    t.start()
    r = run_hook(["web-frontend", "start", "begin", "-"], example, path)
    s.close()
    assert r.returncode == 1
    assert "closed the connection without an answer" in r.stderr.decode()


def test_contradictory_membership_fails_without_asking(run_hook, fake_proxy):
    m = "00:16:3e:00:00:01"
    xml = domain_xml(nic("network", "tvd-alpha", m), membership(f"<tvd:nic mac='{m}' tvd='beta'/>"))
    r = run_hook(["vm1", "prepare", "begin", "-"], xml, fake_proxy.path)
    assert r.returncode == 1 and "metadata puts it in TVD 'beta'" in r.stderr.decode()
    assert fake_proxy.requests == []


def test_domain_in_no_tvd_starts_without_the_proxy(run_hook, tmp_path):
    xml = domain_xml(nic("network", "default", "00:16:3e:00:00:01"))
    r = run_hook(["vm1", "prepare", "begin", "-"], xml, str(tmp_path / "gone.sock"))
    assert r.returncode == 0 and r.stderr == b""


@pytest.mark.parametrize("event", [("stopped", "end"), ("release", "end")])
def test_stop_unregisters(run_hook, fake_proxy, example, event):
    assert run_hook(["web-frontend", "prepare", "begin", "-"], example, fake_proxy.path).returncode == 0
    r = run_hook(["web-frontend", *event, "-"], example, fake_proxy.path)
    assert r.returncode == 0 and r.stderr == b""
    assert fake_proxy.requests[-1] == {"v": 1, "op": "unregister", "uuid": UUID}
    assert UUID not in fake_proxy.registrations


@pytest.mark.parametrize("event", [("stopped", "end"), ("release", "end")])
def test_stop_never_fails(run_hook, example, tmp_path, event):
    r = run_hook(["web-frontend", *event, "-"], example, str(tmp_path / "gone.sock"))
    assert r.returncode == 0
    assert "could not unregister" in r.stderr.decode()
    # even a domain whose membership is contradictory is unregistered by UUID, best effort
    bad = domain_xml(nic("network", "tvd-alpha", "00:16:3e:00:00:01")
                     + nic("network", "default", "00:16:3e:00:00:02"))
    assert run_hook(["vm1", *event, "-"], bad, str(tmp_path / "gone.sock")).returncode == 0
    assert run_hook(["vm1", *event, "-"], b"garbage", str(tmp_path / "gone.sock")).returncode == 0


@pytest.mark.parametrize("event", [("started", "begin"), ("migrate", "begin"), ("restore", "begin"),
                                   ("attach", "begin"), ("stopped", "begin")])
def test_other_events_pass_silently(run_hook, fake_proxy, example, event):
    r = run_hook(["web-frontend", *event, "-"], example, fake_proxy.path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")   # migrate/restore: empty = unchanged XML
    assert fake_proxy.requests == []


def test_reconnect_rechecks_a_running_member(run_hook, fake_proxy, example):
    assert run_hook(["web-frontend", "prepare", "begin", "-"], example, fake_proxy.path).returncode == 0
    r = run_hook(["web-frontend", "reconnect", "begin", "-"], example, fake_proxy.path)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert fake_proxy.requests[-1] == {"v": 1, "op": "check", "uuid": UUID, "name": "web-frontend",
                                  "tvds": ["alpha", "gamma"]}
    assert UUID in fake_proxy.registrations   # a check changes nothing at the proxy


def test_reconnect_refused_stops_the_domain(run_hook, fake_proxy, example):
    """libvirt stops a domain whose reconnect hook fails (qemu and libxl alike)."""
    assert run_hook(["web-frontend", "prepare", "begin", "-"], example, fake_proxy.path).returncode == 0
    fake_proxy.tvds["alpha"] = {"signed-kernel"}   # the policy now asks more of alpha's VMs
    r = run_hook(["web-frontend", "reconnect", "begin", "-"], example, fake_proxy.path)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1
    assert "stopping domain web-frontend (libvirtd reconnected): admission denied" in err
    assert "signed-kernel for TVD alpha" in err


def test_reconnect_with_a_contradictory_live_membership_stops_it_unasked(run_hook, fake_proxy):
    """A NIC hot-plugged onto a bridge outside every TVD (no network, so no network hook saw
    it) shows up in the live XML: the domain is stopped."""
    xml = domain_xml(nic("network", "tvd-alpha", "00:16:3e:00:00:01")
                     + nic("bridge", "br-admin", "00:16:3e:00:00:02"))
    r = run_hook(["vm1", "reconnect", "begin", "-"], xml, fake_proxy.path)
    assert r.returncode == 1 and "in no TVD" in r.stderr.decode()
    assert fake_proxy.requests == []


def test_reconnect_with_the_proxy_down_keeps_the_domain(run_hook, example, tmp_path):
    """Not a refusal: running members stay while the decider is unreachable (as vifs do)."""
    r = run_hook(["web-frontend", "reconnect", "begin", "-"], example, str(tmp_path / "gone.sock"))
    assert r.returncode == 0
    err = r.stderr.decode()
    assert "web-frontend (TVD alpha, gamma) keeps running unchecked" in err
    assert "tvd-proxy is not running" in err


def test_reconnect_of_a_domain_in_no_tvd_asks_nothing(run_hook, tmp_path):
    xml = domain_xml(nic("network", "default", "00:16:3e:00:00:01"))
    r = run_hook(["vm1", "reconnect", "begin", "-"], xml, str(tmp_path / "gone.sock"))
    assert (r.returncode, r.stderr) == (0, b"")


def test_bad_arguments_are_a_usage_error(run_hook):
    r = run_hook(["only-one"])
    assert r.returncode == 2 and "usage" in r.stderr.decode()
