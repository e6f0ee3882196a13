"""up is idempotent and repairs; down leaves nothing (namespaces, devices, processes), also
without a state file and after a crash mid-way; both are safe to rerun."""
from __future__ import annotations

import json
import os

import pytest
from tests.lab.lab_helpers import Lab, lab_cli, need_root_and_tools, unique_name, write_spec
from pyroute2 import IPRoute

from xen_tvd.lab import nsutil, processes
from xen_tvd.lab import state as L

SMALL = {
    "a1": {"host": "h1", "nics": [{"tvd": "alpha", "address": "192.168.60.11/24"}]},
    "b1": {"host": "h1", "nics": [{"tvd": "beta", "address": "192.168.60.21/24"}]},
    "a3": {"host": "h3", "nics": [{"tvd": "alpha", "address": "192.168.60.13/24"}]},
}


def root_links() -> set[str]:
    with IPRoute() as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}


def leftovers(name: str) -> dict:
    prefix = f"{name}-"
    return {
        "namespaces": [n for n in nsutil.list_ns() if n.startswith(prefix)],
        "listeners": processes.stray_listeners(name),
        "state": os.path.exists(L.state_path(name)),
    }


NOTHING = {"namespaces": [], "listeners": [], "state": False}


@pytest.fixture
def small_lab(tmp_path):
    need_root_and_tools()
    name = unique_name("s")
    lab = Lab(write_spec(str(tmp_path), name, SMALL), name)
    try:
        yield lab
    finally:
        lab_cli("down", "--name", name)
        assert leftovers(name) == NOTHING


def test_down_leaves_nothing_and_is_idempotent(small_lab):
    before = root_links()
    small_lab.cli("up", check=True)
    up = leftovers(small_lab.name)
    assert len(up["namespaces"]) == 3 + 2 + 3   # fabric, router, 3 hosts, 3 VMs
    assert len(up["listeners"]) == 3 and up["state"]
    assert root_links() == before               # nothing in the host's own namespace
    r = small_lab.cli("down", check=True)
    assert "8 namespace(s) removed" in r.stdout
    assert leftovers(small_lab.name) == NOTHING
    assert root_links() == before
    again = small_lab.cli("down")
    assert again.returncode == 0 and "0 namespace(s) removed" in again.stdout


def test_down_without_state_file_finds_the_lab_by_name(small_lab):
    small_lab.cli("up", check=True)
    os.unlink(L.state_path(small_lab.name))
    r = lab_cli("down", "--name", small_lab.name)
    assert r.returncode == 0, r.stderr
    assert leftovers(small_lab.name) == NOTHING


def test_down_does_not_touch_a_lab_whose_name_extends_ours(small_lab, tmp_path):
    """Lab "X" must not remove lab "X-vm-a1"'s namespaces (matching prefix, other mark)."""
    other = small_lab.name + "-vm-a1"
    other_ns = f"{other}-fabric"
    nsutil.ensure_ns(other_ns, other)
    try:
        small_lab.cli("up", check=True)
        small_lab.cli("down", check=True)
        assert nsutil.ns_exists(other_ns)
    finally:
        nsutil.remove_ns(other_ns)


def _without_drop_counters(status: dict) -> dict:
    return {**status, "hosts": {h: {k: v for k, v in e.items() if k != "drops"}
                                for h, e in status["hosts"].items()}}


def test_up_twice_changes_nothing_and_up_repairs(small_lab):
    small_lab.cli("up", check=True)
    st1 = small_lab.status()
    small_lab.cli("up", check=True)
    st2 = small_lab.status()
    # same devices, same listener pids; the drop counters are live (right after `up` a VM's
    # own first frames towards Dom0, e.g. IPv6 router solicitations, still hit the Dom0 guard:
    # seen 0 -> 1 between the two reads), so they are not part of "nothing changed"
    assert _without_drop_counters(st1) == _without_drop_counters(st2)
    topo = small_lab.topology()
    # damage: a VM namespace deleted, a host's vif deleted, the state file lost
    nsutil.kill_pids(nsutil.pids_in_ns([topo.vms["a3"].ns]))
    nsutil.remove_ns(topo.vms["a3"].ns)
    nsutil.delete_link(topo.hosts["h1"].ns, topo.vms["b1"].nics[0].vif)
    os.unlink(L.state_path(small_lab.name))
    small_lab.cli("up", check=True)
    st3 = small_lab.status()
    vifs = {v["name"]: v for he in st3["hosts"].values() for v in he["vifs"]}
    assert all(v["present"] and v["bridge"] == f"tvd-{v['tvd']}" for v in vifs.values()), vifs
    assert all(v["listener_alive"] for v in st3["vms"].values())
    assert len(leftovers(small_lab.name)["listeners"]) == 3      # the orphaned one was killed
    r = small_lab.cli("verify", "--json")
    assert r.returncode == 0, json.loads(r.stdout)["mismatches"]


def test_crash_during_up_is_cleaned_by_down(small_lab):
    """An unmarked namespace left by a crash between create and mark still belongs to us."""
    small_lab.cli("up", check=True)
    crashed = f"{small_lab.name}-vm-zz"
    from pyroute2 import netns
    netns.create(crashed)
    small_lab.cli("down", check=True)
    assert not nsutil.ns_exists(crashed)


def test_spec_change_removes_what_is_gone(small_lab, tmp_path):
    small_lab.cli("up", check=True)
    fewer = dict(SMALL)
    del fewer["b1"]
    spec2 = write_spec(str(tmp_path / ".."), small_lab.name, fewer)
    lab_cli("up", spec2, check=True)
    left = leftovers(small_lab.name)
    assert f"{small_lab.name}-vm-b1" not in left["namespaces"]
    assert len(left["listeners"]) == 2
    st = json.loads(lab_cli("status", spec2, "--json", check=True).stdout)
    assert [v["name"] for v in st["hosts"]["h1"]["vifs"]] == ["vif1.0"]
