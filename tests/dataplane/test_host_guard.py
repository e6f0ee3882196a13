"""VMs never reach Dom0's own IP stack (hostguard.py, issue #16 point 1), tier 1.

The dishonest-VM lab (dishonest.Lab: h1/h2 on VXLAN, VMs a1..b2). VM a1 (alpha, h1) and the
remote VM a3 (alpha, h2, through the VXLAN uplink) send what a host stack answers: ICMP echo,
UDP and TCP SYN to h1's underlay address with h1's vSwitch MAC as destination, and broadcast
UDP. Counted where it would land: h1's own /proc/net/snmp and netstat (Icmp InEchos, Udp NoPorts,
Tcp OutRsts, IpExt InBcastPkts) and /proc/net/snmp6 (Icmp6 InEchos, to ff02::1). First without the
guard table (the control: each counter rises with the attack), then as apply() leaves it: 0.
"""
from __future__ import annotations

import time

from tests.adversarial.adversarial_helpers import assert_count, attack
from tests.dataplane.dishonest import (BCAST, ETH_IP, ETH_IP6, VMS, Injector, Lab, eth, icmp4_echo, icmp6,
                       link_local, print_table, tcp4_syn, udp4)
from tests.dataplane.dp_helpers import ping, sh
from xen_tvd.dataplane import apply, hostguard, nftables

DOM0_IP = "10.0.0.1"   # h1's underlay address (dishonest.POLICY)
ALL_NODES6 = "33:33:00:00:00:01"


def _snmp(ns: str) -> dict[str, int]:
    out = {}
    for table in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = sh(ns, "cat", table).stdout.splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            proto = head.split(":")[0]
            out.update({f"{proto}:{k}": int(v) for k, v in zip(head.split()[1:], vals.split()[1:])})
    for line in sh(ns, "cat", "/proc/net/snmp6").stdout.splitlines():
        k, v = line.split()
        out[k] = int(v)
    return out


COUNTERS = {"icmp echo": "Icmp:InEchos", "udp to closed port": "Udp:NoPorts",
            "tcp syn to closed port": "Tcp:OutRsts", "udp broadcast": "IpExt:InBcastPkts",
            "icmpv6 echo to all-nodes": "Icmp6InEchos"}


def _attack(lab: Lab, vm: str, br_mac: str, per_kind: int) -> dict[str, int]:
    """Send every kind from `vm`; the rise of each kind's counter on h1."""
    _, _, _, ip, _, mac = VMS[vm]
    frames = {
        "icmp echo": eth(br_mac, mac, ETH_IP, icmp4_echo(ip, DOM0_IP, b"xtvd")),
        "udp to closed port": eth(br_mac, mac, ETH_IP, udp4(ip, DOM0_IP, 40000, 9, b"xtvd")),
        "tcp syn to closed port": eth(br_mac, mac, ETH_IP, tcp4_syn(ip, DOM0_IP, 40000, 9)),
        "udp broadcast": eth(BCAST, mac, ETH_IP, udp4(ip, "255.255.255.255", 40000, 9, b"xtvd")),
        "icmpv6 echo to all-nodes": eth(ALL_NODES6, mac, ETH_IP6,
                                        icmp6(link_local(mac), "ff02::1", 128, 0, b"\0\1\0\1xtvd")),
    }
    h1 = lab.hosts["h1"]
    rise = {}
    inj = Injector(lab.ns(vm))
    try:
        for kind, frame in frames.items():
            before = _snmp(h1)[COUNTERS[kind]]
            inj.send(frame, per_kind)
            lab.barrier(hash(kind) & 0xFFFF)
            time.sleep(0.2)
            rise[kind] = _snmp(h1)[COUNTERS[kind]] - before
    finally:
        inj.close()
    return rise


def test_no_vm_frame_reaches_dom0s_stack(mkns, tmp_path):
    per_kind = attack("vm-to-dom0-stack")["per_kind"]
    lab = Lab(mkns, tmp_path)
    try:
        h1 = lab.hosts["h1"]
        br_mac = sh(h1, "cat", "/sys/class/net/tvd-alpha/address").stdout.strip()
        # Dom0 has no address of its own on the vSwitch or its ports (nothing to answer from)
        for dev in ("tvd-alpha", "tvd-beta", VMS["a1"][1]):
            assert sh(h1, "ip", "-6", "addr", "show", "dev", dev).stdout.strip() == "", dev
        nftables.run(h1, "delete table bridge xen_tvd_host\n", "test: control run without the guard")
        control = {vm: _attack(lab, vm, br_mac, per_kind) for vm in ("a1", "a3")}
        apply(lab.states["h1"], netns=h1)            # puts the guard back
        guarded = {vm: _attack(lab, vm, br_mac, per_kind) for vm in ("a1", "a3")}
        rows = []
        for vm in ("a1", "a3"):
            for kind in COUNTERS:
                rows.append((f"{kind} ({vm}, {'local' if vm == 'a1' else 'via VXLAN'})", per_kind,
                             guarded[vm][kind], f"{control[vm][kind]} (no guard)", f"VM {vm}"))
        print_table("Dom0 guard: what reached h1's own stack", rows)
        # the control proves each attack reaches Dom0 without the guard (IPv6 aside: Dom0
        # has no IPv6 address on TVD ports any more, so it cannot answer with or without it)
        for vm in ("a1", "a3"):
            for kind in ("icmp echo", "udp to closed port", "tcp syn to closed port", "udp broadcast"):
                assert control[vm][kind] >= per_kind, (vm, kind, control[vm])
        assert_count("vm-to-dom0-stack", sum(v for per in guarded.values() for v in per.values()))
        assert hostguard.dropped(h1) >= 2 * 4 * per_kind
        assert ping(lab.ns("a2"), VMS["a3"][3]), "VM-to-VM traffic broken by the guard"
    finally:
        lab.close()
