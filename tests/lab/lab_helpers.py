"""Helpers for the lab tests: run the lab CLI, write specs under unique lab names."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from xen_tvd.planner.routing import leg_mac

from tests.common.paths import REPO
from tests.dataplane.flow_helpers import agent_argv

PAPER_SPEC = os.path.join(REPO, "xl-configs", "lab-paper.yaml")
PAPER_POLICY = os.path.join(REPO, "xl-configs", "lab-paper-policy.yaml")


def lab_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "xen_tvd.lab", *args], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def need_root_and_tools():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root: they create network namespaces (tier 1)")
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"lab tests need `{tool}` (apt: iproute2 / iputils-ping)")


def write_spec(tmp_dir: str, name: str, vms: dict | None = None, spec_file: str = PAPER_SPEC,
               policy_file: str = PAPER_POLICY, **overrides) -> str:
    """A shipped lab spec (the paper's by default) under another lab name (and optionally
    other VMs or other top-level keys), its policy by absolute path."""
    with open(spec_file) as f:
        doc = yaml.safe_load(f)
    doc["name"] = name
    doc["policy"] = policy_file
    if vms is not None:
        doc["vms"] = vms
    doc.update(overrides)
    path = os.path.join(tmp_dir, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def unique_name(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:5]}"


@contextlib.contextmanager
def running_lab(spec_file: str, policy_file: str, tag: str, tmp_dir: str, **overrides):
    """A copy of a shipped lab spec under a unique name (top-level keys replaced by
    `overrides`), up for the duration; down after, leaving no namespace behind."""
    need_root_and_tools()
    name = unique_name(tag)
    spec = write_spec(tmp_dir, name, spec_file=spec_file, policy_file=policy_file, **overrides)
    lab = Lab(spec, name)
    try:
        lab.cli("up", check=True)
        yield lab
    finally:
        r = lab_cli("down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert not [n for n in os.listdir("/run/netns") if n.startswith(name + "-")]


class Lab:
    def __init__(self, spec: str, name: str):
        self.spec, self.name = spec, name

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        cmd, rest = args[0], args[1:]
        return lab_cli(cmd, self.spec, *rest, check=check)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json", check=True).stdout)

    def exec(self, vm: str, *cmd: str) -> subprocess.CompletedProcess:
        return self.cli("exec", vm, "--", *cmd)

    def topology(self):
        from xen_tvd.lab import state
        return state.topology_from_json(state.require_state(self.name)["topology"])

    def policy(self):
        from xen_tvd.policy import load_policy
        return load_policy(PAPER_POLICY)


def blast_spoofed(lab, src_vm, host, tvd, src_ip, dst_vm, dst_ip, seconds=1.0):
    """Blast UDP from src_vm claiming src_ip towards dst_ip via the router leg of (host, tvd)
    for `seconds`; returns (sent, arrived at dst_vm)."""
    magic = f"lab-spoof-{time.monotonic_ns()}"
    topo = lab.topology()
    sn = subprocess.Popen(agent_argv(topo.vms[dst_vm].ns, "sniff", "eth0", magic), cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sn.stdout.readline().strip() == "ready"
    try:
        out = subprocess.run(agent_argv(topo.vms[src_vm].ns, "blast", "eth0", leg_mac(host, tvd),
                                        src_ip, dst_ip, str(seconds), magic),
                             cwd=REPO, capture_output=True, text=True, check=True)
    finally:
        got, _ = sn.communicate("", timeout=10)
    return int(out.stdout), int(got)


def assert_exact_matrix(lab, pairs: int, probed, answers: dict) -> dict:
    """`lab verify --json` passes, covers `pairs` VM pairs, and every cell probed exactly
    probed((src_tvd, dst_tvd)) and got answers to exactly all of them inside one TVD, else to
    exactly answers.get(pair, set()) (written by hand from the policy). Returns the matrix."""
    r = lab.cli("verify", "--json")
    m = json.loads(r.stdout)
    assert r.returncode == 0 and m["ok"], [c for c in m["cells"] if not c["ok"]]
    assert m["pairs"] == pairs
    wrong = []
    for c in m["cells"]:
        pair = (c["src_tvd"], c["dst_tvd"])
        keys = probed(pair)
        answer = set(keys) if pair[0] == pair[1] else answers.get(pair, set())
        got = {k for k, v in c["results"].items() if v}
        if set(c["results"]) != keys or got != answer:
            wrong.append(f"{c['src']}({pair[0]}) -> {c['dst']}({pair[1]}): probed "
                         f"{sorted(c['results'])}, answered {sorted(got)}, want {sorted(answer)}")
    assert not wrong, "\n".join(wrong)
    return m


def up_fails_closed(spec: str, reason: str) -> dict:
    """`lab up` of a lab whose kernel lacks a module: it exits non-zero naming `reason` and
    DEGRADED; returns `lab status --json` for the caller's checks of what stayed attached."""
    r = lab_cli("up", spec)
    assert r.returncode != 0
    assert reason in r.stderr and "DEGRADED" in (r.stdout + r.stderr), r.stdout + r.stderr
    return json.loads(lab_cli("status", spec, "--json", check=True).stdout)


def spec_error(tmp_path, spec_file: str, policy_file: str, edit) -> str:
    """Load a shipped lab spec changed by edit(doc); returns the SpecInvalid message (and
    fails if the spec is accepted)."""
    from xen_tvd.lab.spec import SpecInvalid, load_lab
    with open(spec_file) as f:
        doc = yaml.safe_load(f)
    doc["policy"] = policy_file
    edit(doc)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(SpecInvalid) as e:
        load_lab(str(path))
    return str(e.value)
