"""What a running tvd-proxy tells about itself (issue #17 points 2 and 3, #16 point 7): the
status answer's drop counters, vif times and degraded segments; --log-drops; the metrics
textfile, read with prometheus_client's parser and compared with status."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.hotplug.tvd_harness import REPO, ip, register, sh

from tests.cli.cli_helpers import tvdctl
from tests.master.metrics_helpers import scrape_until, value


def forge_and_ping(lab, vm, peer_ip: str, peer_mac: str, n: int) -> None:
    """n ICMP echo requests from `vm` with a MAC that is not its own (no ARP: the neighbour is
    static), so port security drops exactly n frames as source-mac."""
    ip("link", "set", "eth0", "address", "02:ba:d0:00:00:09", ns=vm.ns)   # flushes neighbours
    ip("neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", "eth0", "nud", "permanent",
       ns=vm.ns)
    sh("ping", "-c", str(n), "-i", "0.2", "-W", "1", peer_ip, ns=vm.ns, check=False)


def nft_log_rules(ns: str) -> int:
    out = sh("nft", "list", "table", "netdev", "xen_tvd_ports", ns=ns).stdout
    return out.count('log prefix "xen-tvd drop')


def test_status_and_metrics_count_drops_admissions_and_denials(lab, tmp_path):
    prom = str(tmp_path / "tvd-proxy.prom")
    p = lab.proxy(args=["--metrics-textfile", prom, "--metrics-interval", "0.2",
                        "--log-drops", "3"])
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("b", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    c = lab.vm("c", 3, nics={0: ("tvd:alpha", "10.99.0.3")})
    for vm in (a, b):
        register(p, vm, {"signed-kernel": "trust"})
        assert lab.hotplug(vm).returncode == 0
    register(p, c, {})                                  # no signed kernel: denied
    assert lab.hotplug(c).returncode != 0
    ns = lab.host_ns["dom0-a"]
    assert nft_log_rules(ns) > 0, "--log-drops puts a rate-limited log rule before each drop"
    assert lab.ping(a, "10.99.0.2")
    b_mac = "00:16:3e:00:02:00"
    forge_and_ping(lab, a, "10.99.0.2", b_mac, 4)

    st = p.client.status()
    assert st["ok"] and st["degraded"] == [] and st["log_drops"] == 3
    ports = {(d["ifname"], d["reason"]): d for d in st["drops"]["ports"]}
    assert ports[("vif1.0", "source-mac")]["packets"] == 4
    assert ports[("vif1.0", "source-mac")]["tvd"] == "alpha"
    vifs = {v["ifname"]: v for v in st["vifs"]}
    assert set(vifs) == {"vif1.0", "vif2.0"}
    assert vifs["vif1.0"]["vm"] == "a" and vifs["vif1.0"]["attached_to"] == "tvd-alpha"
    assert vifs["vif1.0"]["admitted_at"] > 0 and vifs["vif1.0"]["checked_at"] > 0
    seg = {s["tvd"]: s for s in st["segments"]}["alpha"]
    assert seg["transport"] == "vxlan" and seg["vni"] == 10100 and seg["problems"] == []

    s = scrape_until(prom, lambda s: value(s, "tvd_proxy_port_drops_total", vif="vif1.0",
                                           tvd="alpha", reason="source-mac") == 4)
    assert value(s, "tvd_proxy_vifs", tvd="alpha") == 2
    assert value(s, "tvd_proxy_admission_events_total", event="admitted", tvd="alpha",
                 reason="") == 2
    assert value(s, "tvd_proxy_admission_events_total", event="denied", tvd="alpha",
                 reason="membership") == 1
    assert value(s, "tvd_proxy_segments", transport="vxlan") == 1
    assert value(s, "tvd_proxy_apply_errors_total") == 0
    assert value(s, "tvd_proxy_apply_duration_seconds_count") >= 1
    assert value(s, "tvd_proxy_dom0_guard_drops_total") is not None

    p.stop()
    assert not os.path.exists(prom)


def test_status_reports_a_degraded_segment_and_a_vif_off_its_vswitch(lab):
    p = lab.proxy()
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    register(p, a, {"signed-kernel": "trust"})
    assert lab.hotplug(a).returncode == 0
    ns = lab.host_ns["dom0-a"]
    assert p.client.status()["degraded"] == []
    ip("link", "del", "tvx-alpha", ns=ns)               # the VXLAN uplink, gone under us
    ip("link", "set", "vif1.0", "nomaster", ns=ns)      # the vif, off its vSwitch
    st = p.client.status()
    assert "segment alpha: uplink tvx-alpha is missing" in st["degraded"]
    assert any("vif1.0 is on no bridge, not on tvd-alpha" in d for d in st["degraded"]), st
    assert {v["ifname"]: v for v in st["vifs"]}["vif1.0"]["attached_to"] is None


def test_bad_log_drops_and_metrics_options_are_refused_in_one_line(lab, tmp_path):
    for args in (["--log-drops", "-1"], ["--log-drops", "5000"], ["--log-drops", "x"],
                 ["--metrics-textfile", str(tmp_path / "no" / "dir" / "m.prom")]):
        p = lab.proxy(start=False, args=args)
        p.start(wait=False)
        rc = p.proc.wait(30)
        assert rc == 2, (args, p.log())
        assert "Traceback" not in p.log()
        p.stop()


def test_tvdctl_status_shows_head_end_replication_remotes_drops_and_exits_1_when_degraded(
        lab2, tmp_path):
    """A LAN without multicast: alpha's VXLAN segment floods by head-end replication to the
    other host, and `tvdctl status` names that remote (issue #17.2)."""
    from tests.hotplug import tvd_harness
    with open(tvd_harness.POLICY) as f:
        text = f.read()
    assert "multicast: true" in text
    policy = tmp_path / "no-multicast.yaml"
    policy.write_text(text.replace("multicast: true", "multicast: false"))
    p = lab2.proxy("dom0-a", policy=str(policy))
    lab2.proxy("dom0-b", policy=str(policy))
    a = lab2.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    register(p, a, {"signed-kernel": "trust"})
    assert lab2.hotplug(a).returncode == 0
    forge_and_ping(lab2, a, "10.99.0.2", "00:16:3e:00:02:00", 2)

    r = tvdctl("status", "--socket", p.socket)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "tvd-proxy on dom0-a: standalone" in out
    assert "head-end replication to 10.77.1.12" in out and "vni 10100" in out, out
    assert "vif1.0" in out and "vm a " in out and "on tvd-alpha" in out, out
    assert "port security: vif1.0 source-mac 2" in out, out
    j = tvdctl("status", "--socket", p.socket, "--json")
    st = json.loads(j.stdout)
    seg = {s["tvd"]: s for s in st["segments"]}["alpha"]
    assert seg["remotes"] == ["10.77.1.12"] and seg["group"] is None

    ip("link", "set", "tvd-alpha", "down", ns=lab2.host_ns["dom0-a"])
    r = tvdctl("status", "--socket", p.socket)
    assert r.returncode == 1, r.stdout
    assert "DEGRADED: segment alpha: vSwitch tvd-alpha is down" in r.stdout, r.stdout
    r = tvdctl("status", "--socket", str(tmp_path / "nobody.sock"))
    assert r.returncode == 1 and "tvd-proxy is not running" in r.stderr
    assert "Traceback" not in r.stderr


def test_tvdctl_explain_against_a_standalone_proxy(lab):
    """explain --socket --policy: the proxy's status is the kernel view (issue #17.1)."""
    from tests.hotplug import tvd_harness
    p = lab.proxy()
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("b", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    c = lab.vm("c", 3, nics={0: ("tvd:beta", "10.98.0.3")})
    for vm in (a, b):
        register(p, vm, {"signed-kernel": "trust"})
    register(p, c, {})
    for vm in (a, b, c):
        assert lab.hotplug(vm).returncode == 0
    base = ["explain", "--socket", p.socket, "--policy", tvd_harness.POLICY]
    r = tvdctl(*base, "a", "b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0].endswith("icmp: ALLOWED") and "same-tvd" in r.stdout
    assert "vif1.0: on tvd-alpha, as planned" in r.stdout, r.stdout
    r = tvdctl(*base, "a", "c", "--proto", "tcp", "--port", "80", "--json")
    assert r.returncode == 1
    j = json.loads(r.stdout)
    assert (j["verdict"], j["policy"]["flow"], j["policy"]["drop"]) == ("denied", "closed",
                                                                         "no-route")
    ip("link", "set", "vif2.0", "nomaster", ns=lab.host_ns["dom0-a"])
    r = tvdctl(*base, "a", "b")
    assert r.returncode == 1 and r.stdout.splitlines()[0].endswith("DISAGREE"), r.stdout
    assert "vif2.0 is on no bridge, not on tvd-alpha" in r.stdout
    # a real host: no packet without --yes (tests/proxy/test_explain_live.py sends them)
    r = tvdctl(*base, "a", "b", "--probe")
    assert r.returncode == 2 and "Add --yes to send it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_tvdctl_explain_in_master_mode(lab):
    """explain --master: policy, admitted NICs and carrying hosts from the master's API (an
    admin certificate), this Dom0's live view from its proxy."""
    from tests.proxy import master_lab
    try:
        m, p = master_lab.setup(lab)
        b1 = lab.vm("b1", 1, nics={0: ("tvd:beta", "10.99.0.1")})
        b2 = lab.vm("b2", 2, nics={0: ("tvd:beta", "10.99.0.2")})
        for vm in (b1, b2):
            assert p.register(vm, "beta")["ok"]
            assert lab.hotplug(vm).returncode == 0
        prefix = os.path.join(lab.tmp, "alice")
        m.cli("admin-cert", "alice", "--out", prefix)
        args = ["explain", "--master", master_lab.URL, "--ca", os.path.join(m.dir, "ca.pem"),
                "--cert", prefix + ".pem", "--key", prefix + ".key", "--socket", p.socket]

        def explain(*more):
            # the master listens on the lab's management LAN: ask from the Dom0's namespace
            return subprocess.run(["ip", "netns", "exec", lab.host_ns["dom0-a"], sys.executable,
                                   "-m", "xen_tvd.cli.tvdctl", *args, *more],
                                  capture_output=True, text=True, timeout=60, cwd=REPO)
        deadline = time.monotonic() + 20
        while True:     # the proxy's audit reaches the master asynchronously
            r = explain("b1", "b2")
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "(TVD beta on dom0-a)" in r.stdout, r.stdout
        carries = next(x for x in r.stdout.splitlines() if x.startswith("  carries: "))
        assert "beta" in carries.split(": ", 1)[1].split(", "), r.stdout
        assert "vif1.0: on tvd-beta, as planned" in r.stdout, r.stdout
        r = explain("b1", "nosuch")
        assert r.returncode == 2 and "no such VM" in r.stderr
    finally:
        master_lab.close(lab)
