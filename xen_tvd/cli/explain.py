"""`tvdctl explain SRC DST [--proto P --port N] [--probe] [--json]` (issue #17.1): why can (or
can't) these two VM NICs talk. SRC and DST: a VM name or UUID, VM/ethN for one NIC, or an IP
address. The answer, in order: disagreements between policy and kernel first (a bug); the
policy (TVDs, flow entry, the deciding rule, indirect paths); the plan (hosts, segments and
their transport, router legs, MTU); the live kernel of each host involved; the probe.

Sources: `--lab SPEC` (a running lab: its proxies' live plan and kernel, probes from its VMs),
`--socket PATH --policy FILE` (standalone tvd-proxies, one socket per host: their live plan and
kernel through the proxy's `inspect` request; `--probe --yes` sends one real packet from the
source vif through the proxies' `probe` request), `--master URL` with an admin certificate
(policy, admissions and carrying hosts from the master; `--socket` for the live view of the
hosts whose proxies are given). Exit 0 when the exchange is allowed (and, probed, arrived), 1
when it is not or policy and kernel disagree, 2 usage.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys

from xen_tvd.errors import Refused, UsageError
from xen_tvd.planner.explain import PROTOCOLS, explain as explain_policy

from .explain_sources import MasterSource, ProxySource


# ---- endpoints -----------------------------------------------------------------------------

def resolve(endpoints: list[dict], text: str, policy) -> dict:
    """One endpoint for SRC/DST: VM/ethN (or VM/vifX.Y), a VM name or UUID with one NIC, or an
    IP address (a known NIC's, else the TVD whose subnet holds it)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        hits = [e for e in endpoints if e.get("address") == str(ip)]
        if len(hits) == 1:
            return hits[0]
        for t in policy.tvds.values():
            if any(ip in ipaddress.ip_network(s) for s in getattr(t, "subnets", ()) or ()):
                return {"key": str(ip), "vm": None, "uuid": None, "nic": None, "vif": None,
                        "tvd": t.name, "address": str(ip), "mac": None, "host": None}
        raise UsageError(f"{text}: no known NIC has this address and no TVD's subnet holds it")
    vm, _, nic = text.partition("/")
    cands = [e for e in endpoints if vm in (e.get("vm"), e.get("uuid"))]
    if not cands:
        known = sorted({e["vm"] for e in endpoints if e.get("vm")})
        raise UsageError(f"{text}: no such VM here (known: {', '.join(known) or 'none'})")
    if nic:
        cands = [e for e in cands if nic in (e.get("nic"), e.get("vif"))]
        if not cands:
            raise UsageError(f"{text}: VM {vm} has no NIC {nic}")
    if len(cands) > 1:
        raise UsageError(f"{text}: VM {vm} has {len(cands)} NICs ("
                         + ", ".join(f"{e['nic']} in {e['tvd']}" for e in cands)
                         + f"); name one as {vm}/ethN")
    return cands[0]


# ---- the answer ----------------------------------------------------------------------------

def _plan_vs_policy(pol: dict, src: dict, dst: dict, kernel: dict) -> list[str]:
    """Where a proxy's live plan for the pair (what it applied) is not what the policy says."""
    out = []
    if src["tvd"] == dst["tvd"]:
        return out
    pair = f"{src['tvd']}->{dst['tvd']}"
    e = pol.get("entry") or {}
    passes = pol["drop"] not in ("no-route", "closed")
    want = pol["flow"] if passes else "not routed" if pol["drop"] == "no-route" else "closed"
    for host, k in kernel.items():
        live = (k.get("flows") or {}).get(pair) if "error" not in k else None
        if live is None:
            continue
        have = live["plan"]
        if not passes:
            if have in ("open", "controlled"):
                out.append(f"host {host}: the policy says {pair} is {want}, tvd-proxy's plan "
                           f"there says {have}")
            continue
        if have == "not routed here":
            if host == src.get("host"):     # the source's host routes its VMs' packets
                out.append(f"host {host}: the policy says {pair} is {want}, but tvd-proxy's "
                           "plan there routes nothing for it")
            continue
        if have != want:
            out.append(f"host {host}: the policy says {pair} is {want}, tvd-proxy's plan "
                       f"there says {have}")
        elif have == "controlled":
            for half in ("sender", "receiver"):
                planned = (live.get(half) or {}).get("planned")
                if planned is not None and planned != e.get(half):
                    out.append(f"host {host}: the policy's {half} half of {pair} allows "
                               f"{', '.join(e.get(half) or []) or 'nothing'}, tvd-proxy's "
                               f"plan there {', '.join(planned) or 'nothing'}")
    return out


def disagreements(pol: dict, kernel: dict, probe: dict | None, src: dict, dst: dict) -> list[str]:
    """Where what the kernel does is not what the policy says: each one is a bug."""
    out = []
    for host, k in kernel.items():
        if "error" in k:
            out.append(f"host {host}: kernel not readable: {k['error']}")
            continue
        if "unasked" in k:
            continue
        for ifname, v in (k.get("vifs") or {}).items():
            if v.get("problem"):
                out.append(f"host {host}: {v['problem']}")
        for e in (src, dst):
            v = (k.get("vifs") or {}).get(e.get("vif") or "")
            if e.get("host") == host and v and v.get("tvd") not in (None, e["tvd"]):
                out.append(f"host {host}: {e['vif']} of {e.get('vm')} is in TVD {v['tvd']} "
                           f"there, not {e['tvd']}")
        for tvd, problems in (k.get("segments") or {}).items():
            out += [f"host {host}: segment {tvd}: {p}" for p in problems]
        for pair, f in (k.get("flows") or {}).items():
            out += [f"host {host}: {p}" for p in f.get("problems") or ()]
    out += _plan_vs_policy(pol, src, dst, kernel)
    if probe is not None:
        if pol["allowed"] and not probe["arrived"]:
            where = "; ".join(_drop_text(d) for d in probe["drops"]) or "no drop rule counted it"
            out.append(f"the policy allows {pol['what']} but the probe did not arrive ({where})")
        elif not pol["allowed"] and probe["arrived"] and pol["drop"] != "reply":
            out.append(f"the policy forbids {pol['what']} but the probe arrived")
        elif not pol["allowed"] and pol["drop"] not in (None, "no-route") and not (
                pol["drop"] == "reply" and probe["arrived"]):
            rules = {d["reason"] for d in probe["drops"] if d["where"] == "flow filter"}
            if pol["drop"] not in rules:
                out.append(f"the policy's {pol['drop']} rule should have dropped it; counted: "
                           + ("; ".join(_drop_text(d) for d in probe["drops"]) or "nothing"))
    return out


def _drop_text(d: dict) -> str:
    pair = f" {d['from']}->{d['to']}" if d["where"] == "flow filter" else \
        f" {d['from']}" if d["from"] else ""
    n = f" +{d['packets']}" if d.get("packets") is not None else ""
    return f"{d['where']} on {d['host']}: {d['reason']}{pair}{n}" + \
        (f" ({d['rule']})" if d.get("rule") else "")


def run(source, policy, src_text: str, dst_text: str, proto: str, port: int | None,
        probe: bool, probe_timeout: float = 1.5) -> dict:
    eps = source.endpoints()
    src, dst = resolve(eps, src_text, policy), resolve(eps, dst_text, policy)
    if src.get("vm") is not None and src.get("vm") == dst.get("vm"):
        raise UsageError("SRC and DST are NICs of one VM: their traffic never leaves the VM")
    if src.get("host") is None:
        raise UsageError(f"{src_text}: the source must be a VM NIC this source knows")
    pol = explain_policy(policy, src["tvd"], dst["tvd"], proto, port)
    kernel = source.kernel(src, dst)
    plan = source.plan(src, dst)
    pr = source.probe(src, dst, proto, port, probe_timeout) if probe else None
    dis = disagreements(pol, kernel, pr, src, dst)
    ok = pol["allowed"] and not dis and (pr is None or pr["arrived"])
    return {"source": source.kind, "src": src, "dst": dst, "disagreements": dis, "policy": pol,
            "plan": plan, "kernel": kernel, "probe": pr, "verdict":
            "allowed" if ok else "disagree" if dis else "denied"}


def _ep(e: dict) -> str:
    where = f" on {e['host']}" if e.get("host") else ""
    nic = f"/{e['nic']}" if e.get("nic") else ""
    addr = f" {e['address']}" if e.get("address") and e.get("vm") else ""
    return f"{e.get('vm') or e['address']}{nic}{addr} (TVD {e['tvd']}{where})"


def _flow_line(pair: str, f: dict) -> str:
    text = f"  flow filter {pair}: {f['plan']}"
    if f["plan"] == "controlled":
        halves = []
        for half in ("sender", "receiver"):
            h = f.get(half) or {}
            k = h.get("kernel")
            halves.append(f"{half} {', '.join(h.get('planned') or []) or 'nothing'} in "
                          f"{h.get('chain')}" + (": missing" if k is None else
                                                 ", as planned" if k == h.get("planned") else
                                                 f": the kernel has {', '.join(k) or 'nothing'}"))
        text += " (" + "; ".join(halves) + ")"
    if f["plan"] != "not routed here" and f.get("replies") is False:
        text += ", no replies"
    return text


def render(r: dict) -> list[str]:
    from xen_tvd.cli.status import transport
    p = r["policy"]
    out = [f"{_ep(r['src'])} -> {_ep(r['dst'])}, {p['what']}: {r['verdict'].upper()}"]
    for d in r["disagreements"]:
        out.append(f"  DISAGREE (a bug: the kernel does not do what the policy says): {d}")
    out.append(f"policy: {p['flow']}; {'allowed' if p['allowed'] else 'denied'}: "
               f"{p['decided_by']}")
    e = p.get("entry")
    if e:
        out.append(f"  entry {e['from']} -> {e['to']}: {e['policy']}"
                   + (f", sender allows {', '.join(e['sender']) or 'nothing'}, receiver allows "
                      f"{', '.join(e['receiver']) or 'nothing'}, passes "
                      f"{', '.join(e['passes']) or 'nothing'}" if e["policy"] == "controlled"
                      else "") + ("" if e["replies"] else ", no replies")
                   + (f" ({e['where']})" if e.get("where") else ""))
    if p["drop"]:
        out.append(f"  dropping rule: {p['drop']}")
    for path in p["indirect"]:
        out.append(f"  indirect path the verifier knows: {path}")
    for host, h in r["plan"].items():
        out.append(f"plan on {host}" + (" (what its tvd-proxy applied):" if h.get("live")
                                        else ":"))
        if h.get("unasked"):
            out.append(f"  not asked: {h['unasked']}")
        for tvd, s in h.get("segments", {}).items():
            out.append(f"  {tvd}: {s['bridge']}, {transport(s)}, mtu {s['mtu']}")
        for tvd in h.get("missing", ()):
            out.append(f"  {tvd}: no segment here")
        for tvd, gw in h.get("router", {}).items():
            out.append(f"  router leg {tvd}: {', '.join(gw) if isinstance(gw, list) else gw}")
        if h.get("carriers"):
            out.append(f"  carries: {', '.join(h['carriers'])}")
    for host, k in r["kernel"].items():
        out.append(f"kernel on {host}:")
        if "error" in k:
            out.append(f"  unreadable: {k['error']}")
            continue
        if "unasked" in k:
            out.append(f"  not asked: {k['unasked']}")
            continue
        for ifname, v in (k.get("vifs") or {}).items():
            out.append(f"  {ifname}: on {v.get('bridge') or 'no bridge'}"
                       + ("" if v.get("up", True) else ", down")
                       + (f": {v['problem']}" if v.get("problem") else ", as planned"))
        for tvd, problems in (k.get("segments") or {}).items():
            out.append(f"  segment {tvd}: " + ("; ".join(problems) or "vSwitch and uplink up"))
        for mac, entries in (k.get("fdb") or {}).items():
            out.append(f"  fdb {mac}: " + (", ".join(
                f"via {x['port']}" + (f" to {x['remote']}" if x.get("remote") else "")
                for x in entries) if isinstance(entries, list) and entries
                else "not learned (flooded)" if isinstance(entries, list) else str(entries)))
        first = f"{r['src']['tvd']}->{r['dst']['tvd']}"     # the asked direction first
        for pair, f in sorted((k.get("flows") or {}).items(), key=lambda x: x[0] != first):
            out.append(_flow_line(pair, f))
        for name in ("flow_counters", "port_counters"):
            c = k.get(name) or {}
            if c:   # the zero ones are in --json
                out.append(f"  {name.replace('_', ' ')}: "
                           + (", ".join(f"{n} {v}" for n, v in c.items() if v) or "all 0"))
    pr = r["probe"]
    if pr is not None:
        out.append("probe: " + ("arrived" if pr["arrived"] else "did not arrive")
                   + f" ({pr['detail']})")
        for d in pr["drops"]:
            out.append(f"  dropped by {_drop_text(d)}")
        for host, path in (pr.get("trace") or {}).items():
            out.append(f"  trace on {host}: " + ("; ".join(path) or "the packet did not get "
                                                                 "there"))
    return out


# ---- command -------------------------------------------------------------------------------

YES_NEEDED = ("--probe sends one real packet from {src}'s vif to {dst} on a real host: {dst}'s "
              "VM receives it and answers {src}'s. Add --yes to send it")


def _source(a):
    from xen_tvd.policy import PolicyInvalid, load_policy
    if sum(bool(x) for x in (a.lab, a.master)) > 1:
        raise UsageError("give one of --lab SPEC, --master URL, or --socket with --policy")
    if a.lab:
        from xen_tvd.lab.explain import LabSource
        from xen_tvd.lab.spec import SpecInvalid, SpecUnreadable, load_lab
        try:
            spec, policy = load_lab(a.lab)
        except (SpecUnreadable, SpecInvalid) as e:
            raise UsageError(str(e).splitlines()[0]) from None
        return LabSource(spec.name, policy), policy
    if a.master:
        from xen_tvd.master.client import MasterClient
        for k in ("ca", "cert", "key"):
            if not getattr(a, k):
                raise UsageError(f"--master needs --{k} (or $TVD_MASTER_{k.upper()})")
        with open(a.ca) as f:
            ca = f.read()
        src = MasterSource(MasterClient(a.master, ca, a.cert, a.key), a.socket)
        return src, src.policy()
    if not a.policy:
        raise UsageError("a standalone proxy: give --policy FILE (the proxy's policy) with "
                         "--socket, or use --lab SPEC or --master URL")
    try:
        policy = load_policy(a.policy)
    except PolicyInvalid as e:
        raise UsageError(f"{a.policy}: {e}") from None
    return ProxySource(a.socket), policy


def cmd_explain(a) -> int:
    from xen_tvd.lab.common import LabError
    if (a.port is None) != (a.proto in (None, "icmp")):
        raise UsageError("tcp and udp need --port N; icmp takes none")
    if a.probe and not a.lab and not a.yes:
        raise UsageError(YES_NEEDED.format(src=a.src, dst=a.dst))
    if a.yes and not a.probe:
        raise UsageError("--yes confirms --probe; give both")
    proto = a.proto or "icmp"
    try:
        source, policy = _source(a)
        r = run(source, policy, a.src, a.dst, proto, a.port, a.probe,
                a.probe_timeout if a.probe_timeout is not None else 1.5)
    except (Refused, LabError) as e:
        print(f"tvdctl explain: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=1, sort_keys=True) if a.json else "\n".join(render(r)))
    return 0 if r["verdict"] == "allowed" else 1


def _timeout(text: str) -> float:
    import argparse
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.1 <= v <= 10:
        raise argparse.ArgumentTypeError("seconds, 0.1..10")
    return v


def add_parser(sub) -> None:
    env = os.environ.get
    s = sub.add_parser("explain", help="why can (or can't) two VM NICs talk: policy, plan, "
                                       "live kernel, optional probe")
    s.add_argument("src", metavar="SRC", help="VM name or UUID, VM/ethN, or an IP address")
    s.add_argument("dst", metavar="DST")
    s.add_argument("--proto", choices=PROTOCOLS, help="default icmp")
    s.add_argument("--port", type=int, metavar="N", help="tcp/udp destination port")
    s.add_argument("--probe", action="store_true",
                   help="send one real packet and say where it was dropped or that it arrived "
                        "(a real host: with --yes)")
    s.add_argument("--yes", action="store_true",
                   help="with --probe on real hosts: yes, send a real packet from SRC's vif")
    s.add_argument("--probe-timeout", type=_timeout, metavar="S",
                   help="seconds a probe waits for its outcome (default 1.5)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--lab", metavar="SPEC", help="a running lab (tvdctl lab up SPEC)")
    s.add_argument("--socket", metavar="PATH", action="append",
                   help="a tvd-proxy socket (repeat: one per host; default this Dom0's)")
    s.add_argument("--policy", metavar="FILE", help="a standalone proxy's policy file")
    s.add_argument("--master", metavar="URL", help="ask this tvd-master (admin certificate)")
    s.add_argument("--ca", default=env("TVD_MASTER_CA"))
    s.add_argument("--cert", default=env("TVD_MASTER_CERT"))
    s.add_argument("--key", default=env("TVD_MASTER_KEY"))
    s.set_defaults(func=cmd_explain)
