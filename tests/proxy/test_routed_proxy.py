"""Routed inter-TVD flows through tvd-proxy on two Dom0s, standalone and master mode.

Policy: alpha -> beta open, alpha -> gamma controlled (sender allows tcp 80 and 8080, receiver
tcp 80 and 22: only tcp 80 passes), beta - gamma closed, no pair back towards alpha. dom0-a has
only an alpha VM, so it must get beta and gamma legs and VM-less segments from alpha's routed
component; dom0-b has a beta and a gamma VM (so an alpha leg and segment). VMs are veth
namespaces admitted through the proxy's vif-online (the real hotplug script). Checked: the exact
reachability matrix (allowed connects, forbidden ones get no answer at all), a policy change
closing alpha -> beta (SIGHUP / `tvd-master policy push`) that leaves every vif attached and
untouched, and the last alpha vif on dom0-a going away: its legs and segments are removed after
the segment grace, not before.
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time


from tests.proxy import master_lab
from tests.hotplug import tvd_harness
from tests.hotplug.tvd_harness import ip, link_info
from tests.proxy.routed_helpers import A1, B2, G2, hotplug_all

POLICY = master_lab.ROUTED_POLICY


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except socket.timeout:
    print("nothing")
except OSError as e:
    print("answered:" + (e.strerror or str(e)))
"""


def tcp(src, dst: str, port: int, timeout: float = 1.5) -> str:
    """connected | nothing (no answer at all: dropped) | answered:<error> (an RST, an ICMP)."""
    r = subprocess.run(["ip", "netns", "exec", src.ns, sys.executable, "-c", CONNECT, dst,
                        str(port), str(timeout)], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() or r.stderr.strip()


def ping(src, dst: str) -> bool:
    return tvd_harness.sh("ping", "-c", "2", "-W", "1", "-i", "0.2", dst, ns=src.ns,
                          check=False).returncode == 0


def matrix(lab, vms, checks) -> dict:
    """{(src, dst, port or 'ping'): result}, all probes in parallel (the forbidden ones wait)."""
    def one(c):
        src, dst, what = c
        return ping(vms[src], dst) if what == "ping" else tcp(vms[src], dst, what)
    with concurrent.futures.ThreadPoolExecutor(len(checks)) as ex:
        return dict(zip(checks, ex.map(one, checks)))


OPEN_CHECKS = {
    ("a1", B2, "ping"): True, ("a1", B2, 8080): "connected",          # alpha -> beta open
    ("a1", G2, 80): "connected",                                       # both halves allow 80
    ("a1", G2, 8080): "nothing", ("a1", G2, 22): "nothing",           # one half each
    ("a1", G2, "ping"): False,                                         # icmp in neither
    ("b2", A1, "ping"): False, ("b2", A1, 80): "nothing",             # beta -> alpha closed
    ("g2", A1, 80): "nothing", ("g2", A1, "ping"): False,             # gamma -> alpha closed
    ("b2", G2, 80): "nothing", ("b2", G2, "ping"): False,             # beta - gamma closed
    ("g2", B2, 80): "nothing", ("g2", B2, "ping"): False,
}
CLOSED_AB = {**OPEN_CHECKS, ("a1", B2, "ping"): False, ("a1", B2, 8080): "nothing"}


def assert_matrix(lab, vms, want: dict) -> None:
    got = matrix(lab, vms, list(want))
    bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    assert not bad, f"(src, dst, probe): (got, want) {bad}"


def vif_indexes(lab, vms) -> dict:
    return {k: (json.loads(ip("-j", "link", "show", vm.vif(), ns=lab.host_ns[vm.host]).stdout)[0]
                ["ifindex"], link_info(lab.host_ns[vm.host], vm.vif())["master"])
            for k, vm in vms.items()}


def wait(cond, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def apply_lines(lab, marks) -> dict:
    """host -> callable giving the proxy's apply log lines since `marks[host]`."""
    return {h: (lambda h=h: "\n".join(line for line in lab.proxies[h].log()[marks[h]:]
                                      .splitlines() if "event=apply " in line))
            for h in lab.proxies}


def check_first_phase(scene, vms, status) -> None:
    # dom0-a has only alpha's VM and still routes to beta and gamma (VM-less segments)
    assert scene.legs("dom0-a") == ["alpha", "beta", "gamma"]
    assert scene.legs("dom0-b") == ["alpha", "beta", "gamma"]
    st = status("dom0-a")
    assert sorted(s["tvd"] for s in st["segments"]) == ["alpha", "beta", "gamma"]
    assert st["router"] == ["alpha", "beta", "gamma"]
    assert link_info(scene.lab.host_ns["dom0-a"], "tvx-beta") is not None   # uplink to dom0-b
    assert_matrix(scene.lab, vms, OPEN_CHECKS)
    # the probes that got nothing were counted where they died, under the pair and the rule
    # that dropped them (issue #16.7): status shows the flow filter's counters
    # (a1's router is on dom0-a: both halves of alpha -> gamma are judged there)
    drops = {h: {(d["reason"], d["from"], d["to"]): d["packets"]
                 for d in status(h)["drops"]["flows"]} for h in ("dom0-a", "dom0-b")}
    assert drops["dom0-b"].get(("closed", "beta", "alpha"), 0) > 0, drops
    assert drops["dom0-b"].get(("closed", "gamma", "alpha"), 0) > 0, drops
    assert drops["dom0-a"].get(("sender", "alpha", "gamma"), 0) > 0, drops       # tcp 22
    assert drops["dom0-a"].get(("receiver", "alpha", "gamma"), 0) > 0, drops     # tcp 8080


def check_closed_phase(scene, vms, before, logs) -> None:
    # beta lost its card everywhere; the vifs (beta's included) stayed attached, untouched
    assert scene.legs("dom0-a") == ["alpha", "gamma"]
    assert scene.legs("dom0-b") == ["alpha", "gamma"]
    assert link_info(scene.lab.host_ns["dom0-a"], "tvd-beta") is None
    assert vif_indexes(scene.lab, vms) == before
    for vm in vms.values():
        assert f"{vm.vif()}" not in logs[vm.host](), f"{vm.vif()} touched by the policy change"
    assert_matrix(scene.lab, vms, CLOSED_AB)


def check_teardown(scene, lab, vms, grace: float) -> None:
    t0 = time.monotonic()
    r = lab.hotplug(vms["a1"], "offline")
    assert r.returncode == 0, r.stderr
    na = lab.host_ns["dom0-a"]
    if grace > 0:   # kept during the grace (a rebooting VM does not pay for a rebuild)
        assert scene.legs("dom0-a") == ["alpha", "gamma"]
    wait(lambda: not scene.rtr_exists("dom0-a") and not scene.legs("dom0-a")
         and link_info(na, "tvd-alpha") is None and link_info(na, "tvd-gamma") is None,
         "router, legs and segments gone from dom0-a", timeout=grace + 15)
    assert time.monotonic() - t0 >= grace
    # dom0-b keeps its own: its VMs still need them
    assert scene.legs("dom0-b") == ["alpha", "gamma"]
    assert link_info(lab.host_ns["dom0-b"], vms["g2"].vif())["master"] == "tvd-gamma"


def test_standalone_routed_flows_across_hosts(scene, tmp_path):
    lab = scene.lab
    policy = tmp_path / "routed.yaml"
    policy.write_text(POLICY % {"alpha_beta": "open"})
    grace = 3.0
    for h in ("dom0-a", "dom0-b"):
        lab.proxy(h, policy=str(policy), args=["--segment-grace", str(grace)])
    vms = scene.vms()
    hotplug_all(lab, vms)
    check_first_phase(scene, vms, lambda h: lab.proxies[h].client.status())

    before = vif_indexes(lab, vms)
    marks = {h: len(p.log()) for h, p in lab.proxies.items()}
    policy.write_text(POLICY % {"alpha_beta": "closed"})
    for h, p in lab.proxies.items():
        n = p.log().count("event=reloaded")
        p.proc.send_signal(signal.SIGHUP)
        wait(lambda: p.log().count("event=reloaded") > n, f"reload of {h}")
    changes = apply_lines(lab, marks)
    check_closed_phase(scene, vms, before, changes)
    check_teardown(scene, lab, vms, grace)


def test_master_routed_flows_across_hosts(scene):
    lab = scene.lab
    m = master_lab.Master(lab)
    lab.master = m
    m.start()
    m.push(POLICY % {"alpha_beta": "open"})
    for h in ("dom0-a", "dom0-b"):
        master_lab.add_proxy(lab, h)
    pa, pb = lab.proxies["dom0-a"], lab.proxies["dom0-b"]
    # both hosts enrolled: wait until each bundle names the other as a peer
    for p in (pa, pb):
        p.wait_for(lambda p=p: len(_bundle(p)["plan"]["underlay_peers"]) == 1, "the peer's bundle")
    vms = scene.vms()
    hotplug_all(lab, vms)
    # the bundle carries the router for every TVD the host may carry, the proxy narrows it
    assert {leg["tvd"] for leg in _bundle(pa)["plan"]["router"]["legs"]} == \
        {"alpha", "beta", "gamma"}
    check_first_phase(scene, vms, lambda h: lab.proxies[h].status())

    before = vif_indexes(lab, vms)
    marks = {h: len(p.log()) for h, p in lab.proxies.items()}
    gens = {h: p.generation() for h, p in lab.proxies.items()}
    m.push(POLICY % {"alpha_beta": "closed"}, name="closed.yaml")
    for h, p in lab.proxies.items():
        p.wait_for(lambda p=p, h=h: (p.generation() or 0) > gens[h] and
                   "event=bundle-applied" in p.log()[marks[h]:], "the new bundle applied")
    changes = apply_lines(lab, marks)
    check_closed_phase(scene, vms, before, changes)
    check_teardown(scene, lab, vms, 0.0)    # master_lab runs its proxies with --segment-grace 0


def _bundle(p) -> dict:
    with open(os.path.join(p.state_dir, "master", "bundle.json")) as f:
        env = json.load(f)
    return json.loads(base64.b64decode(env["payload"]))


def test_standalone_refuses_a_tvd_routed_with_one_the_host_may_not_carry(lab, tmp_path):
    """As the master does (decide.py): alpha's leg would pull gamma's segment onto dom0-a,
    which lacks gamma's pci-audited, so alpha is refused there (fail closed)."""
    text = (POLICY % {"alpha_beta": "open"}).replace(
        "signed-kernel: {}\n", "signed-kernel: {}\n  pci-audited: {}\n", 1).replace(
        "gamma: {vlan: 300, vni: 10300,", "gamma: {vlan: 300, vni: 10300, membership: [pci-audited],", 1)
    policy = tmp_path / "pci.yaml"
    policy.write_text(text)
    lab.proxy(policy=str(policy))
    vm = lab.vm("a1", 11, nics={0: ("tvd:alpha", A1)})
    assert lab.hotplug(vm).returncode != 0
    err = lab.xs.get(f"{vm.backend()}/hotplug-error")
    assert "TVD 'alpha' is routed together with 'gamma': host 'dom0-a' may not carry TVD " \
           "'gamma'" in err and "\n" not in err, err
    assert link_info(lab.host_ns["dom0-a"], vm.vif())["master"] is None
    assert not os.path.exists(f"/run/netns/{lab.host_ns['dom0-a']}-rtr")
