"""Tier 2: run a pytest selection inside a stock Debian kernel (linux-image-amd64) under qemu.

    python -m tvd_testing.vmtier [--kernel K] [--results DIR] [-- PYTEST-ARGS]
    tvdctl-vmtest ...                        (the same, as a console script)

How it works (see docs/test-tiers.md):
- virtme-ng (`vng`, PyPI) boots the kernel under qemu TCG (no KVM needed) with the host root
  shared read-only over 9p, and a results directory shared read-write (--rwdir).
- Python imports over 9p under emulation are very slow (every stat is a 9p round trip through
  an emulated virtio device), so the harness first snapshots the interpreter's stdlib and the
  project tree (with its .venv) into a read-only ext4 image (`mke2fs -d`, no root mounts on
  the host), attaches it as a virtio disk, and the guest bind-mounts each snapshot over its
  original path. Paths stay identical; only the bytes come from the page cache.
- Inside, a generated script loads the kernel modules, runs pytest with the project's own
  interpreter and writes junit XML, a log and the exit code into the results directory.
  PYTHONDONTWRITEBYTECODE is set (read-only root); pytest's cache and tmp point at writable
  places.
- The harness returns a VmResult: exit code, failed test names, timings, log tail.

Missing prerequisites raise MissingPrerequisite with the exact package to install.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

# What the tier runs by default (also what tests/vm/test_stock_kernel_tier.py runs): the VLAN
# transport (no 8021q on the host kernel) and one test per attack kind of port security and the
# underlay filter, on 6.1 with br_netfilter loaded. Each dishonest-VM lab costs ~60 s under
# emulation, so the rest of those files (ruleset bookkeeping, honest pings, reload atomicity)
# stays in tier 1; `tvdctl-vmtest -- tests/dataplane/test_port_security.py
# tests/dataplane/test_underlay_filter.py` runs them all here (~8 min inner).
DEFAULT_SELECTION = (
    "tests/dataplane/test_vlan.py",
    "tests/dataplane/test_vlan_e2e.py",
    # 21 forged-frame kinds (MAC/IPv4/IPv6/ARP/ND spoofing, VLAN tags, DHCP/DHCPv6/RA servers,
    # other ethertypes) + 8 honest controls, from one dishonest VM to every VM of two TVDs
    "tests/dataplane/test_port_security.py::test_dishonest_vm_gets_no_forbidden_frame_onto_any_tvd",
    # a vif that declared no addresses: no IP source passes (fail closed)
    "tests/dataplane/test_port_security.py::test_vif_that_declared_no_addresses_fails_closed",
    # the eBPF port security on 6.1's verifier: every attack and control frame run through the
    # program by the kernel, header parsing, the flood limit, a real veth's ingress (~15 s)
    "tests/dataplane/bpf/test_portsec.py",
    # forged VXLAN from a rogue underlay host, unicast and to the groups, with a no-filter control
    "tests/dataplane/test_underlay_filter.py::test_forged_vxlan_from_the_underlay_is_dropped_before_decapsulation",
    # the 802.1Q lab (VLAN segments next to VXLAN, routed gamma -> delta): uplinks per TVD,
    # NIC VLAN offloads, `tvdctl lab verify`'s exact matrix, floods with every foreign VID
    "tests/lab/test_vlan_lab.py::test_vlan_lab_transport_per_tvd_and_nic_offloads",
    "tests/lab/test_vlan_lab.py::test_vlan_lab_exact_reachability_matrix",
    "tests/lab/test_vlan_lab.py::test_vlan_lab_floods_reach_no_other_tvd",
    # routed inter-TVD flows through the stateful filter (br_netfilter, conntrack zones), on
    # one rig: every probe of the open/controlled/closed matrix, answers routed by the other
    # host (asymmetric paths of the anycast gateway), and the receiver host's half alone
    "tests/dataplane/test_routed_flows.py::test_matrix_then_answers_routed_by_the_other_host_then_receiver_half_alone",
    # nothing a VM sends reaches Dom0's own stack (bridge input hook by device group), and a
    # VM's storm: broadcast at the flood limit, unknown unicast to no pinned vif
    "tests/dataplane/test_host_guard.py::test_no_vm_frame_reaches_dom0s_stack",
    "tests/dataplane/test_storm.py::test_one_vms_storm_reaches_its_peers_at_the_flood_limit_and_other_tvds_not_at_all",
    # the host's WireGuard device (no wireguard module on tier 1's kernel): probe, keys, peers
    # as planned, the largest DF packet, nothing but WireGuard on the wire, re-key, revocation
    "tests/dataplane/test_wireguard.py",
    # key rotation under a 10 ms ping: both keys accepted, the switch, the old key retired and
    # refused afterwards (~50 s inner)
    "tests/dataplane/test_wireguard_rotation.py",
    # the WireGuard transport: the encrypted TVD over an underlay trusted for nothing, next to
    # a plain one; matrix, largest DF packet, sniffer on the underlay, spoofing rogue
    "tests/dataplane/test_wireguard_e2e.py::test_encrypted_tvd_over_an_untrusted_underlay",
    # the WireGuard lab through `tvdctl lab up`/`verify`: uplinks, MTUs, the exact matrix
    "tests/lab/test_wireguard_lab.py::test_wireguard_lab_uplinks_mtus_and_exact_matrix",
)
# Node ids containing these must not skip inside the VM: the kernel there has what they need.
DEFAULT_FORBID_SKIP = ("vlan", "port_security", "underlay_filter", "routed_flows", "host_guard",
                       "storm", "wireguard")
# br_netfilter is loaded on purpose: real Dom0s often have it (Docker, libvirt), and it changes
# how bridge-family nft chains are traversed on 6.1 (see ../shared/notes/test-tiers.md).
DEFAULT_MODULES = ("8021q", "vxlan", "bridge", "br_netfilter", "veth", "nf_tables",
                   "nft_chain_nat", "nf_conntrack", "nft_ct", "nft_reject_bridge", "sch_ingress",
                   "ip_gre", "macvlan", "wireguard")
MARK = "@@vmtier"
# inner tests named in the summary with their seconds (CI's log shows it: scripts/test -rP)
SLOWEST_SHOWN = 12
# seconds the guest's proxy clients wait for an answer (TVD_PROXY_TIMEOUT): a lab's vif-online
# converges a host (bridge, uplink, nft tables, eBPF program) on two emulated vCPUs with tier 1
# running beside the emulator; with 30, CI of e0a5ba1 saw two of the VLAN lab's eight attaches
# give up while the proxy was still at work (tier 3 sets its own, xentier.py)
PROXY_TIMEOUT = 120
# seconds a lab waits for the daemons it starts (XEN_TVD_LAB_START_TIMEOUT, default 30): four
# lab proxies importing Python on two emulated vCPUs, with tier 1 running beside the emulator
# (scripts/test), gave no answer within 30 s and `lab up` failed
LAB_START_TIMEOUT = 180
# seconds before the VM is killed: the default selection's inner pytest took 822-1209 s and,
# with tier 1 beside it on a slow day, 1440 s (all 30 passed; killed at 1500 before the summary)
VM_TIMEOUT = 2400
# Two virtio-net NICs on a qemu hub of their own (no host backend, so nothing leaves qemu):
# a wire between two NICs with a real driver, for the VLAN tests (offloads, VLAN filter, the
# driver's tagging). The guest finds them by MAC and exports their names in TVD_VM_WIRE.
WIRE_MACS = ("52:54:00:7d:00:01", "52:54:00:7d:00:02")
WIRE_QEMU_OPTS = [opt for i, m in enumerate(WIRE_MACS)
                  for opt in ("-netdev", f"hubport,id=tvdwire{i},hubid=7",
                              "-device", f"virtio-net-pci,netdev=tvdwire{i},mac={m}")]


class MissingPrerequisite(RuntimeError):
    """A package this tier needs is not installed; the message names it."""


@dataclass
class VmResult:
    returncode: int
    results_dir: Path
    log: Path
    junit: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    kernel: str = ""
    # the inner tests' seconds, slowest first (from junit): where the tier's time goes
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def summary(self) -> str:
        t = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        c = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        s = f"vmtier: kernel {self.kernel}: exit {self.returncode}; {c or 'no junit'}; {t}"
        if self.slowest:
            s += "\nslowest inside the VM:\n  " + "\n  ".join(
                f"{sec:6.1f}s {name}" for sec, name in self.slowest[:SLOWEST_SHOWN])
        if self.failures:
            s += "\nfailed inside the VM:\n  " + "\n  ".join(self.failures)
        return s


# --- prerequisites ----------------------------------------------------------------------

def find_kernel(explicit: str | None = None) -> Path:
    """The stock Debian 6.1 kernel (with its modules installed on this root)."""
    cand = explicit or os.environ.get("TVD_VM_KERNEL")
    if cand:
        paths = [Path(cand)]
    else:
        def ver(p):
            return [int(x) if x.isdigit() else x for x in re.split(r"[.-]", p)]
        paths = [Path(p) for p in sorted(glob.glob("/boot/vmlinuz-6.1.0-*-amd64"), key=ver, reverse=True)]
    for p in paths:
        release = p.name.removeprefix("vmlinuz-")
        if p.is_file() and Path("/lib/modules", release, "modules.dep").is_file():
            return p
    if cand:
        raise MissingPrerequisite(f"kernel {cand} not found or /lib/modules/<release> missing")
    raise MissingPrerequisite("no Debian 6.1 kernel in /boot (vmlinuz-6.1.0-*-amd64 with its "
                              "/lib/modules): apt-get install linux-image-amd64")


def find_vng() -> Path:
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return here
    w = shutil.which("vng")
    if w:
        return Path(w)
    raise MissingPrerequisite("virtme-ng's vng not found next to this Python or on PATH: "
                              f"{sys.executable} -m pip install virtme-ng (or pip install -e '.[test]')")


def check_prerequisites(kernel: str | None = None) -> tuple[Path, Path]:
    k = find_kernel(kernel)
    v = find_vng()
    for tool, pkg in (("qemu-system-x86_64", "apt-get install --no-install-recommends qemu-system-x86"),
                      ("mke2fs", "apt-get install e2fsprogs")):
        if not shutil.which(tool):
            raise MissingPrerequisite(f"{tool} not found: {pkg}")
    if os.geteuid() != 0:
        raise MissingPrerequisite("the VM tier runs as root (network namespaces in the guest)")
    return k, v


# --- snapshot image ---------------------------------------------------------------------

_IGNORE_ALWAYS = {".git", ".pytest_cache", ".benchmarks", ".hypothesis", ".mypy_cache"}
_IGNORE_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
                  "dist-packages"}


def snapshot_units(python: str, project: Path) -> list[Path]:
    """Host directories the guest reads all the time: stdlib, venv, project (non-nested)."""
    out = subprocess.run([python, "-c", "import sys, sysconfig; print(sysconfig.get_paths()['stdlib']);"
                          "print(sys.prefix)"], capture_output=True, text=True, check=True).stdout.split("\n")
    units = [Path(out[0]).resolve(), Path(out[1]), project.resolve()]
    units = [u for u in units if u.is_dir()]
    # the interpreter binary and its shared libraries (a pyenv libpython is 23 MB): page
    # faults on them over 9p cost ~20 s per interpreter start under emulation
    exe = Path(shutil.which(python) or python).resolve()
    units.append(exe)
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    for m in re.finditer(r"=> (/\S+) \(", ldd):
        units.append(Path(m.group(1)).resolve())
    # drop a unit nested in another (it is copied with its parent)
    keep = []
    for u in units:
        if not any(u != o and o in u.parents for o in units) and u not in keep:
            keep.append(u)
    return keep


def _hardlink_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_image(image: Path, units: list[Path], exclude: list[Path], python: str) -> None:
    """Read-only ext4 image: u0/, u1/, ... = snapshots of `units` (symlinks kept)."""
    stage = Path(tempfile.mkdtemp(prefix="vmtier-stage-", dir=image.parent))
    try:
        ex = {e.resolve() for e in exclude}
        for i, unit in enumerate(units):
            if unit.is_file():
                shutil.copy2(unit, stage / f"u{i}")
                continue
            is_stdlib = (unit / "os.py").exists()

            def ignore(d, names, unit=unit, is_stdlib=is_stdlib):
                skip = {n for n in names if n in _IGNORE_ALWAYS or (Path(d, n).resolve() in ex)}
                if is_stdlib and Path(d) == unit:
                    skip |= {n for n in names if n in _IGNORE_STDLIB}
                return skip

            shutil.copytree(unit, stage / f"u{i}", symlinks=True, ignore=ignore,
                            copy_function=_hardlink_or_copy)
            for e in ex:  # keep excluded dirs as empty mount points (the results dir)
                if unit in e.parents:
                    (stage / f"u{i}" / e.relative_to(unit)).mkdir(parents=True, exist_ok=True)
            # bytecode the guest would otherwise compile under emulation, every run
            subprocess.run([python, "-m", "compileall", "-q", "-j0", "-d", str(unit), str(stage / f"u{i}")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        size = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file() and not f.is_symlink())
        mb = int(size * 1.3 / 2**20) + 64
        if image.exists():
            image.unlink()
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "tvdvm",
                        "-E", "root_owner=0:0", "-d", str(stage), str(image), f"{mb}M"],
                       check=True, capture_output=True, text=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# --- guest script -----------------------------------------------------------------------

GUEST_SCRIPT = r"""#!/bin/bash
# Generated by tvd_testing.vmtier; runs as the guest's init command.
set -u
R={results}
echo "{mark} boot-done $(cut -d' ' -f1 /proc/uptime)"
echo "{mark} kernel $(uname -r)"
modprobe -a {modules} || echo "{mark} warning: some modules did not load"
for m in {modules}; do grep -q "^$m " /proc/modules || [ -d /sys/module/$m ] || echo "{mark} module $m: not loaded"; done
if [ -n "{image}" ]; then
    modprobe -a virtio_blk ext4
    mkdir -p /run/vmtier/img
    mount -t ext4 -o ro,noload /dev/vda /run/vmtier/img || {{ echo "{mark} cannot mount snapshot image"; exit 97; }}
    mkdir -p /run/vmtier/results && mount --bind "$R" /run/vmtier/results
{binds}
    # a results dir inside a snapshotted tree is now hidden under the image: put it back
    [ -e "$R/guest.sh" ] || mount --bind /run/vmtier/results "$R" || {{ echo "{mark} results dir hidden"; exit 97; }}
fi
modprobe virtio_net 2>/dev/null
wire=""
for mac in {wire_macs}; do
    for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$mac" ] && wire="$wire ${{d##*/}}"; done
done
export TVD_VM_WIRE="${{wire# }}"
echo "{mark} wire NICs: $TVD_VM_WIRE"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TMPDIR=/tmp HOME=/tmp CI="${{CI:-}}"
# clients that stand in for vif-tvd (the labs' attach) wait as long as tier 3's vif-tvd: a
# TVD's first vif-online (bridges, nftables tables, router) takes 10-12 s under TCG with four
# lab proxies on two vCPUs, and the 10 s default made `lab up` fail (docs/test-tiers.md)
export TVD_PROXY_TIMEOUT={proxy_timeout} XEN_TVD_LAB_START_TIMEOUT={lab_start_timeout}
export PATH={pathprefix}:/usr/sbin:/usr/bin:/sbin:/bin
cd {project}
echo "{mark} inner-start $(cut -d' ' -f1 /proc/uptime)"
{python} -m pytest -p tvd_testing.vmtier_plugin -p no:cacheprovider --basetemp=/tmp/vmtier-pytest \
    --junitxml="$R/junit.xml" -o junit_family=xunit1 {forbid} -q -rA {pytest_args}
rc=$?
echo "{mark} inner-end $(cut -d' ' -f1 /proc/uptime) rc=$rc"
echo $rc > "$R/rc"
exit $rc
"""


def write_guest_script(results: Path, python: str, project: Path, pytest_args: list[str],
                       forbid_skip: tuple[str, ...], modules: tuple[str, ...],
                       units: list[Path] | None) -> Path:
    binds = ""
    if units:
        binds = "\n".join(f"    mount --bind /run/vmtier/img/u{i} {shlex.quote(str(u))} || "
                          f"{{ echo '{MARK} bind {u} failed'; exit 97; }}" for i, u in enumerate(units))
    script = GUEST_SCRIPT.format(
        results=shlex.quote(str(results)), mark=MARK, modules=" ".join(modules),
        image="1" if units else "", binds=binds, project=shlex.quote(str(project)),
        wire_macs=" ".join(WIRE_MACS), proxy_timeout=PROXY_TIMEOUT, lab_start_timeout=LAB_START_TIMEOUT,
        pathprefix=shlex.quote(str(Path(python).parent)), python=shlex.quote(python),
        forbid=" ".join(f"--vm-forbid-skip={shlex.quote(f)}" for f in forbid_skip),
        pytest_args=" ".join(shlex.quote(a) for a in pytest_args))
    path = results / "guest.sh"
    path.write_text(script)
    path.chmod(0o755)
    return path


# --- run --------------------------------------------------------------------------------

def parse_junit(path: Path) -> tuple[dict[str, int], list[str]]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
        for tc in s.iter("testcase"):
            bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            if bad is not None:
                name = f"{tc.get('classname', '')}::{tc.get('name')}"
                msg = (bad.get("message") or "").splitlines()[0:1]
                failed.append(name + (f" - {msg[0][:200]}" if msg else ""))
    return counts, failed


def seconds_per_test(path: Path) -> list[tuple[float, str]]:
    """(seconds, test id) of every test case in a junit file, slowest first."""
    out = [(float(tc.get("time") or 0), f"{tc.get('classname', '')}::{tc.get('name')}")
           for tc in ET.parse(path).getroot().iter("testcase")]
    return sorted(out, key=lambda t: -t[0])


def run(pytest_args: list[str] | None = None, *, results_dir: str | Path | None = None,
        kernel: str | None = None, python: str | None = None, project: Path = PROJECT,
        memory: str = "2G", cpus: int = 2, timeout: float = VM_TIMEOUT, snapshot: bool = True,
        forbid_skip: tuple[str, ...] = DEFAULT_FORBID_SKIP, modules: tuple[str, ...] = DEFAULT_MODULES,
        echo=None) -> VmResult:
    """Boot the stock kernel, run pytest inside, return the result. `echo(line)` streams the log."""
    t_start = time.monotonic()
    kpath, vng = check_prerequisites(kernel)
    python = python or sys.executable
    pytest_args = list(pytest_args) if pytest_args else list(DEFAULT_SELECTION)
    results = Path(results_dir or tempfile.mkdtemp(prefix="vmtier-")).resolve()
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("junit.xml", "rc", "vm.log"):
        (results / stale).unlink(missing_ok=True)
    timings: dict[str, float] = {}

    units = None
    qemu_opts = []
    if snapshot:
        # the image lives outside the results dir: it is big and the guest never writes it
        image = Path(tempfile.mkdtemp(prefix="vmtier-img-")) / "snapshot.ext4"
        units = snapshot_units(python, project)
        build_image(image, units, exclude=[results, image.parent], python=python)
        qemu_opts = ["-drive", f"file={image},if=virtio,format=raw,readonly=on,cache=unsafe"]
        timings["snapshot"] = time.monotonic() - t_start
    script = write_guest_script(results, python, project, pytest_args, forbid_skip, modules, units)

    cmd = [str(vng), "-r", str(kpath), "--disable-kvm", "-m", memory, "-p", str(cpus),
           f"--rwdir={results}", "--cwd", str(project)]
    cmd.append("--qemu-opts=" + " ".join(qemu_opts + WIRE_QEMU_OPTS))
    cmd += ["--", f"bash {shlex.quote(str(script))}"]
    env = dict(os.environ)
    env["PATH"] = f"{vng.parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    log = results / "vm.log"
    t_boot = time.monotonic()
    rc = None
    with open(log, "w") as lf:
        lf.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace",
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            for line in proc.stdout:
                now = time.monotonic() - t_boot
                lf.write(f"[{now:7.1f}] {line}")
                lf.flush()
                if echo:
                    echo(line.rstrip("\n"))
                if line.startswith(MARK + " boot-done"):
                    timings["boot"] = now
                elif line.startswith(MARK + " inner-start"):
                    timings["setup"] = now - timings.get("boot", 0)
                    t_inner = now
                elif line.startswith(MARK + " inner-end"):
                    timings["inner_pytest"] = now - t_inner
                if time.monotonic() > deadline:
                    raise TimeoutError
            rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
        except (TimeoutError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            lf.write(f"\n{MARK} harness: timeout after {timeout:.0f}s, VM killed\n")
            rc = 124
        finally:
            if snapshot:
                shutil.rmtree(image.parent, ignore_errors=True)
    timings["vm_total"] = time.monotonic() - t_boot
    timings["tier_total"] = time.monotonic() - t_start
    inner_rc_file = results / "rc"
    if rc != 124 and inner_rc_file.exists():
        rc = int(inner_rc_file.read_text().strip() or 1)
    elif rc == 0:
        rc = 1  # the guest script never reported: do not call that a pass
    junit = results / "junit.xml"
    counts, failures, slowest = ({}, [], [])
    if junit.exists():
        try:
            counts, failures = parse_junit(junit)
            slowest = seconds_per_test(junit)
        except (ET.ParseError, ValueError) as e:
            failures = [f"(junit unreadable: {e})"]
    return VmResult(rc, results, log, junit if junit.exists() else None, timings, counts, failures,
                    kernel=kpath.name.removeprefix("vmlinuz-"), slowest=slowest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tvdctl-vmtest",
        description="Run a pytest selection inside Debian's stock kernel under qemu (tier 2). "
                    "Arguments after -- go to pytest inside the VM (default: "
                    + " ".join(DEFAULT_SELECTION) + ").")
    ap.add_argument("--kernel", help="vmlinuz to boot (default: newest /boot/vmlinuz-6.1.0-*-amd64)")
    ap.add_argument("--results", default="vmtier-results", help="directory for junit.xml, vm.log, rc")
    ap.add_argument("--python", help="interpreter inside the guest (default: this one)")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=VM_TIMEOUT, help="seconds before the VM is killed")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="read Python and the project over 9p (much slower imports)")
    ap.add_argument("--forbid-skip", action="append", metavar="SUBSTR",
                    help=f"node-id substring that must not skip (default: {', '.join(DEFAULT_FORBID_SKIP)})")
    ap.add_argument("--quiet", action="store_true", help="do not stream the VM's output")
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args(argv)
    try:
        res = run(a.pytest_args, results_dir=a.results, kernel=a.kernel, python=a.python,
                  memory=a.memory, cpus=a.cpus, timeout=a.timeout, snapshot=not a.no_snapshot,
                  forbid_skip=tuple(a.forbid_skip) if a.forbid_skip else DEFAULT_FORBID_SKIP,
                  echo=None if a.quiet else print)
    except MissingPrerequisite as e:
        print(f"tvdctl-vmtest: {e}", file=sys.stderr)
        return 2
    print(res.summary())
    print(f"results: {res.results_dir} (vm.log, junit.xml)")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
