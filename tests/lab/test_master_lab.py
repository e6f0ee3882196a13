"""Tier 1: the lab in master mode (xl-configs/lab-master.yaml, `control: master`).

A real tvd-master in its own namespace, one real tvd-proxy per host namespace (enrolled with a
one-time token), every vif attached through the proxy's register + vif-online: admission is
decided by the product. Checked from the outside (kernel via `ip -j`, the master's own CLI,
the proxies' status op), not through the lab's own report. One lab per module; the tests run
in file order (the policy push and `down` come last).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.lab.lab_helpers import PAPER_POLICY, REPO, lab_cli, running_lab, spec_error
from tests.common.waiting import wait_for

from xen_tvd.lab import master, processes, proxies
from xen_tvd.lab.state import Paths
from xen_tvd.proxy.client import ProxyClient

MASTER_SPEC = os.path.join(REPO, "xl-configs", "lab-master.yaml")



def ip_json(ns: str, *args: str) -> list[dict]:
    r = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []


def vif_master(ns: str, vif: str) -> str | None:
    """The bridge the kernel has the vif enslaved to (None: not attached)."""
    links = ip_json(ns, "link", "show", "dev", vif)
    assert links, f"{vif} missing in {ns}"
    return links[0].get("master")


def audit(name: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "xen_tvd.master", "--dir",
                        Paths(name).master, "audit", "--json"],
                       capture_output=True, text=True, check=True)
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def mlab(tmp_path_factory):
    with running_lab(MASTER_SPEC, PAPER_POLICY, "m", str(tmp_path_factory.mktemp("mlab"))) as lab:
        yield lab


def test_up_admits_through_the_proxies_and_verify_is_clean(mlab):
    topo = mlab.topology()
    st = mlab.status()
    c = st["control"]
    assert c["master"]["pid"] and c["namespace"] == f"{mlab.name}-master"
    # every admitted vif: in its proxy's status, and enslaved to its TVD's vSwitch in the kernel
    for vm in topo.vms.values():
        if vm.name == "x1":
            continue
        pst = ProxyClient(Paths(mlab.name).socket(vm.host)).status()
        recs = {v["ifname"]: v for v in pst["vifs"]}
        for nic in vm.nics:
            assert recs[nic.vif]["tvd"] == nic.tvd
            assert recs[nic.vif]["uuid"] == proxies.vm_uuid(mlab.name, vm.name)
            assert vif_master(topo.hosts[vm.host].ns, nic.vif) == f"tvd-{nic.tvd}"
    # the master sees three enrolled hosts (its own CLI)
    r = subprocess.run([sys.executable, "-m", "xen_tvd.master", "--dir",
                        Paths(mlab.name).master, "hosts", "--json"],
                       capture_output=True, text=True, check=True)
    assert sorted(h["host"] for h in json.loads(r.stdout) if h["state"] == "enrolled") == \
        ["h1", "h2", "h3"]
    r = mlab.cli("verify", "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["control"]["ok"], out["control"]
    # the matrix is the policy's: same-TVD pairs across LAN and WAN answer, x1 reaches nobody
    cells = {(c["src"], c["dst"]): c for c in out["cells"]}
    assert all(cells[("a1/eth0", "a3/eth0")]["results"].values())
    assert not any(cells[("x1/eth0", "a1/eth0")]["results"].values())
    assert not any(cells[("a1/eth0", "x1/eth0")]["results"].values())


def test_denied_vm_has_no_vif_and_the_denial_is_audited(mlab):
    topo = mlab.topology()
    x1 = topo.vms["x1"]
    assert vif_master(topo.hosts["h1"].ns, x1.nics[0].vif) is None
    uuid = proxies.vm_uuid(mlab.name, "x1")
    for h in topo.hosts:
        pst = ProxyClient(Paths(mlab.name).socket(h)).status()
        assert uuid not in [v["uuid"] for v in pst["vifs"]]
    ev = [(e["event"], e["actor"]) for e in audit(mlab.name) if e["detail"].get("vm") == uuid]
    assert ("denied", "host:h1") in ev and not any(e == "admitted" for e, _ in ev)
    # same TVD, same host: a1 is reachable for a2 (positive control) but not for x1
    assert mlab.exec("a2", "ping", "-c1", "-W2", "192.168.50.11").returncode == 0
    assert mlab.exec("x1", "ping", "-c1", "-W1", "192.168.50.11").returncode != 0


def test_up_rerun_after_killed_master_and_proxy_repairs(mlab):
    paths = Paths(mlab.name)
    with open(paths.master_pid) as f:
        master_pid = int(f.read())
    with open(paths.proxy_pid("h2")) as f:
        proxy_pid = int(f.read())
    os.kill(master_pid, 9)
    os.kill(proxy_pid, 9)
    wait_for(lambda: not os.path.exists(f"/proc/{master_pid}/cmdline")
             or not open(f"/proc/{master_pid}/cmdline", "rb").read(), "master gone")
    r = mlab.cli("up")
    assert r.returncode == 0, r.stderr
    c = mlab.status()["control"]
    assert c["master"]["pid"] not in (None, master_pid)
    assert c["proxies"]["h2"]["pid"] not in (None, proxy_pid)
    assert "vif1.0" in c["proxies"]["h2"]["vifs"]
    r = mlab.cli("verify", "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_policy_push_removing_a_tvd_detaches_its_vifs(mlab, tmp_path):
    topo = mlab.topology()
    with open(PAPER_POLICY) as f:
        text = f.read()
    no_gamma = text.replace("  gamma: {vlan: 300, vni: 10300, protection: [isolation, integrity]}\n",
                            "")
    assert no_gamma != text
    path = tmp_path / "no-gamma.yaml"
    path.write_text(no_gamma)
    before = {n.vif: vif_master(topo.hosts["h1"].ns, n.vif)
              for n in (topo.vms["a1"].nics + topo.vms["b1"].nics)}
    master.master_cli(mlab.name, "policy", "push", str(path))
    gamma = [(topo.hosts[v.host].ns, n.vif) for v in topo.vms.values() for n in v.nics
             if n.tvd == "gamma"]
    assert len(gamma) == 2
    wait_for(lambda: all(vif_master(ns, vif) is None for ns, vif in gamma), "gamma vifs detached")
    # other TVDs' vifs stay where they were
    assert {v: vif_master(topo.hosts["h1"].ns, v) for v in before} == before
    uuids = {proxies.vm_uuid(mlab.name, v) for v in ("g2", "g3")}
    wait_for(lambda: {e["detail"].get("vm") for e in audit(mlab.name)
                      if e["event"] == "detached" and e["detail"].get("tvd") == "gamma"} >= uuids,
             "detached events in the master's audit")
    r = mlab.cli("verify")
    assert r.returncode == 1 and "g2" in r.stdout   # the lab no longer matches its spec
    # `up` pushes the spec's policy again and re-attaches through the proxies
    r = mlab.cli("up")
    assert r.returncode == 0, r.stderr
    assert all(vif_master(ns, vif) == "tvd-gamma" for ns, vif in gamma)


def test_down_after_a_crash_leaves_nothing_behind(mlab):
    from xen_tvd.lab import state as L
    paths = Paths(mlab.name)
    # a crash: the state file is gone, the daemons are still running
    os.unlink(L.state_path(mlab.name))
    assert processes.strays(mlab.name)
    r = lab_cli("down", "--name", mlab.name)
    assert r.returncode == 0, r.stderr
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [l for l in ns.splitlines() if l.split()[0].startswith(mlab.name + "-")]
    assert processes.strays(mlab.name) == []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cl = open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                continue
            assert paths.root.encode() not in cl and f"--lab\0{mlab.name}\0".encode() not in cl
    assert not os.path.exists(paths.root) and not os.path.exists(L.state_path(mlab.name))
    # nothing was ever created in the host's own namespace
    names = [l["ifname"] for l in json.loads(subprocess.run(
        ["ip", "-j", "link"], capture_output=True, text=True).stdout)]
    assert not [n for n in names if n in ("mgmt", "mgmt0") or n.startswith("tvd-")]
    assert lab_cli("down", "--name", mlab.name).returncode == 0   # and again: harmless


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("control"), "VM a1: properties needs `control: master`"),
    (lambda d: d.update(control="central"), "control 'central' must be one of direct, master"),
    (lambda d: d["vms"]["a1"].update(properties={"signed-kernel": "hope"}),
     "assurance 'hope' of signed-kernel must be one of trust,"),
    (lambda d: d["vms"]["a1"].update(properties={"fast": "trust"}),
     "property 'fast' is not defined by the policy"),
    (lambda d: d["vms"]["x1"].update(expect="maybe"), "expect 'maybe' must be one of admitted, denied"),
])
def test_spec_master_keys_are_checked(tmp_path, edit, message):
    error = spec_error(tmp_path, MASTER_SPEC, PAPER_POLICY, edit)
    assert message in error and str(tmp_path / "spec.yaml") in error


def test_spec_master_keys_parsed():
    from xen_tvd.lab.spec import load_lab
    spec, _ = load_lab(MASTER_SPEC)
    assert spec.control == "master"
    assert spec.vms["a1"].properties == {"signed-kernel": "trust"}
    assert spec.vms["x1"].expect == "denied" and spec.vms["x1"].properties == {}
    assert master.denied_vms(spec) == {"x1"}



def test_routed_flows_lab_in_master_mode(tmp_path):
    """lab-flows.yaml (open, controlled and closed routed pairs over three hosts) with the
    master deciding: the bundle carries routers and flow filters, so verify's exact matrix
    (per port, both directions) holds as in direct mode."""
    with running_lab(os.path.join(REPO, "xl-configs", "lab-flows.yaml"),
                     os.path.join(REPO, "xl-configs", "lab-flows-policy.yaml"), "f", str(tmp_path),
                     control="master") as lab:
        r = lab.cli("verify", "--json")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        out = json.loads(r.stdout)
        assert out["ok"] and out["control"]["ok"]
        flows = {c["flow"] for c in out["cells"]}
        assert {"open", "controlled", "closed", "same-tvd"} <= flows
