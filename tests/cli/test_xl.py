"""tvdctl xl create|register|migrate, join|leave — against a real tvd-proxy process.

`xl` is tests/cli/xl-stub/xl, a stand-in for Xen's xl (no hypervisor here): it records its
argv and the config it was handed. vif-tvd runs for real, over the xenstore stand-ins in
tests/hotplug/xenstore-stubs (the real xenstore tools need Xen).
"""
from __future__ import annotations

import json
import os

from tests.cli.cli_helpers import tvdctl
from tests.dataplane.dp_helpers import ethtool_k
from tests.hotplug.tvd_fixtures import _root_and_no_leftovers, lab, lab2  # noqa: F401  (namespace harness)
from tests.hotplug.tvd_harness import REPO, link_info

from xen_tvd import xlcfg

XL = os.path.join(REPO, "tests", "cli", "xl-stub", "xl")


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_xl_create_registers_pins_uuid_and_runs_xl(lab, tmp_path):
    p = lab.proxy()
    cfg = os.path.join(REPO, "xl-configs", "web-pv.cfg")
    before = open(cfg).read()
    rec = str(tmp_path / "xl.jsonl")
    r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL, cfg, "--", "-q", "memory=512",
               env={"XL_STUB_RECORD": rec})
    assert r.returncode == 0, r.stderr
    assert open(cfg).read() == before            # the user's file is never edited
    (call,) = records(rec)
    # xl's options before the config, its key=value overrides after it (xl reads options only
    # before its first positional argument)
    assert call["argv"][:2] == ["create", "-q"] and call["argv"][3:] == ["memory=512"]
    assert not os.path.exists(call["argv"][2])    # the temp copy is removed afterwards
    given = xlcfg.loads(call["cfg"])
    uuid = given.get("uuid")
    assert given.get("vif") == ["mac=00:16:3e:00:01:01,bridge=tvd:alpha,script=vif-tvd"]
    (reg,) = p.client.status()["registrations"]
    assert reg["uuid"] == uuid and reg["name"] == "web" and reg["properties"] == {"signed-kernel": "trust"}
    # ... and the VM's vif, hotplugged by the real vif-tvd, is admitted through the registration
    vm = lab.vm("web", 1, nics={0: ("tvd:alpha", "10.99.0.1")}, uuid=uuid)
    assert lab.hotplug(vm).returncode == 0
    assert link_info(lab.host_ns["dom0-a"], vm.vif())["master"] == "tvd-alpha"


def test_xl_create_carries_the_vms_tx_checksum_offload_opt_out_to_its_vif(lab, tmp_path):
    """tvd_tx_checksum_offload = 0 (xl drops unknown vif keys, so it is a top-level key):
    registered with the VM, and its vif, hotplugged by the real vif-tvd, gets tx checksum
    offload off while web's vif in the same TVD keeps the default on. A bad value is refused
    before anything is registered or run."""
    p = lab.proxy()
    rec = str(tmp_path / "xl.jsonl")
    web_cfg = os.path.join(REPO, "xl-configs", "web-pv.cfg")
    fwd_cfg = tmp_path / "fwd.cfg"
    fwd_cfg.write_text(open(web_cfg).read().replace('name = "web"', 'name = "fwd"')
                       .replace("00:16:3e:00:01:01", "00:16:3e:00:01:02")
                       + "tvd_tx_checksum_offload = 0\n")
    r = tvdctl("xl", "create", "--dry-run", fwd_cfg)
    assert r.returncode == 0 and "#   vif tx checksum offload: off (tvd_tx_checksum_offload = 0)" \
        in r.stdout, r.stdout + r.stderr
    uuids = {}
    for cfg in (web_cfg, fwd_cfg):
        r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL, cfg,
                   env={"XL_STUB_RECORD": rec})
        assert r.returncode == 0, r.stderr
        given = xlcfg.loads(records(rec)[-1]["cfg"])
        uuids[given.get("name")] = given.get("uuid")
    regs = {g["name"]: g for g in p.client.status()["registrations"]}
    assert regs["fwd"]["tx_checksum_offload"] is False and regs["web"]["tx_checksum_offload"] is True
    vms = [lab.vm(n, d, nics={0: ("tvd:alpha", f"10.99.0.{d}")}, uuid=uuids[n])
           for n, d in (("web", 1), ("fwd", 2))]
    for vm in vms:
        assert lab.hotplug(vm).returncode == 0
    assert [ethtool_k(lab.host_ns["dom0-a"], vm.vif())["tx-checksumming"] for vm in vms] \
        == ["on", "off"]
    bad = tmp_path / "bad.cfg"
    bad.write_text(fwd_cfg.read_text().replace("tvd_tx_checksum_offload = 0",
                                               'tvd_tx_checksum_offload = "no"'))
    r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL, bad, env={"XL_STUB_RECORD": rec})
    assert r.returncode == 2 and "tvd_tx_checksum_offload must be 0" in r.stderr, r.stderr
    assert len(records(rec)) == 2 and len(p.client.status()["registrations"]) == 2


def test_xl_create_two_nics_and_refusals(lab, tmp_path):
    p = lab.proxy()
    rec = str(tmp_path / "xl.jsonl")
    env = {"XL_STUB_RECORD": rec}
    r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL,
               os.path.join(REPO, "xl-configs", "two-nics.cfg"), env=env)
    assert r.returncode == 0, r.stderr
    (reg,) = p.client.status()["registrations"]
    assert reg["uuid"] == "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01" and reg["nics"] == {"0": "alpha", "1": "gamma"}
    # refused by admission: xl never runs
    bad = tmp_path / "weak.cfg"
    bad.write_text('name = "weak"\nvif = ["mac=1", "mac=2"]\ntvd = ["alpha", "gamma"]\n'
                   'tvd_properties = ["signed-kernel:trust"]\n')
    r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL, str(bad), env=env)
    assert r.returncode == 1 and "tpm-measured-boot" in r.stderr
    assert len(records(rec)) == 1
    # a syntax error: FILE:LINE:COL, exit 2
    bad.write_text('name = "x"\nvif = [\n')
    r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL, str(bad), env=env)
    assert r.returncode == 2 and f"{bad}:2:7: error: unterminated list" in r.stderr
    # the proxy is not running
    r = tvdctl("xl", "create", "--socket", str(tmp_path / "none.sock"), "--xl", XL,
               os.path.join(REPO, "xl-configs", "hvm.cfg"), env=env)
    assert r.returncode == 1 and "not running" in r.stderr


def test_xl_create_failure_of_xl_is_reported(lab, tmp_path):
    p = lab.proxy()
    r = tvdctl("xl", "create", "--socket", p.socket, "--xl", XL, os.path.join(REPO, "xl-configs", "hvm.cfg"),
               env={"XL_STUB_RECORD": str(tmp_path / "r"), "XL_STUB_EXIT": "3"})
    assert r.returncode == 1 and "xl create failed (exit 3)" in r.stderr


def test_xl_migrate_registers_on_destination(lab2, tmp_path):
    pa = lab2.proxy("dom0-a")
    pb = lab2.proxy("dom0-b")
    rec = str(tmp_path / "xl.jsonl")
    cfg = os.path.join(REPO, "xl-configs", "two-nics.cfg")
    r = tvdctl("xl", "migrate", "--socket", pa.socket, "--dest-socket", pb.socket, "--xl", XL,
               cfg, "dom0-b", "--", "-s", "ssh", env={"XL_STUB_RECORD": rec})
    assert r.returncode == 0, r.stderr
    # xl options before the positionals: xl stops reading options at the first one (tier 3)
    assert records(rec) == [{"argv": ["migrate", "-s", "ssh", "gateway", "dom0-b"]}]
    assert [x["name"] for x in pb.client.status()["registrations"]] == ["gateway"]
    # destination hotplug of the incoming domain, keyed on the UUID, bridge key carried over
    vm = lab2.vm("gateway--incoming", 7, host="dom0-b", uuid="6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01",
                 nics={0: ("tvd:alpha", "10.99.0.7"), 1: ("tvd:gamma", "10.99.1.7")})
    for d in (0, 1):
        assert lab2.hotplug(vm, devid=d).returncode == 0


def test_join_leave_by_name(lab, tmp_path):
    p = lab.proxy()
    r = tvdctl("xl", "register", "--socket", p.socket, os.path.join(REPO, "xl-configs", "two-nics.cfg"))
    assert r.returncode == 0, r.stderr
    vm = lab.vm("gateway", 4, uuid="6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01",
                nics={0: ("tvd:alpha", "10.99.0.4")})
    assert lab.hotplug(vm).returncode == 0
    r = tvdctl("leave", "--socket", p.socket, "gateway", "alpha")
    assert r.returncode == 0 and "detached vif4.0" in r.stderr
    assert link_info(lab.host_ns["dom0-a"], vm.vif())["master"] is None
    r = tvdctl("join", "--socket", p.socket, "gateway", "beta")
    assert r.returncode == 1 and "shared-membership" in r.stderr
    r = tvdctl("join", "--socket", p.socket, "gateway", "alpha")
    assert r.returncode == 0, r.stderr
    r = tvdctl("join", "--socket", p.socket, "nobody", "alpha")
    assert r.returncode == 1 and "no VM registered as 'nobody'" in r.stderr


def test_xl_register_needs_uuid(tmp_path):
    r = tvdctl("xl", "register", "--socket", str(tmp_path / "s"), os.path.join(REPO, "xl-configs", "web-pv.cfg"))
    assert r.returncode == 2 and "has no uuid" in r.stderr
