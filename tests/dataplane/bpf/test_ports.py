"""The eBPF port security's bookkeeping, tier 1: which vif runs which program, read back from
the kernel (tc filters) independently of the code under test; idempotency, per-vif changes,
removal, the switch to and from nftables, the counters."""
from __future__ import annotations

import subprocess
import time

import pytest

from tests.dataplane.dishonest import Injector, marker, u4
from tests.dataplane.dp_helpers import sh, state, underlay, veth, vx_segment
from xen_tvd.dataplane import DataplaneError, apply, nftables, plug_vif, unplug_vif
from xen_tvd.dataplane.bpf import kernel, tc
from xen_tvd.dataplane.bpf.asm import Asm, R0
from xen_tvd.dataplane.bpf.portsec import PortRules, program_name
from xen_tvd.dataplane.health import drop_counters
from xen_tvd.desired.model import HostState, Segment, VifPort

SEG = Segment(tvd="alpha", bridge="tvd-alpha", uplink=None, mtu=1500)


def programs(ns: str) -> dict[str, tuple[str, int]]:
    """ifname -> (program name, program id) at each device's ingress, read with tc -j."""
    out = {}
    links = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True, check=True)
    import json
    for link in json.loads(links.stdout):
        got = subprocess.run(["tc", "-n", ns, "-j", "filter", "show", "dev", link["ifname"], "ingress"],
                             capture_output=True, text=True)
        for f in json.loads(got.stdout or "[]") if got.returncode == 0 else ():
            prog = f.get("options", {}).get("prog")
            if prog:
                out[link["ifname"]] = (prog["name"], prog["id"])
    return out


def port(i: int) -> VifPort:
    return VifPort(f"vif{i}.0", "alpha", mac=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
                   addresses=(f"10.{i >> 8}.{i & 255}.1", f"fd00::{i:x}"))


def test_each_vif_has_its_own_program_and_apply_is_idempotent(ns):
    seg = vx_segment("alpha", 100, "10.0.0.1")
    underlay(ns)
    batch = "".join(f"link add vif{i}.0 type veth peer name g{i}\n" for i in range(1, 301))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
    few = state(seg, ports=(("vif1.0", "alpha"),))
    many = HostState("h", segments=(seg,), ports=tuple(port(i) for i in range(1, 301)))
    apply(few, netns=ns)
    assert apply(few, netns=ns).changes == []
    t0 = time.monotonic()
    rep = apply(many, netns=ns)
    print(f"300 vifs' programs loaded and attached by apply() in {time.monotonic() - t0:.2f} s")
    assert "port security (eBPF): programs set for 300 vif(s), removed from 0" in rep.changes
    got = programs(ns)
    assert set(got) == {f"vif{i}.0" for i in range(1, 301)}
    for i in (1, 150, 300):
        assert got[f"vif{i}.0"][0] == program_name(PortRules.of(port(i), segment=seg))
    assert len({name for name, _ in got.values()}) == 300, "two vifs share a program"
    assert apply(many, netns=ns).changes == []
    assert programs(ns) == got, "a converged apply reloaded programs"
    rep = apply(few, netns=ns)
    assert "port security (eBPF): programs set for 1 vif(s), removed from 299" in rep.changes
    assert set(programs(ns)) == {"vif1.0"} and apply(few, netns=ns).changes == []


def test_plug_and_unplug_change_only_that_vifs_program(ns):
    apply(state(SEG), netns=ns)
    veth(ns, "vif1.0", "g1")
    veth(ns, "vif2.0", "g2")
    plug_vif(port(2), SEG, netns=ns)
    theirs = programs(ns)["vif2.0"]
    plug_vif(port(1), SEG, netns=ns)
    first = programs(ns)["vif1.0"]
    plug_vif(port(1), SEG, netns=ns)                     # same rules: the same program stays
    assert programs(ns)["vif1.0"] == first
    moved = VifPort("vif1.0", "alpha", mac=port(1).mac, addresses=("10.1.0.2",))
    plug_vif(moved, SEG, netns=ns)
    now = programs(ns)["vif1.0"]
    assert now[0] == program_name(PortRules.of(moved, segment=SEG)) != first[0]
    assert programs(ns)["vif2.0"] == theirs, "plugging one vif touched another vif's program"
    unplug_vif("vif1.0", netns=ns)
    assert programs(ns) == {"vif2.0": theirs}


def test_programs_go_with_the_last_segment_and_nobody_elses(ns):
    veth(ns, "vif1.0", "g1")
    veth(ns, "eth9", "g9")
    a = Asm()
    a.movi(R0, kernel.TC_ACT_OK)
    a.exit()
    fd = kernel.load_sched_cls(a.assemble(), "someone_else")
    with tc.socket(ns) as ipr:
        tc.attach(ipr, ipr.link_lookup(ifname="eth9")[0], "eth9", fd, "someone_else")
    apply(HostState("h", segments=(SEG,), ports=(port(1),)), netns=ns)
    assert programs(ns)["vif1.0"][0].startswith("xtvd")
    rep = apply(HostState("h"), netns=ns)
    assert "port security (eBPF): programs set for 0 vif(s), removed from 1" in rep.changes
    assert {k: v[0] for k, v in programs(ns).items()} == {"eth9": "someone_else"}
    assert apply(HostState("h"), netns=ns).changes == []


def test_switching_backends_installs_the_new_before_removing_the_old(ns):
    veth(ns, "vif1.0", "g1")
    st = HostState("h", segments=(SEG,), ports=(port(1),))
    apply(st, netns=ns)
    assert "vif1.0" in programs(ns)
    rep = apply(HostState("h", segments=(SEG,), ports=(port(1),), port_security="nftables"), netns=ns)
    # the report lists the changes in the order they were made
    nft_at = next(i for i, c in enumerate(rep.changes) if "nftables table netdev xen_tvd_ports" in c)
    gone_at = rep.changes.index("port security (eBPF): programs set for 0 vif(s), removed from 1")
    assert nft_at < gone_at, rep.changes
    assert programs(ns) == {} and nftables.list_json(ns, "chain", "netdev", "xen_tvd_ports", "p_vif1.0")
    rep = apply(st, netns=ns)
    assert rep.changes.index("port security (eBPF): programs set for 1 vif(s), removed from 0") \
        < rep.changes.index("deleted nftables table netdev xen_tvd_ports (no segments)")
    assert "vif1.0" in programs(ns) and nftables.list_json(ns, "table", "netdev", "xen_tvd_ports") is None


def test_drops_are_counted_per_reason_for_health(mkns):
    h, g = mkns("h"), mkns("g")
    veth(h, "vif1.0", "eth0", peer_ns=g, up=False)
    sh(g, "ip", "link", "set", "eth0", "address", port(1).mac, "up")
    apply(HostState("h", segments=(SEG,), ports=(port(1),)), netns=h)
    inj = Injector(g)
    try:
        inj.send(u4("02:ba:d0:00:00:09", "10.0.1.1", marker("forged mac")), 200)
        inj.send(u4(port(1).mac, "10.9.0.77", marker("forged ip")), 100)
    finally:
        inj.close()
    assert drop_counters(h)["ports"]["vif1.0"] == {"source-mac": 200, "ipv4-source": 100}


def test_a_backend_that_cannot_do_what_is_asked_is_refused(ns):
    veth(ns, "vif1.0", "g1")
    with pytest.raises(DataplaneError, match="logging dropped frames needs port security 'nftables'"):
        apply(HostState("h", segments=(SEG,), ports=(port(1),), port_security="ebpf", log_drops=2), netns=ns)
    with pytest.raises(DataplaneError, match="port security 'xdp': choose 'ebpf' or 'nftables'"):
        apply(HostState("h", segments=(SEG,), ports=(port(1),), port_security="xdp"), netns=ns)
    assert programs(ns) == {}
    # log_drops alone picks nftables
    apply(HostState("h", segments=(SEG,), ports=(port(1),), log_drops=2), netns=ns)
    assert programs(ns) == {} and nftables.list_json(ns, "chain", "netdev", "xen_tvd_ports", "p_vif1.0")
