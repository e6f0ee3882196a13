"""Helpers for the lab tests: run the lab CLI, write specs under unique lab names."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def write_spec(tmp_dir: str, name: str, vms: dict | None = None) -> str:
    """The paper spec under another lab name (and optionally other VMs), policy by abs path."""
    with open(PAPER_SPEC) as f:
        doc = yaml.safe_load(f)
    doc["name"] = name
    doc["policy"] = PAPER_POLICY
    if vms is not None:
        doc["vms"] = vms
    path = os.path.join(tmp_dir, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def unique_name(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:5]}"


@contextlib.contextmanager
def running_lab(spec_file: str, policy_file: str, tag: str, tmp_dir: str):
    """A copy of a shipped lab spec under a unique name, up for the duration; down after,
    leaving no namespace behind."""
    need_root_and_tools()
    name = unique_name(tag)
    with open(spec_file) as f:
        doc = yaml.safe_load(f)
    doc["name"], doc["policy"] = name, policy_file
    spec = os.path.join(tmp_dir, f"{name}.yaml")
    with open(spec, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
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
