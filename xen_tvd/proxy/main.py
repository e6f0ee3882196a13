"""`tvd-proxy run --policy FILE --host NAME [--socket PATH] [--state-dir DIR] [--netns NS]`,
`tvd-proxy run --master --host NAME [...]` and `tvd-proxy enroll URL TOKEN --host NAME`.

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

from xen_tvd.policy import PolicyInvalid, load_policy

from .log import log
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
    e.add_argument("url", metavar="URL", help="the master, https://HOST:PORT")
    e.add_argument("token", metavar="TOKEN", help="from 'tvd-master token HOST' (use - to read stdin)")
    e.add_argument("--host", required=True, metavar="NAME", help="this Dom0's name at the master")
    e.add_argument("--state-dir", default=DEFAULT_STATE_DIR, metavar="DIR",
                   help=f"credentials go to DIR/master/ (default {DEFAULT_STATE_DIR})")
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
    return p


def _load(path: str):
    try:
        return load_policy(path)
    except PolicyInvalid as e:
        for d in e.diagnostics:
            if d.is_error:
                print(d, file=sys.stderr)
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


def _master_proxy(args):
    from . import capabilities
    from .daemon import Proxy
    from .master_link import LinkError, MasterLink
    from .sessions import SessionWatch
    cap_path, required = capabilities.file_required(args.capabilities)
    try:
        capabilities.load_file(cap_path, required)   # a broken file stops the start, not later
        link = MasterLink(args.state_dir, args.host, lambda: capabilities.report(cap_path, required),
                          offline_grace=args.offline_admission_grace)
    except (capabilities.CapabilityError, LinkError) as e:
        raise RuntimeError(str(e)) from None
    proxy = Proxy(None, args.host, args.state_dir, segment_grace=args.segment_grace, link=link)
    return proxy, lambda: (link.start(proxy), SessionWatch(proxy).start())


def run(args) -> int:
    from .daemon import Proxy, Server   # after argparse: `--help` stays fast
    policy = None if args.master else _load(args.policy)
    if args.netns:
        enter_netns(args.netns)
    if args.master:
        proxy, start_threads = _master_proxy(args)
    else:
        proxy = Proxy(policy, args.host, args.state_dir, segment_grace=args.segment_grace)
    if args.netns:
        # the router namespace named as apply(netns=) names it for a host namespace
        from xen_tvd.dataplane.model import HostState
        from xen_tvd.dataplane.router import ns_name
        proxy.router_netns = ns_name(HostState(args.host), os.path.basename(args.netns))
    proxy.startup()
    server = Server(args.socket, proxy)
    if args.master:
        start_threads()
    stop = threading.Event()

    def on_term(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    def on_hup(signum, frame):
        def reload():
            if args.master:
                proxy.startup()    # the stored bundle, verified again
                proxy.link.report_again.set()   # and the capability file, at the next watch turn
                log("info", "reloaded", source="stored bundle")
                return
            try:
                new = _load(args.policy)
            except RuntimeError as e:
                log("error", "reload-failed", error=str(e))
                return
            proxy.reload(new)
            log("info", "reloaded", policy=args.policy)
        threading.Thread(target=reload, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    log("info", "listening", socket=args.socket, host=args.host,
        policy=args.policy or f"master {proxy.link.url}", netns=args.netns or "", pid=os.getpid())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log("info", "stopped", detail="vifs and vSwitches left as they are")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return enroll(args) if args.cmd == "enroll" else run(args)
    except RuntimeError as e:
        print(f"tvd-proxy: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
