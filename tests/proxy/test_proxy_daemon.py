"""tvd-proxy as a real process in real namespaces: restart/reconcile, parallel hotplug, active
membership, cross-host VXLAN, the socket's protocol and permissions.

Hotplug events go through the real vif-tvd; xenstore-read/-write/... on its PATH are the
stand-ins in tests/hotplug/xenstore-stubs (the real xenstore tools need Xen; the nested-Xen tier
uses them). Vifs are veths named vif<domid>.<devid> in the Dom0 namespace (netback stand-in).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from xen_tvd.proxy import requests as rq

from tests.hotplug.tvd_harness import REPO, ip, link_info, all_links


def register(p, vm, props, nics=()):
    r = p.client.send(rq.Register(vm.uuid, vm.name, tuple(rq.Nic(t, d) for d, t in nics),
                                  props))
    assert r["ok"], r


def test_restart_between_online_and_offline_keeps_vms_running(lab):
    p = lab.proxy()
    a = lab.vm("a", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("b", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    for vm in (a, b):
        register(p, vm, {"signed-kernel": "trust"})
        assert lab.hotplug(vm).returncode == 0
    ns = lab.host_ns["dom0-a"]
    idx_before = {n: json.loads(ip("-j", "link", "show", n, ns=ns).stdout)[0]["ifindex"]
                  for n in ("tvd-alpha", "tvx-alpha")}
    # a continuous ping across the restart: not one lost reply is allowed
    pinger = subprocess.Popen(["ip", "netns", "exec", a.ns, "ping", "-i", "0.05", "-w", "6", "-c", "100",
                               "10.99.0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert p.stop() == 0
    time.sleep(0.3)
    p.start()
    out = pinger.communicate(timeout=30)[0]
    assert " 0% packet loss" in out, out
    # the bridge and uplink were reconciled in place, not recreated
    for n, idx in idx_before.items():
        assert json.loads(ip("-j", "link", "show", n, ns=ns).stdout)[0]["ifindex"] == idx
    assert "event=reconciled host=dom0-a vifs=2" in p.log()
    st = p.client.status()
    assert sorted(v["ifname"] for v in st["vifs"]) == ["vif1.0", "vif2.0"]
    assert {v["uuid"] for v in st["vifs"]} == {a.uuid, b.uuid}
    # offline after the restart detaches and forgets
    assert lab.hotplug(a, "offline").returncode == 0
    assert link_info(ns, a.vif())["master"] is None
    assert [v["ifname"] for v in p.client.status()["vifs"]] == ["vif2.0"]


def test_restart_relearns_from_kernel_without_state_file(lab):
    p = lab.proxy()
    vm = lab.vm("a", 1, nics={0: ("tvd:beta", "10.99.0.1")})
    assert lab.hotplug(vm).returncode == 0
    p.stop()
    os.unlink(os.path.join(p.state_dir, "state.json"))
    p.start()
    assert "event=adopted ifname=vif1.0 tvd=beta" in p.log()
    assert link_info(lab.host_ns["dom0-a"], vm.vif())["master"] == "tvd-beta"
    assert [v["ifname"] for v in p.client.status()["vifs"]] == ["vif1.0"]


def test_restart_with_stricter_policy_revokes(lab, tmp_path):
    p = lab.proxy()
    vm = lab.vm("a", 1, nics={0: ("tvd:beta", "10.99.0.1")})
    assert lab.hotplug(vm).returncode == 0
    p.stop()
    strict = tmp_path / "strict.yaml"
    src = open(p.policy).read().replace("beta:  {vlan: 200, vni: 10200}",
                                        "beta:  {vlan: 200, vni: 10200, membership: [signed-kernel]}")
    strict.write_text(src)
    p.policy = str(strict)
    p.start()
    assert "event=revoked ifname=vif1.0" in p.log()
    info = link_info(lab.host_ns["dom0-a"], vm.vif())
    assert info["master"] is None and not info["up"]


def test_32_vifs_in_parallel(lab):
    p = lab.proxy()
    vms = []
    for i in range(32):
        tvd = ("alpha", "beta")[i % 2]
        vm = lab.vm(f"vm{i}", 100 + i, nics={0: (f"tvd:{tvd}", f"10.99.{i % 2}.{10 + i}")})
        if tvd == "alpha":
            register(p, vm, {"signed-kernel": "trust"})
        vms.append((vm, tvd))
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        results = list(ex.map(lambda v: lab.hotplug(v[0]), vms))
    ns = lab.host_ns["dom0-a"]
    for (vm, tvd), r in zip(vms, results):
        assert r.returncode == 0, r.stderr
        assert lab.xs.get(f"{vm.backend()}/hotplug-status") == "connected"
        assert link_info(ns, vm.vif())["master"] == f"tvd-{tvd}"
    names = all_links(ns)
    assert len(names) == len(set(names))
    assert sorted(n for n in names if n.startswith(("tvd-", "tvx-"))) == \
        ["tvd-alpha", "tvd-beta", "tvx-alpha", "tvx-beta"]
    assert len(p.client.status()["vifs"]) == 32
    # serialised inside the proxy: every apply ran alone; exactly one created each bridge
    assert p.log().count("created bridge tvd-alpha") == 1
    assert p.log().count("created bridge tvd-beta") == 1
    assert lab.ping(vms[0][0], vms[30][0].nics[0])
    with concurrent.futures.ThreadPoolExecutor(32) as ex:
        results = list(ex.map(lambda v: lab.hotplug(v[0], "offline"), vms))
    assert all(r.returncode == 0 for r in results)
    assert p.client.status()["vifs"] == []


def test_join_and_leave(lab):
    p = lab.proxy()
    vm = lab.vm("app", 5, nics={0: ("xenbr0", "10.99.0.5")})
    peer = lab.vm("peer", 6, nics={0: ("tvd:alpha", "10.99.0.6")})
    register(p, peer, {"signed-kernel": "trust"})
    assert lab.hotplug(peer).returncode == 0
    # not a member of anything yet: fail closed
    assert lab.hotplug(vm).returncode != 0
    # join is refused while the VM lacks M(alpha)
    r = p.client.send(rq.Join(vm.uuid, "alpha"))
    assert not r["ok"] and "signed-kernel" in r["error"]
    register(p, vm, {"signed-kernel": "trust"})
    assert p.client.join(vm.uuid, "alpha", 0)["ok"]
    assert lab.hotplug(vm).returncode == 0
    assert lab.ping(vm, "10.99.0.6")
    r = p.client.send(rq.Leave(vm.uuid, "alpha"))
    assert r["ok"] and r["detached"] == ["vif5.0"]
    info = link_info(lab.host_ns["dom0-a"], vm.vif())
    assert info["master"] is None and not info["up"]
    assert not lab.ping(vm, "10.99.0.6")
    # leaving is sticky, even against bridge=tvd:alpha, until the VM joins again
    lab.xs.set(f"{vm.backend()}/bridge", "tvd:alpha")
    r = lab.hotplug(vm)
    assert r.returncode != 0 and "left TVD 'alpha'" in lab.xs.get(f"{vm.backend()}/hotplug-error")
    assert p.client.join(vm.uuid, "alpha")["ok"]
    assert lab.hotplug(vm).returncode == 0


def test_cross_host_vxlan_two_proxies(lab2):
    pa = lab2.proxy("dom0-a")
    pb = lab2.proxy("dom0-b")
    a = lab2.vm("a", 1, host="dom0-a", nics={0: ("tvd:beta", "10.99.0.1")})
    b = lab2.vm("b", 2, host="dom0-b", nics={0: ("tvd:beta", "10.99.0.2")})
    c = lab2.vm("c", 3, host="dom0-b", nics={0: ("tvd:vault", "10.99.0.3")})
    assert lab2.hotplug(a).returncode == 0
    assert lab2.hotplug(b).returncode == 0
    assert lab2.ping(a, "10.99.0.2", count=3)
    # VM-facing MTU 1450 on a 1500 underlay: 1422-byte DF pings pass, 1472 cannot
    ip("link", "set", "eth0", "mtu", "1450", ns=a.ns)
    assert lab2.ping(a, "10.99.0.2", size=1422)
    # vault: dom0-b holds pci-audited, so it carries vault; dom0-a would refuse
    register(pb, c, {"pci-audited": "audit"})
    assert lab2.hotplug(c).returncode == 0, lab2.xs.get(f"{c.backend()}/hotplug-error")
    assert pa.client.ping()["host"] == "dom0-a"


# ---- protocol and socket ---------------------------------------------------------------------

def test_protocol_errors_always_answered(lab):
    p = lab.proxy()
    cases = [(b"not json\n", "malformed request"), (b"[1]\n", "not a JSON object"),
             (b'{"op": "ping"}\n', "no protocol version"), (b'{"v": 2, "op": "ping"}\n', "version 2"),
             (b'{"v": 1, "op": "fly"}\n', "unknown op 'fly'"),
             (b'{"v": 1, "op": "vif-online", "ifname": "../x"}\n', "'ifname'"),
             (b'{"v": 1, "op": "register", "uuid": "nope"}\n', "'uuid'")]
    for data, needle in cases:
        r = p.raw(data)
        assert r["v"] == 1 and r["ok"] is False and needle in r["error"], (data, r)
    r = p.raw(b'{"v": 1, "op": "ping"}\n')
    assert r == {"v": 1, "ok": True, "version": 1, "host": "dom0-a"}
    assert p.raw(b'{"v": 1, "op": "vif-offline", "ifname": "vif99.0"}\n')["ok"]


def test_socket_and_state_are_root_only(lab):
    p = lab.proxy()
    assert stat.S_IMODE(os.stat(p.socket).st_mode) == 0o600
    vm = lab.vm("a", 1, nics={0: ("tvd:beta", "10.99.0.1")})
    register(p, vm, {})
    st = os.stat(os.path.join(p.state_dir, "state.json"))
    assert stat.S_IMODE(st.st_mode) == 0o600
    # even if the socket mode were loosened, SO_PEERCRED refuses non-root peers
    os.chmod(p.socket, 0o666)
    # pytest's tmp dirs are 0700: reach the same socket inode through a hard link in a 0755 dir
    pub = tempfile.mkdtemp(prefix="tvdh-sock-")
    os.chmod(pub, 0o755)
    link = os.path.join(pub, "proxy.sock")
    os.link(p.socket, link)
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.sendall(b'{\"v\":1,\"op\":\"status\"}\\n'); print(s.recv(4096).decode())")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code, link], capture_output=True, text=True)
    os.unlink(link)
    os.rmdir(pub)
    assert "permission denied" in r.stdout and '"ok":false' in r.stdout, (r.stdout, r.stderr)


def test_second_proxy_on_same_socket_refused_stale_socket_reused(lab):
    p = lab.proxy()
    from tests.hotplug.tvd_harness import Proxy
    q = Proxy(lab, "dom0-a", p.policy)
    q.state_dir += "-2"
    q.start(wait=False)
    assert q.proc.wait(20) == 2
    assert "already listening" in q.log()
    q.logf.close()
    p.proc.kill()          # dies without removing its socket
    p.proc.wait()
    p.logf.close()
    p.proc = None
    assert os.path.exists(p.socket)
    p.start()              # the stale socket is replaced
    assert p.client.ping()["ok"]


def test_bad_host_or_policy_exit_2(lab, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    base = [sys.executable, "-m", "xen_tvd.proxy.main", "run", "--socket", str(tmp_path / "s"),
            "--state-dir", str(tmp_path / "st")]
    r = subprocess.run(base + ["--policy", lab.proxy(start=False).policy, "--host", "nohost"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "host 'nohost' is not in the policy" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntvds: {Alpha: {vlan: 1}}\n")
    r = subprocess.run(base + ["--policy", str(bad), "--host", "x"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "has errors" in r.stderr
    assert "Traceback" not in r.stderr


def test_status_reports_registrations_and_segments(lab):
    p = lab.proxy()
    vm = lab.vm("a", 1, nics={0: ("tvd:gamma", "10.99.0.1")})
    register(p, vm, {"tpm-measured-boot": "immutable-log"}, nics=[(0, "alpha")])
    r = lab.hotplug(vm)    # the bridge key wins over the registration
    assert r.returncode == 0, r.stderr
    st = p.client.status()
    assert st["vifs"][0]["tvd"] == "gamma"
    assert st["registrations"][0]["nics"] == {"0": "alpha"}
    assert [{k: s[k] for k in ("tvd", "bridge", "mtu", "uplink")} for s in st["segments"]] == \
        [{"tvd": "gamma", "bridge": "tvd-gamma", "mtu": 1450, "uplink": "VxlanUplink"}]
    # and the transport in full (tvdctl status shows it): multicast here, no HER remotes
    seg = st["segments"][0]
    assert (seg["transport"], seg["vni"], seg["remotes"], seg["problems"]) == \
        ("vxlan", 10300, [], []) and seg["group"].startswith("239.")
    assert p.client.unregister(vm.uuid)["ok"]
    assert p.client.status()["registrations"] == []


def _own_policy(tmp_path) -> str:
    """A copy of the example policy the test may rewrite (never the repository's file)."""
    from tests.hotplug.tvd_harness import POLICY
    dst = tmp_path / "policy.yaml"
    shutil.copy(POLICY, dst)
    return str(dst)


def test_sighup_reload_revokes_what_the_new_policy_no_longer_admits(lab, tmp_path):
    p = lab.proxy(policy=_own_policy(tmp_path))
    vm = lab.vm("a", 1, nics={0: ("tvd:beta", "10.99.0.1")})
    assert lab.hotplug(vm).returncode == 0
    policy = open(p.policy).read()
    strict = policy.replace("beta:  {vlan: 200, vni: 10200}",
                            "beta:  {vlan: 200, vni: 10200, membership: [signed-kernel]}")
    assert strict != policy
    with open(p.policy, "w") as f:
        f.write(strict)
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log("event=reloaded")
    assert "event=revoked ifname=vif1.0" in p.log()
    info = link_info(lab.host_ns["dom0-a"], vm.vif())
    assert info["master"] is None and not info["up"]
    assert p.client.status()["vifs"] == []


def test_sighup_with_a_broken_policy_keeps_enforcing_the_old_one(lab, tmp_path):
    p = lab.proxy(policy=_own_policy(tmp_path))
    vm = lab.vm("a", 1, nics={0: ("tvd:beta", "10.99.0.1")})
    assert lab.hotplug(vm).returncode == 0
    with open(p.policy, "a") as f:
        f.write("bogus-key: 1\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log("event=reload-failed")
    assert "bogus-key" in p.log()
    assert link_info(lab.host_ns["dom0-a"], vm.vif())["master"] == "tvd-beta"
    assert p.client.ping()["ok"]
