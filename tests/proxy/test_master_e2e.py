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
import sys
import time

import pytest

from xen_tvd.proxy import requests as rq

from tests.proxy import master_lab
from tests.proxy.master_lab import POLICY
from tests.hotplug.tvd_harness import ip, link_info


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
    # hotplug-error is what libxl shows; it may be left from an earlier failed attempt
    return r.returncode, (lab.xs.get(f"{vm.backend()}/hotplug-error") if r.returncode else None)


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
    for text in (p.log(), m.log(), p.enroll_out.stdout, p.enroll_out.stderr):
        assert secret not in text and key_body not in text
    # the WireGuard private key (made at start, 0600) stays on the host: only its public key
    # is in the master's record, and the private key is in no log, database file or audit
    wg_path = os.path.join(p.state_dir, "wireguard.key")
    assert stat.S_IMODE(os.stat(wg_path).st_mode) == 0o600
    wg_private = open(wg_path).read().strip()
    wg_public = subprocess.run(
        [sys.executable, "-m", "xen_tvd.proxy.main", "wireguard-key", "--state-dir",
         p.state_dir], capture_output=True, text=True, check=True, env=master_lab._env()
    ).stdout.strip()
    master_files = b"".join(open(os.path.join(m.dir, f), "rb").read()
                            for f in os.listdir(m.dir) if f.startswith("master.db"))
    assert wg_public.encode() in master_files
    for blob in (p.log(), m.log(), json.dumps(m.audit()), master_files.decode("latin-1")):
        assert wg_private not in blob
    assert "enrolled dom0-a" in p.enroll_out.stdout
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
    r = p.client.send(rq.Register(x.uuid, "x", (rq.Nic("alpha", 0),), {"signed-kernel": "trust"}))
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


def test_revoked_vm_cert_and_changed_image_are_detached_within_the_session_bound(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=3)
    ns = lab.host_ns["dom0-a"]
    # VM a: certificate evidence; VM b: image evidence (the proxy hashes the file itself)
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    cert, serial = m.vm_cert("a", a.uuid, "signed-kernel=trust")
    assert p.register(a, "alpha", cert)["ok"]
    img = os.path.join(lab.tmp, "b-kernel.img")
    with open(img, "wb") as f:
        f.write(os.urandom(2 * 1024 * 1024))
    digest = "sha256:" + subprocess.run(["sha256sum", img], capture_output=True, text=True,
                                        check=True).stdout.split()[0]
    m.cli("image", "allow", digest, "--property", "signed-kernel=introspection")
    b = lab.vm("b", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    p.wait_for(lambda: p.register(b, "alpha", images=[img])["ok"], "the image rule in a bundle")
    for vm in (a, b):
        assert online(lab, vm) == (0, None)
    assert lab.ping(a, "10.99.0.2")
    # the master revokes a's certificate: detached at once (new bundle), audited as revoked
    gen = p.generation()
    t0 = time.monotonic()
    m.cli("revoke-vm", "--serial", str(serial))
    p.wait_for(lambda: link_info(ns, a.vif())["master"] is None, "a detached", timeout=5)
    assert time.monotonic() - t0 < 3
    p.wait_for(lambda: p.generation() > gen, "the revocation bundle fully applied")
    assert link_info(ns, b.vif())["master"] == "tvd-alpha"
    # b's image changes on disk: the next session re-check (<= 3 s) re-hashes and detaches it
    with open(img, "ab") as f:
        f.write(b"tampered")
    t0 = time.monotonic()
    p.wait_for(lambda: link_info(ns, b.vif())["master"] is None, "b detached", timeout=6)
    assert time.monotonic() - t0 <= 3.5, "beyond the session bound (3 s + one tick of slack)"
    p.wait_for(lambda: ("session-expired", "alpha") in m.vm_events(b.uuid), "audit of b")
    assert ("revoked", "alpha") in m.vm_events(a.uuid)
    # and a new admission with the changed image names the reason
    rc, err = online(lab, b)
    assert rc != 0 and "not in the master's image list" in err


def test_master_away_audit_spooled_then_flushed_offline_rule_and_restart(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=4)
    ns = lab.host_ns["dom0-a"]
    vms = []
    for i in (1, 2, 3):
        vm = lab.vm(f"v{i}", i, nics={0: ("tvd:alpha", f"10.99.0.{i}")})
        cert, _ = m.vm_cert(f"v{i}", vm.uuid, "signed-kernel=trust")
        assert p.register(vm, "alpha", cert)["ok"]
        vms.append(vm)
    assert online(lab, vms[0]) == (0, None)
    # the master dies (SIGKILL) right before an admission: the proxy heard from it less than
    # the session bound ago, so the admission goes ahead; its audit event waits in the spool
    m.kill()
    assert online(lab, vms[1]) == (0, None)
    spool = os.path.join(p.state_dir, "master", "audit-spool.jsonl")
    spooled = [json.loads(l) for l in open(spool)]
    assert ("admitted", vms[1].uuid) in [(e["event"], e["vm"]) for e in spooled]
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o600
    # beta has no session bound and the grace is 0: refused at once, with what to do
    c = lab.vm("c", 7, nics={0: ("tvd:beta", "10.99.1.7")})
    rc, err = online(lab, c)
    assert rc != 0 and "unreachable since" in err and "--offline-admission-grace" in err \
        and "restore the master or its network" in err
    # past alpha's bound: new admissions refused with the documented message ...
    time.sleep(4.5)
    rc, err = online(lab, vms[2])
    assert rc != 0, err
    assert f"master {master_lab.URL} unreachable since" in err and \
        "new admissions into alpha are refused after its session bound (4 s)" in err, err
    # ... running vifs stay, and they stay across a proxy restart (stored bundle, re-verified)
    assert lab.ping(vms[0], "10.99.0.2")
    p.stop()
    p.start(bundle=True)
    assert "stored-bundle-refused" not in p.log()
    for vm in vms[:2]:
        assert link_info(ns, vm.vif())["master"] == "tvd-alpha"
    assert lab.ping(vms[0], "10.99.0.2")
    # the master comes back: the spool is flushed in order, nothing lost, nothing twice
    m.start()
    p.wait_for(lambda: p.status()["master"]["audit_spooled"] == 0, "the spool flushed", timeout=30)
    audit = m.audit()
    got = [(e["event"], e["detail"].get("vm")) for e in audit if e["actor"] == "host:dom0-a"]
    for e in spooled:
        assert (e["event"], e["vm"]) in got
    assert got.count(("admitted", vms[1].uuid)) == 1
    assert ("denied", vms[2].uuid) in got
    # and admissions work again
    assert online(lab, vms[2]) == (0, None)


def test_proxy_killed_mid_apply_reconciles_on_restart(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=30)
    ns = lab.host_ns["dom0-a"]
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    cert, _ = m.vm_cert("a", a.uuid, "signed-kernel=trust")
    assert p.register(a, "alpha", cert)["ok"]
    b1 = lab.vm("b1", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    b2 = lab.vm("b2", 3, nics={0: ("tvd:beta", "10.99.1.3")})
    for vm in (a, b1, b2):
        assert online(lab, vm) == (0, None)
    beta_idx = ifindex(ns, "tvd-beta")
    # push a policy without alpha; SIGKILL the proxy the moment it starts acting on it
    mark = len(p.log())
    m.push(POLICY.replace("  alpha: {vlan: 100, vni: 10100, membership: [signed-kernel], "
                          "session-seconds: %(session)d}\n", "") % {}, "no-alpha.yaml")
    p.wait_for(lambda: "event=detached ifname=vif1.0" in p.log()[mark:], "the detach", timeout=10)
    p.kill()
    p.start()
    p.wait_for(lambda: "tvd-alpha" not in ip("-o", "link", ns=ns).stdout, "alpha bridge removed")
    st = p.status()
    assert sorted(v["ifname"] for v in st["vifs"]) == [b1.vif(), b2.vif()]
    assert [s["tvd"] for s in st["segments"]] == ["beta"]
    assert link_info(ns, a.vif())["master"] is None
    assert ifindex(ns, "tvd-beta") == beta_idx
    assert lab.ping(b1, "10.99.1.3")
    owned = [d["ifname"] for d in json.loads(ip("-j", "-d", "link", ns=ns).stdout)
             if (d.get("ifalias") or "").startswith("xen-tvd:")]
    assert owned == ["tvd-beta"]


def test_tampered_stored_bundle_fails_closed(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=30)
    ns = lab.host_ns["dom0-a"]
    b = lab.vm("b", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    assert online(lab, b) == (0, None)
    p.stop()
    m.stop()
    path = os.path.join(p.state_dir, "master", "bundle.json")
    env = json.load(open(path))
    body = json.loads(base64.b64decode(env["payload"]))
    body["generation"] += 100            # e.g. to pin a policy against later updates
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    with open(path, "w") as f:
        json.dump(env, f)
    p.start(bundle=False)
    assert "event=stored-bundle-refused" in p.log()
    assert "signature does not verify" in p.log()
    assert link_info(ns, b.vif())["master"] is None       # fail closed: no bundle, no segment
    assert "tvd-beta" not in ip("-o", "link", ns=ns).stdout
    r = p.client.send(rq.VifOnline(ifname=b.vif(), uuid=b.uuid, domid=2, devid=0,
                                   bridge="tvd:beta"))
    assert not r["ok"] and "no valid policy bundle from master" in r["error"]
    # the master is back: a valid bundle arrives and admissions work again
    m.start()
    p.wait_for(lambda: p.generation() is not None, "a bundle")
    assert online(lab, b) == (0, None)


def test_revoked_host_detaches_everything_until_reenrolled(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=30)
    ns = lab.host_ns["dom0-a"]
    b = lab.vm("b", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    assert online(lab, b) == (0, None)
    t0 = time.monotonic()
    m.cli("revoke", "dom0-a")
    p.wait_for(lambda: link_info(ns, b.vif())["master"] is None, "detach on revocation", timeout=10)
    revoke_s = time.monotonic() - t0
    p.wait_for(lambda: "tvd-beta" not in ip("-o", "link", ns=ns).stdout, "the segment removed")
    assert not os.path.exists(os.path.join(p.state_dir, "master", "bundle.json"))
    st = p.status()
    assert st["master"]["revoked"] and st["vifs"] == []
    rc, err = online(lab, b)
    assert rc != 0 and "revoked" in err and "re-enrol" in err
    # the old token is spent; a new one re-enrols the running proxy
    assert p.enroll(p.last_token).returncode != 0
    assert p.enroll().returncode == 0
    p.wait_for(lambda: p.generation() is not None, "a bundle after re-enrolment")
    assert online(lab, b) == (0, None)
    assert revoke_s < 5


def test_tvdctl_xl_register_passes_certificate_and_images(mlab):
    """xl.cfg tvd_cert / kernel / tvd_images reach the proxy, which checks them itself."""
    import sys
    from tests.hotplug.tvd_harness import REPO
    lab = mlab
    m, p = master_lab.setup(lab, session=30)
    a = lab.vm("web", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    cert, _ = m.vm_cert("web", a.uuid, "signed-kernel=trust")
    kernel = os.path.join(lab.tmp, "vmlinuz")
    with open(kernel, "wb") as f:
        f.write(b"kernel bytes")
    cfg = os.path.join(lab.tmp, "web.cfg")
    with open(cfg, "w") as f:
        f.write(f'name = "web"\nuuid = "{a.uuid}"\nkernel = "{kernel}"\nvif = ["bridge=tvd:alpha"]\n'
                f'tvd_cert = "{cert}"\ntvd_images = ["{kernel}"]\n')
    r = subprocess.run([sys.executable, "-m", "xen_tvd.cli.tvdctl", "xl", "register", "--socket",
                        p.socket, cfg], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 0, r.stderr
    reg = [x for x in p.status()["registrations"] if x["uuid"] == a.uuid][0]
    assert reg["images"] == [kernel] and reg["cert"].startswith("(PEM")
    assert online(lab, a) == (0, None)
    # a missing certificate file is named
    os.unlink(cert)
    r = subprocess.run([sys.executable, "-m", "xen_tvd.cli.tvdctl", "xl", "register", "--socket",
                        p.socket, cfg], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode != 0 and f"tvd_cert {cert}" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def mlab2(lab2):
    try:
        yield lab2
    finally:
        master_lab.close(lab2)


def test_two_hosts_use_the_masters_plan_and_peers(mlab2):
    """The uplink and the underlay peers come from the bundle: a second host enrolling gives
    beta a VXLAN uplink to it (bridge kept); revoking it takes it out of the peer list."""
    lab = mlab2
    m, pa = master_lab.setup(lab, session=30)
    na = lab.host_ns["dom0-a"]
    b1 = lab.vm("b1", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    assert online(lab, b1) == (0, None)
    assert link_info(na, "tvx-beta") is None           # alone: a host-local segment
    br = ifindex(na, "tvd-beta")
    gen = pa.generation()
    pb = master_lab.add_proxy(lab, "dom0-b")
    pa.wait_for(lambda: link_info(na, "tvx-beta") is not None, "a VXLAN uplink on dom0-a")
    assert pa.generation() > gen and ifindex(na, "tvd-beta") == br
    assert link_info(na, b1.vif())["master"] == "tvd-beta"
    b2 = lab.vm("b2", 3, host="dom0-b", nics={0: ("tvd:beta", "10.99.1.3")})
    r = lab.hotplug(b2)
    assert r.returncode == 0, r.stderr
    assert lab.ping(b1, "10.99.1.3", count=3)
    uplink = json.loads(ip("-j", "-d", "link", "show", "tvx-beta", ns=na).stdout)[0]
    assert uplink["linkinfo"]["info_data"]["id"] == 10200
    nft = subprocess.run(["ip", "netns", "exec", na, "nft", "list", "ruleset"],
                         capture_output=True, text=True).stdout
    assert "10.77.1.12" in nft                          # dom0-b is an underlay peer
    m.cli("revoke", "dom0-b")
    # both ends of the change: apply() drops the peer from the underlay filter before it
    # deletes the uplink, and a ping in between (a loaded machine) still got through
    pa.wait_for(lambda: "10.77.1.12" not in subprocess.run(
        ["ip", "netns", "exec", na, "nft", "list", "ruleset"], capture_output=True, text=True).stdout
        and link_info(na, "tvx-beta") is None,
        "dom0-b out of dom0-a's underlay peers and beta's uplink", timeout=10)
    assert not lab.ping(b1, "10.99.1.3", count=2)


def test_offline_admission_grace_admits_tvds_without_session_bound(mlab):
    lab = mlab
    m, p = master_lab.setup(lab, session=30, args=["--offline-admission-grace", "3"])
    b1 = lab.vm("b1", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    b2 = lab.vm("b2", 3, nics={0: ("tvd:beta", "10.99.1.3")})
    m.kill()
    assert online(lab, b1) == (0, None)          # within the grace: admitted
    time.sleep(3.5)
    rc, err = online(lab, b2)                    # past it: refused, naming the option
    assert rc != 0 and "after --offline-admission-grace (3 s)" in err, err
    assert link_info(lab.host_ns["dom0-a"], b1.vif())["master"] == "tvd-beta"


def test_master_refuses_an_encrypted_tvd_to_hosts_whose_kernel_has_no_wireguard(mlab2):
    """Tier 1's kernel has no wireguard module: the proxies' probes report none, so a TVD that
    needs integrity across the untrusted LAN is refused on both hosts with that reason (a host
    without the module never gets a plan that needs it), while the others still work."""
    from xen_tvd.proxy.capabilities import probe
    if probe("wireguard"):
        pytest.skip("this kernel has the wireguard module: the refusal is tier 1's case")
    lab = mlab2
    m, pa = master_lab.setup(lab, session=30)
    pb = master_lab.add_proxy(lab, "dom0-b")
    gen = pa.generation()
    m.push((POLICY % {"session": 30}).replace(
        "capabilities: [ethernet, ip]", "capabilities: [ethernet, ip, wireguard]").replace(
        "  beta:  {vlan: 200, vni: 10200}\n",
        "  beta:  {vlan: 200, vni: 10200}\n"
        "  sec:   {vlan: 300, vni: 10300, protection: [isolation, integrity]}\n"), "sec.yaml")
    pa.wait_for(lambda: pa.generation() > gen, "the new bundle on dom0-a")
    s = lab.vm("s1", 4, nics={0: ("tvd:sec", "10.99.3.4")})
    rc, err = online(lab, s)
    assert rc != 0 and "has no wireguard capability" in err, err
    assert link_info(lab.host_ns["dom0-a"], s.vif())["master"] is None
    b1 = lab.vm("b1", 2, nics={0: ("tvd:beta", "10.99.1.2")})
    assert online(lab, b1) == (0, None)
    reports = {e["detail"]["host"] for e in m.audit() if e["event"] == "capabilities-reported"}
    assert reports == {"dom0-a", "dom0-b"} and pb is not None
