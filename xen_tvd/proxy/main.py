"""`tvd-proxy run --policy FILE --host NAME [--socket PATH] [--state-dir DIR] [--netns NS]`,
`tvd-proxy run --master --host NAME [...]`, `tvd-proxy enroll URL TOKEN --host NAME` and
`tvd-proxy wireguard-key [--state-dir DIR] [--rotate]` (prints this host's WireGuard public key,
making the key pair if there is none: standalone, it goes into the policy's
hosts.NAME.wireguard-key; --rotate makes the next pair and prints its key, docs/wireguard.md).

Exit codes: 0 stopped by SIGTERM/SIGINT (enroll: enrolled), 1 enrolment refused, 2 bad usage
or unusable policy/host/state/socket/enrolment.
SIGHUP re-reads the policy file (master mode: the stored bundle, verified again) and
reconciles (vifs the new policy no longer admits are detached; running, still-admitted VMs are
not touched).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading

from xen_tvd.log import log, say
from xen_tvd.policy import PolicyInvalid, load_policy

from .devices import LAB_DRIVERS
from .protocol import DEFAULT_SOCKET

DEFAULT_STATE_DIR = "/var/lib/xen-tvd"
CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """setns() this process into /run/netns/NAME before any thread exists (threads inherit it).
    The UNIX socket lives on the filesystem, so clients outside the namespace still reach us."""
    path = name if "/" in name else f"/run/netns/{name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise RuntimeError(f"network namespace {name!r}: {e.strerror} ({path})") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise RuntimeError(f"cannot enter network namespace {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvd-proxy", description="the Dom0 TVD proxy")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    e = sub.add_parser("enroll", help="enrol this Dom0 with a tvd-master (one-time token)")
    e.add_argument("url", metavar="URL", help="the master, https://HOST:PORT; replicas of one "
                   "master: their URLs separated by commas (the proxy fails over between them)")
    e.add_argument("token", metavar="TOKEN", help="from 'tvd-master token HOST' (use - to read stdin)")
    e.add_argument("--host", required=True, metavar="NAME", help="this Dom0's name at the master")
    e.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"credentials go to DIR/master/ (default {DEFAULT_STATE_DIR})")
    k = sub.add_parser("wireguard-key", help="print this host's WireGuard public key (made once, "
                                             "in the state directory)")
    k.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"the key pair is DIR/wireguard.key (default {DEFAULT_STATE_DIR})")
    k.add_argument("--rotate", action="store_true",
                   help="start a key rotation: make the next key pair (DIR/wireguard.key.next) "
                        "and print its public key (again while that rotation is pending); the "
                        "host switches to it once its peers accept it (docs/wireguard.md)")
    r = sub.add_parser("run", help="serve hotplug scripts and tvdctl on a UNIX socket")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", metavar="FILE", help="standalone: the policy file")
    src.add_argument("--master", action="store_true",
                     help="policy and plan come from the master this host enrolled with")
    r.add_argument("--offline-admission-grace", type=float, default=0.0, metavar="SECONDS",
                   help="master mode, TVDs without session-seconds: admit new vifs this long after "
                        "the last contact with the master (default 0: refuse at once)")
    r.add_argument("--capabilities", metavar="FILE",
                   help="master mode: NICs and security claims with evidence (default "
                        "/etc/xen-tvd/capabilities.json if it exists)")
    r.add_argument("--host", required=True, metavar="NAME", help="this Dom0 in the policy's hosts:")
    r.add_argument("--socket", default=os.environ.get("TVD_PROXY_SOCKET") or DEFAULT_SOCKET,
                   metavar="PATH", help=f"default {DEFAULT_SOCKET}")
    r.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"registrations and vif records (default {DEFAULT_STATE_DIR})")
    r.add_argument("--segment-grace", type=float, default=30.0, metavar="SECONDS",
                   help="remove a TVD's vSwitch this long after its last local vif went (default 30)")
    r.add_argument("--netns", metavar="NS", help="manage this network namespace (lab: one proxy per host)")
    r.add_argument("--log-drops", type=_log_rate, default=0, metavar="PER_SECOND",
                   help="log dropped frames to the kernel log ('xen-tvd drop REASON: '), at most "
                        "this many lines per second per drop rule (default 0: count only); "
                        "port security then runs as nftables rules (the eBPF default cannot log)")
    r.add_argument("--metrics-textfile", metavar="PATH",
                   help="write Prometheus metrics here for node-exporter's textfile collector, "
                        "e.g. /var/lib/prometheus/node-exporter/tvd-proxy.prom")
    r.add_argument("--metrics-interval", type=float, default=15.0, metavar="SECONDS",
                   help="how often the metrics file is rewritten (default 15)")
    r.add_argument("--vif-driver", action="append", choices=LAB_DRIVERS, metavar="DRIVER",
                   help="also accept interfaces of this driver as vifs (veth: the labs, where "
                        "veth pairs stand in for netback; a Dom0 never needs it)")
    return p


MAX_LOG_RATE = 1000     # drop log lines per second per rule: beyond that the log is the flood


def _log_rate(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= n <= MAX_LOG_RATE:
        raise argparse.ArgumentTypeError(f"must be within 0..{MAX_LOG_RATE}")
    return n


def _load(path: str):
    try:
        return load_policy(path)
    except PolicyInvalid as e:
        for d in e.diagnostics:
            if d.is_error:
                say("error", str(d))
        raise RuntimeError(f"policy {path} has errors; run 'tvdctl check {path}'") from None


def enroll(args) -> int:
    from xen_tvd.master.client import MasterError
    from .master_link import enroll_host
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    try:
        d = enroll_host(args.url, token, args.host, args.state_dir)
    except MasterError as e:
        # the message never contains the token (MasterError texts are the master's or ours)
        print(f"tvd-proxy: enrolment at {args.url} failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        raise RuntimeError(f"cannot write credentials: {e.strerror or e} ({e.filename})") from None
    print(f"enrolled {args.host} with {args.url}; credentials in {d}; now run "
          f"'tvd-proxy run --master --host {args.host} --state-dir {args.state_dir}'")
    return 0


def wireguard_key(args) -> int:
    from . import wgkey
    try:
        if not args.rotate:
            print(wgkey.ensure(args.state_dir))
            return 0
        wgkey.ensure(args.state_dir)
        print(wgkey.rotate(args.state_dir))
    except wgkey.KeyFileError as e:
        raise RuntimeError(str(e)) from None
    print("tvd-proxy: next key pair ready. Master mode: reload tvd-proxy (it reports the key; "
          "the host switches once its peers accept it). Standalone: add it to the policy as "
          "hosts.NAME.wireguard-next-key on every host, then swap wireguard-key and "
          "wireguard-next-key, then drop the old key (docs/wireguard.md)", file=sys.stderr)
    return 0


def _own_key(args, policy) -> str:
    """This host's WireGuard public key, the key pair made on first start. Standalone, the
    policy should list it: a missing or different entry is said once (peers cannot reach us
    over encrypted segments until it is fixed; the key itself is never logged)."""
    from . import wgkey
    try:
        public, pending = wgkey.keys(args.state_dir)
    except wgkey.KeyFileError as e:
        raise RuntimeError(str(e)) from None
    if policy is not None and args.host in policy.hosts:
        listed = policy.hosts[args.host].wireguard_key
        if listed not in (public, pending):    # the pending key: a rotation's second step
            # a warning only where the policy uses WireGuard keys at all
            used = any(h.wireguard_key for h in policy.hosts.values())
            log("warning" if used else "info", "wireguard-key-not-in-policy", host=args.host,
                problem="absent" if listed is None else "differs",
                fix=f"put the output of 'tvd-proxy wireguard-key --state-dir {args.state_dir}' "
                    f"into hosts.{args.host}.wireguard-key")
    return public


def _master_core(args):
    from . import capabilities, wgkey
    from .daemon import build_master
    from .master_link import LinkError, MasterLink
    from .sessions import SessionWatch
    cap_path, required = capabilities.file_required(args.capabilities)

    def report() -> dict:
        # the key files are read each time: a rotation changes them while we run
        try:
            current, pending = wgkey.keys(args.state_dir)
        except wgkey.KeyFileError as e:
            raise capabilities.CapabilityError(str(e)) from None
        accepts = link.daemon.wireguard_accepts() if link.daemon is not None else ()
        return capabilities.report(cap_path, required, current, pending, sorted(accepts))

    try:
        capabilities.load_file(cap_path, required)   # a broken file stops the start, not later
        link = MasterLink(args.state_dir, args.host, report,
                          offline_grace=args.offline_admission_grace)
    except (capabilities.CapabilityError, LinkError) as e:
        raise RuntimeError(str(e)) from None
    core = build_master(link, args.host, args.state_dir, segment_grace=args.segment_grace,
                        vif_drivers=args.vif_driver or ())
    return core, link, lambda: (link.start(core.authority),
                                SessionWatch(core, core.authority.digests).start())


def _metrics_writer(args, core):
    """--metrics-textfile's writer (docs/metrics.md), started; None without the option."""
    if not args.metrics_textfile:
        return None
    from xen_tvd.metrics import TextfileWriter
    from .observe import collect
    try:
        w = TextfileWriter(args.metrics_textfile, lambda: collect(core), args.metrics_interval)
        w.start()
    except (OSError, ValueError) as e:
        raise RuntimeError(f"--metrics-textfile {args.metrics_textfile}: "
                           f"{getattr(e, 'strerror', None) or e}") from None
    return w


def _remove_stale_probes(core) -> None:
    """Tables of explain probes a crashed proxy left (their taps went with it)."""
    from .dataplane_port import DataplaneError
    rtr = core.applied.router.netns if core.applied is not None and core.applied.router \
        else core.router_netns
    try:
        gone = core.dataplane.probe_leftovers(rtr, core.probes.ids())
    except DataplaneError as e:
        log("warning", "probe-leftovers", error=str(e))
        return
    if gone:
        log("warning", "probe-leftovers", removed=",".join(gone))


def run(args) -> int:
    from .daemon import Server, build_standalone   # after argparse: `--help` stays fast
    policy = None if args.master else _load(args.policy)
    if args.netns:
        enter_netns(args.netns)
    _own_key(args, policy)
    link = None
    if args.master:
        core, link, start_threads = _master_core(args)
    else:
        core = build_standalone(policy, args.host, args.state_dir,
                                segment_grace=args.segment_grace,
                                vif_drivers=args.vif_driver or ())
    if args.netns:
        # the router namespace named as apply(netns=) names it for a host namespace
        from xen_tvd.desired.names import router_netns
        core.router_netns = router_netns(args.host, os.path.basename(args.netns))
    core.log_drops = args.log_drops
    core.startup()
    _remove_stale_probes(core)
    server = Server(args.socket, core)
    metrics = _metrics_writer(args, core)
    if args.master:
        start_threads()
    stop = threading.Event()

    def on_term(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    def on_hup(signum, frame):
        def reload():
            # off the request path: the policy is read on this thread, outside the proxy's
            # lock; only the switch and the reconcile take it
            log("info", "reloading", source="stored bundle" if args.master else args.policy)
            if args.master:
                core.startup()    # the stored bundle, verified again
                link.report_again.set()   # and the capability file, at the next watch turn
                log("info", "reloaded", source="stored bundle")
                return
            try:
                new = _load(args.policy)
            except RuntimeError as e:
                log("error", "reload-failed", error=str(e))
                return
            core.reload(new)
            log("info", "reloaded", policy=args.policy)
        threading.Thread(target=reload, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    log("info", "listening", socket=args.socket, host=args.host,
        policy=args.policy or f"master {link.url}", netns=args.netns or "", pid=os.getpid())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if metrics is not None:
            metrics.stop()
        log("info", "stopped", detail="vifs and vSwitches left as they are")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "wireguard-key":
            return wireguard_key(args)
        return enroll(args) if args.cmd == "enroll" else run(args)
    except RuntimeError as e:
        say("error", f"tvd-proxy: {e}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
