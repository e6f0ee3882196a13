"""tvd-master's API over real TLS on loopback: enrolment, roles, refusals, watch, revocation.
Every test runs on both stores: SQLite and etcd (one replica, which leads)."""
import os
import stat
import threading
import time

import pytest
from cryptography import x509

from xen_tvd.master import ca as camod
from xen_tvd.master import client as mc
from xen_tvd.master.bundle import verify_bundle
from xen_tvd.master import stores

from tests.master.master_helpers import POLICY, REPORT, Enrolled, start_master, token


@pytest.fixture(params=["sqlite", "etcd"])
def master(request, tmp_path):
    from xen_tvd.master import server
    url = None
    if request.param == "etcd":
        url = request.getfixturevalue("etcd_one").url(f"srv-{tmp_path.name}-{os.getpid()}")
    ns = start_master(tmp_path, store_url=url)
    yield ns
    server.stop(ns.srv, ns.m)


def report(n):
    return dict(REPORT, nics=[{"network": "lan", "nic": "eth0", "address": f"10.0.0.{n}"}])


def wait_log(capfd, needle, timeout=5.0):
    """The server logs a refused handshake in its own thread, maybe after the client saw it."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += capfd.readouterr().err
        if needle in seen:
            return seen
        time.sleep(0.05)
    return seen


def status_of(fn):
    with pytest.raises(mc.MasterError) as e:
        fn()
    assert "\n" not in str(e.value)
    return e.value.status, e.value.message


def test_enrolment_gives_a_host_cert_and_a_0600_key(master):
    h = master.enroll("h1")
    assert stat.S_IMODE(os.stat(h.key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(open(h.cert, "rb").read())
    assert camod.identity(cert)[:2] == ("xen-tvd-host", "h1")
    assert master.store.hosts()[0]["state"] == "enrolled"
    assert not [f for f in os.listdir(os.path.dirname(h.key)) if f.startswith(".host-key")]


def test_replayed_expired_and_foreign_tokens_are_refused_and_audited(master):
    t = token(master.dir, "h1")
    mc.enroll(master.url, t, "h1", os.path.join(master.tmp, "a.key"))
    expired = token(master.dir, "h2", ttl=-5)
    foreign = token(master.dir, "h3")
    for tok, host in ((t, "h1"), (expired, "h2"), (foreign, "h2")):
        key = os.path.join(master.tmp, f"k-{host}-{tok[5:9]}.key")
        st, msg = status_of(lambda: mc.enroll(master.url, tok, host, key))
        assert st == 401 and "enrolment refused" in msg
        assert not os.path.exists(key)
    reasons = [e["detail"]["reason"] for e in master.store.audit_events()
               if e["event"] == "enrol-refused"]
    assert any("already used" in r for r in reasons)
    assert any("expired" in r for r in reasons)
    assert any("issued for host h3" in r for r in reasons)


def test_a_token_pinned_to_another_ca_sends_nothing(master, other_ca):
    t = token(master.dir, "h1").rsplit(".", 1)[0] + "." + camod.ca_pin(other_ca.cert)
    st, msg = status_of(lambda: mc.enroll(master.url, t, "h1",
                                          os.path.join(master.tmp, "x.key")))
    assert st == 0 and "does not match the token's pin" in msg
    assert not [e for e in master.store.audit_events() if "enrol" in e["event"]]


def client_with(master, tmp, cert, key):
    kp, cp = os.path.join(tmp, "c.key"), os.path.join(tmp, "c.pem")
    camod.write_private_key(kp, key)
    camod.write_public(cp, camod.pem(cert))
    return mc.MasterClient(master.url, master.m.ca_pem, cp, kp)


def test_a_client_cert_from_another_ca_is_refused_at_the_handshake(master, other_ca, capfd):
    key = camod.new_ec_key()
    c = client_with(master, master.tmp, other_ca.issue_client(key.public_key(), "h1",
                                                              camod.HOST_OU), key)
    st, msg = status_of(lambda: c.bundle("h1"))
    assert st == 0
    assert "event=tls-refused" in wait_log(capfd, "event=tls-refused")


def test_an_expired_host_cert_is_refused(master, the_ca, capfd):
    import datetime as dt
    ca = camod.Ca.load(master.dir)
    key = camod.new_ec_key()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)
    cert = ca.issue_client(key.public_key(), "h1", camod.HOST_OU, 30, not_before=past)
    c = client_with(master, master.tmp, cert, key)
    st, _ = status_of(lambda: c.bundle("h1"))
    assert st == 0
    assert "event=tls-refused" in wait_log(capfd, "event=tls-refused")


def test_a_valid_cert_of_this_ca_not_on_record_is_refused(master):
    # e.g. a host certificate issued by the CA but never enrolled (or a stolen old one)
    ca = camod.Ca.load(master.dir)
    key = camod.new_ec_key()
    c = client_with(master, master.tmp, ca.issue_client(key.public_key(), "h1",
                                                        camod.HOST_OU), key)
    assert status_of(lambda: c.bundle("h1"))[0] == 403


def test_hosts_may_touch_only_their_own_resources(master):
    h1, h2 = master.enroll("h1"), master.enroll("h2")
    h2.client.put_capabilities("h2", report(2))
    st, msg = status_of(lambda: h1.client.bundle("h2"))
    assert st == 403 and "may not access host h2" in msg
    st, _ = status_of(lambda: h1.client.put_capabilities("h2", report(2)))
    assert st == 403


def test_admin_endpoints_refuse_host_certs_and_host_endpoints_refuse_admins(master):
    h1 = master.enroll("h1")
    admin = master.admin()
    for method, path in (("GET", "/v1/hosts"), ("GET", "/v1/audit"), ("GET", "/v1/tvds"),
                         ("POST", "/v1/hosts/h1/revoke"), ("PUT", "/v1/policy")):
        st, msg = status_of(lambda: h1.client.call(method, path, {}))
        assert st == 403 and "admin certificate" in msg
    assert status_of(lambda: admin.bundle("h1"))[0] == 403
    anon = mc.MasterClient(master.url, master.m.ca_pem)
    assert status_of(lambda: anon.call("GET", "/v1/hosts"))[0] == 401
    assert status_of(lambda: anon.bundle("h1"))[0] == 401
    assert [h["host"] for h in admin.call("GET", "/v1/hosts")["hosts"]] == ["h1"]


def test_bundle_is_signed_for_this_host_and_verifies(master):
    h1 = master.enroll("h1")
    h1.client.put_capabilities("h1", report(1))
    p = verify_bundle(h1.client.bundle("h1", 0, 10), h1.ca, "h1", master.url, 0)
    assert p["policy"] == POLICY
    # alone, h1 carries even the confidential gamma: host-local, nothing crosses a network
    assert [s["tvd"] for s in p["plan"]["segments"]] == ["alpha", "beta", "gamma"]
    assert all(s["uplink"] is None for s in p["plan"]["segments"])
    assert p["evidence"] == {"images": {}, "revoked_vm_certs": [], "revoked_vms": []}


def test_revoking_a_host_ends_its_open_watch_with_403_and_removes_it_from_peers(master):
    h1, h2 = master.enroll("h1"), master.enroll("h2")
    h1.client.put_capabilities("h1", report(1))
    h2.client.put_capabilities("h2", report(2))
    p2 = verify_bundle(h2.client.bundle("h2", 0, 10), h2.ca, "h2", master.url, 0)
    assert p2["plan"]["underlay_peers"] == ["10.0.0.1"]
    g1 = h1.client.bundle("h1", 0, 10)
    gen1 = verify_bundle(g1, h1.ca, "h1", master.url, 0)["generation"]
    result = {}

    def watch():
        try:
            h1.client.bundle("h1", gen1, 30)
            result["status"] = 200
        except mc.MasterError as e:
            result["status"] = e.status
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    # revoke from "the CLI": another connection, no in-process notification
    stores.open_store(master.dir).revoke_host("h1", "cli:test")
    t.join(10)          # far below the watch's 30 s: it ended because of the revocation
    assert not t.is_alive() and result["status"] == 403
    assert status_of(lambda: h1.client.put_capabilities("h1", report(1)))[0] == 403
    p2b = verify_bundle(h2.client.bundle("h2", p2["generation"], 10), h2.ca, "h2",
                        master.url, p2["generation"])
    assert p2b["plan"]["underlay_peers"] == []


def test_watch_answers_204_after_the_wait_and_wakes_on_a_policy_push(master):
    h1 = master.enroll("h1")
    h1.client.put_capabilities("h1", report(1))
    gen = verify_bundle(h1.client.bundle("h1", 0, 10), h1.ca, "h1", master.url, 0)["generation"]
    assert h1.client.bundle("h1", gen, 0.3) is None         # 204
    admin = master.admin()
    out = {}

    def watch():
        out["env"] = h1.client.bundle("h1", gen, 30)
    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    new = POLICY.replace("alpha: {vlan: 100, vni: 10100}",
                         "alpha: {vlan: 100, vni: 10100, session-seconds: 60}")
    assert admin.call("PUT", "/v1/policy", {"yaml": new, "name": "p.yaml"})["changed"]
    t.join(10)
    assert not t.is_alive()
    p = verify_bundle(out["env"], h1.ca, "h1", master.url, gen)
    assert p["generation"] > gen and "session-seconds: 60" in p["policy"]
    # pushing the same text again changes nothing and bumps nothing
    assert not admin.call("PUT", "/v1/policy", {"yaml": new})["changed"]
    assert h1.client.bundle("h1", p["generation"], 0.3) is None


def test_broken_policy_push_gives_file_line_errors_and_changes_nothing(master):
    admin = master.admin()
    st, body = admin.request("PUT", "/v1/policy",
                             {"yaml": POLICY.replace("vlan: 200", "vlan: banana"),
                              "name": "site.yaml"})
    assert st == 422 and "nothing changed" in body["error"]
    assert any(d.startswith("site.yaml:") and ":error:" in d.replace(" ", "")
               for d in body["diagnostics"])
    assert admin.call("GET", "/v1/policy")["version"] == 1


def test_host_outside_the_policy_may_not_report(master):
    h9 = master.enroll("h9")
    st, msg = status_of(lambda: h9.client.put_capabilities("h9", report(9)))
    assert st == 403 and "not in the policy" in msg


@pytest.mark.parametrize("body, needle", [
    ({"functional": ["teleport"]}, "unknown functional capability"),
    ({"security": [{"property": "x", "assurance": "vibes"}]}, "assurance must be one of"),
    ({"nics": "eth0"}, "nics must be a list"),
    ({"extra": 1}, "unknown field extra"),
    ({"wireguard-key": "c2hvcnQ="}, "wireguard-key must be a WireGuard public key"),
    ({"wireguard-key": 7}, "wireguard-key must be a WireGuard public key"),
    ({"wireguard-key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
      "wireguard-next-key": "c2hvcnQ="}, "wireguard-next-key must be a WireGuard public key"),
    ({"wireguard-next-key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="},
     "wireguard-next-key needs wireguard-key"),
    ({"wireguard-accepts": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="},
     "wireguard-accepts must be a list of WireGuard public keys"),
    ({"wireguard-accepts": ["c2hvcnQ="]}, "wireguard-accepts must be a list of WireGuard"),
])
def test_bad_capability_reports_get_one_line_400s(master, body, needle):
    h1 = master.enroll("h1")
    st, msg = status_of(lambda: h1.client.put_capabilities("h1", body))
    assert st == 400 and needle in msg


def test_malformed_requests_get_json_errors_never_tracebacks(master):
    import http.client
    ctx = mc.client_context(master.m.ca_pem)
    port = int(master.url.rsplit(":", 1)[1])

    def raw(method, path, body=b"", headers=None):
        c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data
    st, data = raw("POST", "/v1/enroll", b"{not json")
    assert st == 400 and b'"error"' in data and b"Traceback" not in data
    st, data = raw("POST", "/v1/enroll", b"x" * 70000)
    assert st == 413
    st, data = raw("GET", "/v1/nowhere")
    assert st == 404 and b"no such endpoint" in data
    st, data = raw("DELETE", "/v1/ca")
    assert st == 405
    st, data = raw("POST", "/v1/enroll", b'{"token": 1}')
    assert st == 400
    st, data = raw("GET", "/v1/hosts/h1%0Aevil/bundle")
    assert st == 401 and b"\\n" not in data
    h1 = master.enroll("h1")
    st, msg = status_of(lambda: h1.client.call("GET", "/v1/hosts/h2%0Aevil/bundle"))
    assert st == 403 and "h2 evil" in msg
    st, data = raw("PATCH", "/v1/ca")          # a method http.server itself refuses
    assert st == 501 and data.startswith(b'{"error": ')


def test_audit_posts_are_idempotent_and_feed_admissions(master):
    h1 = master.enroll("h1")
    ev = {"id": "0b7c3f3e-0000-4000-8000-000000000001", "ts": time.time(),
          "event": "admitted", "vm": "u-1", "name": "web", "tvd": "alpha", "ifname": "vif3.0"}
    assert h1.client.post_audit([ev]) == {"recorded": 1, "duplicates": 0}
    assert h1.client.post_audit([ev]) == {"recorded": 0, "duplicates": 1}
    admin = master.admin()
    adm = admin.call("GET", "/v1/admissions")["admissions"]
    assert adm == [{"host": "h1", "vm": "u-1", "name": "web", "tvd": "alpha",
                    "ifname": "vif3.0", "state": "admitted", "reason": None, "ts": ev["ts"]}]
    st, msg = status_of(lambda: h1.client.post_audit([dict(ev, event="party")]))
    assert st == 400


def test_evidence_rules_reach_the_bundle(master):
    h1 = master.enroll("h1")
    h1.client.put_capabilities("h1", report(1))
    gen = verify_bundle(h1.client.bundle("h1", 0, 10), h1.ca, "h1", master.url, 0)["generation"]
    admin = master.admin()
    digest = "sha256:" + "ab" * 32
    admin.call("PUT", f"/v1/images/{digest}", {"properties": {"web-server": "introspection"}})
    admin.call("POST", "/v1/vms/00000000-0000-4000-8000-00000000002a/revoke")
    p = verify_bundle(h1.client.bundle("h1", gen, 10), h1.ca, "h1", master.url, gen)
    assert p["evidence"]["images"] == {digest: {"web-server": "introspection"}}
    assert p["evidence"]["revoked_vms"] == ["00000000-0000-4000-8000-00000000002a"]
    assert status_of(lambda: admin.call("PUT", "/v1/images/sha256:xyz",
                                        {"properties": {"a": "trust"}}))[0] == 400


def test_clients_check_the_master_name_and_the_master_refuses_tls_1_2(master):
    import ssl
    port = master.url.rsplit(":", 1)[1]
    # the server certificate names 127.0.0.1 only: "localhost" must not be accepted
    c = mc.MasterClient(f"https://localhost:{port}", master.m.ca_pem)
    st, msg = status_of(lambda: c.call("GET", "/v1/ca"))
    assert st == 0 and "certificate check failed" in msg
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=master.m.ca_pem)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    import socket
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_push_made_by_another_process_wakes_an_open_watch(master):
    # `tvd-master policy push` writes the database directly; the server must notice
    h1 = master.enroll("h1")
    h1.client.put_capabilities("h1", report(1))
    gen = verify_bundle(h1.client.bundle("h1", 0, 10), h1.ca, "h1", master.url, 0)["generation"]
    out = {}
    t = threading.Thread(target=lambda: out.update(env=h1.client.bundle("h1", gen, 30)))
    t.start()
    time.sleep(0.3)
    stores.open_store(master.dir).add_policy(
        POLICY.replace("gamma: {vlan: 300", "gamma: {vlan: 301"), "p.yaml", "cli:test")
    t.join(10)
    assert not t.is_alive()
    p = verify_bundle(out["env"], h1.ca, "h1", master.url, gen)
    assert p["generation"] > gen and "vlan: 301" in p["policy"]


def test_a_revoked_host_re_enrols_with_a_new_token_and_its_old_cert_stays_dead(master):
    old = master.enroll("h1")
    old.client.put_capabilities("h1", report(1))
    master.admin().call("POST", "/v1/hosts/h1/revoke")
    new = Enrolled(master.dir, master.url, "h1", os.path.join(master.tmp, "h1-new"))
    assert status_of(lambda: old.client.bundle("h1"))[0] == 403
    # the old report does not speak for the new key: no segments until it reports again
    p = verify_bundle(new.client.bundle("h1", 0, 10), new.ca, "h1", master.url, 0)
    assert p["plan"]["segments"] == [] and "not reported" in p["refused"]["alpha"]
    new.client.put_capabilities("h1", report(1))
    p2 = verify_bundle(new.client.bundle("h1", p["generation"], 10), new.ca, "h1",
                       master.url, p["generation"])
    assert [s["tvd"] for s in p2["plan"]["segments"]] == ["alpha", "beta", "gamma"]


def test_a_reported_wireguard_public_key_is_kept_with_the_report(master):
    key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    h1 = master.enroll("h1")
    h1.client.put_capabilities("h1", dict(report(1), **{"wireguard-key": key}))
    assert master.m.store.reports()["h1"]["wireguard-key"] == key
    # a rotation: the next key, and the peers' rotating keys this host accepts
    nxt = "qpI2Hh6Zcs9Anfgj2VVC2dlMWuy2ukeE96ad9ZNTCQU="
    h1.client.put_capabilities("h1", dict(report(1), **{
        "wireguard-key": key, "wireguard-next-key": nxt, "wireguard-accepts": [nxt, nxt]}))
    kept = master.m.store.reports()["h1"]
    assert (kept["wireguard-next-key"], kept["wireguard-accepts"]) == (nxt, [nxt])
