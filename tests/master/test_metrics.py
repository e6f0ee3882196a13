"""tvd-master's Prometheus metrics (docs/metrics.md): the textfile a real `tvd-master serve`
writes parses with prometheus_client's parser and its numbers match the master's API."""
from __future__ import annotations

import math
import os
import re
import signal

import pytest

from xen_tvd.metrics import Family, Histogram, render
from xen_tvd.master.store import Store
from xen_tvd.reasons import VOCABULARY

from tests.master.master_helpers import (POLICY, REPORT, Enrolled, MasterProcess, admin_client, init_dir)
from tests.master.metrics_helpers import families, parse, scrape_until, value


def test_exposition_with_hostile_label_values_parses_back_exactly():
    """Label values are names from peers and admins: quotes, backslashes and newlines must be
    escaped so the parser reads back exactly what was meant."""
    nasty = 'a"b\\c\nd'
    h = Histogram("t_seconds", "latency", ("route",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(("r",), v)
    text = render([Family("t_things", "gauge", "things\nhelp").add(3, name=nasty).add(1.5),
                   Family("t_events_total", "counter", "events").add(7, event="x"), h.family()])
    s = parse(text)
    assert value(s, "t_things", name=nasty) == 3 and value(s, "t_things") == 1.5
    assert value(s, "t_events_total", event="x") == 7
    assert [value(s, "t_seconds_bucket", route="r", le=le) for le in ("0.1", "1.0", "+Inf")] \
        == [1, 2, 3]
    assert value(s, "t_seconds_count", route="r") == 3
    assert math.isclose(value(s, "t_seconds_sum", route="r"), 5.55)
    assert families(text) == {"t_things": "gauge", "t_events": "counter", "t_seconds": "histogram"}


def test_bad_names_are_refused_not_written():
    with pytest.raises(ValueError):
        Family("bad-name", "gauge", "x")
    with pytest.raises(ValueError):
        Family("t_events", "counter", "a counter's name ends in _total")
    with pytest.raises(ValueError):
        render([Family("ok", "gauge", "x").add(1, **{"__reserved": "v"})])


@pytest.fixture
def served(tmp_path):
    d = str(tmp_path / "m")
    url = init_dir(d)
    Store(os.path.join(d, "master.db")).add_policy(POLICY, "p.yaml", "test")
    prom = str(tmp_path / "tvd-master.prom")
    proc = MasterProcess(d, url, str(tmp_path / "master.log"),
                         ["--metrics-textfile", prom, "--metrics-interval", "0.2"])
    yield d, url, tmp_path, proc, prom
    proc.stop()


def test_a_real_master_writes_metrics_that_parse_and_match_its_api(served):
    d, url, tmp, proc, prom = served
    h1 = Enrolled(d, url, "h1", str(tmp / "h1"))
    h1.client.put_capabilities("h1", REPORT)
    env = h1.client.bundle("h1", 0, wait=5)
    assert env is not None
    vm2 = "22222222-2222-4222-8222-222222222222"
    # reasons as proxies word them (xen_tvd/proxy/admission.py) and free text a host may post:
    # counted under one word of a fixed vocabulary each, never under the text itself
    denials = [("admission denied for vif2.0: VM b does not satisfy M(t) of TVD 'beta': "
                "needs signed-kernel", "membership"),
               ("host 'h1' may not carry TVD 'beta': no vxlan", "host"),
               ("VM b: VM 2222 is revoked by the master", "revoked"),
               ("x", "other"), ('a "hostile"\nreason {le="+Inf"} ' * 20, "other")]
    h1.client.post_audit([{"id": "e1", "event": "admitted", "vm": "11111111-1111-4111-8111-"
                           "111111111111", "tvd": "alpha", "ifname": "vif1.0"}]
                         + [{"id": f"d{i}", "event": "denied", "vm": vm2, "tvd": "beta",
                             "ifname": "vif2.0", "reason": r} for i, (r, _) in enumerate(denials)]
                         + [{"id": "x1", "event": "detached", "vm": vm2, "tvd": "beta",
                             "ifname": "vif2.1", "reason": "vif-offline (the domain's vif went "
                                                           "away)"}])
    admin = admin_client(d, url, str(tmp))
    hosts = {h["host"]: h for h in admin.call("GET", "/v1/hosts")["hosts"]}
    version = admin.call("GET", "/v1/policy")["version"]
    assert hosts["h1"]["generation"] >= 1

    s = scrape_until(prom, lambda s: value(s, "tvd_master_audit_events_total",
                                           event="denied") == len(denials)
                     and value(s, "tvd_master_request_duration_seconds_count",
                               route="get_hosts", code="200") == 1)
    assert value(s, "tvd_master_hosts", state="enrolled") == 1
    assert value(s, "tvd_master_hosts", state="revoked") == 0
    assert value(s, "tvd_master_bundle_generation", host="h1") == hosts["h1"]["generation"]
    assert 0 <= value(s, "tvd_master_bundle_age_seconds", host="h1") < 60
    assert value(s, "tvd_master_host_last_contact_timestamp_seconds", host="h1") > 0
    assert value(s, "tvd_master_policy_version") == version
    assert value(s, "tvd_master_vm_nics", tvd="alpha", state="admitted") == 1
    assert value(s, "tvd_master_vm_nics", tvd="beta", state="denied") == 1
    assert value(s, "tvd_master_audit_events_total", event="admitted") == 1
    # admissions and denials by reason (issue #17.3): one word each, from a bounded vocabulary
    by_reason = {dict(labels)["reason"]: n for (name, labels), n in s.items()
                 if name == "tvd_master_admission_events_total"
                 and dict(labels)["event"] == "denied"}
    assert by_reason == {"membership": 1, "host": 1, "revoked": 1, "other": 2}, by_reason
    assert value(s, "tvd_master_admission_events_total", event="admitted", reason="") == 1
    assert value(s, "tvd_master_admission_events_total", event="detached", reason="gone") == 1
    assert {dict(labels)["reason"] for (name, labels) in s
            if name == "tvd_master_admission_events_total"} <= set(VOCABULARY)
    assert value(s, "tvd_master_recompute_errors_total") == 0
    assert value(s, "tvd_master_request_duration_seconds_count", route="get_bundle",
                 code="200") == 1
    assert value(s, "tvd_master_request_duration_seconds_bucket", route="get_bundle",
                 code="200", le="+Inf") == 1

    # an unknown path counts under route "none": a scanner shows up, with bounded labels
    admin.request("GET", "/v1/nope")
    scrape_until(prom, lambda s: value(s, "tvd_master_request_duration_seconds_count",
                                       route="none", code="404") == 1)
    # a revoked host moves between states
    admin.call("POST", "/v1/hosts/h1/revoke")
    scrape_until(prom, lambda s: value(s, "tvd_master_hosts", state="revoked") == 1
                 and value(s, "tvd_master_bundle_generation", host="h1") is None)

    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.wait(10)
    assert not os.path.exists(prom), "a stopped master must not leave metrics that look live"
    assert not re.search(r"Traceback", proc.logs())


def test_an_unwritable_metrics_path_is_a_one_line_usage_error(tmp_path):
    import subprocess
    import sys
    from tests.master.master_helpers import ROOT
    d = str(tmp_path / "m")
    url = init_dir(d)
    r = subprocess.run([sys.executable, "-m", "xen_tvd.master", "--dir", d, "serve", "--listen",
                        url.rsplit("//", 1)[1], "--metrics-textfile",
                        str(tmp_path / "no" / "such" / "dir" / "m.prom")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--metrics-textfile" in r.stderr and "Traceback" not in r.stderr
