"""Tier 1: what tier 3's checksum scenario relies on, without booting Xen: the domUs' traffic
tool (tvd_testing/xen_guest_traffic.pl) moves TCP and UDP payloads intact and rejects a damaged
datagram, the "tools" domU initramfs carries it with perl and perl's libraries, and the
scenario reads the guests' counters and results from console text as the guest init prints
them (tvd_testing/xen_scenarios/checksum.py). Traffic runs on loopback only."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest

from tvd_testing import xentier
from tvd_testing.xen_scenarios import checksum

TOOL = str(xentier.TRAFFIC_TOOL)
perl = pytest.mark.skipif(not xentier.PERL.exists(), reason="perl-base (/usr/bin/perl) is missing")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csum_lines(out: str, prefix: str) -> dict:
    got = checksum.last(out, prefix)
    assert got is not None, out
    return got


@perl
def test_tool_has_no_module_dependency():
    """The guest has the perl binary only: strict/warnings pass on the host, and the file
    itself loads no module (`use`/`require` would need a library tree)."""
    r = subprocess.run(["perl", "-Mstrict", "-Mwarnings", "-c", TOOL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code = [line for line in open(TOOL) if not line.lstrip().startswith("#")]
    assert not [line for line in code if line.lstrip().startswith(("use ", "require "))]


@perl
def test_tcp_payload_arrives_whole(tmp_path):
    data = os.urandom(3 << 20)
    src, dst = tmp_path / "tx", tmp_path / "rx"
    src.write_bytes(data)
    port = free_port()
    rx = subprocess.Popen(["perl", TOOL, "tcp-recv", str(port), str(dst)], stdout=subprocess.PIPE, text=True)
    tx = subprocess.run(["perl", TOOL, "tcp-send", "127.0.0.1", str(port), str(src), "20"],
                        capture_output=True, text=True, timeout=60)
    out, _ = rx.communicate(timeout=60)
    assert tx.returncode == 0 and rx.returncode == 0, (tx.stderr, out)
    assert csum_lines(tx.stdout, "@@csum tcp-tx")["bytes"] == str(len(data))
    assert csum_lines(out, "@@csum tcp-rx")["bytes"] == str(len(data))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(data).digest()


@perl
def test_udp_datagrams_all_sizes_acknowledged_intact():
    port = free_port(socket.SOCK_DGRAM)
    rx = subprocess.Popen(["perl", TOOL, "udp-recv", str(port), "0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    tx = subprocess.run(["perl", TOOL, "udp-send", "127.0.0.1", str(port), "26"],
                        capture_output=True, text=True, timeout=120)
    out, _ = rx.communicate(timeout=60)
    s, r = csum_lines(tx.stdout, "@@csum udp-tx"), csum_lines(out, "@@csum udp-rx")
    assert (s["acked"], s["unacked"], s["end_acked"]) == ("26", "0", "1"), s
    assert (r["unique"], r["bad"], r["dup"]) == ("26", "0", "0"), r
    assert r["bytes"] == s["bytes"]
    # two rounds of the 13 sizes, the largest being the largest IPv4 UDP payload (65507)
    assert int(s["bytes"]) == 2 * sum((1, 100, 512, 1000, 1456, 1457, 2000, 2960, 4000, 8972, 16000, 32000, 65491))


@perl
@pytest.mark.parametrize("damage", ["one-byte", "checksum-field", "truncated"])
def test_udp_receiver_rejects_a_damaged_datagram(damage):
    """A datagram whose content does not match is counted bad and not acknowledged (so the
    sender resends it); the intact copy that follows is acknowledged."""
    port = free_port(socket.SOCK_DGRAM)
    rx = subprocess.Popen(["perl", TOOL, "udp-recv", str(port), "0.2"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    # the intact datagram 1 as the tool builds it: taken from a real sender's first send
    sniff = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniff.bind(("127.0.0.1", 0))
    sp = sniff.getsockname()[1]
    snd = subprocess.Popen(["perl", TOOL, "udp-send", "127.0.0.1", str(sp), "1"], stdout=subprocess.PIPE, text=True)
    good, _ = sniff.recvfrom(70000)
    snd.kill()
    snd.wait()
    sniff.close()
    magic, seq, length, csum = struct.unpack("!4sIII", good[:16])
    assert (magic, seq, length) == (b"TVDU", 1, 1)
    bad = {"one-byte": good[:16] + bytes([good[16] ^ 1]) + good[17:],
           "checksum-field": good[:12] + struct.pack("!I", csum ^ 0x100) + good[16:],
           "truncated": good[:-1]}[damage]
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(1)   # loopback: an acknowledgement comes within milliseconds
    c.sendto(bad, ("127.0.0.1", port))
    with pytest.raises(socket.timeout):
        c.recvfrom(64)
    c.sendto(good, ("127.0.0.1", port))
    assert c.recvfrom(64)[0] == b"TACK" + struct.pack("!I", 1)
    c.sendto(b"TEND" + struct.pack("!I", 1), ("127.0.0.1", port))
    assert c.recvfrom(64)[0] == b"TEAK" + struct.pack("!I", 1)
    out, _ = rx.communicate(timeout=30)
    r = csum_lines(out, "@@csum udp-rx")
    assert (r["unique"], r["bad"]) == ("1", "1"), r


@perl
def test_tools_initramfs_carries_perl_and_the_tool(tmp_path):
    busybox = shutil.which("busybox")
    release = os.uname().release
    if not busybox or not xentier._static(busybox):
        pytest.skip("busybox-static is missing")
    import glob
    if not glob.glob(f"/lib/modules/{release}/kernel/drivers/net/xen-netfront.ko*"):
        releases = [p.split("/")[3] for p in glob.glob("/lib/modules/*/kernel/drivers/net/xen-netfront.ko*")]
        if not releases:
            pytest.skip("no kernel with xen-netfront.ko (linux-image-amd64)")
        release = releases[0]
    from pathlib import Path
    out = tmp_path / "tools.gz"
    xentier.build_domu_initramfs(out, release, Path(busybox), tools=True)
    names = cpio_names(gzip.decompress(out.read_bytes()))
    assert {"bin/perl", "bin/tvd-traffic", "init", "xen-netfront.ko"} <= names
    for lib in xentier._with_libs(xentier.PERL)[1:]:
        assert str(lib).lstrip("/") in names, lib
    base = tmp_path / "base.gz"
    xentier.build_domu_initramfs(base, release, Path(busybox))
    assert "bin/perl" not in cpio_names(gzip.decompress(base.read_bytes()))


def cpio_names(data: bytes) -> set[str]:
    """Names in a newc cpio archive."""
    f, names = io.BytesIO(data), set()
    while True:
        hdr = f.read(110)
        assert hdr[:6] == b"070701", hdr[:6]
        namesize, filesize = int(hdr[94:102], 16), int(hdr[54:62], 16)
        name = f.read(namesize)[:-1].decode()
        f.read((4 - (110 + namesize) % 4) % 4)
        if name == "TRAILER!!!":
            return names
        names.add(name)
        f.read(filesize + (4 - filesize % 4) % 4)


def test_guest_counters_and_results_are_read_from_console_text():
    """The console lines DOMU_INIT's `counters` prints (captured from busybox awk on this
    host's /proc, then a dump cut short) and the tool's result lines parse as the scenario
    reads them; a dump cut off before UdpLite is not a complete dump."""
    text = "\n".join([
        "@@guest up name=x ip=10.20.2.2 mtu=1500 mac=00:16:3e:7a:04:03 forwarding=1\r",
        "@@snmp tick-1 Ip Forwarding=1 DefaultTTL=64 InReceives=10 ForwDatagrams=4\r",
        "@@snmp tick-1 Tcp InSegs=3 InErrs=0 InCsumErrors=0\r",
        "@@snmp tick-1 Udp InDatagrams=1 InErrors=0 InCsumErrors=0\r",
        "@@snmp tick-1 UdpLite InDatagrams=0 InCsumErrors=0\r",
        "@@snmp tick-1 Icmp InMsgs=2 InCsumErrors=0\r",
        "@@snmp tick-2 Ip Forwarding=1 ForwDatagrams=900\r",
        "@@csum tcp-tx-payload bytes=4194304 sha256=ab\r",
        "@@csum tcp-tx bytes=4194304 seconds=0.39 connect_tries=1 connect_wait=0.0\r",
        "@@netdev final eth0 rx_packets=5 rx_dropped=0\r",
    ])
    assert checksum.complete_ticks(text) == ["tick-1"]
    c = checksum.snmp(text, "tick-1")
    assert c["Ip"]["ForwDatagrams"] == 4
    assert checksum.csum_errors(c) == {"Tcp InCsumErrors": 0, "Udp InCsumErrors": 0,
                                       "UdpLite InCsumErrors": 0, "Icmp InCsumErrors": 0}
    # a counter that is missing is not zero
    assert checksum.csum_errors(checksum.snmp(text, "tick-2"))["Tcp InCsumErrors"] is None
    assert checksum.last(text, "@@csum tcp-tx") == {"bytes": "4194304", "seconds": "0.39",
                                                    "connect_tries": "1", "connect_wait": "0.0"}
    assert checksum.last(text, "@@csum tcp-tx-payload") == {"bytes": "4194304", "sha256": "ab"}
    assert checksum.netdev(text, "final") == {"eth0": {"rx_packets": 5, "rx_dropped": 0}}


def test_guest_init_counters_function_under_busybox(tmp_path):
    """DOMU_INIT's `counters` run by busybox sh on this host's /proc: every /proc/net/snmp
    protocol comes out with named values, the csum counters among them."""
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.skip("busybox is missing")
    init = xentier.DOMU_INIT
    start = init.index("counters() {")
    end = init.index("\n}\n", start) + 3
    script = tmp_path / "c.sh"
    script.write_text(init[start:end] + "counters final\n")
    out = subprocess.run([busybox, "sh", str(script)], capture_output=True, text=True, check=True).stdout
    c = checksum.snmp(out, "final")
    assert {"Ip", "Icmp", "Tcp", "Udp", "UdpLite", "TcpExt"} <= set(c), sorted(c)
    assert all(v is not None for v in checksum.csum_errors(c).values())
