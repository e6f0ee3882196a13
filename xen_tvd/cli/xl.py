"""tvdctl sub-commands for Xen: `xl create|migrate|register`, `join|leave`.

    tvdctl xl create CFG [--dry-run] [-- XL-ARGS]   register membership with tvd-proxy, then xl create
    tvdctl xl register CFG                          only register (e.g. on a migration destination)
    tvdctl xl migrate CFG HOST [--dest-socket PATH] [--dry-run] [-- XL-ARGS]
    tvdctl join VM TVD [--devid N]         active membership (paper 4.5)
    tvdctl leave VM TVD                    detaches the VM's vifs in TVD at once

Options anywhere before `--` are tvdctl's; xl gets only what follows `--`. A registration made
for an xl run that fails is taken back (unless the proxy had that UUID before).
Exit codes as tvdctl: 0 ok, 1 refused (by the proxy or xl), 2 usage / unreadable input.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid as uuidlib

from xen_tvd import xlcfg, xlmembership
from xen_tvd.desired.patterns import UUID_RE
from xen_tvd.errors import Refused
from xen_tvd.proxy.client import ProxyClient, ProxyUnreachable


def _say(msg: str) -> None:
    print(f"tvdctl: {msg}", file=sys.stderr)




def _load(path: str):
    try:
        cfg = xlcfg.load(path)
        for w in cfg.warnings:
            print(w, file=sys.stderr)
        return cfg, xlmembership.membership(cfg)
    except xlcfg.XlCfgError as e:
        print(e, file=sys.stderr)
        return None, None


def _register(m: xlmembership.Membership, uuid: str, sock: str | None) -> dict:
    cert = None
    if m.cert:
        try:
            with open(m.cert, encoding="ascii") as f:
                cert = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise Refused(f"tvd_cert {m.cert}: {getattr(e, 'strerror', None) or e}") from None
    # images: the proxy hashes them itself (master mode)
    return ProxyClient(sock).register(uuid, m.name, nics=[(t, d) for d, t in m.nics],
                properties=m.properties, cert=cert, images=m.images or (),
                tx_checksum_offload=m.tx_checksum_offload)


def _register_for_run(m: xlmembership.Membership, uuid: str, sock: str | None, where: str = ""):
    """Register for an xl run; returns (the proxy's answer, undo). undo() takes the
    registration back after a failed run, unless the proxy had this UUID before (then the VM
    may be running: its registration is not ours to drop)."""
    known = any(r.get("uuid") == uuid
                for r in ProxyClient(sock).status().get("registrations", []))
    answer = _register(m, uuid, sock)

    def undo(why: str) -> None:
        if known:
            _say(f"{why}; the registration of {m.name} ({uuid}){where} is kept: tvd-proxy had "
                 f"this UUID before this run")
            return
        try:
            ProxyClient(sock).unregister(uuid)
            _say(f"{why}; registration of {m.name} ({uuid}){where} taken back")
        except (Refused, ProxyUnreachable) as e:
            _say(f"{why}; taking back the registration of {m.name} ({uuid}){where} failed: {e}")
    return answer, undo


def _run_xl(argv: list[str]) -> int:
    try:
        p = subprocess.Popen(argv)
    except OSError as e:
        _say(f"cannot run {argv[0]}: {e.strerror or e}")
        return 127
    try:
        return p.wait()
    except KeyboardInterrupt:   # xl got the SIGINT too: its exit says whether anything was made
        _say(f"interrupted; waiting for {argv[0]} {argv[1]} to exit")
        return p.wait()


# xl reads a sub-command's options only before its first positional argument (its getopt keeps
# the "+" of xl's own option string): `xl migrate DOM HOST -s CMD` ignores -s and runs ssh,
# as tier 3 showed. So XL-ARGS go before CFG/DOMAIN; for create, `key=value` config overrides
# (xl's trailing "vars") go after the config file.
def _xl_vars(xl_args: list[str]) -> list[str]:
    return [a for a in xl_args if "=" in a and not a.startswith("-")]


def _xl_options(xl_args: list[str]) -> list[str]:
    return [a for a in xl_args if not ("=" in a and not a.startswith("-"))]


def _check_vswitch(cfg, m) -> bool:
    if m.vswitch is None:
        return True
    from xen_tvd.desired.names import bridge_name
    ok = {bridge_name(t) for _, t in m.nics}
    if ok != {m.vswitch}:
        s = cfg.setting("vswitch")
        print(f"{cfg.path}:{s.line}:{s.col}: error: vswitch {m.vswitch!r} is not the vSwitch of "
              f"this domain's TVD(s) ({', '.join(sorted(ok))}); xen-tvd keeps one vSwitch per TVD "
              f"and host, so drop vswitch or set it to that name", file=sys.stderr)
        return False
    return True


def _membership_lines(m: xlmembership.Membership, uuid: str, fresh: bool, lead: str) -> list[str]:
    lines = [f"{lead}VM {m.name}, uuid {uuid}" + (" (fresh: a real run picks another)" if fresh else "")]
    lines += [f"  vif devid {d} -> TVD {t}" for d, t in m.nics]
    lines += [f"  properties: {', '.join(p + (':' + a if a else '') for p, a in m.properties.items())}"
              ] if m.properties else []
    lines += [f"  images the proxy hashes: {', '.join(m.images)}"] if m.images else []
    lines += [f"  VM certificate: {m.cert}"] if m.cert else []
    lines += [f"  vif tx checksum offload: off ({xlmembership.TX_CSUM_KEY} = 0)"
              ] if not m.tx_checksum_offload else []
    return lines


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def cmd_xl_create(args) -> int:
    cfg, m = _load(args.cfg)
    if cfg is None or not _check_vswitch(cfg, m):
        return 2
    uuid = m.uuid or str(uuidlib.uuid4())
    if args.dry_run:
        copy = xlmembership.for_xl(cfg, m, uuid)
        out = [f"tvdctl xl create --dry-run {args.cfg}: nothing registered, xl not run",
               *_membership_lines(m, uuid, m.uuid is None, "would register with tvd-proxy: "),
               *copy.notes, "vif mtu= is checked against each TVD's MTU when registering",
               f"would run: {args.xl} create <this config> {' '.join(args.xl_args)}".rstrip()]
        text = "".join(f"# {line}\n" for line in out) + copy.text
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))   # bytes as xl gets them
        return 0
    answer, undo = _register_for_run(m, uuid, args.socket)
    copy = xlmembership.for_xl(cfg, m, uuid, answer.get("mtu"))
    for note in copy.notes:
        _say(f"{args.cfg}: {note}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"tvd-{_safe(m.name)}-", suffix=".cfg")
    except OSError as e:
        undo(f"cannot write the config for xl: {e.strerror or e}")
        return 1
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(copy.text.encode("utf-8", "surrogateescape"))
    except OSError as e:
        os.unlink(tmp)
        undo(f"cannot write the config for xl ({tmp}): {e.strerror or e}")
        return 1
    try:
        _say(f"registered {m.name} ({uuid}): " +
             ", ".join(f"vif devid {d} -> {t}" for d, t in m.nics) + "; running xl create")
        rc = _run_xl([args.xl, "create", *_xl_options(args.xl_args), tmp, *_xl_vars(args.xl_args)])
    finally:
        os.unlink(tmp)
    if rc != 0:
        undo(f"xl create failed (exit {rc})")
    return 0 if rc == 0 else 1


def cmd_xl_register(args) -> int:
    if args.xl_args:
        _say("tvdctl xl register runs no xl: nothing may follow --")
        return 2
    cfg, m = _load(args.cfg)
    if cfg is None:
        return 2
    if not m.uuid:
        _say(f"{args.cfg} has no uuid = \"...\": a registration is keyed on the VM UUID; add the "
             f"domain's UUID (xl list -v) to the file")
        return 2
    _register(m, m.uuid, args.socket)
    _say(f"registered {m.name} ({m.uuid})")
    return 0


def cmd_xl_migrate(args) -> int:
    cfg, m = _load(args.cfg)
    if cfg is None:
        return 2
    if args.dest_socket and not m.uuid:
        _say(f"{args.cfg} has no uuid: cannot register the VM on the destination")
        return 2
    argv = [args.xl, "migrate", *args.xl_args, m.name, args.host]
    if args.dry_run:
        out = [f"tvdctl xl migrate --dry-run {args.cfg}: nothing registered, xl not run"]
        if args.dest_socket:
            out += _membership_lines(m, m.uuid, False, f"would register on the destination proxy "
                                                       f"{args.dest_socket}: ")
        out.append(f"would run: {' '.join(argv)}")
        print("\n".join(out))
        return 0
    undo = None
    if args.dest_socket:
        _, undo = _register_for_run(m, m.uuid, args.dest_socket, " on the destination")
        _say(f"registered {m.name} ({m.uuid}) on the destination proxy {args.dest_socket}")
    else:
        _say("the destination admits the vifs from their bridge=tvd:<name> keys, which migration "
             "carries; VM properties for M(t) must be registered there (tvdctl xl register CFG)")
    rc = _run_xl(argv)
    if rc != 0 and undo:
        undo(f"xl migrate failed (exit {rc})")
    return 0 if rc == 0 else 1


def _vm_uuid(vm: str, sock: str | None) -> str:
    if UUID_RE.match(vm.lower()):
        return vm.lower()
    regs = ProxyClient(sock).status().get("registrations", [])
    hits = [r["uuid"] for r in regs if r.get("name") == vm]
    if len(hits) != 1:
        raise Refused(f"{'no' if not hits else 'more than one'} VM registered as {vm!r}; give its "
                      f"UUID (xl list -v)")
    return hits[0]


def cmd_join(args) -> int:
    uuid = _vm_uuid(args.vm, args.socket)
    ProxyClient(args.socket).join(uuid, args.tvd, args.devid)
    _say(f"{args.vm} joined {args.tvd}; its vifs for {args.tvd} are admitted when they hotplug "
         f"(xl network-attach {args.vm} bridge=tvd:{args.tvd} script=vif-tvd)")
    return 0


def cmd_leave(args) -> int:
    uuid = _vm_uuid(args.vm, args.socket)
    r = ProxyClient(args.socket).leave(uuid, args.tvd)
    gone = r.get("detached") or []
    _say(f"{args.vm} left {args.tvd}" + (f"; detached {', '.join(gone)}" if gone else ""))
    return 0


def _wrap(fn):
    def run(args) -> int:
        try:
            return fn(args)
        except (Refused, ProxyUnreachable) as e:   # ProxyRefused is a Refused
            _say(str(e))
            return 1
    return run


class XlArgsParser(argparse.ArgumentParser):
    """Everything after the first `--` is xl's (ns.xl_args); before it, all is tvdctl's, so an
    option after CFG is never passed to xl by mistake."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        rest = []
        if "--" in args:
            args, rest = args[:args.index("--")], args[args.index("--") + 1:]
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)} (arguments for xl go after "
                       f"--: {self.prog} ... -- XL-ARGS)")
        ns.xl_args = rest
        return ns, []


def add_parsers(sub) -> None:
    sock_help = "tvd-proxy socket (default $TVD_PROXY_SOCKET or /run/xen-tvd/proxy.sock)"

    xl = sub.add_parser("xl", help="xl wrappers that register TVD membership with tvd-proxy")
    xsub = xl.add_subparsers(dest="xl_cmd", metavar="XLCMD", parser_class=XlArgsParser)
    xsub.required = True
    for name, fn, hlp in (("create", cmd_xl_create, "register CFG's membership, then xl create"),
                          ("register", cmd_xl_register, "register CFG's membership only"),
                          ("migrate", cmd_xl_migrate, "xl migrate, registering on the destination")):
        c = xsub.add_parser(name, help=hlp, epilog=None if name == "register" else
                            "arguments for xl go after --, e.g. -- -q")
        c.add_argument("cfg", metavar="CFG")
        if name == "migrate":
            c.add_argument("host", metavar="HOST")
            c.add_argument("--dest-socket", metavar="PATH",
                           help="the destination proxy's socket, if reachable from here")
        c.add_argument("--socket", metavar="PATH", help=sock_help)
        if name != "register":
            c.add_argument("--xl", default=os.environ.get("TVD_XL") or "xl", help="the xl binary")
            c.add_argument("--dry-run", action="store_true",
                           help="print what would be registered and what xl would get; change nothing")
        c.set_defaults(func=_wrap(fn))

    for name, fn, hlp in (("join", cmd_join, "active membership: VM joins TVD"),
                          ("leave", cmd_leave, "VM leaves TVD; its vifs there are detached")):
        c = sub.add_parser(name, help=hlp)
        c.add_argument("vm", metavar="VM", help="UUID, or the name it was registered with")
        c.add_argument("tvd", metavar="TVD")
        if name == "join":
            c.add_argument("--devid", type=int, metavar="N", help="only for vif N")
        c.add_argument("--socket", metavar="PATH", help=sock_help)
        c.set_defaults(func=_wrap(fn))

