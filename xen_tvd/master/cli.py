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

from xen_tvd.errors import Refused, UsageError
from xen_tvd.log import log, say
from xen_tvd.master import ca as camod
from xen_tvd.master import stores
from xen_tvd.master.store import StoreError, StoreUnavailable
from xen_tvd.policy.model import ASSURANCE_KINDS

DEFAULT_DIR = os.environ.get("TVD_MASTER_DIR", "/var/lib/tvd-master")


_STORE_SPEC: list[str | None] = [None]     # --store, if given (else DIR/store, else SQLite)


def _store(d: str):
    if not os.path.exists(os.path.join(d, "ca.pem")):
        raise UsageError(f"{d} is not a tvd-master directory; run 'tvd-master init --dir {d} "
                    "--url URL' first")
    return stores.open_store(d, _STORE_SPEC[0])


def _props(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, kind = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--property {item!r}: write PROPERTY=ASSURANCE")
        if kind not in ASSURANCE_KINDS:
            raise UsageError(f"--property {item!r}: assurance must be one of "
                        + ", ".join(ASSURANCE_KINDS))
        out[name] = kind
    if not out:
        raise UsageError("give at least one --property PROPERTY=ASSURANCE")
    return out


def cmd_init(a) -> int:
    spec = stores.spec_of(a.dir, _STORE_SPEC[0])
    try:
        if a.ca_from:
            ca, created = camod.init_replica(a.dir, a.url, a.ca_from)
        else:
            ca, created = camod.init_ca(a.dir, a.url)
    except camod.CaError as e:
        raise UsageError(str(e)) from None
    pin = camod.ca_pin(ca.cert)
    if spec != stores.SQLITE:
        # the cluster remembers its CA and the URL bundles name; a replica made from another
        # CA must not join it (its proxies would refuse every bundle)
        store = stores.open_store(a.dir, spec, create=True, meta={"url": a.url, "ca_pin": pin})
        meta = store.meta()
        if meta.get("ca_pin") != pin:
            raise Refused(f"{spec} belongs to a master whose CA pin is {meta.get('ca_pin')}, "
                          f"not {pin}; make this replica with --ca-from a directory of it")
        camod.write_public(os.path.join(a.dir, stores.STORE_FILE), spec + "\n")
    else:
        _store(a.dir)
    print(f"{'initialised' if created else 'already initialised'} {a.dir} for {a.url}; "
          f"CA pin {pin}; store {spec}")
    return 0


def cmd_migrate(a) -> int:
    """SQLite (DIR/master.db) -> etcd; afterwards DIR/store names the etcd store."""
    if not a.to.startswith(("etcd://", "etcds://")):
        raise UsageError("--to must be an etcd[s]://HOST:PORT[,...][/PREFIX] store")
    if stores.spec_of(a.dir) != stores.SQLITE:
        raise Refused(f"{a.dir} already uses {stores.spec_of(a.dir)}")
    src = stores.open_store(a.dir, stores.SQLITE)
    ca = camod.Ca.load(a.dir)
    with open(os.path.join(a.dir, "url")) as f:
        url = f.read().strip()
    dst = stores.open_store(a.dir, a.to, create=True,
                            meta={"url": url, "ca_pin": camod.ca_pin(ca.cert)})
    if dst.meta().get("ca_pin") != camod.ca_pin(ca.cert):
        raise Refused(f"{a.to} belongs to a master with another CA")
    counts = stores.migrate(src, dst)
    ok, msg = dst.verify_audit_chain()
    if not ok:
        raise Refused(f"after migration: {msg}")
    camod.write_public(os.path.join(a.dir, stores.STORE_FILE), a.to + "\n")
    print(f"migrated {counts['rows']} rows and {counts['audit']} audit records to {a.to} "
          f"({msg}); {a.dir}/master.db is no longer used (keep it as a backup)")
    return 0


def cmd_serve(a) -> int:
    from xen_tvd.master.server import make_server
    from xen_tvd.master.service import Master
    master = Master(a.dir, _store(a.dir))
    listen = a.listen or _listen_of(master.url_here)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        srv = make_server(master, host, int(port))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot listen on {listen}: {getattr(e, 'strerror', None) or e}") from None
    master.start()
    writer = _metrics_writer(a, master)
    page_srv = _page_server(a, master, writer)

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    addr = srv.server_address
    log("info", "listening", addr=f"{addr[0]}:{addr[1]}", url=master.url)
    srv.serve_forever(poll_interval=0.2)
    srv.server_close()
    if page_srv is not None:
        page_srv.shutdown()
        page_srv.server_close()
    if writer is not None:
        writer.stop()
    master.stop()
    log("info", "stopped")
    return 0


def _page_server(a, master, writer):
    """The loopback page server of --page-listen (docs/master.md, "The page"), or None."""
    if not a.page_listen:
        return None
    from xen_tvd.master import page_listener
    try:
        return page_listener.start(master, a.page_listen)
    except UsageError:
        if writer is not None:
            writer.stop()
        master.stop()
        raise


def _metrics_writer(a, master):
    """The textfile writer of --metrics-textfile (docs/metrics.md), started; or None."""
    if not a.metrics_textfile:
        return None
    from xen_tvd.master.metrics import MasterMetrics
    from xen_tvd.metrics import TextfileWriter
    try:
        w = TextfileWriter(a.metrics_textfile, MasterMetrics(master).collect, a.metrics_interval)
        w.start()
    except (OSError, ValueError) as e:
        master.stop()
        raise UsageError(f"--metrics-textfile {a.metrics_textfile}: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    return w


def _listen_of(url: str) -> str:
    from urllib.parse import urlsplit
    p = urlsplit(url)
    return f"{p.hostname}:{p.port or 443}"


def cmd_token(a) -> int:
    store = _store(a.dir)
    from xen_tvd.master.server import HOST_NAME
    if not HOST_NAME.match(a.host):
        raise UsageError(f"host name {a.host!r}: use 1-63 of A-Z a-z 0-9 . _ - (as in the policy)")
    if not (1 <= a.ttl <= 30 * 86400):
        raise UsageError("--ttl must be 1..2592000 seconds")
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
        raise UsageError(str(getattr(e, "strerror", None) and f"{a.file}: {e.strerror}" or e)) \
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
        raise UsageError(f"--uuid {a.uuid!r} is not a UUID") from None
    props = _props(a.property)
    ca = camod.Ca.load(a.dir)
    key = camod.new_ec_key()
    cert = ca.issue_vm(key.public_key(), a.name, vm, props, a.days)
    try:
        camod.write_private_key(a.out + ".key", key)
    except FileExistsError:
        raise UsageError(f"{a.out}.key exists; choose another --out or remove it") from None
    camod.write_public(a.out + ".pem", camod.pem(cert))
    store.add_vm_cert(cert.serial_number, a.name, vm, props, _actor())
    print(f"wrote {a.out}.pem and {a.out}.key (serial {cert.serial_number})")
    return 0


def cmd_image_allow(a) -> int:
    import re
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", a.digest):
        raise UsageError("image digest must be sha256:<64 lowercase hex digits>")
    _store(a.dir).allow_image(a.digest, _props(a.property), _actor())
    print(f"image {a.digest} allowed")
    return 0


def cmd_revoke_vm(a) -> int:
    store = _store(a.dir)
    if (a.uuid is None) == (a.serial is None):
        raise UsageError("give a VM UUID or --serial N (not both)")
    try:
        if a.serial is not None:
            changed = store.revoke_vm_cert(a.serial, _actor())
            what = f"VM certificate {a.serial}"
        else:
            try:
                vm = str(uuidlib.UUID(a.uuid))
            except ValueError:
                raise UsageError(f"{a.uuid!r} is not a UUID") from None
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
        raise UsageError(f"{out}.key exists; choose another --out or remove it") from None
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
    p.add_argument("--store", help="sqlite (DIR/master.db, the default) or "
                   "etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX] (etcds: TLS, with DIR/etcd-ca.pem, "
                   "etcd-client.pem, etcd-client.key); init remembers it in DIR/store")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    s = sub.add_parser("init", help="create the CA, TLS and policy-signing certificates")
    s.add_argument("--url", required=True, help="https://HOST:PORT proxies will use")
    s.add_argument("--ca-from", metavar="DIR", help="a replica: copy the CA and signer keys "
                   "from this master directory and make a TLS certificate for --url")
    s.set_defaults(func=cmd_init)
    s = sub.add_parser("migrate", help="copy the SQLite store into etcd and use etcd")
    s.add_argument("--to", required=True, metavar="etcd://...")
    s.set_defaults(func=cmd_migrate)
    s = sub.add_parser("serve", help="run the HTTPS API (on etcd: one of several replicas)")
    s.add_argument("--listen", help="ADDR:PORT (default: host and port of the URL)")
    s.add_argument("--metrics-textfile", metavar="PATH",
                   help="write Prometheus metrics here for node-exporter's textfile collector, "
                        "e.g. /var/lib/prometheus/node-exporter/tvd-master.prom")
    s.add_argument("--metrics-interval", type=float, default=15.0, metavar="SECONDS",
                   help="how often the metrics file is rewritten (default 15)")
    s.add_argument("--page-listen", metavar="ADDR:PORT",
                   help="also serve the read-only page over plain HTTP on this loopback "
                        "address (admins elsewhere: GET /v1/page with their certificate)")
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
    _STORE_SPEC[0] = args.store
    try:
        return args.func(args)
    except UsageError as e:
        say("error", f"tvd-master: {e}")
        return 2
    except (Refused, StoreError, StoreUnavailable, camod.CaError) as e:
        say("error", f"tvd-master: {e}")
        return 1
    except OSError as e:
        say("error", f"tvd-master: {getattr(e, 'filename', '') or ''}: {e.strerror or e}")
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        os.umask(old_umask)


if __name__ == "__main__":
    sys.exit(main())
