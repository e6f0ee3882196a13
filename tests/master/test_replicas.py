"""tvd-master replicas on etcd, and the same story on SQLite where it applies (tier 1: etcd
members and masters are processes on loopback; hosts use the proxy's real master link).

Kill the leader during a burst of enrolments and audit posts, kill an etcd member, stop a
minority, restart everything: no audit event lost or recorded twice, the chain verifies, no
generation is published twice or rolled back, every host converges on its newest bundle and
admissions (audit posts, enrolments) go on. A replica cut off from etcd answers 503."""
import os
import threading
import time

import pytest

from xen_tvd.master import client as mc

from tests.master import etcd_helpers
from tests.master.master_helpers import POLICY
from tests.master.replica_helpers import Host, Site
from tests.common.waiting import wait_for
from tests.master.master_helpers import cli

def _need_etcd():
    if not etcd_helpers.available():
        pytest.skip(etcd_helpers.SKIP_REASON)


def _policy(n: int) -> str:
    """POLICY with TVD alpha's session bound changed: every host's bundle changes."""
    return POLICY.replace("alpha: {vlan: 100, vni: 10100}",
                          f"alpha: {{vlan: 100, vni: 10100, session-seconds: {600 + n}}}")


def _converged(site, hosts):
    states = site.store().bundle_states()
    return all(h.link.generation == states.get(h.name, (0,))[0] > 0 and h.daemon.bundle
               for h in hosts)


def _burst(site, hosts, tmp, names, events_per_host):
    """Enrolments and audit events at once, as during a boot storm."""
    enrolled = []

    def enrol():
        for n in names:
            enrolled.append(Host(site, n, str(tmp / n), start=False))
    t = threading.Thread(target=enrol)
    t.start()
    for h in hosts:
        h.admit(events_per_host)
    return t, enrolled


@pytest.mark.parametrize("backend", ["etcd", "sqlite"])
def test_failures_lose_nothing_duplicate_nothing_and_hosts_converge(backend, tmp_path):
    if backend == "etcd":
        _need_etcd()
    site = Site(str(tmp_path), backend)
    hosts = []
    try:
        hosts = [Host(site, h, str(tmp_path / h)) for h in ("h1", "h2", "h3")]
        wait_for(lambda: _converged(site, hosts), "first bundles", timeout=30)
        extra = []
        version = 0

        def step(what, disrupt, names):
            nonlocal version
            t, enrolled = _burst(site, hosts, tmp_path, names, 25)
            disrupt()
            version += 1
            site.push(_policy(version))
            t.join(60)
            assert not t.is_alive(), f"{what}: enrolments hung"
            assert [h.name for h in enrolled] == names, f"{what}: an enrolment failed"
            extra.extend(enrolled)
            wait_for(lambda: _converged(site, hosts),
                     f"{what}: hosts converge on the newest bundle", timeout=45)
            wait_for(lambda: all(h.link.spool.size() == 0 for h in hosts),
                     f"{what}: audit spools drain", timeout=45)

        def kill_leader():
            i = site.wait_leader()
            site.masters[i].kill()
            if backend == "sqlite":       # the only master: it comes back (as systemd would)
                site.start_master(i)
        step("leader killed", kill_leader, ["x1", "x2", "x3"])
        for i, m in enumerate(site.masters):
            if m.proc.poll() is not None:
                site.start_master(i)      # the old leader rejoins as a follower
        if backend == "etcd":
            step("etcd member killed", lambda: site.etcd.kill(0), ["x4"])
            site.etcd.start([0])
            step("a minority stopped", lambda: site.etcd.stop(2), ["x5"])
            site.etcd.start([2])

        def restart_everything():
            for m in site.masters:
                m.stop()
            if site.etcd is not None:
                for i in range(len(site.etcd.members)):
                    site.etcd.stop(i)
                site.etcd.start()
            for i in range(len(site.masters)):
                site.start_master(i)
        step("everything restarted", restart_everything, ["x6"])

        # nothing lost, nothing twice
        store = site.store()
        log = store.audit_events(limit=100000)
        recorded = [e["id"] for e in log if e["actor"].startswith("host:") and e["id"]]
        sent = [i for h in hosts for i in h.sent]
        assert len(recorded) == len(set(recorded)), "an audit event was recorded twice"
        assert set(recorded) == set(sent), "an audit event was lost"
        assert cli(site.dirs[-1], "audit", "--verify").stdout.strip().endswith(
            "hash chain intact")
        # no generation twice, none rolled back: what hosts accepted, and (etcd) everything
        # any leader ever published
        for h in hosts:
            gens = [g for g, _ in h.daemon.received]
            assert gens == sorted(set(gens)), f"{h.name} accepted {gens}"
        if backend == "etcd":
            for host, published in site.bundle_history().items():
                gens = [g for g, _ in published]
                assert gens == sorted(set(gens)), f"{host}: published {published}"
        # admissions go on: a new host enrols and a new event is recorded
        late = Host(site, "x9", str(tmp_path / "x9"), start=False)
        late.link.client.post_audit([{"id": "late-1", "event": "admitted"}])
        assert store.host_cert_ok("x9", _serial(tmp_path / "x9"))
        assert [e["id"] for e in store.audit_events(limit=100000)][-1] == "late-1"
    finally:
        for h in hosts:
            h.stop()
        site.close()


def _serial(state_dir) -> int:
    from cryptography import x509
    with open(os.path.join(state_dir, "master", "host.pem"), "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).serial_number


def test_a_replica_cut_off_from_etcd_refuses_writes_and_hosts_use_another(tmp_path):
    """Replica 2 reaches only etcd member 2; with members 0 and 1 stopped member 2 has no
    quorum, so replica 2 answers 503 to everything that needs the store (never from what
    it saw last) and the host's link fails over to the replicas that still have quorum."""
    _need_etcd()
    site = Site(str(tmp_path), "etcd")
    try:
        only2 = f"etcd://{site.etcd.members[2].client}/tvd-master"
        with open(os.path.join(site.dirs[2], "store"), "w") as f:
            f.write(only2 + "\n")
        site.masters[2].stop()
        site.start_master(2)
        h = Host(site, "h1", str(tmp_path / "h1"), start=False)
        ca = h.link.ca_pem
        direct = mc.MasterClient(site.urls[2], ca, os.path.join(tmp_path, "h1", "master",
                                                                 "host.pem"),
                                 os.path.join(tmp_path, "h1", "master", "host.key"))
        assert direct.post_audit([{"id": "before", "event": "admitted"}])["recorded"] == 1
        site.etcd.stop(0)
        site.etcd.stop(1)
        t0 = time.monotonic()
        status, body = direct.request("POST", "/v1/audit",
                                      {"events": [{"id": "cut-off", "event": "admitted"}]})
        assert status == 503 and "store" in body["error"]
        assert time.monotonic() - t0 < 15
        # the majority comes back; replica 2 answers again, and the event it refused is
        # recorded once when the host posts it again
        site.etcd.start([0, 1])
        wait_for(lambda: direct.request(
            "POST", "/v1/audit", {"events": [{"id": "cut-off", "event": "admitted"}]})[0] == 200,
            "replica 2 answers", timeout=30)
        ids = [e["id"] for e in site.store().audit_events(limit=1000)]
        assert ids.count("cut-off") == 1 and ids.count("before") == 1
    finally:
        site.close()
