"""The proxy core with its standalone authority and a recording stand-in for the kernel.

RecordingDataplane stands in for dataplane_port.KernelDataplane: it records what the core asks
of the kernel and answers `identify` from a table, so the core's decisions (what it refuses,
what it never touches) are tested without namespaces. The real dataplane under the same core:
test_proxy_daemon.py, test_proxy_attacks.py and tests/hotplug.
"""
from __future__ import annotations

import json
import os

import pytest

from xen_tvd.dataplane import ApplyReport, DeviceFacts
from xen_tvd.policy import load_policy
from xen_tvd.proxy import requests as rq
from xen_tvd.proxy import sessions
from xen_tvd.proxy.core import ProxyCore
from xen_tvd.proxy.standalone import StandaloneAuthority

from tests.common.paths import REPO

POLICY = os.path.join(REPO, "xl-configs", "tvd-hosts-policy.yaml")
UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def netback(name: str, domid: int, devid: int, master: str | None = None) -> DeviceFacts:
    return DeviceFacts(name, "vif", f"vif-{domid}-{devid}", None, False, master, bool(master), 0)


UPLINK = DeviceFacts("eth0", "virtio_net", "0000:00:03.0", None, False, None, False, 1)


class RecordingDataplane:
    """Stands in for the kernel: records apply/plug/unplug, answers identify from `devices`,
    reports a healthy kernel that dropped nothing."""

    def __init__(self, devices: dict[str, DeviceFacts]) -> None:
        self.devices = devices
        self.calls: list[tuple] = []
        self.attached: dict[str, str] = {}   # ifname -> bridge

    def apply(self, state):
        self.calls.append(("apply", tuple(s.tvd for s in state.segments)))
        return ApplyReport()

    def plug(self, port, segment, log_drops=0):
        self.calls.append(("plug", port.ifname, segment.bridge))
        self.attached[port.ifname] = segment.bridge

    def unplug(self, ifname):
        self.calls.append(("unplug", ifname))
        self.attached.pop(ifname, None)

    def bridge_ports(self):
        out: dict[str, list[str]] = {}
        for name, br in self.attached.items():
            out.setdefault(br, []).append(name)
        return out

    def identify(self, ifname):
        return self.devices.get(ifname)

    def health(self, state):
        return {"segments": {}, "ports": {}}   # a kernel with nothing wrong

    def drop_counters(self):
        return {"flows": {}, "ports": {}, "dom0_guard": 0}


def ask(core, req) -> dict:
    resp, _ = core.handle(json.dumps({"v": 1, **req.to_wire()}).encode() + b"\n")
    return resp


@pytest.fixture
def core(tmp_path):
    dp = RecordingDataplane({"vif3.0": netback("vif3.0", 3, 0), "vif4.0": netback("vif4.0", 4, 0),
                             "eth0": UPLINK})
    c = ProxyCore(StandaloneAuthority(load_policy(POLICY), "dom0-a"), dp, str(tmp_path),
                  segment_grace=0)
    c.startup()
    dp.calls.clear()
    return c


def online(ifname: str, domid: int = 3, **kw) -> rq.VifOnline:
    return rq.VifOnline(ifname=ifname, uuid=UUID, domid=domid, devid=0, bridge="tvd:beta", **kw)


def test_a_netback_vif_of_the_domain_is_attached(core):
    r = ask(core, online("vif3.0"))
    assert r["ok"] and r["tvd"] == "beta", r
    assert core.dataplane.calls == [("apply", ("beta",)), ("plug", "vif3.0", "tvd-beta")]
    assert [v["ifname"] for v in ask(core, rq.Status())["vifs"]] == ["vif3.0"]
    assert ask(core, rq.VifOffline("vif3.0"))["ok"]
    assert ("unplug", "vif3.0") in core.dataplane.calls


def test_the_uplink_is_refused_and_never_touched(core):
    """issue #16.2: vif-online ifname eth0 put the host's uplink into a TVD bridge."""
    r = ask(core, online("eth0"))
    assert not r["ok"] and "refusing eth0" in r["error"], r
    assert core.dataplane.calls == []
    assert ask(core, rq.VifOffline("eth0"))["ok"]   # idempotent, and still not touched
    assert core.dataplane.calls == []


def test_another_domains_vif_is_refused(core):
    r = ask(core, online("vif4.0", domid=3))
    assert not r["ok"] and "Xen backend vif-4-0, not vif-3-0" in r["error"], r
    assert core.dataplane.calls == []


def test_a_veth_is_a_vif_only_when_the_proxy_is_told(core, tmp_path):
    core.dataplane.devices["vif3.0"] = DeviceFacts("vif3.0", "veth", "", "veth", False, None,
                                                   False, 0)
    r = ask(core, online("vif3.0"))
    assert not r["ok"] and "its driver is veth" in r["error"], r
    core.vif_drivers = frozenset({"veth"})
    assert ask(core, online("vif3.0"))["ok"]


def test_session_recheck_detaches_through_the_public_core(core, tmp_path):
    assert ask(core, online("vif3.0"))["ok"]
    # a policy that no longer has beta: the re-check denies and the core detaches
    policy = load_policy(POLICY)
    del policy.tvds["beta"]
    core.authority.install(policy)
    with core.lock:
        assert sessions.recheck(core, ["vif3.0"], "session") == ["vif3.0"]
    assert ("unplug", "vif3.0") in core.dataplane.calls
    assert core.vifs == {}


def test_the_emulated_nics_tap_by_name_or_beside_its_netback_vif(core):
    """xl vifname=web: the netback vif is `web`, the tap `web-emu`; the tap's domain is the
    one whose backend vif sits beside it."""
    tap = DeviceFacts("x", "tun", "tap", "tun", False, None, False, 0)
    core.dataplane.devices.update({"vif3.0-emu": tap, "web-emu": tap, "web": netback("web", 3, 0),
                                   "other-emu": tap, "other": netback("other", 4, 0)})
    for name, ok in (("vif3.0-emu", True), ("web-emu", True), ("other-emu", False)):
        r = ask(core, online(name, type="tap"))
        assert r["ok"] is ok, (name, r)
        if ok:
            assert ask(core, rq.VifOffline(name))["ok"]
    assert "it is a tap, but neither vif3.0-emu nor beside the netback vif" in r["error"], r


def test_a_slow_kernel_read_for_status_holds_up_no_admission(core):
    """status reads drop counters from the kernel (nft, netlink, BPF maps): slow on a loaded
    or emulated CPU. It reads them without the writer lock, so a vif is admitted meanwhile,
    and the answer of that status comes once the read ends."""
    import threading

    reading, release = threading.Event(), threading.Event()

    def slow_counters():
        reading.set()
        release.wait(30)
        return {"flows": {}, "ports": {}, "dom0_guard": 0}

    core.dataplane.drop_counters = slow_counters
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(ask(core, rq.Status())))
    t.start()
    try:
        assert reading.wait(10), "status never reached the kernel read"
        admitted: dict = {}
        a = threading.Thread(target=lambda: admitted.update(ask(core, online("vif3.0"))))
        a.start()
        a.join(10)
        assert admitted.get("ok") and admitted.get("tvd") == "beta", \
            f"vif-online waited for a status's kernel read: {admitted}"
    finally:
        release.set()
        t.join(10)
    assert answer.get("ok") and answer["drops"]["dom0_guard"] == 0, answer
