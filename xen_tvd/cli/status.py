"""`tvdctl status`: what this Dom0's tvd-proxy carries (issue #17 point 2): TVDs and their
segments with transport and peers (multicast group or head-end replication remotes), router
legs, vifs with VM, admission time and session expiry, libvirt ports, the master bundle in force
and its age, drop counters, and what is degraded. Exit 0 healthy; 1 when the proxy reports
anything degraded or cannot be asked (one line says which); 2 usage."""
from __future__ import annotations

import json
import sys
import time

from xen_tvd.errors import Refused
from xen_tvd.proxy.client import ProxyClient, ProxyUnreachable

SOCK_HELP = "tvd-proxy socket (default $TVD_PROXY_SOCKET or /run/xen-tvd/proxy.sock)"


def _when(ts) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _age(seconds) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def transport(seg: dict) -> str:
    t = seg.get("transport")
    if t == "vxlan":
        peers = (f"multicast {seg['group']}" if seg.get("group") else
                 "head-end replication to " + (", ".join(seg.get("remotes") or []) or "nobody"))
        return (f"vxlan vni {seg['vni']} {peers} via {seg.get('underlay_dev')} "
                f"({seg.get('local_ip')})")
    if t == "vlan":
        return f"vlan {seg.get('vlan_id')} on {seg.get('phys_dev')}"
    if t in (None, "local"):
        return "local (no uplink)"
    # transports added later (wireguard, ...): their fields as they come
    extra = " ".join(f"{k} {v}" for k, v in seg.items()
                     if k not in ("tvd", "bridge", "mtu", "uplink", "transport", "problems"))
    return f"{t} {extra}".strip()


def render(st: dict) -> list[str]:
    now = time.time()
    m = st.get("master")
    head = f"tvd-proxy on {st['host']}: "
    if m:
        b = st.get("bundle") or {}
        head += (f"master {m['url']}, bundle generation {m.get('generation')}"
                 f"{', signed ' + _age(b.get('age')) + ' ago' if b else ''}, master heard "
                 f"{_age(m.get('contact_age'))} ago" + (" (REVOKED)" if m.get("revoked") else "")
                 + (f", {m['audit_spooled']} audit event(s) spooled"
                    if m.get("audit_spooled") else ""))
    else:
        head += "standalone (local policy)"
    out = [head, f"segments ({len(st['segments'])}):"]
    for s in st["segments"]:
        health = "ok" if not s.get("problems") else "DEGRADED: " + "; ".join(s["problems"])
        out.append(f"  {s['tvd']:<10} {s['bridge']:<15} {transport(s)}, mtu {s['mtu']}  {health}")
    if st.get("router"):
        out.append(f"router legs: {', '.join(st['router'])}")
    out.append(f"vifs ({len(st['vifs'])}):")
    for v in st["vifs"]:
        vm = v.get("vm") or "?"
        on = v.get("attached_to") or "NO BRIDGE"
        exp = v.get("session_expires")
        out.append(f"  {v['ifname']:<10} {v['tvd']:<10} vm {vm} ({v.get('uuid') or 'adopted'})"
                   f" on {on}, admitted {_when(v.get('admitted_at'))}, checked "
                   f"{_when(v.get('checked_at'))}"
                   + (f", session expires in {_age(exp - now)}" if exp else "")
                   + (", tx-csum off" if v.get("tx_csum_on") is False else ""))
    if st.get("ports"):
        out.append(f"libvirt ports ({len(st['ports'])}):")
        for p in st["ports"]:
            out.append(f"  {p['port']} {p['tvd']:<10} vm {p.get('name') or p['uuid']}")
    d = st.get("drops") or {}
    flows = [f"{x['reason']} {x['from']}->{x['to']} {x['packets']}"
             for x in d.get("flows", []) if x["packets"]]
    ports = [f"{x['ifname']} {x['reason']} {x['packets']}"
             for x in d.get("ports", []) if x["packets"]]
    out.append("drops (since the tables were last loaded"
               + (f"; logged at most {st['log_drops']}/s per rule" if st.get("log_drops")
                  else "; not logged: tvd-proxy --log-drops N") + "):")
    if "error" in d:
        out.append(f"  unreadable: {d['error']}")
    out.append("  flow filter: " + (", ".join(flows) or "none"))
    out.append("  port security: " + (", ".join(ports) or "none"))
    out.append(f"  dom0 guard: {d.get('dom0_guard', 0)}")
    for line in st.get("degraded", []):
        out.append(f"DEGRADED: {line}")
    return out


def cmd_status(args) -> int:
    try:
        st = ProxyClient(args.socket).status()
    except (Refused, ProxyUnreachable) as e:
        print(f"tvdctl status: {e}", file=sys.stderr)
        return 1
    st.pop("ok", None)
    st.pop("v", None)
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
    else:
        print("\n".join(render(st)))
    return 1 if st.get("degraded") else 0


def add_parser(sub) -> None:
    s = sub.add_parser("status", help="what this Dom0's tvd-proxy carries: segments, peers, vifs, "
                                      "drops; exit 1 when degraded")
    s.add_argument("--socket", metavar="PATH", help=SOCK_HELP)
    s.add_argument("--json", action="store_true", help="the proxy's status answer as JSON")
    s.set_defaults(func=cmd_status)
