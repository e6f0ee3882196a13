"""Tier 3: nested Xen 4.17 under qemu TCG, real libxl, real xl create, real PV domUs.

    python -m tvd_testing.xentier [--results DIR] [--scenarios a,b,...] [--scenario-file PY]
                                  [--timeout S]
    tvdctl-xentest ...                       (the same, as a console script)

Scenarios: the core ones here, the VM-lifecycle ones in tvd_testing/xen_scenarios/ (scenario
files, loaded by default), and any a tester adds with --scenario-file (tvd_testing/xenscenario.py).

One qemu boot (see docs/test-tiers.md, "Tier 3"):
- Xen (Debian's xen-hypervisor-4.17-amd64, or the same rebuilt with shadow paging for live
  migration by scripts/build-xen-shadow; un-gzipped, multiboot via qemu -kernel) with a PV
  dom0 running Debian's stock kernel, Xen booted with `spec-ctrl=eager-fpu` (lazy FPU
  switching corrupted dom0 under TCG). dom0's root is this machine's root over 9p, read-only,
  with tmpfs overlays; what dom0 runs during scenarios comes from a read-only ext4 image, its
  results go to a second virtio disk read back after qemu exits. Python and the project are
  in that image too (the tier-2 trick, tvd_testing.vmtier: imports over 9p under
  emulation cost minutes).
- dom0's init (generated, bash) loads the Xen modules, starts xenstored, xen-init-dom0 and
  xenconsoled (guest consoles logged into the results directory), installs the project's
  vif-tvd (xen_tvd/data/hotplug/) as /etc/xen/scripts/vif-tvd, starts `tvd-proxy run` with a
  policy whose `hosts:` entry is dom0's host name, then runs the scenario driver (`dom0`
  sub-command of this module) and powers off.
- The driver uses real `xl create` / `tvdctl xl create` / `xl network-attach` / `xl destroy`
  with PV domUs: the stock kernel + a busybox initramfs built here with xen-netfront.ko and an
  init that configures eth0 from the kernel command line and pings its peers in rounds,
  printing `@@ping ROUND PEER 0|1` on its console.
- Every scenario reports named checks (ok, detail) and the raw facts (xenstore keys, links,
  xl output) into results.json; the host side (`run`) returns them with timings and the serial
  log. `failures(result)` lists what went wrong, including scenarios or checks that are missing.

Missing prerequisites raise MissingPrerequisite with the exact package to install.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MARK = "@@xentier"
XEN_LIB = Path("/usr/lib/xen-4.17/bin")
DOM0_HOSTNAME = "tvd-dom0"
# The built-in scenarios of this module; more come from scenario files (tvd_testing/xenscenario.py):
# the VM lifecycle ones in tvd_testing/xen_scenarios/lifecycle.py are loaded by default.
CORE_SCENARIOS = ("positive", "attach", "unknown", "denied")
BUILTIN_FILES = tuple(PROJECT / "tvd_testing" / "xen_scenarios" / f
                      for f in ("multinic.py", "checksum.py", "libvirt_xen.py", "lifecycle.py"))
LIFECYCLE_SCENARIOS = ("twonics", "checksum", "migrate", "reboot", "saverestore")
SCENARIOS = CORE_SCENARIOS + LIFECYCLE_SCENARIOS + ("destroy",)
# Known but not in SCENARIOS: libvirt (tvd_testing/xen_scenarios/libvirt_xen.py) needs the boot
# on Westmere (SCENARIO_QEMU_CPU); checksum-optout (tvd_testing/xen_scenarios/checksum.py) costs
# another ~2 min of domU boots and stays opt-in; migrate-standin (lifecycle.py) is for a
# hypervisor without shadow paging, where `migrate` cannot run.
# What CI runs (tests/xen), in one boot on Westmere: every scenario, libvirt before destroy
# (whose checks want no domain left). A second boot for libvirt alone would cost ~2.5 min more
# (dom0 boot + positive); docs/test-tiers.md has the measured times behind the choice.
CI_SCENARIOS = CORE_SCENARIOS + LIFECYCLE_SCENARIOS + ("libvirt", "destroy")
# The checks each built-in scenario must report; a scenario missing one fails (no silent gaps).
CORE_CHECKS = {
    "positive": ("create-alpha1", "create-alpha2", "create-beta", "hotplug-connected",
                 "attached-to-tvd-bridge", "guests-up", "alpha-reach-each-other",
                 "beta-reaches-neither", "alpha-never-reach-beta", "tx-csum-after-frontend-connect",
                 "beta-transmitted"),
    "attach": ("network-attach", "attach-connected", "attach-on-alpha-bridge", "network-detach",
               "detach-gone", "attach-denied-fails", "attach-denied-error-text",
               "attach-denied-not-attached", "attach-unknown-fails", "attach-unknown-error-text",
               "attach-unknown-not-attached"),
    "unknown": ("create-fails", "hotplug-error-text", "no-domain-left", "no-vif-attached"),
    "denied": ("create-fails", "hotplug-error-text", "no-domain-left", "no-vif-attached"),
    "destroy": ("destroy", "no-domains-left", "no-vif-ports", "proxy-has-no-vifs",
                "no-backend-vifs", "vswitches-removed"),
}

POLICY = f"""# Generated by tvd_testing.xentier: the nested-Xen tier's policy (one Dom0).
version: 1
properties:
  signed-kernel: {{}}
  pci-audited: {{}}
tvds:
  alpha: {{vlan: 100, vni: 10100, membership: [signed-kernel]}}
  beta:  {{vlan: 200, vni: 10200, tx-checksum-offload: false}}
  vault: {{vlan: 400, vni: 10400, membership: [pci-audited]}}
  gamma: {{vlan: 300, vni: 10300}}
  # scenario checksum (tvd_testing/xen_scenarios/checksum.py): a routing domU between two
  # TVDs, with vif tx checksum offload as shipped (on) and with the TVDs' opt-out
  csum-a: {{vlan: 500, vni: 10500}}
  csum-b: {{vlan: 510, vni: 10510}}
  nocsum-a: {{vlan: 600, vni: 10600, tx-checksum-offload: false}}
  nocsum-b: {{vlan: 610, vni: 10610, tx-checksum-offload: false}}
shared-membership:
  - [beta, gamma]
  - [csum-a, csum-b]
  - [nocsum-a, nocsum-b]
  - [csum-a, nocsum-b]
networks:
  lan: {{subnet: 10.77.1.0/24, multicast: true, vlan-capable: false, mtu: 1500}}
hosts:
  {DOM0_HOSTNAME}:
    address: 10.77.1.11
    capabilities: [ethernet, ip]
    properties: {{signed-kernel: trust, pci-audited: audit}}
    nics: [{{network: lan, nic: eth0, address: 10.77.1.11}}]
"""

# vif tx checksum offload per TVD of POLICY after the frontend connected: the product's
# default (on) unless the TVD says `tx-checksum-offload: false` (beta proves the opt-out)
TX_CSUM_ON = {"alpha": True, "beta": False}
# ... and off on the vifs of a VM that opts out itself (xl.cfg tvd_tx_checksum_offload = 0,
# registered by `tvdctl xl create`), while the other VMs of its TVD keep the TVD's setting
VM_CSUM_OPT_OUT = {"alpha2"}

# name -> (ip, mac, how): "tvdctl" = tvd="alpha" through `tvdctl xl create`; "xl" = plain
# `xl create` with bridge=tvd:<tvd> and script=vif-tvd on the vif.
GUESTS = {
    "alpha1": ("10.9.0.1", "00:16:3e:7a:00:01", "alpha", "tvdctl"),
    "alpha2": ("10.9.0.2", "00:16:3e:7a:00:02", "alpha", "tvdctl"),
    "beta":   ("10.9.0.3", "00:16:3e:7a:00:03", "beta", "xl"),
    "neg-unknown": ("10.9.0.4", "00:16:3e:7a:00:04", "nosuch", "xl"),
    "neg-denied":  ("10.9.0.5", "00:16:3e:7a:00:05", "vault", "xl"),
}
# qemu's TCG threading (TVD_XEN_TCG_THREAD overrides). thread=single did not remove the
# corrupt pages dom0 saw with lazy FPU switching (docs/test-tiers.md, Tier 3).
TCG_THREAD = "multi"
# qemu -cpu model (TVD_XEN_QEMU_CPU overrides).
QEMU_CPU = "max,-smap,-smep"
# Scenarios that cannot run on QEMU_CPU and the model they boot with instead (when neither
# qemu_cpu= nor TVD_XEN_QEMU_CPU names one). libvirt: libvirt 9.0's libxl driver matches Xen's
# hw_caps against its cpu_map models and refuses to start when none fits. Under `-cpu max`
# (AMD vendor) Xen drops SEP from hw_caps (SYSENTER is unusable in long mode on AMD) and TCG
# never offers VME; every model in libvirt's map needs one of the two, so the driver failed
# ("x86Decode: Cannot find suitable CPU model for given data"). With Intel's Westmere, which
# TCG emulates without dropping a feature, SEP stays and the map's Westmere model fits
# (docs/test-tiers.md, Tier 3, "libvirt's Xen driver").
SCENARIO_QEMU_CPU = {"libvirt": "Westmere"}


def choose_qemu_cpu(scenarios, qemu_cpu: str | None = None) -> str:
    """The qemu -cpu model of a boot running `scenarios`: qemu_cpu, else TVD_XEN_QEMU_CPU, else
    the one model the selected scenarios need (SCENARIO_QEMU_CPU), else QEMU_CPU."""
    if qemu_cpu or os.environ.get("TVD_XEN_QEMU_CPU"):
        return qemu_cpu or os.environ["TVD_XEN_QEMU_CPU"]
    wanted = {SCENARIO_QEMU_CPU[s] for s in scenarios if s in SCENARIO_QEMU_CPU}
    if len(wanted) > 1:
        raise ValueError(f"the selected scenarios need different qemu CPU models: {sorted(wanted)}")
    return wanted.pop() if wanted else QEMU_CPU
# Xen options that make the tier reliable under qemu 7.2 TCG (docs/test-tiers.md, Tier 3,
# "Corrupt pages in dom0"). `spec-ctrl=eager-fpu`: Xen saves and restores every vCPU's
# FPU/SSE/AVX state at each context switch instead of lazily (CR0.TS + #NM), which it does by
# default on the AMD CPU model `-cpu max` presents. With lazy switching dom0 processes
# segfaulted once domUs shared the CPUs with dom0; with eager switching no run did.
XEN_RELIABILITY_ARGS = "spec-ctrl=eager-fpu"
# dom0's credit2 weight (domUs keep the default 256): dom0's hotplug work (vif-tvd, tvd-proxy)
# must finish within libxl's fixed 40 s while the domUs created just before it boot
DOM0_WEIGHT = 2048
# extra Xen options, appended after the ones above (TVD_XEN_ARGS; later options win, so
# TVD_XEN_ARGS=spec-ctrl=eager-fpu=0 brings the failing lazy switching back for diagnosis)
XEN_EXTRA_ARGS = ""
ATTACH_MAC = "00:16:3e:7a:01:01"
ATTACH_DENIED_MAC = "00:16:3e:7a:01:03"
ATTACH_UNKNOWN_MAC = "00:16:3e:7a:01:04"


def _builtin_specs():
    from tvd_testing.xenscenario import ScenarioSpec, register
    runs = {"positive": lambda d, sc: d.positive(sc), "attach": lambda d, sc: d.attach(sc),
            "unknown": lambda d, sc: d.negative(sc, "neg-unknown", "unknown TVD 'nosuch'"),
            "denied": lambda d, sc: d.negative(sc, "neg-denied", "admission denied"),
            "destroy": lambda d, sc: d.destroy(sc)}
    for name, fn in runs.items():
        register(ScenarioSpec(name, fn, CORE_CHECKS[name], ("positive",) if name == "attach" else ()))


def load_scenarios(files=()) -> dict:
    """The registry with the built-ins, the lifecycle file and `files` loaded."""
    from tvd_testing import xenscenario
    _builtin_specs()
    for f in (*BUILTIN_FILES, *files):
        xenscenario.load_file(f)
    return xenscenario.REGISTRY


def expected_checks(name: str, files=()) -> tuple[str, ...]:
    return load_scenarios(files)[name].checks


class MissingPrerequisite(RuntimeError):
    """A package this tier needs is not installed; the message names it."""


@dataclass
class XenResult:
    returncode: int                      # 0 when the driver finished and every check passed
    results_dir: Path
    serial_log: Path
    results: dict | None
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    qemu_cpu: str = ""                   # the -cpu model it booted with (choose_qemu_cpu)
    hypervisor: str = ""                 # the Xen image it booted (find_xen)

    def log_tail(self, lines: int = 80) -> str:
        out = []
        for p in (self.serial_log, self.results_dir / "driver.log", self.results_dir / "proxy.log"):
            try:
                text = p.read_text(errors="replace").splitlines()[-lines:]
            except OSError as e:
                text = [f"(unreadable: {e})"]
            out.append(f"--- {p.name} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(out)

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items())
        s = f"xentier: exit {self.returncode}; -cpu {self.qemu_cpu}; Xen {self.hypervisor}; {t}"
        if self.problems:
            s += "\nproblems:\n  " + "\n  ".join(self.problems)
        return s


# --- prerequisites ----------------------------------------------------------------------

# Debian's hypervisor rebuilt with shadow paging by scripts/build-xen-shadow (bootstrap runs it):
# PV live migration needs it (the `migrate` scenario)
SHADOW_XEN = Path("/var/cache/xen-tvd/xen-4.17-shadow-amd64.gz")


def find_xen(hypervisor: str | Path | None = None) -> Path:
    """The hypervisor to boot: `hypervisor` (a xen.gz or an un-gzipped multiboot ELF), else the
    shadow-paging build of scripts/build-xen-shadow when it is there, else Debian's newest in
    /boot."""
    if hypervisor is not None:
        p = Path(hypervisor)
        if not p.is_file():
            raise MissingPrerequisite(f"hypervisor {p} is not a file")
        return p
    if SHADOW_XEN.is_file():
        return SHADOW_XEN

    def ver(p):
        return [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p)]
    for p in sorted(glob.glob("/boot/xen-4.17*-amd64.gz"), key=ver, reverse=True):
        return Path(p)
    raise MissingPrerequisite("no Xen 4.17 hypervisor in /boot (xen-4.17-amd64.gz): "
                              "apt-get install --no-install-recommends xen-hypervisor-4.17-amd64")


def find_tool(name: str) -> Path | None:
    here = Path(sys.executable).parent / name
    if here.exists():
        return here
    w = shutil.which(name)
    return Path(w) if w else None


def check_prerequisites(kernel: str | None = None, scenarios=None,
                        hypervisor: str | Path | None = None) -> dict[str, Path]:
    """What the tier needs (for `scenarios`, default CI_SCENARIOS); MissingPrerequisite names
    the package of the first thing missing."""
    from tvd_testing import vmtier
    try:
        k = vmtier.find_kernel(kernel)
    except vmtier.MissingPrerequisite as e:
        raise MissingPrerequisite(str(e)) from None
    found = {"kernel": k, "xen": find_xen(hypervisor)}
    tools = {
        "qemu": (shutil.which("qemu-system-x86_64"), "apt-get install --no-install-recommends qemu-system-x86"),
        "xl": (str(XEN_LIB / "xl") if (XEN_LIB / "xl").exists() else None,
               "apt-get install --no-install-recommends xen-utils-4.17"),
        "xenstored": (str(XEN_LIB / "xenstored") if (XEN_LIB / "xenstored").exists() else None,
                      "apt-get install --no-install-recommends xen-utils-4.17"),
        "xenstore-read": (shutil.which("xenstore-read"), "apt-get install xenstore-utils"),
        "vif-bridge": ("/etc/xen/scripts/vif-bridge" if os.path.exists("/etc/xen/scripts/vif-bridge") else None,
                       "apt-get install xen-utils-common"),
        "busybox": ("/bin/busybox" if _static("/bin/busybox") else None, "apt-get install busybox-static"),
        "mke2fs": (shutil.which("mke2fs"), "apt-get install e2fsprogs"),
        "debugfs": (shutil.which("debugfs"), "apt-get install e2fsprogs"),
        "virtme-mkinitramfs": (find_tool("virtme-mkinitramfs"),
                               f"{sys.executable} -m pip install virtme-ng (or pip install -e '.[test]')"),
        "python3": (shutil.which("python3", path="/usr/bin"), "apt-get install python3 (vif-tvd's interpreter)"),
        "perl": (str(PERL) if PERL.exists() else None, "apt-get install perl-base (the domUs' traffic tool)"),
    }
    if "libvirt" in (CI_SCENARIOS if scenarios is None else scenarios):
        drv = "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_libxl.so"
        tools.update({
            "libvirtd": (shutil.which("libvirtd"), "apt-get install --no-install-recommends libvirt-daemon"),
            "virsh": (shutil.which("virsh"), "apt-get install --no-install-recommends libvirt-clients"),
            "libvirt's Xen driver": (drv if os.path.exists(drv) else None,
                                     "apt-get install --no-install-recommends libvirt-daemon-driver-xen")})
    for name, (path, fix) in tools.items():
        if not path:
            raise MissingPrerequisite(f"{name} not found: {fix}")
        found[name] = Path(path)
    release = k.name.removeprefix("vmlinuz-")
    if not glob.glob(f"/lib/modules/{release}/kernel/drivers/net/xen-netfront.ko*"):
        raise MissingPrerequisite(f"xen-netfront module missing for {release}: apt-get install linux-image-amd64")
    if os.geteuid() != 0:
        raise MissingPrerequisite("the nested-Xen tier runs as root (9p passthrough of / to dom0)")
    return found


def _static(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    return head[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in head and b"ld-linux-x86-64" not in head


# --- images and generated files ---------------------------------------------------------

DOMU_INIT = r"""#!/bin/busybox sh
# domU init (generated by tvd_testing.xentier): eth0 from the kernel command line, then
# ping rounds forever. Output goes to hvc0, which xenconsoled logs in dom0.
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
# This script is PID 1, so it must do init's part of an orderly shutdown: `xl reboot` /
# `xl shutdown` make the guest kernel run /sbin/reboot or /sbin/poweroff, and busybox's
# signal PID 1 (reboot: TERM, poweroff: USR2, halt: USR1). The kernel drops signals PID 1 has
# no handler for, so without these traps the guest ignored `xl reboot` (docs/test-tiers.md).
trap 'echo "@@guest reboot requested"; reboot -f' TERM
trap 'echo "@@guest poweroff requested"; poweroff -f' USR2
trap 'echo "@@guest halt requested"; poweroff -f' USR1
for a in $(cat /proc/cmdline); do
    case "$a" in tvd_ip=*) IP=${a#tvd_ip=};; tvd_ip1=*) IP1=${a#tvd_ip1=};; tvd_onlink=*) ONLINK=${a#tvd_onlink=};;
                 tvd_peers=*) PEERS=${a#tvd_peers=};; tvd_name=*) NAME=${a#tvd_name=};;
                 tvd_via=*) VIA=${a#tvd_via=};; tvd_forward=*) FORWARD=${a#tvd_forward=};;
                 tvd_traffic=*) TRAFFIC=${a#tvd_traffic=};; tvd_counters=*) COUNTERS=${a#tvd_counters=};; esac
done
# counters TAG [snmp]: the kernel's protocol counters (/proc/net/snmp, and unless "snmp" also
# /proc/net/netstat: TcpExt, IpExt) as `@@snmp TAG PROTO Name=value ...`, and unless "snmp"
# each NIC's statistics as `@@netdev TAG IF name=value ...`
counters() {
    f=/proc/net/snmp; [ "$2" = snmp ] || f="$f /proc/net/netstat"
    awk -v t="$1" '{ if (h[$1] == "") { h[$1] = $0; next }
                     n = split(h[$1], k); split($0, v); l = "@@snmp " t " " substr($1, 1, length($1) - 1)
                     for (i = 2; i <= n; i++) l = l " " k[i] "=" v[i]; print l; h[$1] = "" }' $f
    [ "$2" = snmp ] && return
    for d in /sys/class/net/eth*; do
        l="@@netdev $1 ${d##*/}"
        for c in rx_packets rx_bytes rx_errors rx_dropped tx_packets tx_bytes tx_errors tx_dropped; do
            l="$l $c=$(cat $d/statistics/$c)"
        done
        echo "$l"
    done
}
insmod /xen-netfront.ko
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
ip addr add "$IP/24" dev eth0
ip link set eth0 up
# a second NIC (tvd_ip1) on its own subnet; tvd_onlink: a subnet reached on-link through eth0
# (ARP on eth0's TVD), so a host that bridged two TVDs would answer
if [ -n "$IP1" ]; then
    i=0
    while [ ! -e /sys/class/net/eth1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
    ip addr add "$IP1/24" dev eth1
    ip link set eth1 up
fi
[ -n "$ONLINK" ] && ip route add "$ONLINK" dev eth0
# tvd_via=NET,GW: NET routed through GW; tvd_forward=1: this guest routes between its NICs
[ -n "$VIA" ] && ip route add "${VIA%,*}" via "${VIA#*,}"
[ "$FORWARD" = 1 ] && sysctl -w net.ipv4.ip_forward=1 >/dev/null
echo "@@guest up name=$NAME ip=$IP mtu=$(cat /sys/class/net/eth0/mtu) mac=$(cat /sys/class/net/eth0/address) forwarding=$(cat /proc/sys/net/ipv4/ip_forward)"
# tvd_counters=1: /proc/net/snmp every two seconds (`@@snmp tick-N ...`), e.g. a router's
[ "$COUNTERS" = 1 ] && ( i=0; while :; do i=$((i+1)); counters "tick-$i" snmp; sleep 2; done ) &
# tvd_traffic (the "tools" initramfs: /bin/tvd-traffic, tvd_testing/xen_guest_traffic.pl):
# recv = receive TCP on port 5001 and UDP on 5002; send:DST:BYTES:COUNT = BYTES of random data
# over TCP, then COUNT datagrams, to DST. Each ends with its counters and `@@csum ...-done`.
case "$TRAFFIC" in
recv)
    ( tvd-traffic udp-recv 5002 &
      tvd-traffic tcp-recv 5001 /tmp/rx
      echo "@@csum tcp-rx-payload bytes=$(wc -c < /tmp/rx) sha256=$(sha256sum /tmp/rx | cut -d' ' -f1)"
      rm -f /tmp/rx
      wait
      counters final
      echo "@@csum receiver-done" ) & ;;
send:*)
    ( set -- $(echo "$TRAFFIC" | tr ':' ' ')
      head -c "$3" /dev/urandom > /tmp/tx
      echo "@@csum tcp-tx-payload bytes=$(wc -c < /tmp/tx) sha256=$(sha256sum /tmp/tx | cut -d' ' -f1)"
      tvd-traffic tcp-send "$2" 5001 /tmp/tx 600
      tvd-traffic udp-send "$2" 5002 "$4"
      counters final
      echo "@@csum sender-done" ) & ;;
esac
n=0
while true; do
    n=$((n+1))
    echo "@@round-start $n"
    for p in $(echo "$PEERS" | tr ',' ' '); do
        if ping -c 2 -W 2 -w 4 "$p" >/dev/null 2>&1; then r=1; else r=0; fi
        echo "@@ping $n $p $r $(cut -d' ' -f1 /proc/uptime)"
    done
    echo "@@round-end $n"
    sleep 1
done
"""


# The "tools" domU initramfs (Dom0.write_cfg(..., tools=True)): the base one plus Debian's perl
# (perl-base, Essential) with its shared libraries and the traffic tool as /bin/tvd-traffic
TRAFFIC_TOOL = PROJECT / "tvd_testing" / "xen_guest_traffic.pl"
PERL = Path("/usr/bin/perl")


def _with_libs(exe: Path) -> list[Path]:
    """exe and the shared libraries it loads, as the paths the dynamic linker opens."""
    r = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True)
    libs = [Path(m) for m in re.findall(r"(/\S+) \(0x", r.stdout)]
    return [exe, *libs]


def build_domu_initramfs(path: Path, release: str, busybox: Path, tools: bool = False) -> None:
    from virtme.cpiowriter import CpioWriter   # virtme-ng: already required for dom0's initramfs
    mods = glob.glob(f"/lib/modules/{release}/kernel/drivers/net/xen-netfront.ko*")
    ko = Path(mods[0])
    data = ko.read_bytes()
    if ko.name.endswith(".xz"):
        import lzma
        data = lzma.decompress(data)
    elif ko.name.endswith(".zst"):
        data = subprocess.run(["zstd", "-dc", str(ko)], capture_output=True, check=True).stdout
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        cw = CpioWriter(f)
        for d in (b"bin", b"dev", b"proc", b"sys", b"tmp"):
            cw.mkdir(d, 0o755)
        cw.mkchardev(b"dev/console", (5, 1), mode=0o600)
        cw.mkchardev(b"dev/null", (1, 3), mode=0o666)
        cw.write_file(b"bin/busybox", busybox.read_bytes(), mode=0o755)
        cw.symlink(b"busybox", b"bin/sh")
        cw.write_file(b"xen-netfront.ko", data, mode=0o644)
        cw.write_file(b"init", DOMU_INIT.encode(), mode=0o755)
        if tools:
            made = {"bin"}
            for f in _with_libs(PERL):
                dst = "bin/perl" if f == PERL else str(f).lstrip("/")
                parts = dst.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i])
                    if d not in made:
                        cw.mkdir(d.encode(), 0o755)
                        made.add(d)
                cw.write_file(dst.encode(), f.resolve().read_bytes(), mode=0o755)
            cw.write_file(b"bin/tvd-traffic", TRAFFIC_TOOL.read_bytes(), mode=0o755)
        cw.write_trailer()


def guest_cfg(name: str, kernel: Path, ramdisk: Path) -> str:
    ip, mac, tvd, how = GUESTS[name]
    peers = ",".join(g[0] for n, g in GUESTS.items() if n != name and n in ("alpha1", "alpha2", "beta"))
    lines = [f"# generated by tvd_testing.xentier ({how} create)",
             f'name = "{name}"', 'type = "pv"', f'kernel = "{kernel}"', f'ramdisk = "{ramdisk}"',
             f'extra = "console=hvc0 loglevel=4 tvd_name={name} tvd_ip={ip} tvd_peers={peers}"',
             "memory = 160", "vcpus = 1", 'on_crash = "destroy"']
    if how == "tvdctl":
        lines += [f"vif = ['mac={mac}']", f'tvd = "{tvd}"', 'tvd_properties = ["signed-kernel:trust"]']
        lines += ["tvd_tx_checksum_offload = 0"] if name in VM_CSUM_OPT_OUT else []
    else:
        lines += [f"vif = ['mac={mac}, bridge=tvd:{tvd}, script=vif-tvd']", f'tvd = "{tvd}"']
    return "\n".join(lines) + "\n"


DOM0_INIT = r"""#!/bin/bash
# dom0's init (PID 1), generated by tvd_testing.xentier. Host root is read-only 9p.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{xenlib}
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TMPDIR=/tmp HOME=/root LANG=C.UTF-8
R={results}
W={work}
say() {{ echo "{mark} $* t=$(cut -d' ' -f1 /proc/uptime)"; }}
die() {{ say "fatal: $*"; echo "fatal: $*" > "$R/fatal" 2>/dev/null; sync; echo o > /proc/sysrq-trigger; sleep 10; exit 1; }}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd   # for exec > >(tee ...) below
mount -t tmpfs -o mode=755 run /run
say dom0-init
# Everything dom0 reads from here on comes from virtio-blk: data read over 9p in this Xen PV
# dom0 under TCG came back corrupt under load (docs/test-tiers.md, Tier 3). vda = read-only
# snapshot (python, project, venv, the work dir with the domU kernel, a layer for /usr and
# /etc); vdb = the results disk (ext4, rw), read back by the harness after qemu exits.
modprobe -a virtio_blk ext4 || die "virtio_blk/ext4"
mkdir -p /run/xentier/img
for i in $(seq 100); do [ -b /dev/vda ] && [ -b /dev/vdb ] && break; sleep 0.2; done
mount -t ext4 -o ro,noload /dev/vda /run/xentier/img || die "snapshot image"
mkdir -p /run/ovl
for d in etc var tmp root; do
    mkdir -p /run/ovl/$d/u /run/ovl/$d/w
    low=/$d
    [ -d /run/xentier/img/u{layer}/$d ] && low=/run/xentier/img/u{layer}/$d:/$d
    mount -t overlay overlay -o lowerdir=$low,upperdir=/run/ovl/$d/u,workdir=/run/ovl/$d/w /$d || die "overlay /$d"
done
chmod 1777 /tmp
{binds}
mount -t ext4 -o rw,noatime /dev/vdb "$R" || die "results disk"
mkdir -p "$R/work"
mount --bind /run/xentier/img/u{workunit} "$W" || die "bind work dir"
[ -e "$W/dom0-init" ] || die "work dir not in the snapshot"
exec > >(tee -a "$R/dom0-init.log") 2>&1
say snapshot-mounted
# the results disk is read back after qemu exits: flush it now and then (a hang gets killed)
( while sleep 15; do sync; done ) &
mkdir -p /sys/kernel/debug && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
cat /proc/cmdline > "$R/dom0-cmdline.txt"; cat /proc/mounts > "$R/dom0-mounts.txt"
hostname {hostname}
modprobe -a xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-netback bridge || die "xen modules"
mount -t xenfs xenfs /proc/xen || die "xenfs"
mkdir -p /run/xen /run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen /run/lock "$R/console"
{xenlib}/xenstored --pid-file=/run/xenstored.pid || die "xenstored"
for i in $(seq 100); do xenstore-read /local >/dev/null 2>&1 && break; sleep 0.2; done
{xenlib}/xen-init-dom0 || die "xen-init-dom0"
{xenlib}/xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir="$R/console" || die "xenconsoled"
xl info > "$R/xl-info.txt" 2>&1 || die "xl info"
# dom0 runs the hotplug path (vif-tvd, tvd-proxy) that libxl gives 40 s; under emulation on a
# loaded host the booting domUs (equal credit2 weight) starved it past that (docs/test-tiers.md)
xl sched-credit2 -d Domain-0 -w {dom0_weight} || die "dom0 scheduler weight"
xl sched-credit2 -d Domain-0 >> "$R/xl-info.txt" 2>&1
say xen-ready
install -m 0755 {project}/xen_tvd/data/hotplug/vif-tvd /etc/xen/scripts/vif-tvd || die "install vif-tvd"
mkdir -p /var/lib/xen-tvd /run/xen-tvd
# the project under test, not whatever the venv's editable install points at (a worktree that
# shares another checkout's .venv ran that checkout's proxy and tvdctl here)
export PYTHONPATH={project}
{python} -m xen_tvd.proxy.main run --policy "$W/policy.yaml" --host "$(hostname)" \
    --state-dir /var/lib/xen-tvd --segment-grace {grace} > "$R/proxy.log" 2>&1 &
say proxy-started
cd {project}
# emulation: the proxy's first vif-online of a TVD (bridge, nft tables) took 13-18 s under TCG
# on a loaded 2-CPU machine; vif-tvd's default wait is 10 s. libxl passes xl's environment to
# hotplug scripts; 30 s stays under libxl's 40 s hotplug timeout.
export TVD_PROXY_TIMEOUT=30
{python} -m tvd_testing.xentier dom0 --work "$W" --results "$R" --scenarios {scenarios}{files} \
    > "$R/driver.log" 2>&1
rc=$?
say driver-done rc=$rc
echo $rc > "$R/driver.rc"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


# Programs dom0 runs while scenarios run (often several at once). Read over 9p under Xen PV
# + TCG, their pages were sometimes wrong: nft segfaulted at the same address in every
# process, ld.so reported inconsistent libraries, vif-tvd's python3 segfaulted. From the
# ext4 image (virtio-blk) they are fine, so these, their libraries and Debian's Python stdlib
# form an overlay layer over /usr.
DOM0_PROGRAMS = ("bash", "sh", "nft", "ip", "bridge", "ethtool", "modprobe", "python3.11",
                 "xenstore-read", "xenstore-write", "xenstore-ls", "xenstore-exists", "xenstore-rm",
                 "xenstore", "mount", "umount", "sleep", "cat", "cut", "tee", "seq", "install",
                 "hostname", "mkdir", "rm", "sync", "logger", "flock", "setsid", "sed", "grep",
                 "awk", "mawk", "readlink", "dirname", "basename", "chmod", "ls", "env", "tr",
                 "python3", "xl", "cp", "mv", "ln", "touch", "stat", "id", "uname", "head", "tail",
                 "wc", "sort", "date", "kill", "ps", "pgrep", "timeout", "true", "false", "test",
                 "mktemp", "chown", "xargs", "find", "which", "udevadm", "brctl", "ifconfig", "xenstored",
                 "libvirtd", "virsh")
# /usr/lib/.../libvirt and /usr/share/libvirt: libvirtd's drivers and data (scenario libvirt)
DOM0_DIRS = ("/usr/lib/xen-4.17", "/usr/lib/python3.11", "/usr/lib/xen-common", "/usr/share/xen-common",
             "/usr/lib/x86_64-linux-gnu/libvirt", "/usr/share/libvirt")
# modules dom0 loads while scenarios run (bridge, nf_tables and friends on demand, netback)
DOM0_MODULE_DIRS = ("kernel/net", "kernel/drivers/net/xen-netback", "kernel/drivers/xen", "kernel/lib",
                    "kernel/crypto", "kernel/arch")


def stage_usr_layer(stage: Path, release: str | None = None) -> int:
    """A tree stage/usr/... with hardlinks (or copies) of DOM0_PROGRAMS, their shared
    libraries, DOM0_DIRS and the kernel's DOM0_MODULE_DIRS (+ modules.*), and stage/etc/ = a
    copy of /etc; dom0 mounts them as the upper lower layers of overlays on /usr and /etc."""
    files: set[Path] = set()
    exes = [Path(p) for p in (shutil.which(n, path=f"/usr/sbin:/usr/bin:/sbin:/bin:{XEN_LIB}")
                              for n in DOM0_PROGRAMS) if p]
    dirs = list(DOM0_DIRS)
    if release:
        mdir = Path(f"/usr/lib/modules/{release}")
        dirs += [str(mdir / d) for d in DOM0_MODULE_DIRS]
        files.update(f for f in mdir.glob("modules.*") if f.is_file())
    for d in dirs:
        for f in Path(d).rglob("*"):
            if f.is_file() and not f.is_symlink():
                files.add(f)
                if f.parent.name == "bin" or f.suffix == ".so" or ".so." in f.name:
                    exes.append(f)
    for e in exes:
        for p in (e, e.resolve()):
            files.add(p)
        r = subprocess.run(["ldd", str(e.resolve())], capture_output=True, text=True)
        for m in re.finditer(r"(/\S+) \(0x", r.stdout):
            files.add(Path(m.group(1)))
            files.add(Path(m.group(1)).resolve())
    n = 0
    for f in sorted(files):
        real = f if f.is_absolute() else Path("/") / f
        # merged /usr: /lib, /bin, /lib64, /sbin are symlinks into /usr
        path = Path(os.path.realpath(real.parent)) / real.name
        if not str(path).startswith("/usr/") or not real.exists():
            continue
        dst = stage / str(path).lstrip("/")
        if dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if real.is_symlink():
            os.symlink(os.readlink(real), dst)
        else:
            try:
                os.link(real.resolve(), dst)
            except OSError:
                shutil.copy2(real.resolve(), dst)
        n += 1
    shutil.copytree("/etc", stage / "etc", symlinks=True, ignore_dangling_symlinks=True,
                    ignore=lambda d, names: {x for x in names if not (Path(d, x).is_dir() or Path(d, x).is_file()
                                                                      or Path(d, x).is_symlink())},
                    copy_function=shutil.copy2)
    return n


def write_dom0_init(work: Path, results: Path, python: str, units: list[Path], scenarios, grace: float,
                    scenario_files=()) -> Path:
    """`units` are bind-mounted over their own paths from the image (u0, u1, ...), the last one
    (`work`) after the results disk is mounted; the image's u<len(units)> is the root layer
    (usr/, etc/), overlaid on /usr and /etc."""
    assert units[-1] == work
    binds = "\n".join(f"mount --bind /run/xentier/img/u{i} {shlex.quote(str(u))} || die 'bind {u}'"
                      for i, u in enumerate(units[:-1]))
    layer = len(units)
    binds += (f"\nmount -t overlay overlay -o ro,lowerdir=/run/xentier/img/u{layer}/usr:/usr /usr "
              f"|| die 'overlay /usr'")
    text = DOM0_INIT.format(results=shlex.quote(str(results)), work=shlex.quote(str(work)), mark=MARK,
                            binds=binds, layer=layer, workunit=len(units) - 1, hostname=DOM0_HOSTNAME, xenlib=XEN_LIB,
                            project=shlex.quote(str(PROJECT)), python=shlex.quote(python),
                            scenarios=",".join(scenarios), grace=grace, dom0_weight=DOM0_WEIGHT,
                            files="".join(f" --scenario-file {shlex.quote(str(f))}" for f in scenario_files))
    p = work / "dom0-init"
    p.write_text(text)
    p.chmod(0o755)
    return p


# --- host side: boot and collect ----------------------------------------------------------

def run(scenarios=SCENARIOS, *, results_dir: str | Path | None = None, kernel: str | None = None,
        python: str | None = None, timeout: float = 1800, memory: int = 3072, cpus: int = 2,
        segment_grace: float = 5.0, tcg_thread: str | None = None, qemu_cpu: str | None = None,
        xen_args: str | None = None, echo=None, scenario_files=(),
        hypervisor: str | Path | None = None) -> XenResult:
    """Boot Xen once, run `scenarios` in order inside dom0, return the result. `scenario_files`:
    extra scenario files (tvd_testing/xenscenario.py) whose scenarios may be named."""
    from tvd_testing import vmtier, xenscenario
    t0 = time.monotonic()
    scenarios = tuple(scenarios)
    files = [Path(f).resolve() for f in scenario_files]
    load_scenarios(files)             # ScenarioError (a ValueError) names what is wrong
    xenscenario.validate_order(scenarios)
    qemu_cpu = choose_qemu_cpu(scenarios, qemu_cpu)
    pre = check_prerequisites(kernel, scenarios, hypervisor)
    python = python or sys.executable
    results = Path(results_dir or tempfile.mkdtemp(prefix="xentier-")).resolve()
    results.mkdir(parents=True, exist_ok=True)
    for stale in RESULT_FILES + ("serial.log", "readback.err"):
        if (results / stale).is_dir():
            shutil.rmtree(results / stale, ignore_errors=True)
        else:
            (results / stale).unlink(missing_ok=True)
    work = results / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    timings: dict[str, float] = {}
    release = pre["kernel"].name.removeprefix("vmlinuz-")

    with open(pre["xen"], "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open if gz else open)(pre["xen"], "rb") as src, open(work / "xen", "wb") as dst:
        shutil.copyfileobj(src, dst)
    r = subprocess.run([str(pre["virtme-mkinitramfs"]), "--mod-kversion", release,
                        "--outfile", str(work / "dom0-initramfs")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"virtme-mkinitramfs failed: {r.stderr.strip()}")
    build_domu_initramfs(work / "domu-initramfs.gz", release, pre["busybox"])
    build_domu_initramfs(work / "domu-initramfs-tools.gz", release, pre["busybox"], tools=True)
    # xl reads the domU kernel from the work dir, which dom0 gets from the snapshot image
    # (virtio-blk): read over 9p it once came back corrupt ("unable to XZ decompress kernel")
    shutil.copy2(pre["kernel"], work / "domu-vmlinuz")
    (work / "policy.yaml").write_text(POLICY)
    # scenario files travel in the snapshot image (work/) and are imported from there by dom0
    (work / "scenario-files").mkdir()
    dom0_files = []
    for i, f in enumerate(files):
        dst = work / "scenario-files" / f"{i}-{f.name}"
        shutil.copy2(f, dst)
        dom0_files.append(dst)
    for name in GUESTS:
        (work / f"{name}.cfg").write_text(guest_cfg(name, work / "domu-vmlinuz", work / "domu-initramfs.gz"))
    imgdir = Path(tempfile.mkdtemp(prefix="xentier-img-"))
    image = imgdir / "snapshot.ext4"
    units = vmtier.snapshot_units(python, PROJECT) + [work]
    root_layer = imgdir / "root-layer"
    stage_usr_layer(root_layer, release)
    init = write_dom0_init(work, results, python, units, scenarios, segment_grace, dom0_files)
    vmtier.build_image(image, units + [root_layer], exclude=[results, imgdir],
                       python=python)
    # the results disk: dom0 writes results.json, logs and guest consoles there; read back
    # with debugfs after qemu exits (no rw 9p share)
    resdisk = imgdir / "results.ext4"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "tvdres",
                    "-E", "root_owner=0:0", str(resdisk), "512M"], check=True, capture_output=True, text=True)
    timings["prepare"] = time.monotonic() - t0

    serial = results / "serial.log"
    cpus = int(os.environ.get("TVD_XEN_CPUS") or cpus)   # diagnostics: 1 = no cross-vCPU races
    xen_args = xen_args if xen_args is not None else os.environ.get("TVD_XEN_ARGS", XEN_EXTRA_ARGS)
    xen_cmdline = (f"console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all "
                   f"dom0_mem=1024M,max:1024M dom0_max_vcpus={cpus} smap=0 smep=0 "
                   f"{XEN_RELIABILITY_ARGS} {xen_args}").strip()
    dom0_cmdline = f"console=hvc0 earlyprintk=xen init={init}"
    for s in (dom0_cmdline, str(pre["kernel"]), str(work)):
        if "," in s:
            raise ValueError(f"no commas allowed in multiboot module strings: {s!r}")
    tcg_thread = tcg_thread or os.environ.get("TVD_XEN_TCG_THREAD") or TCG_THREAD
    cmd = ["qemu-system-x86_64", "-accel", f"tcg,thread={tcg_thread}", "-cpu", qemu_cpu,
           "-m", str(memory), "-smp", str(cpus), "-display", "none", "-vga", "none",
           "-monitor", "none", "-serial", f"file:{serial}", "-no-reboot", "-nic", "none",
           "-kernel", str(work / "xen"), "-append", xen_cmdline,
           "-initrd", f"{pre['kernel']} {dom0_cmdline},{work / 'dom0-initramfs'}",
           "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
           "-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root",
           "-drive", f"file={image},if=virtio,format=raw,readonly=on,cache=unsafe",
           "-drive", f"file={resdisk},if=virtio,format=raw"]
    (work / "qemu-cmd").write_text(shlex.join(cmd) + "\n")
    t_boot = time.monotonic()
    killed = None
    with open(work / "qemu.out", "w") as qout:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qout, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = t_boot + timeout
        pos = 0
        done_at = None
        try:
            while proc.poll() is None:
                time.sleep(1)
                now = time.monotonic()
                pos = _scan_serial(serial, pos, t_boot, timings, echo)
                if done_at is None and ("boot_to_driver-done" in timings or "fatal" in timings):
                    done_at = now
                if done_at is not None and now - done_at > 60:
                    killed = "did not power off 60 s after the driver finished"
                    break
                if now > deadline:
                    killed = f"timeout after {timeout:.0f} s"
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            try:
                _read_back(resdisk, results)
            finally:
                shutil.rmtree(imgdir, ignore_errors=True)
        _scan_serial(serial, pos, t_boot, timings, echo)
    timings["qemu_total"] = time.monotonic() - t_boot
    timings["tier_total"] = time.monotonic() - t0
    problems = []
    if killed:
        problems.append(f"qemu killed: {killed}")
        with open(serial, "a") as f:
            f.write(f"\n{MARK} harness: qemu killed: {killed}\n")
    res = None
    try:
        res = json.loads((results / "results.json").read_text())
    except (OSError, ValueError) as e:
        problems.append(f"no results.json from dom0 ({e})")
    if (results / "fatal").exists():
        problems.append("dom0 setup failed: " + (results / "fatal").read_text().strip())
    if res is not None:
        for name, sc in res.get("scenarios", {}).items():
            timings[f"scenario_{name}"] = sc.get("seconds", 0.0)
        problems += failures(res, scenarios, files)
    rc_file = results / "driver.rc"
    if not problems and not (rc_file.exists() and rc_file.read_text().strip() == "0"):
        problems.append("the dom0 driver did not exit 0 (driver.log)")
    return XenResult(0 if not problems else 1, results, serial, res, timings, problems, qemu_cpu,
                     str(pre["xen"]))


# what dom0 writes on the results disk (copied back into the results directory)
RESULT_FILES = ("results.json", "driver.rc", "fatal", "driver.log", "proxy.log", "dom0-init.log",
                "console", "xl-info.txt", "dom0-cmdline.txt", "dom0-mounts.txt")


def _read_back(disk: Path, results: Path) -> None:
    """Copy dom0's files from the results disk (ext4, qemu has exited) into `results`."""
    out = Path(tempfile.mkdtemp(prefix="rdump-", dir=results))
    try:
        r = subprocess.run(["debugfs", "-R", f"rdump / {out}", str(disk)], capture_output=True, text=True)
        for f in out.iterdir():
            if f.name in ("lost+found", "work"):
                continue
            dst = results / f.name
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(f, dst)
        if r.returncode != 0:
            (results / "readback.err").write_text(r.stderr)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _scan_serial(serial: Path, pos: int, t_boot: float, timings: dict, echo) -> int:
    try:
        with open(serial, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return pos
    # only consume whole lines
    cut = data.rfind(b"\n") + 1
    now = time.monotonic() - t_boot
    for line in data[:cut].decode("utf-8", "replace").replace("\r", "").splitlines():
        if echo:
            echo(line)
        m = re.search(re.escape(MARK) + r" ([a-z0-9-]+)", line)
        if m and m.group(1) in ("dom0-init", "xen-ready", "proxy-started", "driver-done"):
            timings.setdefault(f"boot_to_{m.group(1)}", now)
        elif m and m.group(1) == "fatal":
            timings.setdefault("fatal", now)
    return pos + cut


def failures(res: dict, scenarios, files=()) -> list[str]:
    """Everything wrong in a results.json: failed checks, missing scenarios or checks."""
    reg = load_scenarios(files)
    out = []
    got = res.get("scenarios", {})
    for s in scenarios:
        sc = got.get(s)
        if sc is None:
            out.append(f"{s}: scenario did not report (driver.log)")
            continue
        if sc.get("error"):
            out.append(f"{s}: driver error: {sc['error']}")
        names = {c["name"] for c in sc.get("checks", [])}
        for c in sc.get("checks", []):
            if not c.get("ok"):
                out.append(f"{s}: {c['name']} FAILED: {c.get('detail', '')}")
        for n in reg[s].checks:
            if n not in names:
                out.append(f"{s}: check {n} missing")
    return out


# --- dom0 side: the scenario driver ---------------------------------------------------------

def sh(argv, timeout=240, input=None) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL if input is None else None, input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=timeout)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        return 124, f"timeout after {timeout}s: {e.output or ''}"
    except OSError as e:
        return 127, str(e)


def dlog(*a):
    print(f"[{time.monotonic():9.1f}]", *a, flush=True)


class Scenario:
    def __init__(self, name: str):
        self.name = name
        self.checks: list[dict] = []
        self.facts: dict = {}
        self.t0 = time.monotonic()
        self.error = None

    def check(self, name: str, ok: bool, detail="") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": str(detail)[-3000:]})
        dlog(f"{self.name}: {name}: {'ok' if ok else 'FAILED'} {str(detail)[:300]}")
        return bool(ok)

    def to_json(self) -> dict:
        return {"checks": self.checks, "facts": self.facts, "seconds": time.monotonic() - self.t0,
                "error": self.error}


class Dom0:
    def __init__(self, work: Path, results: Path):
        self.work, self.results = work, results
        self.console = results / "console"
        self.socket = os.environ.get("TVD_PROXY_SOCKET") or "/run/xen-tvd/proxy.sock"
        self.domids: dict[str, int] = {}

    # facts -------------------------------------------------------------------------------
    def proxy(self, op: str, **kw) -> dict:
        """One request to dom0's tvd-proxy through the product's own client (this driver runs
        the project's Python in dom0, so it is not limited to the stdlib like vif-tvd)."""
        from xen_tvd.proxy import protocol
        return protocol.request({"op": op, **kw}, path=self.socket, timeout=30)

    def wait_proxy(self, timeout=240) -> float:
        from xen_tvd.proxy import protocol
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.proxy("ping").get("ok"):
                    return time.monotonic() - t0
            except protocol.ProxyUnreachable:
                pass
            time.sleep(0.5)
        raise RuntimeError("tvd-proxy did not answer ping within %ds (proxy.log)" % timeout)

    def links(self) -> dict[str, dict]:
        rc, out = sh(["ip", "-j", "-d", "link", "show"])
        return {d["ifname"]: d for d in json.loads(out)} if rc == 0 else {}

    def vif_ports(self) -> dict[str, str]:
        """vif* interface -> master, for every vif enslaved to anything."""
        return {n: d.get("master") for n, d in self.links().items()
                if n.startswith("vif") and d.get("master")}

    def xs_read(self, path: str) -> str | None:
        rc, out = sh(["xenstore-read", path], timeout=30)
        return out.strip() if rc == 0 else None

    def xs_ls(self, path: str) -> str:
        return sh(["xenstore-ls", "-f", path], timeout=30)[1]

    def domains(self) -> dict[str, int]:
        rc, out = sh(["xl", "list"], timeout=60)
        doms = {}
        for line in out.splitlines()[1:]:
            f = line.split()
            if len(f) >= 2 and f[1].isdigit():
                doms[f[0]] = int(f[1])
        return doms

    def console_log(self, name: str) -> str:
        try:
            return (self.console / f"guest-{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def console_text(self, name: str) -> str:
        """All console output of domain `name`, also from the time it was `name--incoming`
        (xenconsoled names a log after the domain's name when it first sees it)."""
        return "".join(self.console_log(n) for n in (f"{name}--incoming", name))

    def xl(self, *args, timeout=240) -> tuple[int, str]:
        rc, out = sh(["xl", *args], timeout=timeout)
        dlog(f"xl {' '.join(args)}: rc={rc}\n{out}")
        return rc, out

    def tvdctl(self, *args, timeout=240) -> tuple[int, str]:
        argv = [str(Path(sys.executable).parent / "tvdctl"), *args]
        if not Path(argv[0]).exists():
            argv = [sys.executable, "-c", "import sys; from xen_tvd.cli.tvdctl import main; "
                    "sys.exit(main())", *args]
        rc, out = sh(argv, timeout=timeout)
        dlog(f"tvdctl {' '.join(args)}: rc={rc}\n{out}")
        return rc, out

    def proxy_vifs(self) -> dict[str, dict]:
        """ifname -> the proxy's record of every vif it admitted."""
        return {v["ifname"]: v for v in self.proxy("status").get("vifs", [])}

    def write_cfg(self, name: str, vifs: list[str], cmdline: str, memory: int = 160, tools: bool = False) -> Path:
        """An xl config for a PV domU with the tier's kernel and initramfs, written at run time
        (for scenario files; the work dir is read-only): `vifs` are xl vif specs, `cmdline` is
        appended to the kernel's (tvd_ip=, tvd_ip1=, tvd_onlink=, tvd_peers=, tvd_via=,
        tvd_forward=, tvd_counters=, tvd_traffic=, see DOMU_INIT). `tools`: the initramfs with
        perl and /bin/tvd-traffic (needed by tvd_traffic=)."""
        ramdisk = self.work / ("domu-initramfs-tools.gz" if tools else "domu-initramfs.gz")
        d = Path("/run/xentier/cfg")
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{name}.cfg"
        p.write_text("\n".join([
            "# generated at run time by tvd_testing.xentier.Dom0.write_cfg", f'name = "{name}"', 'type = "pv"',
            f'kernel = "{self.work / "domu-vmlinuz"}"', f'ramdisk = "{ramdisk}"',
            f'extra = "console=hvc0 loglevel=4 tvd_name={name} {cmdline}"', f"memory = {memory}", "vcpus = 1",
            'on_crash = "destroy"', "vif = [" + ", ".join(repr(v) for v in vifs) + "]"]) + "\n")
        return p

    def create(self, name: str) -> tuple[int, str, float]:
        how = GUESTS[name][3]
        cfg = str(self.work / f"{name}.cfg")
        if how == "tvdctl":
            argv = [str(Path(sys.executable).parent / "tvdctl"), "xl", "create", cfg]
            if not Path(argv[0]).exists():
                argv = [sys.executable, "-c", "import sys; from xen_tvd.cli.tvdctl import main; "
                        "sys.exit(main())", "xl", "create", cfg]
        else:
            argv = ["xl", "create", cfg]
        t = time.monotonic()
        rc, out = sh(argv, timeout=300)
        dt = time.monotonic() - t
        dlog(f"create {name}: rc={rc} in {dt:.1f}s\n{out}")
        return rc, out, dt

    def vif_facts(self, domid: int, devid: int = 0) -> dict:
        be = f"/local/domain/0/backend/vif/{domid}/{devid}"
        ifname = f"vif{domid}.{devid}"
        link = self.links().get(ifname, {})
        return {"offloads": self.offloads(ifname), "backend": self.xs_ls(be), "frontend_mtu": self.xs_read(f"/local/domain/{domid}/device/vif/{devid}/mtu"),
                "hotplug_status": self.xs_read(f"{be}/hotplug-status"), "ifname": ifname,
                "master": link.get("master"), "mtu": link.get("mtu"),
                "operstate": link.get("operstate")}

    def offloads(self, ifname: str) -> dict[str, str]:
        _, offl = sh(["ethtool", "-k", ifname], timeout=30)
        return {l.split(":")[0].strip(): l.split(":", 1)[1].strip()
                for l in offl.splitlines()[1:] if ":" in l}

    # scenarios ----------------------------------------------------------------------------
    def positive(self, sc: Scenario) -> None:
        # the two alpha guests through tvdctl (registration + tvd="alpha"), beta with plain xl
        import concurrent.futures as cf
        with cf.ThreadPoolExecutor(3) as ex:
            futs = {n: ex.submit(self.create, n) for n in ("alpha1", "alpha2", "beta")}
            for n, f in futs.items():
                rc, out, dt = f.result()
                sc.facts[f"create_{n}_seconds"] = dt
                sc.check(f"create-{n}", rc == 0, f"rc={rc}: {out}")
        doms = self.domains()
        sc.facts["domains"] = doms
        self.domids = {n: doms[n] for n in ("alpha1", "alpha2", "beta") if n in doms}
        status = {n: self.xs_read(f"/local/domain/0/backend/vif/{d}/0/hotplug-status")
                  for n, d in self.domids.items()}
        sc.check("hotplug-connected", len(status) == 3 and all(v == "connected" for v in status.values()),
                 status)
        masters = {n: self.links().get(f"vif{d}.0", {}).get("master") for n, d in self.domids.items()}
        want = {"alpha1": "tvd-alpha", "alpha2": "tvd-alpha", "beta": "tvd-beta"}
        sc.check("attached-to-tvd-bridge", masters == want, f"masters {masters}, want {want}")
        sc.facts["vifs"] = {n: self.vif_facts(d) for n, d in self.domids.items()}
        sc.facts["proxy_status"] = self.proxy("status")
        # guests: up, then one full ping round that started after all three were up
        t_up = time.monotonic()
        up = {}
        while time.monotonic() - t_up < 180:
            up = {n: re.search(r"@@guest up .*", self.console_log(n)) for n in self.domids}
            if len(up) == 3 and all(up.values()):
                break
            time.sleep(2)
        sc.facts["guest_up"] = {n: m.group(0) if m else None for n, m in up.items()}
        sc.facts["guest_up_wait_seconds"] = time.monotonic() - t_up
        if not sc.check("guests-up", len(up) == 3 and all(up.values()), sc.facts["guest_up"]):
            sc.facts["consoles"] = {n: self.console_log(n)[-3000:] for n in self.domids}
            return
        offsets = {n: len(self.console_log(n)) for n in self.domids}
        ip = {n: GUESTS[n][0] for n in self.domids}
        alpha_ok = {}
        t_r = time.monotonic()
        rounds_seen = {n: [] for n in self.domids}
        while time.monotonic() - t_r < 240:
            for n in self.domids:
                rounds_seen[n] = _full_rounds(self.console_log(n)[offsets[n]:])
            a1 = [r.get(ip["alpha2"]) for r in rounds_seen["alpha1"]]
            a2 = [r.get(ip["alpha1"]) for r in rounds_seen["alpha2"]]
            alpha_ok = {"alpha1->alpha2": 1 in a1, "alpha2->alpha1": 1 in a2}
            enough = all(len(v) >= 1 for v in rounds_seen.values())
            if enough and all(alpha_ok.values()):
                break
            if all(len(v) >= 3 for v in rounds_seen.values()):
                break
            time.sleep(2)
        sc.facts["rounds_after_up"] = rounds_seen
        sc.facts["ping_wait_seconds"] = time.monotonic() - t_r
        all_rounds = {n: _full_rounds(self.console_log(n)) for n in self.domids}
        sc.facts["all_rounds"] = all_rounds
        sc.check("alpha-reach-each-other", alpha_ok and all(alpha_ok.values()),
                 f"{alpha_ok}; rounds after all were up: {rounds_seen}")
        beta_hits = [r for r in all_rounds["beta"] if 1 in r.values()]
        sc.check("beta-reaches-neither", bool(all_rounds["beta"]) and not beta_hits,
                 f"beta rounds with a reply: {beta_hits} of {len(all_rounds['beta'])}")
        alpha_to_beta = [(n, r) for n in ("alpha1", "alpha2") for r in all_rounds[n] if r.get(ip["beta"]) == 1]
        sc.check("alpha-never-reach-beta", bool(all_rounds["alpha1"]) and not alpha_to_beta, alpha_to_beta)
        # vif tx checksum offload as each TVD's policy says after the frontend connected
        # (netback re-evaluates features then, see dataplane/offload.py): on by default
        # (alpha1), off where the TVD opts out (beta: `tx-checksum-offload: false`) or the VM
        # does (alpha2: tvd_tx_checksum_offload = 0, VM_CSUM_OPT_OUT), including not merely
        # "off [requested on]", which netback turns on at frontend connect
        csum, wrong = {}, {}
        for n, dom in self.domids.items():
            offl = self.offloads(f"vif{dom}.0")
            got = {k: v for k, v in offl.items() if k.startswith("tx-checksum") and not v.endswith("[fixed]")}
            want_on = TX_CSUM_ON[GUESTS[n][2]] and n not in VM_CSUM_OPT_OUT
            csum[f"vif{dom}.0 ({n}, want {'on' if want_on else 'off'})"] = got
            ok = (offl.get("tx-checksumming", "").startswith("on") if want_on
                  else bool(got) and all(v.startswith("off") and "requested on" not in v for v in got.values()))
            if not ok:
                wrong[n] = got
        sc.facts["tx_csum_after_guest_up"] = csum
        sc.check("tx-csum-after-frontend-connect", len(csum) == 3 and not wrong,
                 f"wrong: {wrong}; all: {csum}")
        # control: beta's frames did reach its backend (so its silence is isolation, not a dead NIC)
        rx = _read_int(f"/sys/class/net/vif{self.domids['beta']}.0/statistics/rx_packets")
        sc.check("beta-transmitted", rx > 0, f"vif{self.domids['beta']}.0 rx_packets={rx}")

    def attach(self, sc: Scenario) -> None:
        d = self.domids.get("alpha1")
        if d is None:
            sc.error = "alpha1 is not running (positive scenario failed)"
            return
        t = time.monotonic()
        rc, out = sh(["xl", "network-attach", "alpha1", f"mac={ATTACH_MAC}", "bridge=tvd:alpha",
                      "script=vif-tvd"], timeout=180)
        sc.facts["network_attach_seconds"] = time.monotonic() - t
        sc.check("network-attach", rc == 0, f"rc={rc}: {out}")
        devid = 1
        rc2, lst = sh(["xl", "network-list", "alpha1"], timeout=60)
        sc.facts["network_list"] = lst
        for line in lst.splitlines()[1:]:
            f = line.split()
            if len(f) > 2 and f[2] == ATTACH_MAC:
                devid = int(f[0])
        facts = self.vif_facts(d, devid)
        sc.facts["attached_vif"] = facts
        sc.check("attach-connected", facts["hotplug_status"] == "connected", facts["hotplug_status"])
        st = self.proxy("status")
        known = [v for v in st.get("vifs", []) if v["ifname"] == f"vif{d}.{devid}"]
        sc.check("attach-on-alpha-bridge", facts["master"] == "tvd-alpha" and known and known[0]["tvd"] == "alpha",
                 f"master={facts['master']} proxy={known}")
        t = time.monotonic()
        rc, out = sh(["xl", "network-detach", "alpha1", str(devid)], timeout=180)
        sc.facts["network_detach_seconds"] = time.monotonic() - t
        sc.check("network-detach", rc == 0, f"rc={rc}: {out}")
        gone = None
        for _ in range(30):
            st = self.proxy("status")
            still = [v for v in st.get("vifs", []) if v["ifname"] == f"vif{d}.{devid}"]
            gone = f"vif{d}.{devid}" not in self.vif_ports() and not still
            if gone:
                break
            time.sleep(1)
        sc.check("detach-gone", gone, f"ports {self.vif_ports()} proxy {st.get('vifs')}")
        # beta is unregistered; alpha requires signed-kernel: the hot-attach must be refused
        b = self.domids.get("beta")
        before = self.vif_ports()
        rc, out = sh(["xl", "network-attach", "beta", f"mac={ATTACH_DENIED_MAC}", "bridge=tvd:alpha",
                      "script=vif-tvd"], timeout=180)
        sc.facts["attach_denied_output"] = out
        sc.check("attach-denied-fails", rc != 0, f"rc={rc}: {out}")
        sc.check("attach-denied-error-text", "admission denied" in out and "vif-tvd online" in out, out)
        after = self.vif_ports()
        new = {k: v for k, v in after.items() if k.startswith(f"vif{b}.") and k != f"vif{b}.0"}
        sc.check("attach-denied-not-attached", not new and after.get(f"vif{b}.0") == "tvd-beta",
                 f"before {before} after {after}")
        # a TVD the policy does not define: xl shows vif-tvd's hotplug-error, beta keeps its vif.
        # On beta, not alpha1: libxl keeps a refused NIC in the domain's stored config, and a
        # later save, migration or reboot of alpha1 would re-create it (docs/test-tiers.md)
        before = self.vif_ports()
        rc, out = sh(["xl", "network-attach", "beta", f"mac={ATTACH_UNKNOWN_MAC}", "bridge=tvd:nosuch",
                      "script=vif-tvd"], timeout=180)
        sc.facts["attach_unknown_output"] = out
        sc.check("attach-unknown-fails", rc != 0, f"rc={rc}: {out}")
        sc.check("attach-unknown-error-text", "unknown TVD 'nosuch'" in out and "vif-tvd online" in out, out)
        after = self.vif_ports()
        st = self.proxy("status")
        new = {k: v for k, v in after.items() if k.startswith(f"vif{b}.") and k != f"vif{b}.0"}
        pv = [v for v in st.get("vifs", []) if v.get("domid") == b and v["ifname"] != f"vif{b}.0"]
        sc.check("attach-unknown-not-attached", not new and not pv and after.get(f"vif{b}.0") == "tvd-beta",
                 f"before {before} after {after}; proxy {pv}")

    def negative(self, sc: Scenario, name: str, text: str) -> None:
        rc, out, dt = self.create(name)
        sc.facts["xl_create_seconds"] = dt
        sc.facts["xl_output"] = out
        sc.check("create-fails", rc != 0, f"rc={rc}: {out}")
        sc.check("hotplug-error-text", text in out and "vif-tvd online" in out, f"want {text!r} in: {out}")
        doms = self.domains()
        sc.check("no-domain-left", name not in doms, doms)
        known = set(self.domids.values()) | {0}
        ports = self.vif_ports()
        foreign = {k: v for k, v in ports.items()
                   if int(k[3:].split(".")[0]) not in known}
        st = self.proxy("status")
        pv = [v for v in st.get("vifs", []) if v.get("domid") not in known]
        sc.check("no-vif-attached", not foreign and not pv, f"ports {ports}; proxy vifs {pv}")

    def destroy(self, sc: Scenario) -> None:
        doms = self.domains()
        ok = True
        out_all = ""
        t = time.monotonic()
        for n in doms:
            if n != "Domain-0":
                rc, out = sh(["xl", "destroy", n], timeout=180)
                ok &= rc == 0
                out_all += f"{n}: rc={rc} {out}\n"
        sc.facts["destroy_seconds"] = time.monotonic() - t
        sc.check("destroy", ok, out_all)
        time.sleep(1)
        doms = self.domains()
        sc.check("no-domains-left", list(doms) == ["Domain-0"], doms)
        ports = {}
        for _ in range(30):
            ports = self.vif_ports()
            if not ports:
                break
            time.sleep(1)
        sc.check("no-vif-ports", not ports, ports)
        st = {}
        for _ in range(30):
            st = self.proxy("status")
            if not st.get("vifs"):
                break
            time.sleep(1)
        sc.check("proxy-has-no-vifs", not st.get("vifs"), st.get("vifs"))
        be = self.xs_ls("/local/domain/0/backend/vif")
        sc.check("no-backend-vifs", "hotplug-status" not in be, be)
        bridges = []
        for _ in range(40):
            bridges = [n for n, d in self.links().items() if n.startswith("tvd-")]
            if not bridges:
                break
            time.sleep(1)
        sc.facts["final_links"] = sorted(self.links())
        sc.check("vswitches-removed", not bridges, f"left after the segment grace: {bridges}")


def _full_rounds(text: str) -> list[dict[str, int]]:
    """[{peer: 0|1}] of every round with both a start and an end marker in `text`."""
    rounds, cur = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("@@round-start"):
            cur = {}
        elif line.startswith("@@ping") and cur is not None:
            f = line.split()
            if len(f) >= 4:
                cur[f[2]] = int(f[3])
        elif line.startswith("@@round-end") and cur is not None:
            rounds.append(cur)
            cur = None
    return rounds


def _read_int(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return -1


def files_read_from_9p() -> dict[str, list[str]]:
    """Files mapped by dom0's processes that live on the 9p root share (not on the snapshot
    image or tmpfs): what would still be read over 9p. Evidence for docs/test-tiers.md."""
    try:
        root_dev = os.stat("/").st_dev
    except OSError:
        return {}
    out: dict[str, set] = {}
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            comm = Path(maps).with_name("comm").read_text().strip()
            lines = Path(maps).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            f = line.split(None, 5)
            if len(f) == 6 and f[5].startswith("/"):
                try:
                    if os.stat(f[5]).st_dev == root_dev:
                        out.setdefault(f[5], set()).add(comm)
                except OSError:
                    pass
    return {k: sorted(v) for k, v in sorted(out.items())}


class SwiotlbSampler:
    """Samples /sys/kernel/debug/swiotlb/io_tlb_used (slabs of Xen's swiotlb bounce buffer in
    use) while the scenarios run: > 0 means DMA is being bounced."""
    PATH = "/sys/kernel/debug/swiotlb/io_tlb_used"

    def __init__(self):
        import threading
        self.max = self.samples = self.nonzero = 0
        self.available = os.path.exists(self.PATH)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        if self.available:
            self.thread.start()

    def _run(self):
        while not self.stop.wait(0.5):
            v = _read_int(self.PATH)
            self.samples += 1
            self.nonzero += v > 0
            self.max = max(self.max, v)

    def report(self) -> dict:
        self.stop.set()
        nslabs = _read_int("/sys/kernel/debug/swiotlb/io_tlb_nslabs")
        return {"available": self.available, "io_tlb_nslabs": nslabs, "io_tlb_used_max": self.max,
                "samples": self.samples, "samples_nonzero": self.nonzero}


def dom0_main(work: Path, results: Path, scenarios, files=()) -> int:
    out = {"scenarios": {}, "host": socket.gethostname(), "mapped_from_9p": {}}
    registry = load_scenarios(files)
    path = results / "results.json"
    swiotlb = SwiotlbSampler()

    def save():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1, default=str))
        os.replace(tmp, path)

    d = Dom0(work, results)
    try:
        out["proxy_wait_seconds"] = d.wait_proxy()
        dlog(f"proxy up after {out['proxy_wait_seconds']:.1f}s")
    except RuntimeError as e:
        out["error"] = str(e)
        for s in scenarios:
            out["scenarios"][s] = {"checks": [], "error": str(e), "seconds": 0}
        save()
        return 1
    rc, info = sh(["xl", "info"], timeout=60)
    out["xl_info"] = info
    for s in scenarios:
        sc = Scenario(s)
        dlog(f"=== scenario {s}")
        try:
            registry[s].run(d, sc)
        except Exception as e:   # report and go on: later scenarios still tell something
            import traceback
            sc.error = f"{type(e).__name__}: {e}"
            dlog(traceback.format_exc())
        out["scenarios"][s] = sc.to_json()
        dlog(f"=== scenario {s} done in {out['scenarios'][s]['seconds']:.1f}s")
        out["mapped_from_9p"][s] = files_read_from_9p()
        out["swiotlb"] = swiotlb.report() if s == scenarios[-1] else None
        dlog(f"mapped from 9p after {s}: {out['mapped_from_9p'][s]}")
        save()
    dlog(f"swiotlb: {out.get('swiotlb')}")
    bad = failures(out, scenarios, files)
    for b in bad:
        dlog("FAILED", b)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dom0"]:
        ap = argparse.ArgumentParser(prog="xentier dom0", description="(runs inside dom0)")
        ap.add_argument("--work", required=True, type=Path)
        ap.add_argument("--results", required=True, type=Path)
        ap.add_argument("--scenarios", required=True)
        ap.add_argument("--scenario-file", action="append", default=[], type=Path)
        a = ap.parse_args(argv[1:])
        return dom0_main(a.work, a.results, a.scenarios.split(","), a.scenario_file)
    ap = argparse.ArgumentParser(
        prog="tvdctl-xentest",
        description="Boot Xen 4.17 + a PV dom0 under qemu (TCG), start tvd-proxy and vif-tvd there, "
                    "and run real xl scenarios with PV domUs (tier 3).")
    ap.add_argument("--results", default="xentier-results", help="directory for results.json, serial.log, "
                    "driver.log, proxy.log, console/ (default: ./xentier-results)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, run in this order in one boot (default: {','.join(SCENARIOS)})")
    ap.add_argument("--scenario-file", action="append", default=[], metavar="PY",
                    help="a scenario file (tvd_testing/xenscenario.py; docs/test-tiers.md) whose "
                         "scenarios --scenarios may name; repeatable")
    ap.add_argument("--kernel", help="dom0/domU vmlinuz (default: newest /boot/vmlinuz-6.1.0-*-amd64)")
    ap.add_argument("--hypervisor", help="Xen 4.17 to boot, xen.gz or ELF (default: the build of "
                    f"scripts/build-xen-shadow, {SHADOW_XEN}, which live migration needs, when it "
                    "is there, else the newest /boot/xen-4.17*-amd64.gz)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before qemu is killed")
    ap.add_argument("--quiet", action="store_true", help="do not stream the serial console")
    a = ap.parse_args(argv)
    # a SIGTERM (CI job cancelled) must still kill qemu: run()'s finally does it
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        res = run(tuple(s for s in a.scenarios.split(",") if s), results_dir=a.results, kernel=a.kernel,
                  timeout=a.timeout, echo=None if a.quiet else print, scenario_files=a.scenario_file,
                  hypervisor=a.hypervisor)
    except MissingPrerequisite as e:
        print(f"tvdctl-xentest: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"tvdctl-xentest: {e}", file=sys.stderr)
        return 2
    print(res.summary())
    print(f"results: {res.results_dir} (results.json, serial.log, driver.log, proxy.log, console/)")
    if res.returncode:
        print(res.log_tail(40))
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
