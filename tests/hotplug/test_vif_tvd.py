"""vif-tvd end to end: the real script, a real tvd-proxy process, real bridges/VXLAN in namespaces.

The xenstore-read/-write/-rm/-exists on PATH are tests/hotplug/xenstore-stubs, stand-ins for
the real xenstore tools (xenstored needs Xen; the nested-Xen tier uses the real ones). A vif is
a veth named vif<domid>.<devid> in the Dom0 namespace (the netback stand-in).
"""
from __future__ import annotations

import os
import socket
import threading
import time

from xen_tvd.proxy import requests as rq

from tests.dataplane.dp_helpers import ethtool_k
from tests.hotplug.tvd_harness import POLICY, link_info


def assert_error(lab, vm, devid, r, *needles):
    """Failure contract: non-zero exit, hotplug-status=error, hotplug-error text, vif on nothing."""
    be = vm.backend(devid)
    assert r.returncode != 0, r
    assert lab.xs.get(f"{be}/hotplug-status") == "error"
    err = lab.xs.get(f"{be}/hotplug-error") or ""
    assert "\n" not in err
    for n in needles:
        assert n in err, (n, err)
    info = link_info(lab.host_ns[vm.host], vm.vif(devid))
    assert info is not None and info["master"] is None and not info["up"], info
    assert lab.xs.get(f"{vm.frontend(devid)}/mtu") is None
    return err


def register(lab, vm, props, nics=(), host="dom0-a", **fields):
    """fields: Register's optional ones (tx_checksum_offload, ...)."""
    r = lab.proxies[host].client.send(rq.Register(vm.uuid, vm.name,
                                                  tuple(rq.Nic(t, d) for d, t in nics), props,
                                                  **fields))
    assert r["ok"], r


def test_online_success_mtu_bridge_and_ping(lab):
    lab.proxy()
    a = lab.vm("web1", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("web2", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    for vm in (a, b):
        register(lab, vm, {"signed-kernel": "trust"})
        r = lab.hotplug(vm)
        assert r.returncode == 0, r.stderr
        assert lab.xs.get(f"{vm.backend()}/hotplug-status") == "connected"
        # alpha is a VXLAN segment over a 1500-byte LAN: the guest must learn 1450
        assert lab.xs.get(f"{vm.frontend()}/mtu") == "1450"
        info = link_info(lab.host_ns["dom0-a"], vm.vif())
        assert info["master"] == "tvd-alpha" and info["up"] and info["mtu"] == 1450, info
        assert "attached to tvd-alpha" in r.stderr
    assert lab.ping(a, "10.99.0.2", count=2)


def test_vif_keeps_tx_checksum_offload_and_tso_unless_the_tvd_turns_it_off(lab, tmp_path):
    """The shipped default (tier 3 found the 2007 netfront/netback bug gone): a vif keeps tx
    checksum offload, so TSO towards the VM too; `tx-checksum-offload: false` turns both off."""
    with open(POLICY) as f:
        text = f.read()
    assert "tx-checksum-offload" not in text          # alpha runs on the default
    opt_out = tmp_path / "policy.yaml"
    opt_out.write_text(text.replace("  beta:  {", "  beta:  {tx-checksum-offload: false, ", 1))
    lab.proxy(policy=str(opt_out))
    a = lab.vm("web1", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("other", 2, nics={0: ("tvd:beta", "10.99.0.2")})
    register(lab, a, {"signed-kernel": "trust"})
    for vm in (a, b):
        r = lab.hotplug(vm)
        assert r.returncode == 0, r.stderr
    feats = {vm.name: ethtool_k(lab.host_ns["dom0-a"], vm.vif()) for vm in (a, b)}
    assert feats["web1"]["tx-checksumming"] == "on" and feats["web1"]["tx-tcp-segmentation"] == "on"
    assert feats["other"]["tx-checksumming"] == "off" and feats["other"]["tx-tcp-segmentation"] == "off"


def test_a_vms_opt_out_turns_tx_checksum_offload_off_on_its_vifs_only(lab, tmp_path):
    """Per VM (registration `tx_checksum_offload: false`, from xl.cfg tvd_tx_checksum_offload
    = 0): off on that VM's vif while another VM of the same TVD keeps the default on; a VM
    cannot turn it on where its TVD has it off (the stricter wins); it survives a proxy
    restart, both for an attached vif (the restart re-applies every port) and for a VM
    registered before the restart whose vif comes online after it."""
    with open(POLICY) as f:
        text = f.read()
    opt_out = tmp_path / "policy.yaml"
    opt_out.write_text(text.replace("  beta:  {", "  beta:  {tx-checksum-offload: false, ", 1))
    p = lab.proxy(policy=str(opt_out))
    ns = lab.host_ns["dom0-a"]
    fwd = lab.vm("fwd", 1, nics={0: ("tvd:alpha", "10.99.0.1")})     # the guest that opts out
    web = lab.vm("web", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    other = lab.vm("other", 3, nics={0: ("tvd:beta", "10.99.0.3")})
    late = lab.vm("late", 4, nics={0: ("tvd:alpha", "10.99.0.4")})
    register(lab, fwd, {"signed-kernel": "trust"}, tx_checksum_offload=False)
    register(lab, web, {"signed-kernel": "trust"})
    register(lab, other, {}, tx_checksum_offload=True)   # asks for the default: beta's off wins
    for vm in (fwd, web, other):
        r = lab.hotplug(vm)
        assert r.returncode == 0, r.stderr

    def tx(vm):
        f = ethtool_k(ns, vm.vif())
        return f["tx-checksumming"], f["tx-tcp-segmentation"]
    want = {"fwd": ("off", "off"), "web": ("on", "on"), "other": ("off", "off")}
    assert {vm.name: tx(vm) for vm in (fwd, web, other)} == want
    st = {v["ifname"]: v for v in p.client.status()["vifs"]}
    assert {n: v["tx_csum_on"] for n, v in st.items()} == {"vif1.0": False, "vif2.0": True,
                                                          "vif3.0": False}
    assert lab.ping(web, "10.99.0.1", count=2)           # the opted-out vif still forwards
    register(lab, late, {"signed-kernel": "trust"}, tx_checksum_offload=False)
    assert p.stop() == 0
    p.start()
    assert {vm.name: tx(vm) for vm in (fwd, web, other)} == want
    r = lab.hotplug(late)
    assert r.returncode == 0, r.stderr
    assert tx(late) == ("off", "off")
    assert {g["uuid"]: g["tx_checksum_offload"] for g in p.client.status()["registrations"]} \
        == {fwd.uuid: False, web.uuid: True, other.uuid: True, late.uuid: False}


def test_beta_vm_cannot_reach_alpha_vm(lab):
    lab.proxy()
    a = lab.vm("web1", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("other", 2, nics={0: ("tvd:beta", "10.99.0.2")})
    # beta has no requirements; alpha needs signed-kernel: register a with it
    lab.proxies["dom0-a"].client.send(rq.Register(a.uuid, a.name, (rq.Nic("alpha", 0),),
                                                  {"signed-kernel": "trust"}))
    assert lab.hotplug(a).returncode == 0
    assert lab.hotplug(b).returncode == 0
    assert link_info(lab.host_ns["dom0-a"], b.vif())["master"] == "tvd-beta"
    assert not lab.ping(a, "10.99.0.2")


def test_unknown_tvd(lab):
    lab.proxy()
    vm = lab.vm("x", 3, nics={0: ("tvd:zeta", "10.99.0.3")})
    err = assert_error(lab, vm, 0, lab.hotplug(vm), "unknown TVD 'zeta'", "alpha")
    assert err.startswith("vif-tvd online vif3.0:")


def test_no_tvd_at_all(lab):
    lab.proxy()
    vm = lab.vm("plain", 3, nics={0: ("xenbr0", "10.99.0.3")})
    assert_error(lab, vm, 0, lab.hotplug(vm), "no TVD for vif3.0", "not registered")


def test_admission_denied_vm_properties(lab):
    lab.proxy()
    vm = lab.vm("unsigned", 4, nics={0: ("tvd:gamma", "10.99.0.4")})
    lab.proxies["dom0-a"].client.send(rq.Register(vm.uuid, vm.name, (),
                                                  {"tpm-measured-boot": "trust"}))
    assert_error(lab, vm, 0, lab.hotplug(vm), "admission denied", "gamma",
                 "tpm-measured-boot (assured by immutable-log)")


def test_admission_denied_host(lab):
    # vault needs pci-audited: dom0-b holds it, dom0-a (this host) does not
    lab.proxy()
    vm = lab.vm("cards", 5, nics={0: ("tvd:vault", "10.99.0.5")})
    assert_error(lab, vm, 0, lab.hotplug(vm), "host 'dom0-a' may not carry TVD 'vault'", "pci-audited")


def test_proxy_not_running(lab):
    lab.proxy(start=False)
    vm = lab.vm("web", 6, nics={0: ("tvd:alpha", "10.99.0.6")})
    # the vif was left attached to something else: the script itself must detach it
    ns = lab.host_ns["dom0-a"]
    from tests.hotplug.tvd_harness import ip
    ip("link", "add", "name", "stray0", "type", "bridge", ns=ns)
    ip("link", "set", vm.vif(), "master", "stray0", "up", ns=ns)
    assert_error(lab, vm, 0, lab.hotplug(vm), "tvd-proxy is not running")


def test_proxy_timeout(lab, tmp_path):
    # A listener that accepts and never answers stands in for a hung tvd-proxy.
    path = os.path.join(lab.tmp, "dom0-a.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        vm = lab.vm("web", 7, nics={0: ("tvd:alpha", "10.99.0.7")})
        r = lab.hotplug(vm, env={"TVD_PROXY_TIMEOUT": "1.5"})
        assert_error(lab, vm, 0, r, "did not answer within 1.5 s")
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def test_default_timeout_is_under_libxl_hotplug_timeout():
    from tests.hotplug.tvd_harness import VIF_TVD
    src = open(VIF_TVD).read()
    assert 'os.environ.get("TVD_PROXY_TIMEOUT") or 10' in src   # 10 s < LIBXL_HOTPLUG_TIMEOUT 40 s


def test_malformed_non_numeric_domid(lab):
    lab.proxy()
    vm = lab.vm("web", 8, nics={0: ("tvd:alpha", "10.99.0.8")})
    r = lab.hotplug(vm, env={"XENBUS_PATH": "backend/vif/8x/0"})
    assert r.returncode != 0
    assert lab.xs.get("/local/domain/0/backend/vif/8x/0/hotplug-status") == "error"
    assert "non-numeric domid" in lab.xs.get("/local/domain/0/backend/vif/8x/0/hotplug-error")
    info = link_info(lab.host_ns["dom0-a"], vm.vif())
    assert info["master"] is None and not info["up"]


def test_malformed_garbage_bridge_key(lab):
    lab.proxy()
    vm = lab.vm("web", 9, nics={0: ("tvd:Alpha;rm -rf /", "10.99.0.9")})
    assert_error(lab, vm, 0, lab.hotplug(vm), "is not tvd:<name>")


def test_malformed_missing_vm_path(lab):
    lab.proxy()
    vm = lab.vm("web", 10, nics={0: ("tvd:alpha", "10.99.0.10")})
    lab.xs.set("/local/domain/10/vm", None)
    assert_error(lab, vm, 0, lab.hotplug(vm), "/local/domain/10/vm is missing")


def test_malformed_vm_path_without_uuid(lab):
    lab.proxy()
    vm = lab.vm("web", 11, nics={0: ("tvd:alpha", "10.99.0.11")})
    lab.xs.set("/local/domain/11/vm", "/vm/not-a-uuid")
    assert_error(lab, vm, 0, lab.hotplug(vm), "does not end in a UUID")


def test_offline_detaches_and_removes_empty_segment_after_grace(lab):
    p = lab.proxy(args=["--segment-grace", "1"])
    vm = lab.vm("web", 12, nics={0: ("tvd:beta", "10.99.0.12")})
    assert lab.hotplug(vm).returncode == 0
    r = lab.hotplug(vm, "offline")
    assert r.returncode == 0, r.stderr
    info = link_info(lab.host_ns["dom0-a"], vm.vif())
    assert info["master"] is None and not info["up"]
    # last vif of beta gone: its vSwitch and VXLAN uplink are removed after the grace period
    assert link_info(lab.host_ns["dom0-a"], "tvd-beta") is not None
    deadline = time.monotonic() + 10
    # one reconcile removes both, bridge first: wait for the whole segment to go
    while time.monotonic() < deadline and any(
            link_info(lab.host_ns["dom0-a"], d) is not None for d in ("tvd-beta", "tvx-beta")):
        time.sleep(0.1)
    assert link_info(lab.host_ns["dom0-a"], "tvd-beta") is None
    assert link_info(lab.host_ns["dom0-a"], "tvx-beta") is None
    assert p.client.status()["vifs"] == []


def test_offline_when_proxy_is_gone_still_detaches(lab):
    p = lab.proxy()
    vm = lab.vm("web", 13, nics={0: ("tvd:beta", "10.99.0.13")})
    assert lab.hotplug(vm).returncode == 0
    p.stop()
    r = lab.hotplug(vm, "offline")
    assert r.returncode == 0   # errors during removal never block libxl
    info = link_info(lab.host_ns["dom0-a"], vm.vif())
    assert info["master"] is None and not info["up"]


def test_offline_of_a_vanished_vif_is_fine(lab):
    lab.proxy()
    vm = lab.vm("web", 14, nics={0: ("tvd:beta", "10.99.0.14")})
    assert lab.hotplug(vm).returncode == 0
    from tests.hotplug.tvd_harness import ip
    ip("link", "del", vm.vif(), ns=lab.host_ns["dom0-a"])   # domain destroyed: netback gone
    assert lab.hotplug(vm, "offline").returncode == 0


def test_incoming_name_and_rename(lab):
    """Migration destination: the domain is <name>--incoming while its vifs hotplug; keyed on UUID."""
    p = lab.proxy()
    vm = lab.vm("db--incoming", 15, nics={0: ("xenbr0", "10.99.0.15")})
    r = p.client.send(rq.Register(vm.uuid, "db", (rq.Nic("alpha", 0),), {"signed-kernel": "trust"}))
    assert r["ok"], r
    r = lab.hotplug(vm)
    assert r.returncode == 0, r.stderr
    assert "for VM db " in r.stderr
    lab.xs.set("/local/domain/15/name", "db")       # libxl renames after the migration
    assert link_info(lab.host_ns["dom0-a"], vm.vif())["master"] == "tvd-alpha"
    assert lab.hotplug(vm, "offline").returncode == 0


def test_two_tvds_must_satisfy_both(lab):
    p = lab.proxy()
    weak = lab.vm("weak", 16, nics={0: ("tvd:alpha", "10.99.0.16"), 1: ("tvd:gamma", "10.99.1.16")})
    strong = lab.vm("strong", 17, nics={0: ("tvd:alpha", "10.99.0.17"), 1: ("tvd:gamma", "10.99.1.17")})
    # weak: signed kernel only -> alpha yes, gamma no; registering both is refused at once
    r = p.client.send(rq.Register(weak.uuid, "weak", (rq.Nic("alpha", 0), rq.Nic("gamma", 1)),
                                  {"signed-kernel": "trust"}))
    assert not r["ok"] and "gamma" in r["error"]
    # registered for alpha only, its first vif comes up; the gamma vif is denied because the VM
    # (already in alpha) must satisfy M(alpha) and M(gamma) together
    assert p.client.register(weak.uuid, "weak", [("alpha", 0)], {"signed-kernel": "trust"})["ok"]
    assert lab.hotplug(weak, devid=0).returncode == 0
    assert_error(lab, weak, 1, lab.hotplug(weak, devid=1), "TVD alpha, gamma", "tpm-measured-boot")
    # strong: tpm-measured-boot with immutable-log dominates signed-kernel: both come up
    assert p.client.register(strong.uuid, "strong", [("alpha", 0), ("gamma", 1)],
                             {"tpm-measured-boot": "immutable-log"})["ok"]
    for d, br in ((0, "tvd-alpha"), (1, "tvd-gamma")):
        r = lab.hotplug(strong, devid=d)
        assert r.returncode == 0, r.stderr
        assert link_info(lab.host_ns["dom0-a"], strong.vif(d))["master"] == br
    assert lab.ping(strong, "10.99.0.16")        # alpha reaches alpha


def test_vm_in_two_tvds_not_in_shared_membership_denied(lab):
    p = lab.proxy()
    vm = lab.vm("both", 18, nics={0: ("tvd:alpha", "10.99.0.18"), 1: ("tvd:beta", "10.99.1.18")})
    assert p.client.register(vm.uuid, "both", [], {"tpm-measured-boot": "immutable-log"})["ok"]
    assert lab.hotplug(vm, devid=0).returncode == 0
    assert_error(lab, vm, 1, lab.hotplug(vm, devid=1), "shared-membership")


def test_tap_path_for_hvm(lab):
    """HVM emulated NIC: libxl runs `add|remove type_if=tap` with INTERFACE=vif<d>.<n>-emu."""
    lab.proxy()
    vm = lab.vm("hvm", 19, nics={0: ("tvd:beta", "10.99.0.19")}, tap=True)
    # online type_if=tap is not ours (vif-common.sh semantics): no-op
    r = lab.hotplug(vm, "online", type_if="tap")
    assert r.returncode == 0 and link_info(lab.host_ns["dom0-a"], "vif19.0-emu")["master"] is None
    r = lab.hotplug(vm, "add", type_if="tap")
    assert r.returncode == 0, r.stderr
    info = link_info(lab.host_ns["dom0-a"], "vif19.0-emu")
    assert info["master"] == "tvd-beta" and info["up"], info
    # as vif-bridge: the tap path neither writes the frontend mtu nor hotplug-status
    assert lab.xs.get(f"{vm.backend()}/hotplug-status") is None
    r = lab.hotplug(vm, "remove", type_if="tap")
    assert r.returncode == 0
    assert link_info(lab.host_ns["dom0-a"], "vif19.0-emu")["master"] is None


def test_bad_usage_exits_non_zero(lab):
    vm = lab.vm("x", 20)
    r = lab.hotplug(vm, "frobnicate")
    assert r.returncode == 1 and "usage" in r.stderr


def test_backend_mac_and_ip_pin_the_vm_port_security(lab):
    """libxl writes the guest's MAC and xl.cfg ip= into the backend; vif-tvd hands both to the
    proxy, whose port security then drops frames from any other source address."""
    lab.proxy()
    a = lab.vm("web1", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    b = lab.vm("web2", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    lab.xs.set(f"{a.backend()}/ip", "10.99.0.1")
    for vm in (a, b):
        register(lab, vm, {"signed-kernel": "trust"})
        assert lab.hotplug(vm).returncode == 0
    assert lab.ping(a, "10.99.0.2", count=2)
    # the VM takes an address it was not given: its frames no longer get through
    from tests.hotplug.tvd_harness import ip
    ip("addr", "flush", "dev", "eth0", ns=a.ns)
    ip("addr", "add", "10.99.0.77/24", "dev", "eth0", ns=a.ns)
    assert not lab.ping(a, "10.99.0.2", count=2)
    # and a MAC it was not given
    ip("addr", "flush", "dev", "eth0", ns=a.ns)
    ip("addr", "add", "10.99.0.1/24", "dev", "eth0", ns=a.ns)
    assert lab.ping(a, "10.99.0.2", count=1)
    ip("link", "set", "eth0", "address", "00:16:3e:66:66:66", ns=a.ns)
    assert not lab.ping(a, "10.99.0.2", count=2)


def test_malformed_backend_ip_key(lab):
    lab.proxy()
    vm = lab.vm("web", 12, nics={0: ("tvd:alpha", "10.99.0.12")})
    lab.xs.set(f"{vm.backend()}/ip", "10.99.0.12 not-an-address")
    register(lab, vm, {"signed-kernel": "trust"})
    assert_error(lab, vm, 0, lab.hotplug(vm), "'not-an-address' is not an IP address", "ip=")


def test_backend_mtu_key_is_honoured_up_to_the_tvds(lab):
    """xl.cfg vif mtu= (libxl's backend `mtu` key): a lower MTU is the guest's, also after the
    proxy re-converges for another vif; a higher one is lowered to the TVD's, and said so."""
    lab.proxy()
    low = lab.vm("low", 1, nics={0: ("tvd:alpha", "10.99.0.1")})
    high = lab.vm("high", 2, nics={0: ("tvd:alpha", "10.99.0.2")})
    plain = lab.vm("plain", 3, nics={0: ("tvd:alpha", "10.99.0.3")})
    lab.xs.update(**{f"{low.backend()}/mtu": "1400", f"{high.backend()}/mtu": "9000"})
    said = {}
    for vm in (low, high, plain):
        register(lab, vm, {"signed-kernel": "trust"})
        r = lab.hotplug(vm)
        assert r.returncode == 0, r.stderr
        said[vm.name] = r.stderr
    assert "asks for mtu 9000, above TVD alpha's 1450: lowered to 1450" in said["high"]
    assert "lowered" not in said["low"] + said["plain"]
    for vm, want in ((low, 1400), (high, 1450), (plain, 1450)):
        assert lab.xs.get(f"{vm.frontend()}/mtu") == str(want)
        assert link_info(lab.host_ns["dom0-a"], vm.vif())["mtu"] == want, vm.name
    assert link_info(lab.host_ns["dom0-a"], "tvd-alpha")["mtu"] == 1450   # the segment keeps its own
    assert lab.ping(low, "10.99.0.3", count=1)


def test_malformed_backend_mtu_key(lab):
    lab.proxy()
    vm = lab.vm("web1", 1)
    lab.xs.update(**{f"{vm.backend()}/mtu": "15x0"})
    register(lab, vm, {"signed-kernel": "trust"})
    assert_error(lab, vm, 0, lab.hotplug(vm), "backend key", "/mtu = '15x0' is not a number")
