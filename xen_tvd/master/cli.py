"""tvd-master: the master's command line (operating guide: docs/master.md).

Local commands (token, revoke, policy push, vm-cert, image allow, revoke-vm, admin-cert, audit,
hosts) open DIR/master.db directly: whoever can read DIR is the master's administrator. A
running `serve` picks their changes up within a fraction of a second (store epoch).

Exit codes: 0 done (also when it was already so: commands are idempotent), 1 refused,
2 usage error, unreadable input or an invalid policy. Errors are one line, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
import time
import uuid as uuidlib

from xen_tvd.master import ca as camod
from xen_tvd.master.store import Store, StoreError
from xen_tvd.policy.model import ASSURANCE_KINDS

DEFAULT_DIR = os.environ.get("TVD_MASTER_DIR", "/var/lib/tvd-master")


class Refused(Exception):
    pass


class Usage(Exception):
    pass


def _store(d: str) -> Store:
    if not os.path.exists(os.path.join(d, "ca.pem")):
        raise Usage(f"{d} is not a tvd-master directory; run 'tvd-master init --dir {d} "
                    "--url URL' first")
    return Store(os.path.join(d, "master.db"))


def _props(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, kind = item.partition("=")
        if not sep or not name:
            raise Usage(f"--property {item!r}: write PROPERTY=ASSURANCE")
        if kind not in ASSURANCE_KINDS:
            raise Usage(f"--property {item!r}: assurance must be one of "
                        + ", ".join(ASSURANCE_KINDS))
        out[name] = kind
    if not out:
        raise Usage("give at least one --property PROPERTY=ASSURANCE")
    return out


def cmd_init(a) -> int:
    try:
        ca, created = camod.init_ca(a.dir, a.url)
    except camod.CaError as e:
        raise Usage(str(e)) from None
    _store(a.dir)
    print(f"{'initialised' if created else 'already initialised'} {a.dir} for {a.url}; "
          f"CA pin {camod.ca_pin(ca.cert)}")
    return 0


def cmd_serve(a) -> int:
    from xen_tvd.master.server import make_server
    from xen_tvd.master.service import Master
    from xen_tvd.proxy.log import log
    _store(a.dir)
    master = Master(a.dir)
    listen = a.listen or _listen_of(master.url)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        srv = make_server(master, host, int(port))
    except (OSError, ValueError) as e:
        raise Usage(f"cannot listen on {listen}: {getattr(e, 'strerror', None) or e}") from None
    master.start()

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    addr = srv.server_address
    log("info", "listening", addr=f"{addr[0]}:{addr[1]}", url=master.url)
    srv.serve_forever(poll_interval=0.2)
    srv.server_close()
    master.stop()
    log("info", "stopped")
    return 0


def _listen_of(url: str) -> str:
    from urllib.parse import urlsplit
    p = urlsplit(url)
    return f"{p.hostname}:{p.port or 443}"


def cmd_token(a) -> int:
    store = _store(a.dir)
    from xen_tvd.master.server import HOST_NAME
    if not HOST_NAME.match(a.host):
        raise Usage(f"host name {a.host!r}: use 1-63 of A-Z a-z 0-9 . _ - (as in the policy)")
    if not (1 <= a.ttl <= 30 * 86400):
        raise Usage("--ttl must be 1..2592000 seconds")
    ca = camod.Ca.load(a.dir)
    tid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    expires = store.add_token(tid, secret, a.host, a.ttl, _actor())
    print(f"tvd1.{tid}.{secret}.{camod.ca_pin(ca.cert)}")
    print(f"one-time token for host {a.host}, valid until "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))}", file=sys.stderr)
    return 0


def cmd_revoke(a) -> int:
    try:
        changed = _store(a.dir).revoke_host(a.host, _actor())
    except StoreError as e:
        raise Refused(str(e)) from None
    print(f"host {a.host} {'revoked' if changed else 'was already revoked'}")
    return 0


def cmd_policy_push(a) -> int:
    from xen_tvd.policy import YamlUnreadable, check_file
    store = _store(a.dir)
    try:
        policy, diags = check_file(a.file)
        with open(a.file, encoding="utf-8") as f:
            text = f.read()
    except (YamlUnreadable, OSError, UnicodeDecodeError) as e:
        raise Usage(str(getattr(e, "strerror", None) and f"{a.file}: {e.strerror}" or e)) \
            from None
    for d in diags:
        print(d, file=sys.stderr)
    if policy is None:
        print(f"tvd-master: {a.file} has errors; nothing pushed", file=sys.stderr)
        return 2
    version, changed = store.add_policy(text, os.path.basename(a.file), _actor())
    print(f"policy version {version} {'pushed' if changed else 'already in force'}")
    return 0


def cmd_vm_cert(a) -> int:
    store = _store(a.dir)
    try:
        vm = str(uuidlib.UUID(a.uuid))
    except ValueError:
        raise Usage(f"--uuid {a.uuid!r} is not a UUID") from None
    props = _props(a.property)
    ca = camod.Ca.load(a.dir)
    key = camod.new_ec_key()
    cert = ca.issue_vm(key.public_key(), a.name, vm, props, a.days)
    try:
        camod.write_private_key(a.out + ".key", key)
    except FileExistsError:
        raise Usage(f"{a.out}.key exists; choose another --out or remove it") from None
    camod.write_public(a.out + ".pem", camod.pem(cert))
    store.add_vm_cert(cert.serial_number, a.name, vm, props, _actor())
    print(f"wrote {a.out}.pem and {a.out}.key (serial {cert.serial_number})")
    return 0


def cmd_image_allow(a) -> int:
    import re
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", a.digest):
        raise Usage("image digest must be sha256:<64 lowercase hex digits>")
    _store(a.dir).allow_image(a.digest, _props(a.property), _actor())
    print(f"image {a.digest} allowed")
    return 0


def cmd_revoke_vm(a) -> int:
    store = _store(a.dir)
    if (a.uuid is None) == (a.serial is None):
        raise Usage("give a VM UUID or --serial N (not both)")
    try:
        if a.serial is not None:
            changed = store.revoke_vm_cert(a.serial, _actor())
            what = f"VM certificate {a.serial}"
        else:
            try:
                vm = str(uuidlib.UUID(a.uuid))
            except ValueError:
                raise Usage(f"{a.uuid!r} is not a UUID") from None
            changed = store.revoke_vm(vm, _actor())
            what = f"VM {vm}"
    except StoreError as e:
        raise Refused(str(e)) from None
    print(f"{what} {'revoked' if changed else 'was already revoked'}")
    return 0


def cmd_admin_cert(a) -> int:
    store = _store(a.dir)
    out = a.out or a.name
    ca = camod.Ca.load(a.dir)
    key = camod.new_ec_key()
    cert = ca.issue_client(key.public_key(), a.name, camod.ADMIN_OU, camod.ADMIN_CERT_DAYS)
    try:
        camod.write_private_key(out + ".key", key)
    except FileExistsError:
        raise Usage(f"{out}.key exists; choose another --out or remove it") from None
    camod.write_public(out + ".pem", camod.pem(cert))
    store.add_admin(a.name, cert.serial_number, _actor())
    print(f"wrote {out}.pem and {out}.key for admin {a.name}; CA: {a.dir}/ca.pem")
    return 0


def cmd_revoke_admin(a) -> int:
    try:
        n = _store(a.dir).revoke_admin(a.name, _actor())
    except StoreError as e:
        raise Refused(str(e)) from None
    print(f"admin {a.name}: {n} certificate(s) revoked" if n
          else f"admin {a.name} was already revoked")
    return 0


def cmd_audit(a) -> int:
    store = _store(a.dir)
    if a.verify:
        ok, msg = store.verify_audit_chain()
        print(msg)
        return 0 if ok else 1
    for e in store.audit_events(a.after, a.limit):
        if a.json:
            print(json.dumps(e, sort_keys=True))
        else:
            ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e["ts"]))
            detail = " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
            print(f"{e['seq']:6d} {ts} {e['actor']} {e['event']} {detail}")
    return 0


def cmd_hosts(a) -> int:
    hosts = _store(a.dir).hosts()
    if a.json:
        print(json.dumps(hosts, indent=2))
        return 0
    for h in hosts:
        print(f"{h['host']:20s} {h['state']:9s} generation {h['generation']:<5d} "
              f"cert until {time.strftime('%Y-%m-%d', time.gmtime(h['cert_expires']))}"
              f"{'' if h['reported_at'] else '  (no capability report)'}")
    return 0


def _actor() -> str:
    return f"cli:{os.environ.get('SUDO_USER') or os.environ.get('USER') or os.getuid()}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvd-master", description="the TVD master (paper 5)")
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help="state directory (default $TVD_MASTER_DIR or /var/lib/tvd-master)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    s = sub.add_parser("init", help="create the CA, TLS and policy-signing certificates")
    s.add_argument("--url", required=True, help="https://HOST:PORT proxies will use")
    s.set_defaults(func=cmd_init)
    s = sub.add_parser("serve", help="run the HTTPS API")
    s.add_argument("--listen", help="ADDR:PORT (default: host and port of the URL)")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("token", help="print a one-time enrolment token for HOST")
    s.add_argument("host")
    s.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    s.set_defaults(func=cmd_token)
    s = sub.add_parser("revoke", help="revoke an enrolled host at once")
    s.add_argument("host")
    s.set_defaults(func=cmd_revoke)
    s = sub.add_parser("policy", help="policy commands")
    ps = s.add_subparsers(dest="pcmd", metavar="push", required=True)
    pp = ps.add_parser("push", help="verify and install a policy file")
    pp.add_argument("file")
    pp.set_defaults(func=cmd_policy_push)
    s = sub.add_parser("vm-cert", help="issue a VM certificate (admission evidence)")
    s.add_argument("name")
    s.add_argument("--uuid", required=True)
    s.add_argument("--property", action="append", metavar="P=ASSURANCE")
    s.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.pem/.key")
    s.add_argument("--days", type=float, default=camod.VM_CERT_DAYS)
    s.set_defaults(func=cmd_vm_cert)
    s = sub.add_parser("image", help="image evidence rules")
    isub = s.add_subparsers(dest="icmd", metavar="allow", required=True)
    ia = isub.add_parser("allow", help="VMs booted from this image digest hold these properties")
    ia.add_argument("digest", metavar="sha256:HEX")
    ia.add_argument("--property", action="append", metavar="P=ASSURANCE")
    ia.set_defaults(func=cmd_image_allow)
    s = sub.add_parser("revoke-vm", help="revoke a VM (by UUID) or a VM certificate")
    s.add_argument("uuid", nargs="?")
    s.add_argument("--serial", type=int)
    s.set_defaults(func=cmd_revoke_vm)
    s = sub.add_parser("admin-cert", help="issue an admin client certificate")
    s.add_argument("name")
    s.add_argument("--out", metavar="PREFIX", help="writes PREFIX.pem/.key (default NAME)")
    s.set_defaults(func=cmd_admin_cert)
    s = sub.add_parser("revoke-admin", help="revoke an admin's certificates at once")
    s.add_argument("name")
    s.set_defaults(func=cmd_revoke_admin)
    s = sub.add_parser("audit", help="print the audit log")
    s.add_argument("--after", type=int, default=0)
    s.add_argument("--limit", type=int, default=100000)
    s.add_argument("--json", action="store_true")
    s.add_argument("--verify", action="store_true", help="check the hash chain")
    s.set_defaults(func=cmd_audit)
    s = sub.add_parser("hosts", help="list enrolled and revoked hosts")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_hosts)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and 2
    # everything tvd-master writes (database, WAL, certificates, keys) is for its admin only;
    # restored afterwards because tests and tools call main() in their own process
    old_umask = os.umask(0o077)
    try:
        return args.func(args)
    except Usage as e:
        print(f"tvd-master: {e}", file=sys.stderr)
        return 2
    except (Refused, StoreError, camod.CaError) as e:
        print(f"tvd-master: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"tvd-master: {getattr(e, 'filename', '') or ''}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        os.umask(old_umask)


if __name__ == "__main__":
    sys.exit(main())
