"""`tvdctl explain` against real standalone tvd-proxies in namespaces (issue #17.1): the live
kernel step through the proxy's `inspect` request, and `--probe --yes`: one real packet sent
from the source vif through the proxies' `probe` request, reported dropped by the rule the
nftables trace names (or the eBPF port security counter that moved), or arrived. The kernel is tampered with to see disagreements said first.
"""
from __future__ import annotations

import json

from xen_tvd.dataplane.bpf import tc
from xen_tvd.dataplane.bpf.portsec import PortProgram, PortRules
from xen_tvd.desired.model import VifPort
from xen_tvd.errors import Refused

from tests.cli.cli_helpers import tvdctl
from tests.hotplug import tvd_harness
from tests.hotplug.tvd_harness import register, sh
from tests.proxy.master_lab import ROUTED_POLICY as POLICY
from tests.proxy.routed_helpers import hotplug_all


def declare_address(lab, vm) -> None:
    """The backend `ip` key (xl.cfg vif ip=): the address the proxy pins and probes from."""
    lab.xs.set(f"{vm.backend(0)}/ip", vm.nics[0])


def nothing_of_probes_left(ns: str) -> None:
    tables = sh("nft", "list", "tables", ns=ns).stdout
    assert "xen_tvd_probe" not in tables, tables
    assert not [n for n in tvd_harness.all_links(ns) if n.startswith("tvp-")]


def test_inspect_and_a_probe_on_one_host(lab):
    p = lab.proxy()
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("b", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    for vm in (a, b):
        register(p, vm, {"signed-kernel": "trust"})
        declare_address(lab, vm)
        assert lab.hotplug(vm).returncode == 0
    ns = lab.host_ns["dom0-a"]
    a_mac, b_mac = "00:16:3e:00:01:00", "00:16:3e:00:02:00"
    assert lab.ping(a, "10.99.0.2")           # the vSwitch learns b's MAC

    # the live kernel of one exchange, read-only, in one request
    r = p.client.inspect(["alpha"], ["vif1.0", "vif2.0"], b_mac)
    assert r["host"] == "dom0-a" and r["missing"] == []
    seg = r["segments"]["alpha"]
    assert (seg["bridge"], seg["transport"], seg["vni"], seg["problems"]) == \
        ("tvd-alpha", "vxlan", 10100, [])
    assert r["vifs"]["vif1.0"]["bridge"] == "tvd-alpha" and r["vifs"]["vif1.0"]["tvd"] == "alpha"
    assert r["vifs"]["vif1.0"]["vm"] == "a" and r["vifs"]["vif1.0"]["problem"] is None
    assert r["fdb"]["alpha"] == [{"port": "vif2.0", "remote": None, "static": False}]
    reasons = {(x["for"], x["reason"]) for x in r["rules"]}
    assert ("vif1.0", "source-mac") in reasons and ("vif2.0", "source-mac") in reasons
    assert all(x["packets"] is not None for x in r["rules"] if x["reason"])
    r = p.client.inspect(["alpha"], ["eth0"])
    assert r["vifs"]["eth0"]["problem"] == "eth0 is not a vif this proxy attached"

    base = ["explain", "--socket", p.socket, "--policy", tvd_harness.POLICY]
    out = tvdctl(*base, "a", "b", "--probe", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "probe: arrived (delivered to vif2.0 on dom0-a, answered: echo reply)" in out.stdout, \
        out.stdout
    assert f"fdb {b_mac} on tvd-alpha: via vif2.0" in out.stdout
    out = tvdctl(*base, "a", "b", "--proto", "tcp", "--port", "22", "--probe", "--yes")
    assert out.returncode == 0 and "answered: TCP reset (nothing listens)" in out.stdout, \
        out.stdout
    nothing_of_probes_left(ns)

    # port security the policy never asked for on the vif (a program compiled for another
    # address): the probe dies there, its counter names the reason, and explain says first
    # that policy and kernel disagree
    tampered = PortProgram.load(PortRules.of(VifPort("vif1.0", "alpha", mac=a_mac, addresses=("10.99.0.77",))))
    try:
        with tc.socket(ns) as ipr:
            tc.attach(ipr, ipr.link_lookup(ifname="vif1.0")[0], "vif1.0", tampered.fd, tampered.name)
    finally:
        tampered.close()
    out = tvdctl(*base, "a", "b", "--probe", "--yes", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    j = json.loads(out.stdout)
    assert j["verdict"] == "disagree" and not j["probe"]["arrived"]
    (d,) = j["probe"]["drops"]
    assert (d["host"], d["where"], d["reason"], d["from"]) == \
        ("dom0-a", "port security", "ipv4-source", "vif1.0"), d
    assert f"vif1.0 ingress {tampered.name}" in d["rule"] and "drop ipv4-source" in d["rule"], d
    assert any("the policy allows icmp but the probe did not arrive" in x
               and "ipv4-source" in x for x in j["disagreements"]), j["disagreements"]
    nothing_of_probes_left(ns)

    # the proxy sends only from, and watches only, vifs it attached
    for bad in (dict(inject="eth0"), dict(watch=("eth0",))):
        try:
            p.client.probe_arm("0123456789abcdef", "10.99.0.1", "10.99.0.2", "icmp", None, 7,
                               **bad)
        except Refused as e:
            assert "eth0 is not a vif this proxy attached" in str(e)
        else:
            raise AssertionError(f"a probe with {bad} was armed")
    try:
        p.client.probe_collect("fedcba9876543210")
    except Refused as e:
        assert "no probe fedcba9876543210 armed here" in str(e)
    else:
        raise AssertionError("collected a probe never armed")
    nothing_of_probes_left(ns)


def test_explain_across_two_hosts_names_the_dropping_rule_and_the_disagreements(scene,
                                                                                 tmp_path):
    """alpha -> gamma controlled (sender tcp 80, 8080; receiver tcp 80, 22), beta -> alpha
    closed (test_routed_proxy's policy); a1 on dom0-a, b2 and g2 on dom0-b; tvdctl is given
    both hosts' proxy sockets."""
    lab = scene.lab
    policy = tmp_path / "routed.yaml"
    policy.write_text(POLICY % {"alpha_beta": "open"})
    for h in ("dom0-a", "dom0-b"):
        lab.proxy(h, policy=str(policy))
    vms = scene.vms()
    for vm in vms.values():
        register(lab.proxies[vm.host], vm, {})       # its name, as xl create registers it
        declare_address(lab, vm)
    hotplug_all(lab, vms)
    base = ["explain", "--socket", lab.proxies["dom0-a"].socket,
            "--socket", lab.proxies["dom0-b"].socket, "--policy", str(policy)]

    def explain(*args):
        r = tvdctl(*base, *args)
        assert "Traceback" not in r.stderr, r.stderr
        return r

    r = explain("a1", "g2", "--proto", "tcp", "--port", "80", "--probe", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.splitlines()[0].endswith("tcp/80: ALLOWED"), out
    assert "probe: arrived (delivered to vif13.0 on dom0-b, answered: TCP SYN-ACK)" in out, out
    assert ("  flow filter alpha->gamma: controlled (sender tcp/80, tcp/8080 in s_100_300, as "
            "planned; receiver tcp/80, tcp/22 in r_100_300, as planned)") in out, out
    assert "plan on dom0-b (what its tvd-proxy applied):" in out
    for port, rule in ((22, "sender"), (8080, "receiver")):
        r = explain("a1", "g2", "--proto", "tcp", "--port", str(port), "--probe", "--yes")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"dropping rule: {rule}" in r.stdout
        assert f"  dropped by flow filter on dom0-a: {rule} alpha->gamma (inet xen_tvd_flows " \
               f"{rule[0]}_100_300 handle" in r.stdout, r.stdout
        assert "DISAGREE" not in r.stdout, r.stdout
    r = explain("b2", "a1", "--probe", "--yes")
    assert r.returncode == 1 and "DISAGREE" not in r.stdout, r.stdout
    assert "  dropped by flow filter on dom0-b: closed beta->alpha" in r.stdout, r.stdout
    r = explain("a1", "b2", "--probe", "--yes", "--json")
    j = json.loads(r.stdout)
    assert r.returncode == 0 and j["probe"]["arrived"] and j["probe"]["answered"], j["probe"]
    for h in ("dom0-a", "dom0-b"):
        nothing_of_probes_left(lab.host_ns[h])

    # the kernel's sender half of alpha -> gamma no longer what the plan says: said first
    na = lab.host_ns["dom0-a"]
    sh("nft", "flush", "chain", "inet", "xen_tvd_flows", "s_100_300", ns=na)
    sh("nft", "add", "rule", "inet", "xen_tvd_flows", "s_100_300", "counter", "name",
       "drop_sender_100_300", "drop", ns=na)
    r = explain("a1", "g2", "--proto", "tcp", "--port", "80", "--probe", "--yes")
    assert r.returncode == 1, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].endswith("DISAGREE"), lines
    assert lines[1] == ("  DISAGREE (a bug: the kernel does not do what the policy says): host "
                        "dom0-a: flow filter chain s_100_300 (sender half of alpha->gamma) "
                        "accepts nothing; the plan says tcp/80, tcp/8080"), lines
    assert any("the policy allows tcp/80 but the probe did not arrive (flow filter on dom0-a: "
               "sender alpha->gamma" in x for x in lines), lines

    # a policy file that is not the one the proxies run: their plan disagrees with it
    other = tmp_path / "closed.yaml"
    other.write_text(POLICY % {"alpha_beta": "closed"})
    r = tvdctl("explain", "--socket", lab.proxies["dom0-a"].socket, "--socket",
               lab.proxies["dom0-b"].socket, "--policy", str(other), "a1", "b2")
    assert r.returncode == 1, r.stdout
    assert ("  DISAGREE (a bug: the kernel does not do what the policy says): host dom0-a: the "
            "policy says alpha->beta is closed, tvd-proxy's plan there says open") in r.stdout, \
        r.stdout

    # one proxy given: g2 is only an address of gamma's subnet, its host is not asked; the
    # probe still shows where dom0-a dropped it
    r = tvdctl("explain", "--socket", lab.proxies["dom0-a"].socket, "--policy", str(policy),
               "a1", vms["g2"].nics[0], "--probe", "--yes")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "  dropped by flow filter on dom0-a: sender alpha->gamma" in r.stdout, r.stdout
