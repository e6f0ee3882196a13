"""Attacks on tvd-proxy's socket (issue #16), against a real proxy process in a lab namespace;
each counts what got through at the victim and compares with the adversarial corpus."""
from __future__ import annotations

import json
import signal
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xen_tvd.proxy import protocol

from tests.adversarial.adversarial_helpers import assert_count, attack
from tests.proxy.reload_helpers import big_policy
from tests.hotplug.tvd_harness import POLICY, ip, link_info

UUID = "0b7c3f3e-0000-4000-8000-000000000001"


def test_deep_json_requests_are_refused_never_an_internal_error(lab):
    a = attack("deep-json-proxy")
    p = lab.proxy()
    answers = [p.raw(b'{"v": 1, "op": "ping", "x": ' + b"[" * n + b"]" * n + b"}\n")
               for n in a["levels"]]
    assert len(answers) == a["sent"]
    assert_count("deep-json-proxy", sum("internal error" in r.get("error", "") for r in answers))
    for r in answers:
        assert r["ok"] is False and "nested deeper than 32 levels" in r["error"], r
    assert p.client.ping()["ok"]


# requests as an attacker (or a broken hotplug script) would send them: the protocol's own
# field names and some valid values, in any shape
KEYS = st.sampled_from(["v", "op", "uuid", "name", "nics", "properties", "tvd", "devid",
                        "ifname", "domid", "bridge", "type", "mac", "ip", "cert", "images"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) \
    | st.text(max_size=12) | st.sampled_from(
        [1, UUID, "beta", "tvd:beta", "tvd:", "vif9.0", "vif", "tap", "00:16:3e:00:00:01",
         "10.0.0.1 ::1", "-----BEGIN CERTIFICATE-----", "/boot/x"])
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=3)
                      | st.dictionaries(KEYS | st.text(max_size=6), kids, max_size=4),
                      max_leaves=12)
OPS = st.sampled_from(["ping", "register", "unregister", "join", "leave", "vif-online",
                       "vif-offline", "status"])
REQUESTS = st.builds(lambda op, rest: json.dumps({"v": 1, "op": op, **rest}).encode() + b"\n",
                     OPS, st.dictionaries(KEYS.filter(lambda k: k not in ("v", "op")), VALUES,
                                          max_size=6)) | st.binary(min_size=1, max_size=100)


def test_fuzzed_requests_get_an_answer_never_an_internal_error(lab):
    a = attack("fuzz-proxy-requests")
    p = lab.proxy()
    seen = {"sent": 0, "internal": []}

    @settings(max_examples=a["sent"], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=REQUESTS)
    def one(data):
        r = p.raw(data)
        seen["sent"] += 1
        if not r.get("ok") and "internal error" in r.get("error", ""):
            seen["internal"].append((data[:200], r["error"]))
    one()
    assert seen["sent"] == a["sent"]
    assert_count("fuzz-proxy-requests", len(seen["internal"]))
    assert p.client.ping()["ok"]


# ---- big policies on reload (#16.5) ----------------------------------------------------------

def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def reloading(lab, tmp_path, text: str):
    """A proxy started on a copy of the example policy, then sent SIGHUP with `text` as its
    policy file."""
    p = lab.proxy(policy=str(tmp_path / "policy.yaml"), start=False)
    with open(POLICY) as src, open(p.policy, "w") as f:
        f.write(src.read())
    p.start()
    with open(p.policy, "w") as f:
        f.write(text)
    p.proc.send_signal(signal.SIGHUP)
    return p


def reload_ended(p) -> bool:
    log = p.log()
    return "event=reloaded" in log or "event=reload-failed" in log


def test_an_over_limit_policy_is_refused_at_reload_early_and_the_old_one_stays(lab, tmp_path):
    a = attack("reload-over-limit-policy")
    p = reloading(lab, tmp_path, big_policy(POLICY, a["bytes"]))
    # before #16.5 this read all 14 MB (minutes, over a GiB) and loaded it
    deadline = time.monotonic() + 30
    while not reload_ended(p):
        assert time.monotonic() < deadline, "no end of the reload within 30 s"
        time.sleep(0.05)
    assert_count("reload-over-limit-policy", p.log().count("event=reloaded"))
    assert "more than 250000 values" in p.log()
    assert peak_rss_mib(p.proc.pid) < a["peak_rss_mib"]
    assert p.client.status()["ok"]


def test_requests_are_served_while_a_big_policy_reloads(lab, tmp_path):
    a = attack("reload-big-policy-stall")
    p = reloading(lab, tmp_path, big_policy(POLICY, a["bytes"]))
    during, unanswered = 0, 0
    while not reload_ended(p):
        try:
            during += p.request({"op": "status"}, timeout=a["answer_within_s"])["ok"]
        except protocol.ProxyUnreachable:     # no answer in time: a stalled request
            unanswered += 1
    assert "event=reloaded" in p.log(), p.log()[-2000:]
    assert_count("reload-big-policy-stall", unanswered)
    assert during > 0            # answered between the reload's start and its end
    assert peak_rss_mib(p.proc.pid) < a["peak_rss_mib"]


# ---- issue #16.2: any interface accepted as a vif --------------------------------------------

def _vif_online(dev: str, domid: int, devid: int = 0) -> dict:
    return {"op": "vif-online", "uuid": UUID, "domid": domid, "devid": devid, "ifname": dev,
            "bridge": "tvd:beta", "type": "vif"}


def test_a_host_device_named_as_a_vif_is_refused_and_never_touched(lab):
    """vif-online named the host's uplink (eth0) and it went into tvd-beta with MTU 1450;
    vif-offline left it down. Also a port of a host bridge and a spare host veth."""
    a = attack("host-device-as-vif")
    p = lab.proxy()   # the lab's proxy: --vif-driver veth, the most permissive
    ns = lab.host_ns["dom0-a"]
    ip("link", "add", "hostbr0", "type", "bridge", ns=ns)
    ip("link", "add", "vif8.0", "type", "veth", "peer", "name", "spare0", ns=ns)
    ip("link", "set", "vif8.0", "master", "hostbr0", "up", ns=ns)
    ip("link", "set", "hostbr0", "up", ns=ns)
    ip("link", "set", "spare0", "up", ns=ns)
    ip("addr", "add", "192.0.2.1/24", "dev", "spare0", ns=ns)
    devices = {"eth0": 7, "vif8.0": 8, "spare0": 7}
    before = {d: link_info(ns, d) for d in devices}
    answers = []
    for dev, domid in devices.items():
        answers.append(p.request(_vif_online(dev, domid)))
        answers.append(p.request({"op": "vif-offline", "ifname": dev}))
    assert len(answers) == a["sent"]
    after = {d: link_info(ns, d) for d in devices}
    taken = sum(bool(r["ok"]) for r in answers[0::2])
    changed = sum(after[d] != before[d] for d in devices)
    assert_count("host-device-as-vif", taken + changed)
    for r in answers[0::2]:
        assert "refusing" in r["error"], r
    assert all(r["ok"] for r in answers[1::2])   # vif-offline stays idempotent
    assert p.client.status()["vifs"] == []


def test_a_dom0_proxy_takes_only_xen_vifs(lab):
    """Without --vif-driver (a Dom0), a veth is no vif, however it is named."""
    a = attack("non-xen-device-as-vif")
    lab.proxy(vif_args=())
    vm = lab.vm("web", 7, nics={0: ("tvd:beta", "10.99.0.7")})
    r = lab.hotplug(vm)
    assert r.returncode != 0 and "its driver is veth, not a Xen backend vif" in r.stderr, r.stderr
    attached = link_info(lab.host_ns["dom0-a"], vm.vif(0))["master"] is not None
    assert_count("non-xen-device-as-vif", a["sent"] * attached)
