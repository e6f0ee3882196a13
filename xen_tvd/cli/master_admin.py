"""`tvdctl master …`: an administrator talks to tvd-master over mutual TLS (issue #5 item 6).

    tvdctl master [--url U] [--ca CA] [--cert C] [--key K] \
        {tvds,hosts,admissions,audit,push FILE,revoke-host H,revoke-vm UUID}

Connection settings default to $TVD_MASTER_URL, $TVD_MASTER_CA, $TVD_MASTER_CERT and
$TVD_MASTER_KEY (the files `tvd-master admin-cert NAME` writes, plus the master's ca.pem).
Exit codes as tvdctl: 0 done, 1 refused by the master (or the policy has errors),
2 usage error or master unreachable. One line per problem, no tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from typing import TYPE_CHECKING

from xen_tvd.errors import UsageError

if TYPE_CHECKING:
    # imported where used: every tvdctl command builds this parser, few need the TLS stack
    from xen_tvd.master.client import MasterClient


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("master", help="talk to tvd-master (admin certificate)",
                              description="Query and steer tvd-master over mutual TLS.")
    env = os.environ.get
    p.add_argument("--url", default=env("TVD_MASTER_URL"), help="default $TVD_MASTER_URL")
    p.add_argument("--ca", default=env("TVD_MASTER_CA"), help="master CA PEM ($TVD_MASTER_CA)")
    p.add_argument("--cert", default=env("TVD_MASTER_CERT"), help="admin cert ($TVD_MASTER_CERT)")
    p.add_argument("--key", default=env("TVD_MASTER_KEY"), help="admin key ($TVD_MASTER_KEY)")
    p.add_argument("--json", action="store_true", help="print the master's JSON answer")
    p.set_defaults(func=run, master_cmd=None)
    sub = p.add_subparsers(dest="master_cmd",
                           metavar="{tvds,hosts,admissions,audit,push,revoke-host,revoke-vm}")
    sub.add_parser("tvds", help="TVDs in force, their ids and carrying hosts")
    sub.add_parser("hosts", help="enrolled and revoked hosts")
    sub.add_parser("admissions", help="latest admission state per VM, TVD and vif")
    a = sub.add_parser("audit", help="the audit log")
    a.add_argument("--after", type=int, default=0)
    a.add_argument("--limit", type=int, default=1000)
    s = sub.add_parser("push", help="verify and install a policy file")
    s.add_argument("file")
    s = sub.add_parser("revoke-host", help="revoke a host at once")
    s.add_argument("host")
    s = sub.add_parser("revoke-vm", help="revoke a VM by UUID")
    s.add_argument("uuid")
    return p


def _client(a) -> MasterClient:
    from xen_tvd.master.client import MasterClient, MasterError
    missing = [n for n in ("url", "ca", "cert", "key") if not getattr(a, n)]
    if missing:
        raise UsageError("missing " + ", ".join(f"--{m}" for m in missing)
                     + " (or $TVD_MASTER_URL/_CA/_CERT/_KEY)")
    try:
        with open(a.ca) as f:
            ca = f.read()
    except OSError as e:
        raise UsageError(f"cannot read --ca {a.ca}: {e.strerror}") from None
    try:
        return MasterClient(a.url, ca, a.cert, a.key)
    except MasterError as e:
        raise UsageError(e.message) from None


def run(args) -> int:
    if args.master_cmd is None:
        print("tvdctl master: name a command: tvds, hosts, admissions, audit, push, "
              "revoke-host, revoke-vm", file=sys.stderr)
        return 2
    from xen_tvd.master.client import MasterError
    try:
        client = _client(args)
        return _COMMANDS[args.master_cmd](client, args)
    except UsageError as e:
        print(f"tvdctl master: {e}", file=sys.stderr)
        return 2
    except MasterError as e:
        print(f"tvdctl master: {e}", file=sys.stderr)
        for d in getattr(e, "diagnostics", []):
            print(d, file=sys.stderr)
        return 2 if e.status == 0 else 1


def _out(args, obj, lines) -> int:
    if args.json:
        json.dump(obj, sys.stdout, indent=2)
        print()
    else:
        for line in lines:
            print(line)
    return 0


def _ts(t) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _tvds(c, a) -> int:
    r = c.call("GET", "/v1/tvds")
    return _out(a, r, [f"{t['id']}  vlan {t['vlan']}  vni {t['vni']}  "
                       f"protection {','.join(t['protection'])}  hosts "
                       f"{','.join(t['hosts']) or '-'}" for t in r["tvds"]])


def _hosts(c, a) -> int:
    r = c.call("GET", "/v1/hosts")
    return _out(a, r, [f"{h['host']:20s} {h['state']:9s} generation {h['generation']:<5d} "
                       f"reported {_ts(h['reported_at'])}" for h in r["hosts"]])


def _admissions(c, a) -> int:
    r = c.call("GET", "/v1/admissions")
    return _out(a, r, [f"{x['host']} {x['tvd']} {x['vm']} ({x['name'] or '-'}) "
                       f"{x['ifname'] or '-'} {x['state']} {_ts(x['ts'])}"
                       + (f" reason: {x['reason']}" if x["reason"] else "")
                       for x in r["admissions"]])


def _audit(c, a) -> int:
    r = c.call("GET", f"/v1/audit?after={a.after}&limit={a.limit}")
    return _out(a, r, [f"{e['seq']:6d} {_ts(e['ts'])} {e['actor']} {e['event']} "
                       + " ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
                       for e in r["events"]])


def _push(c, a) -> int:
    try:
        with open(a.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {a.file}: {getattr(e, 'strerror', None) or e}") from None
    status, r = c.request("PUT", "/v1/policy", {"yaml": text,
                                                "name": os.path.basename(a.file)})
    diags = (r or {}).get("diagnostics", [])
    # the master names the file by its base name; show the path the admin typed
    base = os.path.basename(a.file)
    for d in diags:
        print(a.file + d[len(base):] if d.startswith(base + ":") else d, file=sys.stderr)
    if status != 200:
        print(f"tvdctl master: {(r or {}).get('error', f'HTTP {status}')}", file=sys.stderr)
        return 1
    print(f"policy version {r['version']} {'pushed' if r['changed'] else 'already in force'}")
    return 0


def _revoke_host(c, a) -> int:
    r = c.call("POST", f"/v1/hosts/{a.host}/revoke")
    print(f"host {a.host} {'revoked' if r['changed'] else 'was already revoked'}")
    return 0


def _revoke_vm(c, a) -> int:
    r = c.call("POST", f"/v1/vms/{a.uuid}/revoke")
    print(f"VM {r['vm']} {'revoked' if r['changed'] else 'was already revoked'}")
    return 0


_COMMANDS = {"tvds": _tvds, "hosts": _hosts, "admissions": _admissions, "audit": _audit,
             "push": _push, "revoke-host": _revoke_host, "revoke-vm": _revoke_vm}
