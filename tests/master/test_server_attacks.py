"""Attacks on tvd-master (issue #16), run against a real server over TLS; each counts what
got through at the victim and compares with the adversarial corpus (tests/adversarial)."""
from __future__ import annotations

import http.client
import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xen_tvd.master import client as mc
from xen_tvd.master.bundle import verify_bundle
from xen_tvd.master.listener import Limits
from xen_tvd.master.store import Store

from tests.adversarial.adversarial_helpers import assert_count, attack
from tests.master.flood_helpers import Flood
from tests.master.master_helpers import (POLICY, REPORT, Enrolled, MasterProcess, admin_client, init_dir,
                            raw_request)

DIGEST = "sha256:" + "ab" * 32
# every route that reads a body, with the certificate it needs (None: no certificate)
BODY_ROUTES = [("POST", "/v1/enroll", None), ("PUT", "/v1/hosts/h1/capabilities", "host"),
               ("POST", "/v1/audit", "host"), ("PUT", "/v1/policy", "admin"),
               ("PUT", f"/v1/images/{DIGEST}", "admin")]


def contexts(master) -> dict:
    h1 = master.enroll("h1")
    return {None: mc.client_context(master.m.ca_pem), "host": h1.client.ctx,
            "admin": master.admin().ctx}


def deep(levels: int) -> bytes:
    return b'{"token": ' + b"[" * levels + b"]" * levels + b"}"


def test_deep_json_bodies_get_a_400_never_a_500(master):
    a = attack("deep-json-master")
    ctx = contexts(master)
    answers = [(path, levels, *raw_request(master.url, ctx[role], method, path, deep(levels)))
               for method, path, role in BODY_ROUTES for levels in a["levels"]]
    assert len(answers) == a["sent"]
    assert_count("deep-json-master", sum(status >= 500 for _, _, status, _ in answers))
    for path, levels, status, data in answers:
        assert status == 400 and b"nested deeper than 32 levels" in data, (path, levels, data)


# JSON values as an attacker would send them: any shape, including the fields' own names
NAMES = st.sampled_from(["token", "host", "csr", "events", "id", "event", "ts", "vm", "name",
                         "functional", "nics", "security", "property", "assurance",
                         "evidence", "yaml", "properties", "network", "nic", "address"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) \
    | st.sampled_from(["admitted", "bridge", "trust", "lan", "h1", "tvd1.a.b.c", ""])
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(NAMES | st.text(max_size=8), kids, max_size=5),
                      max_leaves=20)
BODIES = st.dictionaries(NAMES, VALUES, max_size=6).map(lambda d: json.dumps(d).encode()) \
    | st.binary(max_size=200)


def test_fuzzed_bodies_headers_and_paths_never_get_a_500(master):
    a = attack("fuzz-master-inputs")
    ctx = contexts(master)
    seen = {"sent": 0, "internal": []}

    @settings(max_examples=a["sent"], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(route=st.sampled_from(BODY_ROUTES), body=BODIES,
           length=st.none() | st.sampled_from(["-1", "x", "99999999999", "0"]),
           query=st.sampled_from(["", "?after=-1", "?wait=nan", "?after=1e3", "?limit=0",
                                  "?wait=inf", "?after=%00"]))
    def one(route, body, length, query):
        method, path, role = route
        headers = {"Content-Length": length} if length is not None else {}
        if method == "POST" and path == "/v1/audit" and query:
            method, path = "GET", "/v1/audit"        # the admin read with odd queries
            role = "admin"
        elif query:
            method, path = "GET", "/v1/hosts/h1/bundle"
            role = "host"
        try:
            status, data = raw_request(master.url, ctx[role], method, path + query, body,
                                       headers)
        except (OSError, http.client.HTTPException):
            status, data = 0, b""         # reset: refused before reading a lying Content-Length
        seen["sent"] += 1
        if status >= 500:
            seen["internal"].append((method, path + query, body[:80], length, status, data))
    one()
    assert seen["sent"] == a["sent"]
    assert not seen["internal"], seen["internal"][:3]
    assert_count("fuzz-master-inputs", len(seen["internal"]))
    # and the master still serves
    assert master.enroll("h2").client.put_capabilities("h2", REPORT)["changed"]


def _events(i: int, **fields) -> bytes:
    return json.dumps({"events": [dict({"id": f"odd-{i}", "event": "admitted"}, **fields)]}).encode()


# values that parse but broke whoever stored, re-encoded or named a file after them
ODD_VALUES = [
    ("POST", "/v1/audit", "host", _events(1, ts=10**30)),
    ("POST", "/v1/audit", "host", b'{"events": [{"id": "odd-2", "event": "admitted", "ts": 1e999}]}'),
    ("POST", "/v1/audit", "host", b'{"events": [{"id": "odd-3", "event": "admitted", "ts": NaN}]}'),
    ("POST", "/v1/audit", "host", _events(4, vm="\ud800", tvd="alpha")),
    ("PUT", "/v1/hosts/h1/capabilities", "host",
     json.dumps({"security": [{"property": "\ud800", "assurance": "trust"}]}).encode()),
    ("PUT", f"/v1/images/{DIGEST}", "admin", json.dumps({"properties": {"\udfff": "trust"}}).encode()),
    ("POST", "/v1/enroll", None, json.dumps({"token": "tvd1.\ud800.b.c", "host": "h9", "csr": "x"}).encode()),
    ("PUT", "/v1/policy", "admin", json.dumps({"yaml": "version: 1\n\ud800", "name": "a"}).encode()),
] + [("PUT", "/v1/policy", "admin", json.dumps({"yaml": "version: 1\n", "name": n}).encode())
     for n in ("\x00", "../..", ".")]


def test_odd_values_get_a_4xx_never_a_500_nor_an_acceptance(master):
    a = attack("odd-values-master")
    ctx = contexts(master)
    answers = [(path, body, *raw_request(master.url, ctx[role], method, path, body))
               for method, path, role, body in ODD_VALUES]
    assert len(answers) == a["sent"]
    assert_count("odd-values-master",
                 sum(not 400 <= status < 500 for _, _, status, _ in answers))
    assert master.store.policy()[0] == 1          # no push got through


# ---- connection floods (#16.4) --------------------------------------------------------------

@pytest.fixture
def master_process(tmp_path):
    """A real `tvd-master serve` process (the victim), an enrolled host and an admin."""
    d = str(tmp_path / "m")
    url = init_dir(d)
    Store(os.path.join(d, "master.db")).add_policy(POLICY, "p.yaml", "test")
    proc = MasterProcess(d, url, str(tmp_path / "master.log"))
    try:
        host = Enrolled(d, url, "h1", str(tmp_path / "h1"))
        host.client.put_capabilities("h1", REPORT)
        yield SimpleNamespace(dir=d, url=url, proc=proc, port=int(url.rsplit(":", 1)[1]),
                              host=host, admin=admin_client(d, url, str(tmp_path)))
    finally:
        proc.stop()


def legit_requests(host, admin, n: int, pause: float = 0.2) -> tuple[int, list[float]]:
    """n requests of an enrolled host (Enrolled) and an admin (MasterClient), alternating:
    (how many were not answered, latencies of those that were)."""
    unanswered, took = 0, []
    for i in range(n):
        t0 = time.monotonic()
        try:
            if i % 2:
                admin.call("GET", "/v1/hosts", timeout=10)
            else:
                host.client.call("GET", f"/v1/hosts/{host.host}/bundle?after=0&wait=0",
                                 timeout=10)
        except mc.MasterError:
            unanswered += 1
            continue
        took.append(time.monotonic() - t0)
        time.sleep(pause)
    return unanswered, took


def test_hosts_and_admins_are_served_while_a_flood_of_idle_and_slow_connections_is_open(
        master_process):
    a = attack("flood-idle-connections")
    flood = Flood(master_process.port, a["connections"], reconnect=True)
    try:
        flood.open_all()         # (the server may refuse some: its right)
        unanswered, took = legit_requests(master_process.host, master_process.admin,
                                          a["legit_requests"])
        still_open = flood.open_count()
    finally:
        flood.close()
    print(f"flood of {a['sent']}: {flood.failed} refused, {still_open} open at the end, {flood.closed_by_server} closed "
          f"by the server and reopened; legit answered {len(took)}/{a['legit_requests']}, "
          f"max {max(took, default=0) * 1000:.0f} ms")
    assert_count("flood-idle-connections", unanswered)
    assert still_open >= a["sent"] // 2        # the attack was on while the hosts were served


def test_a_full_preauth_budget_drops_the_oldest_so_a_reconnecting_flood_locks_nobody_out(
        master_with):
    a = attack("flood-over-preauth-budget")
    m = master_with(Limits(**a["limits"]))
    host, admin = m.enroll("h1"), m.admin()
    flood = Flood(m.port, a["connections"], reconnect=True)
    try:
        flood.open_all()
        unanswered, _ = legit_requests(host, admin, a["legit_requests"], pause=0.1)
        evicted = m.srv.shed["evicted"]
    finally:
        flood.close()
    assert_count("flood-over-preauth-budget", unanswered)
    assert evicted > 0 and m.srv.preauth <= a["limits"]["preauth"]


def test_one_source_gets_per_source_places_and_no_more(master_with):
    a = attack("flood-one-source")
    m = master_with(Limits(**a["limits"]))
    host, admin = m.enroll("h1"), m.admin()
    flood = Flood(m.port, a["connections"], sources=1)
    try:
        flood.open_all()
        unanswered, _ = legit_requests(host, admin, a["legit_requests"], pause=0.05)
        held = {s for s in m.srv.by_source}
        per_source = m.srv.by_source["127.0.0.2"]
        refused = m.srv.shed["per-source"]
    finally:
        flood.close()
    assert_count("flood-one-source", unanswered)
    assert per_source <= a["limits"]["per_source"] and held <= {"127.0.0.2"}
    assert refused == a["sent"] - a["limits"]["per_source"]


def test_idle_half_open_and_slowloris_connections_are_dropped_at_their_deadline(master_with):
    a = attack("idle-past-deadline")
    m = master_with(Limits(**a["limits"]))
    flood = Flood(m.port, a["connections"])
    try:
        flood.open_all()
        assert flood.opened == a["sent"]
        deadline = time.monotonic() + 10
        while flood.open_count() and time.monotonic() < deadline:
            time.sleep(0.1)
        outlived = flood.open_count()
    finally:
        flood.close()
    assert_count("idle-past-deadline", outlived)
    shed = m.srv.shed
    assert shed["timeout-handshake"] + shed["timeout-head"] == a["sent"]
    assert m.srv.preauth == 0


def test_certificate_holders_have_their_own_budget_and_each_identity_a_share(master_with):
    a = attack("one-identity-many-connections")
    m = master_with(Limits(**a["limits"]))
    host, admin = m.enroll("h1"), m.admin()
    gen = verify_bundle(host.client.bundle("h1", 0, 5), host.ca, "h1", m.url, 0)["generation"]

    def watch():             # a long poll that nothing will end early: 204 after 2 s
        try:
            out.append(host.client.bundle("h1", gen, 2))
        except mc.MasterError as e:
            out.append(e.status)
    out, threads = [], [threading.Thread(target=watch, daemon=True) for _ in range(a["sent"])]
    for t in threads:
        t.start()
    unanswered, _ = legit_requests(m.enroll("h2"), admin, a["legit_requests"], pause=0.05)
    for t in threads:
        t.join(15)
    assert sorted(out, key=str) == [0] * (a["sent"] - a["limits"]["per_identity"]) \
        + [None] * a["limits"]["per_identity"]      # 0: closed at the handshake
    assert_count("one-identity-many-connections", unanswered)
