"""tvd-proxy in master mode against a real tvd-master (tier 1: real namespaces, real TLS).

enrol -> capability report -> signed bundle -> evidence-based admission -> vif up; policy
pushes and revocations detach within the session bound and leave other TVDs' vifs alone;
the audit at the master shows it all; faults: master killed, proxy killed, master away longer
than the session bound, a tampered stored bundle, host revocation.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time

import pytest

import master_lab
from master_lab import POLICY
from tvd_harness import ip, link_info


@pytest.fixture
def mlab(lab):
    try:
        yield lab
    finally:
        master_lab.close(lab)


def ifindex(ns, dev):
    return json.loads(ip("-j", "link", "show", dev, ns=ns).stdout)[0]["ifindex"]


def online(lab, vm):
    r = lab.hotplug(vm)
    return r.returncode, lab.xs.get(f"{vm.backend()}/hotplug-error")


def test_enrol_admit_push_detach_audit(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=3)
    ns = lab.host_ns["dom0-a"]
    # keys 0600; neither the token nor the key appears in what the proxy wrote
    mdir = os.path.join(p.state_dir, "master")
    assert stat.S_IMODE(os.stat(os.path.join(mdir, "host.key")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(mdir, "bundle.json")).st_mode) == 0o600
    secret = p.last_token.split(".")[2]
    key_body = open(os.path.join(mdir, "host.key")).read().splitlines()[1]
    for text in (p.log(), m.log()):
        assert secret not in text and key_body not in text
    # the master recorded the report and decided: alpha and beta planned for dom0-a
    st = p.status()
    assert st["master"]["url"] == master_lab.URL and not st["master"]["revoked"]
    # a VM with a master-issued certificate joins alpha (M(t): signed-kernel)
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    cert, _ = m.vm_cert("a", a.uuid, "signed-kernel=trust")
    assert p.register(a, "alpha", cert)["ok"]
    assert online(lab, a) == (0, None)
    assert link_info(ns, a.vif())["master"] == "tvd-alpha"
    # self-asserted properties are not evidence in master mode
    x = lab.vm("x", 9, nics={0: ("tvd:alpha", "10.99.0.9")})
    r = p.request({"op": "register", "uuid": x.uuid, "name": "x", "nics": [{"devid": 0, "tvd": "alpha"}],
                   "properties": {"signed-kernel": "trust"}})
    assert not r["ok"] and "does not satisfy M(t)" in r["error"]
    rc, err = online(lab, x)
    assert rc != 0 and "does not satisfy M(t)" in err
    assert link_info(ns, x.vif())["master"] is None
    # two beta VMs with a ping running across the policy push that drops alpha
    b1 = lab.vm("b1", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    b2 = lab.vm("b2", 3, nics={0: ("tvd:beta", "10.99.1.3")})
    for vm in (b1, b2):
        assert online(lab, vm) == (0, None)
    before = {d: (ifindex(ns, d), link_info(ns, d)["master"]) for d in ("tvd-beta", b1.vif(), b2.vif())}
    gen = p.generation()
    pinger = subprocess.Popen(["ip", "netns", "exec", b1.ns, "ping", "-i", "0.05", "-w", "4", "-c", "60",
                               "10.99.1.3"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    t0 = time.monotonic()
    m.push(POLICY.replace("  alpha: {vlan: 100, vni: 10100, membership: [signed-kernel], "
                          "session-seconds: %(session)d}\n", "") % {}, "no-alpha.yaml")
    p.wait_for(lambda: link_info(ns, a.vif())["master"] is None, "alpha vif detached", timeout=5)
    detach_s = time.monotonic() - t0
    out = pinger.communicate(timeout=30)[0]
    assert " 0% packet loss" in out, out
    assert p.generation() > gen
    assert {d: (ifindex(ns, d), link_info(ns, d)["master"]) for d in before} == before
    assert detach_s < 3, f"detached after {detach_s:.1f} s, the session bound is 3 s"
    assert "tvd-alpha" not in [l for l in (ip("-o", "link", ns=ns).stdout.split())]
    # the audit at the master: admitted, then detached by the policy change; x denied
    p.wait_for(lambda: ("detached", "alpha") in m.vm_events(a.uuid), "audit at the master")
    ev = m.vm_events(a.uuid)
    assert ev.index(("admitted", "alpha")) < ev.index(("detached", "alpha"))
    assert ("denied", "alpha") in m.vm_events(x.uuid)
