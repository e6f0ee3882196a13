"""What the kernel does for one exchange between two VM NICs (`tvdctl explain`, the proxy's
`inspect` request): read-only, bounded, and cheap at scale — only the chains of the vifs and
the TVD pair asked about are listed, never a whole table.

    inspect(state, tvds, vifs, mac, netns=None) -> {
      "segments": {tvd: [problem, ...]},               # health() of these TVDs' segments
      "vifs": {ifname: {bridge, up, problem}},          # the vSwitch each vif is on now
      "fdb": {tvd: [{port, remote, static}]},           # where the TVD's vSwitch sends `mac`
      "flows": {"a->b": {plan, replies, sender, receiver, counters, problems}},
      "rules": [{where, for, chain, handle, rule, reason, packets}]}   # port security

`flows` compares the plan's pair (open / controlled with its halves / closed) with the chains
the kernel holds for it (inet xen_tvd_flows s_<a>_<b>, r_<a>_<b>): a half whose rules differ
from the plan's is a problem (the policy and the kernel disagree). Counters are the pair's drop
counters (closed, reply, sender, receiver) in both directions.
"""
from __future__ import annotations

import dataclasses
import json

from xen_tvd.desired import model

from . import flowfilter, nftables, portsec
from .bpf import ports as bpf_ports
from .health import fdb, health
from .report import DataplaneError

MAX_RULES = 64          # rules listed per chain
MAX_TEXT = 160          # characters of one rule's text
MAX_FDB = 16            # forwarding entries per MAC
FLOW_REASONS = ("closed", "reply", "sender", "receiver")


# ---- nft JSON -> short text ------------------------------------------------------------------

def _value(v) -> str:
    if isinstance(v, dict):
        if "range" in v:
            return "-".join(_value(x) for x in v["range"])
        if "set" in v:
            return "{ " + ", ".join(_value(x) for x in v["set"]) + " }"
        if "prefix" in v:
            return f"{_value(v['prefix'].get('addr'))}/{v['prefix'].get('len')}"
        if "payload" in v:
            p = v["payload"]
            return f"{p.get('protocol', '@')} {p.get('field', p.get('offset', '?'))}"
        if "meta" in v:
            return f"meta {v['meta'].get('key')}"
        if "ct" in v:
            return f"ct {v['ct'].get('key')}"
        if "map" in v:
            return f"{_value(v['map'].get('key'))} map {_value(v['map'].get('data'))}"
        return json.dumps(v, sort_keys=True)
    if isinstance(v, list):
        return "{ " + ", ".join(_value(x) for x in v) + " }"
    return str(v)


def _expr(e: dict) -> str:
    k, v = next(iter(e.items()))
    if k == "match":
        op = v.get("op", "==")
        return f"{_value(v.get('left'))} {'' if op in ('==', 'in') else op + ' '}" \
               f"{_value(v.get('right'))}"
    if k == "counter":
        if isinstance(v, dict) and "packets" in v:
            return "counter"
        return f"counter name {_value(v)}"
    if k in ("accept", "drop", "return", "notrack"):
        return k
    if k in ("jump", "goto"):
        return f"{k} {v.get('target')}"
    if k == "limit":
        return f"limit rate {v.get('rate')}/{v.get('per')}"
    if k == "log":
        return f'log prefix "{v.get("prefix", "")}"'
    if k == "vmap":
        return f"{_value(v.get('key'))} vmap {_value(v.get('data'))}"
    return k


def rule_text(expr: list) -> str:
    """A rule's expressions as short nft-like text (for people: nothing parses it back)."""
    text = " ".join(_expr(e) for e in expr if isinstance(e, dict) and e)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def chain_rules(netns: str | None, family: str, table: str, chain: str) -> list[dict] | None:
    """The rules of one chain: [{handle, rule, comment, packets, counter}] (packets: its
    anonymous counter's, counter: the name of a named one); None when the chain is absent."""
    objs = nftables.list_json(netns, "chain", family, table, chain)
    if objs is None:
        return None
    out = []
    for o in objs:
        r = o.get("rule")
        if not r:
            continue
        packets, counter = None, None
        for e in r.get("expr", ()):
            c = e.get("counter") if isinstance(e, dict) else None
            if isinstance(c, dict) and "packets" in c:
                packets = c["packets"]
            elif isinstance(c, str):
                counter = c
        out.append({"handle": r.get("handle"), "rule": rule_text(r.get("expr", [])),
                    "comment": r.get("comment"), "packets": packets, "counter": counter,
                    "expr": r.get("expr", [])})
        if len(out) >= MAX_RULES:
            break
    return out


# ---- a controlled pair's half: plan vs kernel ------------------------------------------------

def flow_rule_text(r: model.FlowRule) -> str:
    """tcp/8080, udp/53-54, icmp, any: how explain writes a rule of a pair's half."""
    if r.ports is None:
        return r.proto
    lo, hi = r.ports
    return f"{r.proto}/{lo}" if lo == hi else f"{r.proto}/{lo}-{hi}"


def _half_from_kernel(rules: list[dict]) -> tuple[list[str], str | None]:
    """The accept rules of a half's chain in flow_rule_text's words, and its drop counter."""
    accepts, drop = [], None
    l4 = {"ipv6-icmp": "icmpv6"}
    for r in rules:
        ex = [e for e in r["expr"] if isinstance(e, dict)]
        kinds = [next(iter(e)) for e in ex]
        if kinds == ["accept"]:
            accepts.append("any")
        elif kinds == ["match", "accept"]:
            m = ex[0]["match"]
            left, right = m.get("left", {}), m.get("right")
            if m.get("op", "==") != "==":
                accepts.append(f"? {r['rule']}")
            elif "payload" in left and left["payload"].get("field") == "dport":
                proto = left["payload"].get("protocol")
                lo, hi = (right["range"] if isinstance(right, dict) and "range" in right
                          else (right, right))
                accepts.append(f"{proto}/{lo}" if lo == hi else f"{proto}/{lo}-{hi}")
            elif "meta" in left and left["meta"].get("key") == "l4proto":
                accepts.append(l4.get(right, str(right)))
            else:
                accepts.append(f"? {r['rule']}")
        elif "drop" in kinds and r["counter"]:
            drop = r["counter"]
        elif "log" in kinds or "limit" in kinds:
            continue
        else:
            accepts.append(f"? {r['rule']}")
    return accepts, drop


def _pair_view(netns, fp: model.FlowPlan | None, a: str, b: str, ids: dict,
               counters: dict) -> dict:
    out: dict = {"plan": "not routed here", "replies": None, "sender": None, "receiver": None,
                 "counters": {}, "problems": []}
    if fp is None or a not in ids or b not in ids:
        return out
    ia, ib = ids[a], ids[b]
    out["counters"] = {f"{r} {x}->{y}": counters.get((r, i, j), 0)
                       for r in FLOW_REASONS for (x, i, y, j) in ((a, ia, b, ib), (b, ib, a, ia))}
    pair = next((p for p in fp.pairs if (p.src, p.dst) == (a, b)), None)
    if pair is None:
        out["plan"] = "closed"
        return out
    out["plan"], out["replies"] = ("open" if pair.open else "controlled"), pair.replies
    if pair.open:
        return out
    for half, prefix, rules in (("sender", "s", pair.sender), ("receiver", "r", pair.receiver)):
        chain = f"{prefix}_{ia}_{ib}"
        planned = [flow_rule_text(r) for r in rules]
        kernel = chain_rules(netns, flowfilter.FAMILY, flowfilter.TABLE, chain)
        view = {"chain": chain, "planned": planned, "kernel": None, "dropped": None}
        if kernel is None:    # every host with a flow filter holds every pair's chains
            out["problems"].append(f"flow filter chain {chain} ({half} half of {a}->{b}) "
                                   "is missing")
        else:
            accepts, counter = _half_from_kernel(kernel)
            view["kernel"] = accepts
            if counter:
                view["dropped"] = counters.get((half, ia, ib), 0)
            if accepts != planned:
                out["problems"].append(
                    f"flow filter chain {chain} ({half} half of {a}->{b}) accepts "
                    f"{', '.join(accepts) or 'nothing'}; the plan says "
                    f"{', '.join(planned) or 'nothing'}")
        out[half] = view
    return out


# ---- port security of a vif ------------------------------------------------------------------

def _port_rules(netns: str | None, ifname: str) -> list[dict] | None:
    """Every rule of the vif's base chain and its sub-chains, with their counters; None:
    the vif has no port security chain."""
    base = chain_rules(netns, portsec.FAMILY, portsec.TABLE, portsec.base_name(ifname))
    if base is None:
        return None
    out = [dict(r, chain=portsec.base_name(ifname)) for r in base]
    subs = sorted({t for r in base for t in _targets(r["expr"])})
    for sub in subs[:3]:
        out += [dict(r, chain=sub) for r in chain_rules(
            netns, portsec.FAMILY, portsec.TABLE, sub) or ()]
    return out[:MAX_RULES]


def _targets(expr: list) -> list[str]:
    out = []
    for e in expr:
        if isinstance(e, dict):
            for k in ("jump", "goto"):
                if k in e:
                    out.append(e[k].get("target"))
    return [t for t in out if t]


# ---- the whole view ------------------------------------------------------------------------

def inspect(state: model.HostState, tvds, vifs, mac: str | None = None,
            netns: str | None = None) -> dict:
    """The kernel's view of `tvds` (1-2 TVD names: source, destination), `vifs` (ifnames of
    this host's endpoints, each with its TVD: [(ifname, tvd)]) and `mac` (the destination's
    MAC: its forwarding entries on each of these TVDs' vSwitches). Read-only."""
    tvds = list(dict.fromkeys(tvds))
    narrowed = dataclasses.replace(
        state, segments=tuple(s for s in state.segments if s.tvd in tvds),
        ports=tuple(model.VifPort(i, t) for i, t in vifs))
    h = health(narrowed, netns)
    out: dict = {"segments": h["segments"], "vifs": h["ports"], "fdb": {}, "flows": {},
                 "rules": []}
    if mac:
        for s in narrowed.segments:
            try:
                out["fdb"][s.tvd] = fdb(s.bridge, mac, netns)[:MAX_FDB]
            except DataplaneError as e:
                out["fdb"][s.tvd] = {"error": str(e)}
    fp = state.flows
    if len(tvds) == 2 and fp is not None:
        ids = {t.tvd: t.tvd_id for t in fp.tvds}
        counters = flowfilter.drops(netns)
        a, b = tvds
        for x, y in ((a, b), (b, a)):
            out["flows"][f"{x}->{y}"] = _pair_view(netns, fp, x, y, ids, counters)
    for ifname, _ in vifs:
        rules = _port_rules(netns, ifname)
        for r in rules or ():
            out["rules"].append({"where": "port security", "for": ifname, "chain": r["chain"],
                                 "handle": r["handle"], "rule": r["rule"],
                                 "reason": r["comment"], "packets": r["packets"]})
        prog = bpf_ports.program(netns, ifname) if rules is None else None
        if prog is not None:     # the eBPF backend: one program, a counter per reason
            name, counts = prog
            out["rules"] += [{"where": "port security", "for": ifname, "chain": name, "handle": None,
                              "rule": f"eBPF {name} at {ifname} ingress: drop {reason}",
                              "reason": reason, "packets": n} for reason, n in counts.items()]
    return out


def describe_rule(netns: str | None, family: str, table: str, chain: str,
                  handle: int | None) -> dict | None:
    """One rule by its handle (what a trace names): {rule, comment, counter, packets}."""
    for r in chain_rules(netns, family, table, chain) or ():
        if r["handle"] == handle:
            return {k: r[k] for k in ("rule", "comment", "counter", "packets")}
    return None
