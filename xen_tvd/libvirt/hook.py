"""The libvirt domain hook: /etc/libvirt/hooks/{libxl,qemu} (or libxl.d/, qemu.d/).

libvirt runs it as `hook <domain> <operation> <sub-op> <extra>` with the full domain XML on
stdin; a non-zero exit fails the operation and libvirt logs our stderr.

  prepare begin, start begin   register UUID -> membership with tvd-proxy; any refusal, an
                               unreachable proxy or a contradictory membership fails the start
                               (fail closed). A domain in no TVD passes without a proxy call.
  stopped end, release end     unregister (best effort; never fails)
  anything else                exit 0 at once, print nothing (migrate/restore read our stdout)

It never calls back into libvirt (libvirt holds the domain lock and would deadlock), and imports
only the standard library and xen_tvd's light modules (it runs for every domain event).
"""
from __future__ import annotations

import sys

ADMIT = {("prepare", "begin"), ("start", "begin")}
CLEANUP = {("stopped", "end"), ("release", "end")}


def _say(msg: str) -> None:
    print(f"xen-tvd: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, stdin=None) -> int:
    argv = sys.argv if argv is None else argv
    stdin = sys.stdin.buffer if stdin is None else stdin
    if len(argv) < 4:
        _say(f"usage: {argv[0] if argv else 'libvirt-hook'} DOMAIN OPERATION SUB-OP [EXTRA] "
             f"(run by libvirtd, domain XML on stdin)")
        return 2
    dom, op, sub = argv[1], argv[2], argv[3]
    event = (op, sub)
    if event not in ADMIT and event not in CLEANUP:
        return 0
    xml = stdin.read()

    from xen_tvd.libvirt.domain import MembershipError, UUID_RE, parse_domain
    from xen_tvd.proxy.protocol import ProxyUnreachable, request

    if event in ADMIT:
        try:
            memb = parse_domain(xml)
        except MembershipError as e:
            _say(f"refusing to {op} domain {dom}: {e}")
            return 1
        if not memb.is_member:
            return 0
        try:
            resp = request(memb.register_request())
        except ProxyUnreachable as e:
            _say(f"refusing to {op} domain {dom} (TVD {', '.join(memb.tvds)}): {e}")
            return 1
        if not resp.get("ok"):
            _say(f"refusing to {op} domain {dom}: {resp.get('error') or 'tvd-proxy said no (no reason given)'}")
            return 1
        return 0

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
        resp = request({"v": 1, "op": "unregister", "uuid": uuid})
        if not resp.get("ok"):
            _say(f"{op} {dom}: tvd-proxy did not unregister {uuid}: {resp.get('error')}")
    except ProxyUnreachable as e:
        _say(f"{op} {dom}: could not unregister {uuid}: {e}")
    return 0


def _uuid_only(xml: bytes) -> str | None:
    import xml.etree.ElementTree as ET
    try:
        return (ET.fromstring(xml).findtext("uuid") or "").strip().lower() or None
    except ET.ParseError:
        return None
