"""Tier 1: the master-mode lab with `replicas: 3` (xl-configs/lab-master-replicas.yaml): three
tvd-master replicas on a three-member etcd cluster inside the master namespace, every
tvd-proxy enrolled with the three URLs. Checked from the outside: the kernel (`ip -j`), the
master's CLI (run in the master namespace, where etcd answers), the proxies' files."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tests.lab.lab_helpers import REPO, running_lab, spec_error

from xen_tvd.lab import master, replicas
from xen_tvd.lab.state import Paths

SPEC = os.path.join(REPO, "xl-configs", "lab-master-replicas.yaml")
POLICY = os.path.join(REPO, "xl-configs", "lab-paper-policy.yaml")


def master_cli_in_ns(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", master.master_ns(name), sys.executable, "-m",
                           "xen_tvd.master", "--dir", Paths(name).master, *args],
                          capture_output=True, text=True, timeout=60)


def vif_master(ns: str, vif: str) -> str | None:
    r = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", vif],
                       capture_output=True, text=True)
    links = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else []
    return links[0].get("master") if links else None


def elections(name: str) -> int:
    n = 0
    for i in range(3):
        with open(replicas.replica_log(name, i)) as f:
            n += sum("event=leader-elected" in line for line in f)
    return n


def leader(name: str) -> int:
    """The replica whose log says it was elected last."""
    best, at = None, ""
    for i in range(3):
        with open(replicas.replica_log(name, i)) as f:
            for line in f:
                m = re.match(r"ts=(\S+) .*event=leader-elected", line)
                if m and m.group(1) >= at:
                    best, at = i, m.group(1)
    assert best is not None, "no replica was elected"
    return best


def test_three_replicas_on_etcd_admit_and_survive_a_killed_leader(tmp_path):
    if not os.path.exists(replicas.ETCD):
        pytest.skip("needs etcd-server (scripts/bootstrap installs it; tier 1 runs this)")
    with running_lab(SPEC, POLICY, "r", str(tmp_path)) as lab:
        topo = lab.topology()
        st = lab.status()["control"]
        # every proxy knows all three replicas; etcd is not reachable from a host
        urls = [f"https://10.254.0.{i}:8443" for i in (1, 2, 3)]
        for h in ("h1", "h2", "h3"):
            with open(os.path.join(Paths(lab.name).proxy_dir(h), "master", "urls")) as f:
                assert f.read().split() == urls
        h1 = topo.hosts["h1"].ns
        r = subprocess.run(["ip", "netns", "exec", h1, "bash", "-c",
                            "exec 3<>/dev/tcp/10.254.0.1/23790"], capture_output=True)
        assert r.returncode != 0, "etcd answered a host namespace"
        assert vif_master(h1, "vif1.0") is not None       # a1 admitted
        assert vif_master(h1, "vif3.0") is None           # x1 denied
        # kill the leader, change the policy: the next `up` gets new bundles to every proxy
        # (it waits for them) and admissions go on
        i, before = leader(lab.name), elections(lab.name)
        with open(replicas.replica_pid(lab.name, i)) as f:
            os.kill(int(f.read()), signal.SIGKILL)
        with open(POLICY) as f:
            text = f.read()
        changed = str(tmp_path / "policy.yaml")
        with open(changed, "w") as f:
            f.write(text + "\n# changed: every bundle carries the policy text\n")
        with open(lab.spec) as f:
            spec = f.read()
        with open(lab.spec, "w") as f:
            f.write(spec.replace(POLICY, changed))
        t0 = time.monotonic()
        r = lab.cli("up")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        assert time.monotonic() - t0 < 120
        assert elections(lab.name) > before       # another leader signed the new bundles
        assert vif_master(h1, "vif1.0") is not None
        v = master_cli_in_ns(lab.name, "audit", "--verify")
        assert v.returncode == 0 and v.stdout.strip().endswith("hash chain intact"), v.stderr
        assert st["mode"] == "master" and st["urls"] == urls


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("control"), "replicas needs `control: master`"),
    (lambda d: d.update(replicas=9), "replicas 9 is out of range 1..5"),
    (lambda d: d.update(replicas="three"), "replicas must be an integer"),
])
def test_spec_replicas_key_is_checked(tmp_path, edit, message):
    assert message in spec_error(tmp_path, SPEC, POLICY, edit)


def test_spec_replicas_parsed():
    from xen_tvd.lab.spec import load_lab
    assert load_lab(SPEC)[0].replicas == 3
    assert load_lab(os.path.join(REPO, "xl-configs", "lab-master.yaml"))[0].replicas == 1
