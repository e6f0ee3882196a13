"""`tvdctl explain SRC DST [--proto P --port N] [--probe] [--json]` (issue #17.1): why can (or
can't) these two VM NICs talk. SRC and DST: a VM name or UUID, VM/ethN for one NIC, or an IP
address. The answer, in order: disagreements between policy and kernel first (a bug); the
policy (TVDs, flow entry, the deciding rule, indirect paths); the plan (hosts, segments and
their transport, router legs, MTU); the live kernel of each host involved; the probe.

Sources: `--lab SPEC` (a running lab: plan, kernel and probes), `--socket PATH --policy FILE`
(a standalone tvd-proxy: its status is the kernel's view), `--master URL` with an admin
certificate (policy, admissions and carrying hosts from the master; add `--socket` for the live
view of this Dom0). Exit 0 when the exchange is allowed (and, probed, arrived), 1 when it is not
or policy and kernel disagree, 2 usage.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys

from xen_tvd.errors import Refused, UsageError
from xen_tvd.planner.explain import PROTOCOLS, explain as explain_policy


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

def disagreements(pol: dict, kernel: dict, probe: dict | None, src: dict, dst: dict) -> list[str]:
    """Where what the kernel does is not what the policy says: each one is a bug."""
    out = []
    for host, k in kernel.items():
        if "error" in k:
            out.append(f"host {host}: kernel not readable: {k['error']}")
            continue
        for ifname, v in (k.get("vifs") or {}).items():
            if v.get("problem"):
                out.append(f"host {host}: {v['problem']}")
        for tvd, problems in (k.get("segments") or {}).items():
            out += [f"host {host}: segment {tvd}: {p}" for p in problems]
    if probe is not None:
        if pol["allowed"] and not probe["arrived"]:
            where = "; ".join(_drop_text(d) for d in probe["drops"]) or "no drop rule counted it"
            out.append(f"the policy allows {pol['what']} but the probe did not arrive ({where})")
        elif not pol["allowed"] and probe["arrived"] and pol["drop"] != "reply":
            out.append(f"the policy forbids {pol['what']} but the probe arrived")
        elif not pol["allowed"] and pol["drop"] not in (None, "no-route"):
            rules = {d["reason"] for d in probe["drops"] if d["where"] == "flow filter"}
            if pol["drop"] not in rules:
                out.append(f"the policy's {pol['drop']} rule should have dropped it; counted: "
                           + ("; ".join(_drop_text(d) for d in probe["drops"]) or "nothing"))
    return out


def _drop_text(d: dict) -> str:
    pair = f" {d['from']}->{d['to']}" if d["where"] == "flow filter" else \
        f" {d['from']}" if d["from"] else ""
    return f"{d['where']} on {d['host']}: {d['reason']}{pair} +{d['packets']}"


def run(source, policy, src_text: str, dst_text: str, proto: str, port: int | None,
        probe: bool, probe_timeout: float = 1.5) -> dict:
    eps = source.endpoints()
    src, dst = resolve(eps, src_text, policy), resolve(eps, dst_text, policy)
    if src.get("vm") is not None and src.get("vm") == dst.get("vm"):
        raise UsageError("SRC and DST are NICs of one VM: their traffic never leaves the VM")
    if src.get("host") is None:
        raise UsageError(f"{src_text}: the source must be a VM NIC this source knows")
    pol = explain_policy(policy, src["tvd"], dst["tvd"], proto, port)
    ends = [e for e in (src, dst) if e.get("host")]
    plan = source.plan(ends)
    kernel = source.kernel(src, dst)
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


def render(r: dict) -> list[str]:
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
        out.append(f"plan on {host}:")
        for tvd, s in h.get("segments", {}).items():
            from xen_tvd.cli.status import transport
            out.append(f"  {tvd}: {s['bridge']}, {transport(s)}, mtu {s['mtu']}")
        for tvd, gw in h.get("router", {}).items():
            out.append(f"  router leg {tvd}: {', '.join(gw) if isinstance(gw, list) else gw}")
        if h.get("carriers"):
            out.append(f"  carries: {', '.join(h['carriers'])}")
    for host, k in r["kernel"].items():
        out.append(f"kernel on {host}:")
        if "error" in k:
            out.append(f"  unreadable: {k['error']}")
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
    return out


# ---- sources -------------------------------------------------------------------------------

class ProxySource:
    """A standalone (or master-mode) tvd-proxy on this Dom0: its status is the kernel's view."""
    kind = "proxy"

    def __init__(self, socket_path: str | None) -> None:
        from xen_tvd.proxy.client import ProxyClient, ProxyUnreachable
        try:
            self.st = ProxyClient(socket_path).status()
        except (Refused, ProxyUnreachable) as e:
            raise Refused(str(e)) from None

    def endpoints(self) -> list[dict]:
        out = []
        for v in self.st.get("vifs", []):
            nic = f"eth{v['devid']}" if v.get("devid") is not None else v["ifname"]
            addrs = v.get("addresses") or []
            out.append({"key": f"{v.get('vm') or v.get('uuid')}/{nic}", "vm": v.get("vm"),
                        "uuid": v.get("uuid"), "nic": nic, "vif": v["ifname"], "tvd": v["tvd"],
                        "address": addrs[0].split("/")[0] if addrs else None,
                        "mac": v.get("mac"), "host": self.st["host"]})
        return out

    def plan(self, ends: list[dict]) -> dict:
        tvds = {e["tvd"] for e in ends}
        here = [e for e in ends if e["host"] == self.st["host"]]
        if not here:
            return {}
        return {self.st["host"]: {"segments": {s["tvd"]: s for s in self.st.get("segments", [])
                                               if s["tvd"] in tvds},
                                  "router": {t: "leg" for t in self.st.get("router", [])
                                             if t in tvds}}}

    def kernel(self, src: dict, dst: dict) -> dict:
        host = self.st["host"]
        mine = [e for e in (src, dst) if e.get("host") == host]
        if not mine:
            return {}
        vifs = {v["ifname"]: v for v in self.st.get("vifs", [])}
        segs = {s["tvd"]: s.get("problems", []) for s in self.st.get("segments", [])}
        tvds = {e["tvd"] for e in (src, dst)}
        drops = self.st.get("drops") or {}
        entry = {"segments": {t: segs.get(t, [f"no segment for {t} here"]) for t in
                              {e["tvd"] for e in mine}},
                 "vifs": {}, "flow_counters": {
                     f"{d['reason']} {d['from']}->{d['to']}": d["packets"]
                     for d in drops.get("flows", []) if {d["from"], d["to"]} == tvds
                     and len(tvds) == 2},
                 "port_counters": {f"{d['ifname']} {d['reason']}": d["packets"]
                                   for d in drops.get("ports", [])
                                   if d["ifname"] in {e["vif"] for e in mine}}}
        bridges = {s["tvd"]: s["bridge"] for s in self.st.get("segments", [])}
        for e in mine:
            v = vifs.get(e["vif"], {})
            on = v.get("attached_to")
            want = bridges.get(e["tvd"])
            entry["vifs"][e["vif"]] = {"bridge": on, "problem": None if on == want else
                                       f"{e['vif']} is on {on or 'no bridge'}, not on {want}"}
        return {host: entry}

    def probe(self, *a, **k):
        raise UsageError("--probe runs in a lab (tvdctl explain --lab SPEC); probing real hosts "
                         "is not implemented")


class MasterSource(ProxySource):
    """The master: policy, admitted NICs and carrying hosts; this Dom0's proxy (--socket) for
    the live view of the NICs it carries."""
    kind = "master"

    def __init__(self, client, socket_path: str | None) -> None:
        from xen_tvd.master.client import MasterError
        try:
            self.adm = client.call("GET", "/v1/admissions")["admissions"]
            self.tvds = {t["name"]: t for t in client.call("GET", "/v1/tvds")["tvds"]}
            self.policy_text = client.call("GET", "/v1/policy")
        except MasterError as e:
            raise Refused(str(e)) from None
        self.st = None
        if socket_path:
            super().__init__(socket_path)

    def policy(self):
        from xen_tvd.master.service import verify_policy_text
        pol, diags = verify_policy_text(self.policy_text["yaml"], self.policy_text["name"])
        if pol is None:
            raise Refused("the master's policy does not verify here: " + "; ".join(diags[:3]))
        return pol

    def endpoints(self) -> list[dict]:
        live = {(e["host"], e["vif"]): e for e in (super().endpoints() if self.st else [])}
        out = []
        for a in self.adm:
            if a["state"] != "admitted" or not a.get("ifname"):
                continue
            e = live.get((a["host"], a["ifname"]))
            out.append({"key": f"{a.get('name') or a['vm']}/{a['ifname']}",
                        "vm": a.get("name") or a["vm"], "uuid": a["vm"],
                        "nic": e["nic"] if e else a["ifname"], "vif": a["ifname"],
                        "tvd": a["tvd"], "address": e["address"] if e else None,
                        "mac": e["mac"] if e else None, "host": a["host"]})
        return out

    def plan(self, ends: list[dict]) -> dict:
        out = {e["host"]: {"carriers": [], "segments": {}, "router": {}} for e in ends}
        for h in out:
            out[h]["carriers"] = sorted(t for t, x in self.tvds.items() if h in x["hosts"])
        if self.st is not None:     # this Dom0's segments and legs, next to the carriers
            for h, v in super().plan(ends).items():
                out.setdefault(h, {}).update(v)
        return out

    def kernel(self, src: dict, dst: dict) -> dict:
        return super().kernel(src, dst) if self.st is not None else {}


# ---- command -------------------------------------------------------------------------------

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
    proto = a.proto or "icmp"
    try:
        source, policy = _source(a)
        r = run(source, policy, a.src, a.dst, proto, a.port, a.probe)
    except (Refused, LabError) as e:
        print(f"tvdctl explain: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=1, sort_keys=True) if a.json else "\n".join(render(r)))
    return 0 if r["verdict"] == "allowed" else 1


def add_parser(sub) -> None:
    env = os.environ.get
    s = sub.add_parser("explain", help="why can (or can't) two VM NICs talk: policy, plan, "
                                       "live kernel, optional probe")
    s.add_argument("src", metavar="SRC", help="VM name or UUID, VM/ethN, or an IP address")
    s.add_argument("dst", metavar="DST")
    s.add_argument("--proto", choices=PROTOCOLS, help="default icmp")
    s.add_argument("--port", type=int, metavar="N", help="tcp/udp destination port")
    s.add_argument("--probe", action="store_true", help="send one real packet (a lab) and say "
                                                        "where it died or that it arrived")
    s.add_argument("--json", action="store_true")
    s.add_argument("--lab", metavar="SPEC", help="a running lab (tvdctl lab up SPEC)")
    s.add_argument("--socket", metavar="PATH", help="this Dom0's tvd-proxy socket")
    s.add_argument("--policy", metavar="FILE", help="a standalone proxy's policy file")
    s.add_argument("--master", metavar="URL", help="ask this tvd-master (admin certificate)")
    s.add_argument("--ca", default=env("TVD_MASTER_CA"))
    s.add_argument("--cert", default=env("TVD_MASTER_CERT"))
    s.add_argument("--key", default=env("TVD_MASTER_KEY"))
    s.set_defaults(func=cmd_explain)
