"""The libvirt domain hook: /etc/libvirt/hooks/{libxl,qemu} (or libxl.d/, qemu.d/).

libvirt runs it as `hook <domain> <operation> <sub-op> <extra>` with the full domain XML on
stdin; a non-zero exit fails the operation and libvirt logs our stderr.

  prepare begin, start begin   register UUID -> membership with tvd-proxy; any refusal, an
                               unreachable proxy or a contradictory membership fails the start
                               (fail closed). A domain in no TVD passes without a proxy call.
  reconnect begin              libvirtd restarted while the domain ran: tvd-proxy `check`s
                               that it may still be in the TVDs its live NICs are in (hot-
                               plugged ones too). A refusal or a contradictory live membership
                               exits 1, and libvirt stops the domain (qemu and libxl alike).
                               An unreachable proxy is no refusal: the domain keeps running (a
                               warning on stderr and in syslog), as vifs do when the proxy or
                               the master is down.
  stopped end, release end     unregister (best effort; never fails)
  anything else                exit 0 at once, print nothing (migrate/restore read our stdout)

NICs of type='network' are admitted per port by the network hook (network_hook.py).

It never calls back into libvirt (libvirt holds the domain lock and would deadlock), and imports
only the standard library and xen_tvd's light modules (it runs for every domain event).
"""
from __future__ import annotations

import sys

ADMIT = {("prepare", "begin"), ("start", "begin")}
CLEANUP = {("stopped", "end"), ("release", "end")}
RECHECK = ("reconnect", "begin")


def say(msg: str) -> None:
    print(f"xen-tvd: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, stdin=None) -> int:
    argv = sys.argv if argv is None else argv
    stdin = sys.stdin.buffer if stdin is None else stdin
    if len(argv) < 4:
        say(f"usage: {argv[0] if argv else 'libvirt-hook'} DOMAIN OPERATION SUB-OP [EXTRA] "
            f"(run by libvirtd, domain XML on stdin)")
        return 2
    dom, op, sub = argv[1], argv[2], argv[3]
    event = (op, sub)
    if event not in ADMIT and event not in CLEANUP and event != RECHECK:
        return 0
    xml = stdin.read()
    if event == RECHECK:
        return _recheck(dom, xml)

    from xen_tvd.desired.patterns import UUID_RE
    from xen_tvd.libvirt.domain import MembershipError, parse_domain
    from xen_tvd.proxy.client import ProxyClient, ProxyRefused, ProxyUnreachable

    if event in ADMIT:
        try:
            memb = parse_domain(xml)
        except MembershipError as e:
            return refuse(f"refusing to {op} domain {dom}", e)
        if not memb.is_member:
            return 0
        return ask(memb.register(), f"refusing to {op} domain {dom}",
                   down=lambda e: refuse(f"refusing to {op} domain {dom} (TVD "
                                         f"{', '.join(memb.tvds)})", e))

    # cleanup: never fail; a domain whose XML we cannot read has nothing registered by us
    try:
        memb = parse_domain(xml)
        uuid, member = memb.uuid, memb.is_member
    except MembershipError:
        uuid = _uuid_only(xml)
        member = uuid is not None and UUID_RE.match(uuid) is not None
    if not member:
        return 0
    try:
        ProxyClient().unregister(uuid)
    except ProxyRefused as e:
        say(f"{op} {dom}: tvd-proxy did not unregister {uuid}: {e.error}")
    except ProxyUnreachable as e:
        say(f"{op} {dom}: could not unregister {uuid}: {e}")
    return 0


def _recheck(dom: str, xml: bytes) -> int:
    from xen_tvd.libvirt.domain import MembershipError, parse_domain

    stopping = f"stopping domain {dom} (libvirtd reconnected)"
    try:
        memb = parse_domain(xml)
    except MembershipError as e:
        return refuse(stopping, e)
    if not memb.is_member:
        return 0

    def keep(e) -> int:   # not a refusal: running members stay while the decider is down
        warn(f"domain {dom} (TVD {', '.join(memb.tvds)}) keeps running unchecked after "
             f"libvirtd reconnected: {e}")
        return 0
    from xen_tvd.proxy.requests import Check
    return ask(Check(uuid=memb.uuid, tvds=tuple(memb.tvds), name=memb.name), stopping, down=keep)


def refuse(what: str, why) -> int:
    say(f"{what}: {why}")
    return 1


def ask(req, refusing: str, down=None) -> int:
    """0 when tvd-proxy agrees to `req` (a proxy.requests request); otherwise one line
    '`refusing`: why' on stderr and 1. An unreachable proxy is refused likewise, unless
    `down(error)` decides otherwise."""
    from xen_tvd.proxy.client import ProxyClient, ProxyRefused, ProxyUnreachable
    try:
        ProxyClient().call(req)
    except ProxyUnreachable as e:
        return down(e) if down else refuse(refusing, e)
    except ProxyRefused as e:
        return refuse(refusing, e.error)
    return 0


def warn(msg: str) -> None:
    """stderr and syslog: libvirtd drops a hook's stderr when it exits 0."""
    say(msg)
    import syslog
    syslog.openlog("xen-tvd-libvirt-hook", 0, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_WARNING, msg)


def _uuid_only(xml: bytes) -> str | None:
    import xml.etree.ElementTree as ET
    try:
        return (ET.fromstring(xml).findtext("uuid") or "").strip().lower() or None
    except ET.ParseError:
        return None
