"""The libvirt hook against the real `tvd-proxy run` (xen_tvd.proxy), which manages a throwaway
network namespace so its reconcile never touches the host's network. Policy: the example
domain's, xl-configs/tvd-hosts-policy.yaml, as Dom0 dom0-a."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from xen_tvd.proxy import protocol

from tests.libvirt.lv_helpers import domain_xml, membership, nic, real_proxy

UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def _request(path, obj):
    return protocol.request(obj, path, 15)


@pytest.fixture
def proxy(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("real tvd-proxy: needs root (it manages a network namespace)")
    ns = f"tvdt-lv-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    sock = str(tmp_path / "proxy.sock")
    try:
        with real_proxy(sock, str(tmp_path / "state"), ns, str(tmp_path / "proxy.log")):
            yield sock
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def registrations(sock):
    st = _request(sock, {"op": "status"})
    assert st["ok"], st
    return {r["uuid"]: r for r in st["registrations"]}


def test_real_proxy_admits_registers_and_forgets(run_hook, proxy, example):
    r = run_hook(["web-frontend", "prepare", "begin", "-"], example, proxy)
    assert r.returncode == 0, r.stderr
    reg = registrations(proxy)[UUID]
    assert reg["name"] == "web-frontend"
    assert reg["nics"] == {"0": "alpha", "1": "gamma"}
    assert reg["properties"] == {"tpm-measured-boot": "immutable-log"}
    r = run_hook(["web-frontend", "start", "begin", "-"], example, proxy)   # again: idempotent
    assert r.returncode == 0, r.stderr
    r = run_hook(["web-frontend", "stopped", "end", "-"], example, proxy)
    assert (r.returncode, r.stderr) == (0, b"")
    assert UUID not in registrations(proxy)
    assert run_hook(["web-frontend", "release", "end", "-"], example, proxy).returncode == 0


def test_real_proxy_denial_fails_the_start(run_hook, proxy, example):
    xml = example.replace(b"<tvd:property name='tpm-measured-boot' assurance='immutable-log'/>",
                          b"<tvd:property name='signed-kernel'/>")
    r = run_hook(["web-frontend", "prepare", "begin", "-"], xml, proxy)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1
    assert "refusing to prepare domain web-frontend: admission denied" in err
    assert "tpm-measured-boot" in err
    assert UUID not in registrations(proxy)


def test_real_proxy_unknown_tvd_and_host_refusal(run_hook, proxy):
    r = run_hook(["vm1", "start", "begin", "-"],
                 domain_xml(nic("network", "tvd-delta", "00:16:3e:00:00:01")), proxy)
    assert r.returncode == 1 and "unknown TVD 'delta'" in r.stderr.decode()
    # vault needs pci-audited hosts; dom0-a is not: the host refuses to carry it
    r = run_hook(["vm1", "start", "begin", "-"],
                 domain_xml(nic("bridge", "br0", "00:16:3e:00:00:01"),
                            membership("<tvd:property name='pci-audited'/>", tvd="vault")), proxy)
    assert r.returncode == 1 and "host 'dom0-a' may not carry TVD 'vault'" in r.stderr.decode()
