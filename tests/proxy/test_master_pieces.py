"""Master mode, the proxy's own pieces without a network: evidence checks, bundle parsing and
storage (tampering, another host, rollback), the audit spool, capability detection.

Certificates and bundles are made with the master package's real CA and signer
(xen_tvd.master.ca / .bundle), the same code `tvd-master` runs.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
import uuid as uuidlib

import pytest
from cryptography import x509

from xen_tvd.desired.model import HostState
from xen_tvd.master import ca as camod
from xen_tvd.master import decide
from xen_tvd.master.bundle import sign_bundle
from xen_tvd.planner import plan
from xen_tvd.proxy import bundle_store, capabilities, evidence, routes
from xen_tvd.proxy.audit_spool import AuditSpool
from xen_tvd.proxy.bundle_store import BundleInvalid
from xen_tvd.proxy.master_link import LinkError, MasterLink

from tests.proxy import master_lab
from tests.hotplug.tvd_harness import POLICY

URL = "https://10.77.1.1:8443"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("mca") / "m")
    camod.init_ca(d, URL)
    c = camod.Ca.load(d)
    with open(os.path.join(d, "signer.pem")) as f:
        c.signer = (camod.load_key(os.path.join(d, "signer.key")), f.read())
    return c


def vm_cert(ca, uuid, props, days=1.0):
    key = camod.new_ec_key()
    return camod.pem(ca.issue_vm(key.public_key(), "web", uuid, props, days=days))


def payload(gen=3, host="dom0-a", **over):
    p = {"format": 1, "master": URL, "host": host, "generation": gen, "issued": 1.0,
         "policy": open(POLICY).read(),
         "plan": {"segments": [{"tvd": "beta", "bridge": "tvd-beta", "mtu": 1500,
                                "uplink": None, "vif_tx_csum_offload": False}],
                  "underlay_peers": ["10.77.1.12"], "vlan_offload_off": [], "underlay_mtu": {}},
         "refused": {"vault": "host dom0-a lacks pci-audited"},
         "evidence": {"images": {}, "revoked_vm_certs": [], "revoked_vms": []}}
    p.update(over)
    return p


# ---- evidence ------------------------------------------------------------------------------

def test_vm_certificate_gives_its_properties_only_to_its_vm(ca):
    u = str(uuidlib.uuid4())
    pem = vm_cert(ca, u, {"signed-kernel": "trust"})
    ev = evidence.Evidence()
    assert evidence.check_cert(pem, ca.cert, u, ev) == {"signed-kernel": "trust"}
    with pytest.raises(evidence.EvidenceError, match="not VM"):
        evidence.check_cert(pem, ca.cert, str(uuidlib.uuid4()), ev)


def test_vm_certificate_from_another_ca_expired_or_revoked_is_refused(ca, tmp_path):
    u = str(uuidlib.uuid4())
    camod.init_ca(str(tmp_path / "other"), URL)
    other = camod.Ca.load(str(tmp_path / "other"))
    with pytest.raises(evidence.EvidenceError, match="not issued by the master's CA.*tvd-master vm-cert"):
        evidence.check_cert(vm_cert(other, u, {"signed-kernel": "trust"}), ca.cert, u, evidence.Evidence())
    # valid from 5 min ago (the CA backdates) until 100 s ago
    expired = vm_cert(ca, u, {"signed-kernel": "trust"}, days=-100 / 86400)
    with pytest.raises(evidence.EvidenceError, match="expired"):
        evidence.check_cert(expired, ca.cert, u, evidence.Evidence())
    good = vm_cert(ca, u, {"signed-kernel": "trust"})
    serial = x509.load_pem_x509_certificate(good.encode()).serial_number
    with pytest.raises(evidence.EvidenceError, match="revoked"):
        evidence.vm_properties(u, good, [], ca.cert, evidence.Evidence(revoked_vm_certs=frozenset({serial})))
    with pytest.raises(evidence.EvidenceError, match="revoked by the master"):
        evidence.vm_properties(u, None, [], ca.cert, evidence.Evidence(revoked_vms=frozenset({u})))


def test_image_digests_are_computed_by_the_proxy(tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(3 * 1024 * 1024 + 7))   # more than one read chunk
    digest = "sha256:" + subprocess.run(["sha256sum", str(img)], capture_output=True, text=True,
                                        check=True).stdout.split()[0]
    ev = evidence.Evidence(images={digest: {"signed-kernel": "introspection"}})
    assert evidence.vm_properties("x", None, [str(img)], None, ev) == \
        ({"signed-kernel": "introspection"}, [])
    with open(img, "ab") as f:       # one byte changed: the master's list no longer matches
        f.write(b"!")
    props, notes = evidence.vm_properties("x", None, [str(img)], None, ev)
    assert props == {} and "not in the master's image list" in notes[0]
    with pytest.raises(evidence.EvidenceError, match="fix the kernel/disk path"):
        evidence.vm_properties("x", None, [str(tmp_path / "missing")], None, ev)


# ---- bundles ---------------------------------------------------------------------------------

def enrolled(tmp_path, ca, host="dom0-a"):
    """A state dir as `tvd-proxy enroll` leaves it (the key is unused without a network)."""
    d = tmp_path / "state" / "master"
    d.mkdir(parents=True)
    (d / "url").write_text(URL + "\n")
    (d / "host").write_text(host + "\n")
    (d / "ca.pem").write_text(camod.pem(ca.cert))
    key = camod.new_ec_key()
    camod.write_private_key(str(d / "host.key"), key)
    (d / "host.pem").write_text(camod.pem(ca.issue_client(key.public_key(), host, camod.HOST_OU)))
    return MasterLink(str(tmp_path / "state"), host, lambda: {})


def test_stored_bundle_is_verified_again_and_tampering_means_no_bundle(tmp_path, ca):
    link = enrolled(tmp_path, ca)
    env = sign_bundle(payload(), *ca.signer)
    bundle_store.store(link.dir, env)
    path = os.path.join(link.dir, "bundle.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    b = link.load_stored()
    assert b.generation == 3 and set(b.segments) == {"beta"} and b.underlay_peers == ("10.77.1.12",)
    assert b.refused["vault"].startswith("host dom0-a lacks")
    body = json.loads(base64.b64decode(env["payload"]))
    body["plan"]["segments"][0]["tvd"] = "alpha"       # someone edits the stored plan
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    bundle_store.store(link.dir, env)
    assert link.load_stored() is None


def test_bundle_for_another_host_or_older_generation_is_refused(tmp_path, ca):
    from xen_tvd.master.bundle import BundleRejected
    link = enrolled(tmp_path, ca)
    with pytest.raises(BundleRejected, match="for host 'dom0-b'"):
        link.accept(sign_bundle(payload(host="dom0-b"), *ca.signer), 0)
    with pytest.raises(BundleRejected, match="rollback"):
        link.accept(sign_bundle(payload(gen=2), *ca.signer), 3)
    with pytest.raises(BundleInvalid, match="does not verify"):
        link.accept(sign_bundle(payload(policy="version: 1\ntvds: 5\n"), *ca.signer), 0)
    with pytest.raises(BundleInvalid, match="lacks"):
        link.accept(sign_bundle(payload(plan={"segments": [
            {"tvd": "nope", "bridge": "tvd-nope", "mtu": 1500, "uplink": None}]}), *ca.signer), 0)


def test_enrolment_of_another_host_or_none_stops_the_start(tmp_path, ca):
    with pytest.raises(LinkError, match="not enrolled.*tvd-proxy enroll"):
        MasterLink(str(tmp_path / "nothing"), "dom0-a", lambda: {})
    enrolled(tmp_path, ca, host="dom0-b")
    with pytest.raises(LinkError, match="enrolment of host 'dom0-b', not 'dom0-a'"):
        MasterLink(str(tmp_path / "state"), "dom0-a", lambda: {})


# ---- audit spool ---------------------------------------------------------------------------

def test_audit_spool_keeps_order_and_survives_a_torn_line(tmp_path):
    sp = AuditSpool(str(tmp_path))
    ids = [sp.append("admitted", vm=str(i))["id"] for i in range(5)]
    assert stat.S_IMODE(os.stat(sp.path).st_mode) == 0o600
    with open(sp.path, "ab") as f:
        f.write(b'{"id": "torn')                         # crash mid-append
    events, used = sp.head(3)
    assert [e["id"] for e in events] == ids[:3] and used == 3
    sp.drop(used)
    later = sp.append("detached", vm="9")["id"]
    events, used = sp.head()
    assert [e["id"] for e in events] == ids[3:] + [later]
    sp.drop(used)
    assert sp.size() == 0


# ---- capabilities --------------------------------------------------------------------------

def test_functional_capabilities_are_probed_in_a_throwaway_namespace(tmp_path):
    before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = capabilities.detect_functional()
    # the dataplane tests of this repository need these three on the test kernel
    assert {"bridge", "vxlan", "nftables"} <= set(found)
    # each probe agrees with an independent attempt in a fresh namespace
    for name in ("vlan", "wireguard"):
        r = subprocess.run(["unshare", "--net", "sh", "-c", capabilities.PROBES[name]],
                           capture_output=True)
        assert (name in found) == (r.returncode == 0)
    after = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "tvdprobe" not in after and before.count("\n") == after.count("\n")


def test_capability_file_errors_name_the_fix(tmp_path):
    f = tmp_path / "caps.json"
    f.write_text(json.dumps({"nics": [{"network": "lan", "nic": "eth0"}]}))
    with pytest.raises(capabilities.CapabilityError, match=r"nics\[0\]: 'address'"):
        capabilities.load_file(str(f), True)
    ev = tmp_path / "tpm.log"
    ev.write_bytes(b"\x00\x01binary")
    f.write_text(json.dumps({"security": [{"property": "tpm-measured-boot",
                                           "assurance": "immutable-log", "evidence-file": str(ev)}]}))
    nics, sec = capabilities.load_file(str(f), True)
    assert sec[0]["evidence"] == base64.b64encode(b"\x00\x01binary").decode()
    with pytest.raises(capabilities.CapabilityError, match="does not exist"):
        capabilities.load_file(str(tmp_path / "none.json"), True)
    assert capabilities.load_file(str(tmp_path / "none.json"), False) == ([], [])


def test_digest_cache_sees_a_rewrite_that_keeps_size_and_mtime(tmp_path):
    img = tmp_path / "vmlinuz"
    img.write_bytes(b"A" * 4096)
    cache = evidence.DigestCache()
    first = cache.get(str(img))
    assert first == evidence.hash_file(str(img)) and cache.get(str(img)) == first
    st = os.stat(img)
    time.sleep(0.01)
    with open(img, "r+b") as f:          # same size ...
        f.write(b"B")
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))   # ... and the old mtime put back
    assert cache.get(str(img)) != first  # ctime moved: hashed again
    assert cache.get(str(img)) == evidence.hash_file(str(img))
    with pytest.raises(evidence.EvidenceError, match="fix the kernel/disk path"):
        cache.get(str(tmp_path / "gone"))


def test_an_older_stored_bundle_than_ever_accepted_is_a_rollback(tmp_path, ca):
    link = enrolled(tmp_path, ca)
    bundle_store.store(link.dir, sign_bundle(payload(gen=3), *ca.signer))
    bundle_store.write_high_water(link.dir, 5)       # gen 5 was in force before a restore
    assert link.load_stored() is None
    bundle_store.write_high_water(link.dir, 3)       # never lowers the mark
    assert bundle_store.read_high_water(link.dir) == 5
    bundle_store.store(link.dir, sign_bundle(payload(gen=6), *ca.signer))
    assert link.load_stored().generation == 6


@pytest.mark.parametrize("alpha_beta", ["open", "closed"])
def test_routed_plan_travels_in_the_bundle_and_narrows_as_standalone_plans(alpha_beta):
    """The master plans a host for every TVD it may carry; the proxy's narrowing to what its
    local TVDs need gives exactly the router and flow plan the planner gives a host carrying
    only those (the standalone path), for every choice of local TVDs."""
    text = master_lab.ROUTED_POLICY % {"alpha_beta": alpha_beta}
    policy = bundle_store.parse_policy(text, "routed")
    every = {h: set(policy.tvds) for h in policy.hosts}
    full = decide.Decision(plan(policy, {}, every)["dom0-a"])
    content = decide.bundle_content(text, URL, "dom0-a", full, {})
    b = bundle_store.parse_payload(dict(content, generation=3), "dom0-a", URL)
    assert (b.router, b.flows) == (full.state.router, full.state.flows)
    for local in ({"alpha"}, {"beta"}, {"gamma"}, {"beta", "gamma"}, set()):
        need = routes.needed(policy, "dom0-a", local)
        alone = plan(policy, {}, {"dom0-a": local})["dom0-a"] if local else HostState("dom0-a")
        assert {s.tvd for s in alone.segments} == need
        assert routes.narrow(b.router, b.flows, need) == (alone.router, alone.flows), local
    # closed alpha -> beta: beta alone is not routed at all
    if alpha_beta == "closed":
        assert routes.narrow(b.router, b.flows, {"beta"}) == (None, None)


def test_a_bundle_with_half_a_routed_plan_or_a_leg_without_its_segment_is_refused():
    text = master_lab.ROUTED_POLICY % {"alpha_beta": "open"}
    policy = bundle_store.parse_policy(text, "routed")
    full = decide.Decision(plan(policy, {}, {"dom0-a": {"alpha"}})["dom0-a"])
    content = decide.bundle_content(text, URL, "dom0-a", full, {})
    half = dict(content, generation=3, plan={k: v for k, v in content["plan"].items()
                                             if k != "flows"})
    with pytest.raises(BundleInvalid, match="router without flows"):
        bundle_store.parse_payload(half, "dom0-a", URL)
    no_beta = dict(content, generation=3, plan=dict(
        content["plan"], segments=[s for s in content["plan"]["segments"] if s["tvd"] != "beta"]))
    with pytest.raises(BundleInvalid, match="router leg for TVD 'beta'"):
        bundle_store.parse_payload(no_beta, "dom0-a", URL)
    bad = dict(content, generation=3, plan=dict(content["plan"], flows={"pairs": "x"}))
    with pytest.raises(BundleInvalid, match=r"plan\.flows\.pairs"):
        bundle_store.parse_payload(bad, "dom0-a", URL)
