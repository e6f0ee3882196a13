"""Tier-3 scenarios for a VM's life after `xl create`: migration, reboot, save/restore.

A scenario file (tvd_testing/xenscenario.py) loaded by default; they run after `positive`
(alpha1, alpha2 on TVD alpha, beta on beta, all pinging each other in rounds) in one boot.

Live migration needs shadow paging in the hypervisor (a PV domain's log-dirty mode, what live
migration tracks dirtied pages with; HVM guests, which would use HAP, do not boot under TCG).
Debian's Xen 4.17 is built without it; scripts/build-xen-shadow rebuilds it with it, and
`migrate` runs two real live migrations on that. On a hypervisor without it, `migrate-standin`
asserts how `tvdctl xl migrate` fails (the VM untouched), then drives xl's own receiving side,
`xl migrate-receive`, with a stand-in for the sending side: the stream from `xl save -p` (the
same libxl stream, sent non-live) and the sender's protocol steps (docs/test-tiers.md, "Tier 3").
"""
from __future__ import annotations

import glob
import os
import subprocess
import threading
import time
from pathlib import Path

from tvd_testing.xenscenario import scenario
from tvd_testing.xentier import GUESTS, dlog, sh

# xl's migration protocol messages (tools/xl/xl.h; sent with their terminating NUL)
RECEIVER_BANNER = b"xl migration receiver ready, send binary domain data.\n"
RECEIVER_READY = b"domain received, ready to unpause\0"
PERMISSION_TO_GO = b"domain is yours, you are cleared to unpause\0"
REPORT = b"my copy unpause results are as follows\0"
SSH_LOCAL = Path("/run/xentier/ssh-local")
SAVE_DIR = Path("/var/tmp")


def write_ssh_local() -> None:
    """The ssh stand-in `xl migrate -s` runs: drops the host argument and runs xl's receiver
    here, so a migration to localhost needs no ssh server in dom0."""
    SSH_LOCAL.parent.mkdir(parents=True, exist_ok=True)
    SSH_LOCAL.write_text("#!/bin/sh\n# xl migrate -s: the receiver runs here, not over ssh\nshift\nexec \"$@\"\n")
    SSH_LOCAL.chmod(0o755)


def ip_of(name: str) -> str:
    return GUESTS[name][0]


def console_mark(d, name: str) -> dict[str, int]:
    return {f: len(_read(f)) for f in _console_files(d, name)}


def console_since(d, name: str, mark: dict[str, int]) -> str:
    return "".join(_read(f)[mark.get(f, 0):] for f in _console_files(d, name))


def _console_files(d, name):
    # xenconsoled names the log after the domain's name when it first sees it
    return [str(d.console / f"guest-{n}.log") for n in (f"{name}--incoming", name)]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def pings(text: str, peer: str) -> list[tuple[float, int]]:
    """(guest uptime, 0|1) of every `@@ping ROUND PEER R T` line for `peer` in `text`."""
    out = []
    for line in text.splitlines():
        f = line.strip().split()
        if len(f) >= 5 and f[0] == "@@ping" and f[2] == peer:
            try:
                out.append((float(f[4]), int(f[3])))
            except ValueError:
                pass
    return out


def wait_pings_ok(d, name: str, peer: str, mark: dict, want: int = 2, timeout: float = 150) -> list:
    """Wait until `name`'s console (since mark) shows `want` successful pings to `peer` after
    its first success; return all ping results since mark."""
    t = time.monotonic()
    got = []
    while time.monotonic() - t < timeout:
        got = pings(console_since(d, name, mark), peer)
        first = next((i for i, (_, r) in enumerate(got) if r), None)
        if first is not None and len(got) - first >= want:
            break
        time.sleep(2)
    return got


def recovered(got: list) -> bool:
    """At least two pings after the first success, and none of them failed."""
    first = next((i for i, (_, r) in enumerate(got) if r), None)
    return first is not None and len(got) - first >= 2 and all(r for _, r in got[first:])


def loss(got: list) -> dict:
    """Failed pings and the outage window (guest seconds from the last success before the
    first failure to the first success after it)."""
    fails = [i for i, (_, r) in enumerate(got) if not r]
    if not fails:
        return {"failed_pings": 0, "window_seconds": 0.0, "pings": len(got)}
    before = [t for t, r in got[:fails[0]] if r]
    after = [t for t, r in got[fails[0]:] if r]
    start = before[-1] if before else got[0][0]
    end = after[0] if after else got[-1][0]
    return {"failed_pings": len(fails), "window_seconds": round(end - start, 1), "pings": len(got),
            "note": "each ping line is `ping -c 2 -W 2 -w 4`, one per round of the guest's loop"}


def vif_state(d, domid: int, devid: int = 0) -> dict:
    ifname = f"vif{domid}.{devid}"
    link = d.links().get(ifname)
    pv = d.proxy_vifs().get(ifname)
    return {"ifname": ifname, "netdev": link is not None, "master": (link or {}).get("master"),
            "hotplug": d.xs_read(f"/local/domain/0/backend/vif/{domid}/{devid}/hotplug-status"),
            "proxy_tvd": pv.get("tvd") if pv else None}


def on_tvd(st: dict, tvd: str) -> bool:
    return st["master"] == f"tvd-{tvd}" and st["hotplug"] == "connected" and st["proxy_tvd"] == tvd


def wait_gone(d, domid: int, timeout: float = 60) -> dict:
    """Wait until vif<domid>.0 is gone everywhere: netdev, proxy, backend in xenstore."""
    t = time.monotonic()
    st = {}
    while time.monotonic() - t < timeout:
        st = vif_state(d, domid)
        st["backend"] = d.xs_read(f"/local/domain/0/backend/vif/{domid}/0/state")
        if not st["netdev"] and st["proxy_tvd"] is None and st["backend"] is None:
            break
        time.sleep(1)
    return st


def gone(st: dict) -> bool:
    return not st["netdev"] and st["proxy_tvd"] is None and st.get("backend") is None


def wait_domid_change(d, name: str, old: int, timeout: float = 240) -> int | None:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        new = d.domains().get(name)
        if new is not None and new != old:
            return new
        time.sleep(1)
    return None


def wait_on_tvd(d, domid: int, tvd: str, timeout: float = 120) -> dict:
    t = time.monotonic()
    st = {}
    while time.monotonic() - t < timeout:
        st = vif_state(d, domid)
        if on_tvd(st, tvd):
            break
        time.sleep(1)
    return st


def odd_names(doms: dict) -> list[str]:
    return [n for n in doms if "--incoming" in n or "--migratedaway" in n]


# --- migration ---------------------------------------------------------------------------

def shadow_paging_built_in() -> bool | None:
    """Whether the running hypervisor has shadow paging (what PV log-dirty needs): `xl info`'s
    virt_caps names it; None if xl does not say."""
    r = subprocess.run(["xl", "info"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "virt_caps":
            return "shadow" in value.split()
    return None


class MigrationSenderStandIn:
    """Drives `xl migrate-receive` (xl's real receiving side) the way `xl migrate`'s sending
    side does, with the stream `xl save -p` wrote in place of a live one."""

    def __init__(self, stream: Path, errlog: Path):
        self.err = open(errlog, "wb")
        self.proc = subprocess.Popen(["xl", "migrate-receive"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err)
        self.out = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._send, args=(stream,), daemon=True).start()

    def _read(self):
        fd = self.proc.stdout.fileno()
        while True:
            try:
                b = os.read(fd, 4096)
            except OSError:
                return
            if not b:
                return
            with self.lock:
                self.out += b

    def _send(self, stream: Path):
        try:
            with open(stream, "rb") as f:
                while chunk := f.read(1 << 20):
                    self.proc.stdin.write(chunk)
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass   # the receiver went away: wait_for() reports it

    def wait_for(self, msg: bytes, timeout: float) -> bool:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            with self.lock:
                if msg in self.out:
                    return True
            if self.proc.poll() is not None:
                time.sleep(0.5)
                with self.lock:
                    return msg in self.out
            time.sleep(0.5)
        return False

    def go(self) -> None:
        self.proc.stdin.write(PERMISSION_TO_GO)
        self.proc.stdin.flush()

    def report(self, timeout: float = 120) -> int | None:
        """The receiver's result byte (0: domain started), None if it did not come."""
        if not self.wait_for(REPORT, timeout):
            return None
        t = time.monotonic()
        while time.monotonic() - t < 10:
            with self.lock:
                i = self.out.find(REPORT) + len(REPORT)
                if len(self.out) > i:
                    return self.out[i]
            time.sleep(0.2)
        return None

    def close(self) -> int | None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()
        return self.proc.returncode


class IncomingWatch:
    """While a live migration runs: the target `NAME--incoming` (from `xl list`), then whether its
    vif went onto the TVD's vSwitch while the source's vif still existed. The window between the
    target's hotplug and the sender's rename is a second or two, shorter than one `xl list` +
    `ip link` + proxy round under emulation, so once the target is known this reads sysfs only
    (no subprocess) every 0.1 s; the final state (hotplug-status, proxy) is migrated-on-tvd's."""

    def __init__(self, d, vm: str, src: int, tvd: str):
        self.d, self.vm, self.src, self.bridge = d, vm, src, f"tvd-{tvd}"
        self.incoming: int | None = None
        self.admitted: dict | None = None
        self.last: dict = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    @staticmethod
    def _master(ifname: str) -> str | None:
        try:
            return os.path.basename(os.readlink(f"/sys/class/net/{ifname}/master"))
        except OSError:
            return None

    def _poll(self):
        while not self.done.is_set() and self.incoming is None:
            self.incoming = self.d.domains().get(f"{self.vm}--incoming")
            self.done.wait(0.5)
        new_vif, src_vif = f"vif{self.incoming}.0", f"vif{self.src}.0"
        while not self.done.is_set() and self.admitted is None:
            master = self._master(new_vif)
            source_there = os.path.exists(f"/sys/class/net/{src_vif}")
            self.last = {new_vif: {"master": master}, src_vif: {"exists": source_there}}
            if master == self.bridge and source_there:
                self.admitted = self.last
            self.done.wait(0.1)

    def stop(self):
        self.done.set()
        self.thread.join(timeout=30)


def _live_migration(d, sc, vm: str, peer: str, how: str, prefix: str) -> None:
    """One real live migration of `vm` to localhost, by `xl migrate` or `tvdctl xl migrate`,
    ssh replaced by SSH_LOCAL (the receiver runs here); then what must hold afterwards."""
    src = d.domains().get(vm)
    if src is None:
        sc.error = f"{vm} not running"
        return
    peer_mark, vm_mark, beta_mark = (console_mark(d, n) for n in (peer, vm, "beta"))
    watch = IncomingWatch(d, vm, src, "alpha")
    t = time.monotonic()
    try:
        if how == "xl":
            rc, out = d.xl("migrate", "-s", str(SSH_LOCAL), vm, "localhost", timeout=600)
        else:
            rc, out = d.tvdctl("xl", "migrate", str(d.work / f"{vm}.cfg"), "localhost", "--", "-s",
                               str(SSH_LOCAL), timeout=600)
    finally:
        watch.stop()
    sc.facts[f"{prefix}migrate_seconds"] = round(time.monotonic() - t, 1)
    sc.check(f"{prefix}live-migrate", rc == 0, f"rc={rc}: {out}")
    sc.check(f"{prefix}incoming-named", watch.incoming is not None and watch.incoming != src,
             f"source domid {src}; last seen {watch.last}")
    sc.check(f"{prefix}incoming-vif-admitted", watch.admitted is not None,
             f"want the target's vif on tvd-alpha while the source's vif{src}.0 still existed; "
             f"last seen {watch.last}")
    doms = d.domains()
    new = doms.get(vm)
    st = vif_state(d, new) if new is not None else {}
    sc.check(f"{prefix}migrated-on-tvd", new not in (None, src) and not odd_names(doms) and on_tvd(st, "alpha"),
             f"domains {doms}; {st}")
    old = wait_gone(d, src)
    sc.check(f"{prefix}old-vif-cleaned", gone(old), f"old vif {old}")
    if new is None:
        return
    d.domids[vm] = new
    # the guest runs during the copy, so its pings go on: loss is counted over the whole migration
    # (each ping line is a round of the guest loop, seconds apart: the window is that coarse);
    # afterwards every ping must succeed
    after_peer, after_vm = console_mark(d, peer), console_mark(d, vm)
    got_peer = wait_pings_ok(d, peer, ip_of(vm), after_peer, want=3)
    got_vm = wait_pings_ok(d, vm, ip_of(peer), after_vm, want=2)
    sc.facts[f"{prefix}ping_loss"] = {
        f"{peer}->{vm}": loss(pings(console_since(d, peer, peer_mark), ip_of(vm))),
        f"{vm}->{peer}": loss(pings(console_since(d, vm, vm_mark), ip_of(peer)))}
    dlog(f"migrate ({how}): ping loss {sc.facts[f'{prefix}ping_loss']}")
    sc.check(f"{prefix}pings-after-migration", recovered(got_peer) and recovered(got_vm),
             f"since the migration returned: {peer}->{vm}: {got_peer}; {vm}->{peer}: {got_vm}")
    beta_pings = pings(console_since(d, "beta", beta_mark), ip_of(vm))
    beta_hits = [p for p in beta_pings if p[1]]
    vm_hits = [p for p in pings(console_since(d, vm, vm_mark), ip_of("beta")) if p[1]]
    sc.check(f"{prefix}isolation-kept", not beta_hits and not vm_hits and bool(beta_pings),
             f"beta->{vm} replies {beta_hits} of {len(beta_pings)}; {vm}->beta replies {vm_hits}")


LIVE_CHECKS = ("live-migrate", "incoming-named", "incoming-vif-admitted", "migrated-on-tvd",
               "old-vif-cleaned", "pings-after-migration", "isolation-kept")


@scenario("migrate", needs=("positive",),
          checks=LIVE_CHECKS + tuple(f"tvdctl-{c}" for c in LIVE_CHECKS))
def migrate(d, sc):
    """Two real live migrations of alpha1 to localhost: `xl migrate` (libxl's JSON config carries
    only bridge=tvd:alpha), then back through `tvdctl xl migrate`. Needs a hypervisor with shadow
    paging (PV log-dirty): scripts/build-xen-shadow builds Debian's with it; on one without,
    migrate-standin covers what can run."""
    shadow = shadow_paging_built_in()
    sc.facts["hypervisor_shadow_paging"] = shadow
    if shadow is not True:
        sc.error = (f"the hypervisor has no shadow paging (xl info virt_caps; {shadow}), so PV live "
                    "migration cannot run: boot one built by scripts/build-xen-shadow "
                    "(--hypervisor), or run migrate-standin instead")
        return
    write_ssh_local()
    _live_migration(d, sc, "alpha1", "alpha2", "xl", "")
    _live_migration(d, sc, "alpha1", "alpha2", "tvdctl", "tvdctl-")


@scenario("migrate-standin", needs=("positive",), checks=(
    "live-migrate-as-xen-allows", "source-intact-after-failed-migrate", "standin-save-paused",
    "incoming-named", "incoming-vif-admitted", "target-started", "migrated-on-tvd", "old-vif-cleaned",
    "pings-after-migration", "isolation-kept"))
def migrate_standin(d, sc):
    vm, peer = "alpha1", "alpha2"
    doms = d.domains()
    if vm not in doms or peer not in doms:
        sc.error = f"{vm}/{peer} not running (positive scenario failed): {doms}"
        return
    src = doms[vm]
    before_ports = d.vif_ports()
    beta_mark = console_mark(d, "beta")
    # 1. a real live migration, through tvdctl (which wraps xl migrate): ssh replaced by a
    # script that runs `xl migrate-receive` here
    write_ssh_local()
    shadow = shadow_paging_built_in()
    sc.facts["hypervisor_shadow_paging"] = shadow
    t = time.monotonic()
    rc, out = d.tvdctl("xl", "migrate", str(d.work / f"{vm}.cfg"), "localhost", "--", "-s", str(SSH_LOCAL),
                       timeout=300)
    sc.facts["live_migrate"] = {"rc": rc, "seconds": round(time.monotonic() - t, 1), "output": out}
    if shadow is False:
        sc.check("live-migrate-as-xen-allows", rc != 0 and "logdirty" in out,
                 f"hypervisor without shadow paging: want a log-dirty failure; rc={rc}: {out}")
    else:
        sc.check("live-migrate-as-xen-allows", rc == 0, f"shadow paging {shadow}; rc={rc}: {out}")
    doms = d.domains()
    if rc != 0:
        mark = console_mark(d, peer)
        got = wait_pings_ok(d, peer, ip_of(vm), mark)
        st = vif_state(d, src)
        sc.check("source-intact-after-failed-migrate",
                 doms.get(vm) == src and not odd_names(doms) and on_tvd(st, "alpha")
                 and d.vif_ports() == before_ports and recovered(got),
                 f"domains {doms}; {st}; ports {d.vif_ports()} (before {before_ports}); "
                 f"{peer}->{vm} pings since: {got}")
    else:
        src = doms.get(vm, src)
        sc.check("source-intact-after-failed-migrate", True, "live migration worked: nothing to roll back")
    # 2. the stand-in: xl save -p (sender's suspend), real xl migrate-receive, sender's steps
    peer_mark = console_mark(d, peer)
    vm_mark = console_mark(d, vm)
    stream = SAVE_DIR / f"{vm}.migration-stream"
    t0 = time.monotonic()
    rc, out = d.xl("save", "-p", vm, str(stream), timeout=300)
    doms = d.domains()
    sc.check("standin-save-paused", rc == 0 and doms.get(vm) == src, f"rc={rc}: {out}; domains {doms}")
    if rc != 0:
        return
    recv = MigrationSenderStandIn(stream, d.results / "migrate-receive.log")
    new, started, rc2, out2 = None, False, None, ""
    try:
        ready = recv.wait_for(RECEIVER_READY, 300)
        sc.facts["receive_seconds"] = round(time.monotonic() - t0, 1)
        doms = d.domains()
        new = doms.get(f"{vm}--incoming")
        sc.facts["domains_while_incoming"] = doms
        sc.check("incoming-named", ready and new is not None and new != src and doms.get(vm) == src,
                 f"ready={ready}; domains {doms}; receiver: {recv.out!r}; {_read(str(d.results / 'migrate-receive.log'))[-1500:]}")
        if not ready or new is None:
            return
        st_new, st_src = vif_state(d, new), vif_state(d, src)
        sc.facts["vifs_while_incoming"] = {"incoming": st_new, "source": st_src}
        sc.check("incoming-vif-admitted", on_tvd(st_new, "alpha"), {"incoming": st_new, "source": st_src})
        # what xl migrate's sender does once the target acknowledged: rename the source, give
        # permission, read the report, destroy the source
        rc, out = d.xl("rename", vm, f"{vm}--migratedaway")
        recv.go()
        result = recv.report()
        started = rc == 0 and result == 0
        sc.check("target-started", started, f"rename rc={rc} {out}; report byte {result}")
        if started:
            rc2, out2 = d.xl("destroy", f"{vm}--migratedaway")
        sc.facts["downtime_seconds_dom0"] = round(time.monotonic() - t0, 1)
    finally:
        sc.facts["receiver_rc"] = recv.close()
        stream.unlink(missing_ok=True)
        if not started:
            # as xl migrate's sender on a failed migration: the source resumes, under its name
            doms = d.domains()
            for n in odd_names(doms):
                if n.endswith("--incoming"):
                    d.xl("destroy", n)
            if f"{vm}--migratedaway" in doms:
                d.xl("rename", f"{vm}--migratedaway", vm)
            d.xl("unpause", vm)
    if not started:
        return
    doms = d.domains()
    st = vif_state(d, new)
    sc.check("migrated-on-tvd", doms.get(vm) == new and not odd_names(doms) and on_tvd(st, "alpha"),
             f"domains {doms}; {st}")
    old = wait_gone(d, src)
    sc.check("old-vif-cleaned", rc2 == 0 and gone(old), f"destroy rc={rc2} {out2}; old vif {old}")
    d.domids[vm] = new
    got_peer = wait_pings_ok(d, peer, ip_of(vm), peer_mark, want=3)
    got_vm = wait_pings_ok(d, vm, ip_of(peer), vm_mark, want=2)
    sc.facts["ping_loss"] = {f"{peer}->{vm}": loss(got_peer), f"{vm}->{peer}": loss(got_vm)}
    dlog(f"migrate: ping loss {sc.facts['ping_loss']}")
    sc.check("pings-after-migration", recovered(got_peer) and recovered(got_vm),
             f"{peer}->{vm}: {got_peer}; {vm}->{peer}: {got_vm}")
    beta_hits = [p for p in pings(console_since(d, "beta", beta_mark), ip_of(vm)) if p[1]]
    vm_hits = [p for p in pings(console_since(d, vm, vm_mark), ip_of("beta")) if p[1]]
    sc.check("isolation-kept", not beta_hits and not vm_hits and pings(console_since(d, "beta", beta_mark), ip_of(vm)),
             f"beta->{vm} replies {beta_hits}; {vm}->beta replies {vm_hits}")


# --- reboot ------------------------------------------------------------------------------

def _reboot(d, sc, vm: str, peer: str, how: str, prefix: str) -> None:
    old = d.domains().get(vm)
    if old is None:
        sc.error = f"{vm} not running"
        return
    tvd = GUESTS[vm][2]
    mark = console_mark(d, vm)
    t = time.monotonic()
    if how == "xl":
        rc, out = d.xl("reboot", vm)
    else:
        # the guest kernel itself asks Xen to reboot (SCHEDOP_shutdown, reason reboot); `xl
        # sysrq` only delivers the key, like an admin on the guest's console
        rc, out = d.xl("sysrq", vm, "b")
    sc.check(f"{prefix}reboot", rc == 0, f"rc={rc}: {out}")
    new = wait_domid_change(d, vm, old)
    sc.facts[f"{prefix}reboot_seconds"] = round(time.monotonic() - t, 1)
    # the guest's init prints this when it acts on an orderly reboot request (`xl reboot`)
    sc.facts[f"{prefix}guest_saw_request"] = "@@guest reboot requested" in console_since(d, vm, mark)
    if new is None:
        # what xl's monitoring daemon saw (its log) and the domain's state, for the report
        sc.facts[f"{prefix}xl_list"] = sh(["xl", "list", "-v"], 60)[1]
        sc.facts[f"{prefix}xl_logs"] = {f: _read(f)[-2000:] for f in glob.glob(f"/var/log/xen/xl-{vm}*.log")}
    sc.check(f"{prefix}rebooted-new-domain", new is not None, d.domains())
    if new is None:
        return
    mark_peer = console_mark(d, peer)
    st = wait_on_tvd(d, new, tvd)
    sc.check(f"{prefix}rebooted-vif-on-tvd", on_tvd(st, tvd), st)
    st_old = wait_gone(d, old)
    sc.check(f"{prefix}old-vif-gone", gone(st_old), st_old)
    d.domids[vm] = new
    got = wait_pings_ok(d, peer, ip_of(vm), mark_peer, timeout=240)
    sc.facts[f"{prefix}reachable_seconds"] = round(time.monotonic() - t, 1)
    sc.check(f"{prefix}reachable-after-reboot", recovered(got), f"{peer}->{vm}: {got}")


@scenario("reboot", needs=("positive",), checks=(
    "reboot", "rebooted-new-domain", "rebooted-vif-on-tvd", "old-vif-gone", "reachable-after-reboot",
    "guest-reboot", "guest-rebooted-new-domain", "guest-rebooted-vif-on-tvd", "guest-old-vif-gone",
    "guest-reachable-after-reboot"))
def reboot(d, sc):
    # `xl reboot` of alpha1, which (after `migrate`) came through `xl migrate-receive`, so its
    # restart is done by the receiver's monitoring daemon; the guest-initiated one on alpha2
    # (from `tvdctl xl create`). Runs R2 and the CI run of 2026-12-05 failed here because the
    # guest's init ignored the reboot request, not Xen or xen-tvd (DOMU_INIT's traps)
    _reboot(d, sc, "alpha1", "alpha2", "xl", "")
    _reboot(d, sc, "alpha2", "alpha1", "guest", "guest-")


# --- save / restore ----------------------------------------------------------------------

@scenario("saverestore", needs=("positive",), checks=(
    "save", "save-cleans-vif", "restore", "restored-on-tvd", "restored-reachable", "revoke-leave",
    "restore-revoked-fails", "restore-revoked-error-text", "restore-revoked-nothing-left"))
def saverestore(d, sc):
    vm, peer = "alpha2", "alpha1"
    old = d.domains().get(vm)
    if old is None:
        sc.error = f"{vm} not running"
        return
    img = SAVE_DIR / f"{vm}.save"
    try:
        t = time.monotonic()
        rc, out = d.xl("save", vm, str(img), timeout=300)
        sc.facts["save_seconds"] = round(time.monotonic() - t, 1)
        sc.check("save", rc == 0 and vm not in d.domains(), f"rc={rc}: {out}")
        st = wait_gone(d, old)
        sc.check("save-cleans-vif", gone(st), st)
        mark_peer = console_mark(d, peer)
        t = time.monotonic()
        rc, out = d.xl("restore", str(img), timeout=300)
        sc.facts["restore_seconds"] = round(time.monotonic() - t, 1)
        new = d.domains().get(vm)
        sc.check("restore", rc == 0 and new is not None and new != old, f"rc={rc}: {out}")
        if new is None:
            return
        d.domids[vm] = new
        st = wait_on_tvd(d, new, "alpha")
        sc.check("restored-on-tvd", on_tvd(st, "alpha"), st)
        got = wait_pings_ok(d, peer, ip_of(vm), mark_peer)
        sc.facts["ping_loss_restore"] = loss(got)
        sc.check("restored-reachable", recovered(got), f"{peer}->{vm}: {got}")
        # the VM's membership is revoked while it is saved: its restore must fail closed
        rc, out = d.xl("save", vm, str(img), timeout=300)
        d.domids.pop(vm, None)
        rc2, out2 = d.tvdctl("leave", vm, "alpha")
        sc.check("revoke-leave", rc == 0 and rc2 == 0, f"save rc={rc} {out}; leave rc={rc2} {out2}")
        before = d.vif_ports()
        rc, out = d.xl("restore", str(img), timeout=300)
        sc.facts["revoked_restore_output"] = out
        sc.check("restore-revoked-fails", rc != 0, f"rc={rc}: {out}")
        sc.check("restore-revoked-error-text", "vif-tvd online" in out and
                 ("left TVD 'alpha'" in out or "no TVD for" in out), out)
        time.sleep(2)
        doms = d.domains()
        pv = [v for v in d.proxy_vifs().values() if v.get("domid") not in set(doms.values())]
        sc.check("restore-revoked-nothing-left", vm not in doms and d.vif_ports() == before and not pv,
                 f"domains {doms}; ports {d.vif_ports()} (before {before}); proxy {pv}")
    finally:
        img.unlink(missing_ok=True)
