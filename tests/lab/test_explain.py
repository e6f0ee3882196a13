"""`tvdctl explain --lab` (issue #17.1) on the routed-flows lab: every cell of its matrix gets
the right verdict and the right dropping rule, proven by one real probe per cell and the drop
counter that rose by it; a vif pulled off its vSwitch is reported as a disagreement first."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tests.lab.lab_helpers import REPO, running_lab

from xen_tvd.cli.explain import run
from xen_tvd.lab.explain import LabSource
from xen_tvd.policy import load_policy

FLOWS_SPEC = os.path.join(REPO, "xl-configs", "lab-flows.yaml")
FLOWS_POLICY = os.path.join(REPO, "xl-configs", "lab-flows-policy.yaml")

# Written out by hand from lab-flows-policy.yaml, not computed by the code under test:
# (src TVD, dst TVD) -> [(proto, port, allowed, dropping rule)]
SAME = [("icmp", None, True, None)]
PROBES = {
    ("app", "web"): [("icmp", None, True, None)],                      # open
    ("web", "app"): [("tcp", 8080, True, None),                        # both halves
                     ("tcp", 9090, False, "receiver"),                 # sender half only
                     ("tcp", 22, False, "sender"),                     # receiver half only
                     ("icmp", None, False, "sender")],
    ("app", "db"): [("tcp", 5432, True, None), ("icmp", None, True, None),
                    ("tcp", 5433, False, "sender")],
    ("db", "app"): [("icmp", None, False, "sender"), ("tcp", 80, False, "sender")],
    ("web", "db"): [("icmp", None, False, "closed")],
    ("db", "web"): [("icmp", None, False, "closed")],
}
MGMT_OUT = [("icmp", None, False, "no-route")]     # mgmt has no router card
TO_MGMT = [("icmp", None, False, "closed")]


def probes_for(s: str, d: str) -> list:
    if s == d:
        return SAME
    if s == "mgmt":
        return MGMT_OUT
    if d == "mgmt":
        return TO_MGMT
    return PROBES[(s, d)]


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    with running_lab(FLOWS_SPEC, FLOWS_POLICY, "x", str(tmp_path_factory.mktemp("lab"))) as lab:
        yield lab


def check_cell(source, policy, s: dict, d: dict) -> list[str]:
    wrong = []
    for proto, port, allowed, drop in probes_for(s["tvd"], d["tvd"]):
        r = run(source, policy, s["key"], d["key"], proto, port, probe=True,
                probe_timeout=3.0 if allowed else 1.0)
        if allowed and not r["probe"]["arrived"]:
            # a loaded machine can delay an answer past the timeout, never invent one
            r = run(source, policy, s["key"], d["key"], proto, port, probe=True,
                    probe_timeout=8.0)
        what = f"{s['key']}({s['tvd']}) -> {d['key']}({d['tvd']}) {proto}/{port}"
        pol, pr = r["policy"], r["probe"]
        rules = {x["reason"] for x in pr["drops"] if x["where"] == "flow filter"}
        if (pol["allowed"], pol["drop"]) != (allowed, drop):
            wrong.append(f"{what}: policy says {pol['allowed']}/{pol['drop']}")
        elif pr["arrived"] != allowed:
            wrong.append(f"{what}: probe arrived={pr['arrived']} ({pr['detail']})")
        elif drop in ("closed", "sender", "receiver") and drop not in rules:
            wrong.append(f"{what}: {drop} expected to count it, counted {pr['drops']}")
        elif drop == "no-route" and rules:
            wrong.append(f"{what}: nothing should reach a filter, counted {rules}")
        elif r["disagreements"] or r["verdict"] != ("allowed" if allowed else "denied"):
            wrong.append(f"{what}: {r['verdict']} {r['disagreements']}")
    return wrong


def test_every_cell_of_the_flows_matrix_gets_its_verdict_and_dropping_rule(flows):
    """One worker per unordered TVD pair, its cells one after the other: a probe is known by
    the rise of its pair's counters, so no two probes of one pair may overlap."""
    import concurrent.futures
    policy = load_policy(FLOWS_POLICY)
    source = LabSource(flows.name, policy)
    eps = source.endpoints()
    assert len(eps) == 8
    by_pair: dict = {}
    for s in eps:
        for d in eps:
            if s["vm"] != d["vm"]:
                by_pair.setdefault(frozenset((s["tvd"], d["tvd"])), []).append((s, d))
    assert sum(len(c) for c in by_pair.values()) == 8 * 7

    def walk(cells):
        return [w for s, d in cells for w in check_cell(source, policy, s, d)]
    with concurrent.futures.ThreadPoolExecutor(len(by_pair)) as ex:
        wrong = [w for ws in ex.map(walk, by_pair.values()) for w in ws]
    assert not wrong, "\n".join(wrong)


def tvdctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xen_tvd.cli.tvdctl", *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_the_cli_names_the_dropping_rule_of_a_denied_controlled_port(flows):
    r = tvdctl("explain", "--lab", flows.spec, "web1", "app3", "--proto", "tcp", "--port",
               "9090", "--probe")
    assert r.returncode == 1, r.stderr
    out = r.stdout
    assert out.splitlines()[0].endswith("tcp/9090: DENIED"), out
    assert "the receiver half (app's integrity) allows only tcp/8080, tcp/22" in out
    assert "dropping rule: receiver" in out
    assert "head-end replication to 10.77.1.11, 10.77.1.12" in out       # h3's segments
    assert "probe: did not arrive" in out
    assert "dropped by flow filter on h1: receiver web->app" in out, out
    r = tvdctl("explain", "--lab", flows.spec, "nosuchvm", "app3")
    assert r.returncode == 2 and "no such VM" in r.stderr and "Traceback" not in r.stderr
    r = tvdctl("explain", "--lab", flows.spec, "web1", "app3", "--proto", "tcp")
    assert r.returncode == 2 and "--port" in r.stderr


def test_a_vif_off_its_vswitch_is_a_disagreement_said_first(flows):
    policy = load_policy(FLOWS_POLICY)
    source = LabSource(flows.name, policy)
    app3 = next(e for e in source.endpoints() if e["vm"] == "app3")
    ns = flows.topology().hosts["h3"].ns
    subprocess.run(["ip", "-n", ns, "link", "set", app3["vif"], "nomaster"], check=True)
    try:
        r = run(source, policy, "web1", "app3", "tcp", 8080, probe=True, probe_timeout=1.0)
        assert r["verdict"] == "disagree" and r["policy"]["allowed"]
        assert any(f"{app3['vif']} is on no bridge, not on tvd-app" in d
                   for d in r["disagreements"]), r["disagreements"]
        assert any("the policy allows tcp/8080 but the probe did not arrive" in d
                   for d in r["disagreements"]), r["disagreements"]
        out = tvdctl("explain", "--lab", flows.spec, "web1", "app3", "--proto", "tcp",
                     "--port", "8080")
        assert out.returncode == 1
        lines = out.stdout.splitlines()
        assert lines[0].endswith("DISAGREE") and lines[1].startswith("  DISAGREE (a bug"), lines
    finally:
        subprocess.run(["ip", "-n", ns, "link", "set", app3["vif"], "master", "tvd-app"],
                       check=True)
    assert run(source, policy, "web1", "app3", "tcp", 8080, probe=True,
               probe_timeout=3.0)["verdict"] == "allowed"
