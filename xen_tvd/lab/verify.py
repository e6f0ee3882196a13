"""Measure the reachability matrix of a running lab and compare it with the policy.

For every ordered pair of VM NICs (src, dst) on different VMs, three probes run from src's NIC:
  I  ICMP echo (ping -I eth<n>)
  T  TCP connect to the listener the lab runs in every VM
  A  broadcast ARP request for dst's address, answered or not
and, when both NICs are in dual-stack TVDs (spec.address6_for), over IPv6:
  i  ICMPv6 echo          t  TCP connect to the listener
and, for a controlled pair, a TCP connect to every port of lab.ports.controlled_tcp_ports
(each rule range's edges and the ports just outside them).
Expected, from the policy alone:
  - same TVD: everything answers;
  - a routed pair (open or controlled, both TVDs with subnets): ARP never (the TVDs stay two
    broadcast domains); open: ICMP and TCP; controlled: ICMP iff both sides allow icmp, each
    TCP port iff both sides' rules cover it (the intersection; ICMPv6 needs `icmpv6`, `icmp`
    is IPv4's). ICMP and TCP need the reply,
    so with `replies: false` nothing answers (such a flow's own datagrams are checked by the
    dataplane tests);
  - everything else (closed, or open/controlled between TVDs without subnets, which get no
    router card): nothing.
One agent process per source VM runs all of its probes concurrently, and all agents run at
once, so the whole matrix costs about one probe timeout.
"""
from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field

from xen_tvd.lab.common import LabError, agent_cmd, agent_env
from xen_tvd.lab.ports import LAB_TCP_PORT as TCP_PORT
from xen_tvd.lab.topology import LabNic, Topology
from xen_tvd.policy.model import FlowKind, Policy

PROBE_KINDS = ("icmp", "tcp", "arp")
IPV6_KINDS = ("icmp6", "tcp6")
LETTER = {"icmp": "I", "tcp": "T", "arp": "A", "icmp6": "i", "tcp6": "t"}
DEFAULT_TIMEOUT = 2.0
RETRY_FACTOR = 3


@dataclass
class Cell:
    src: LabNic
    dst: LabNic
    expected: bool
    flow: str                       # "same-tvd" | open | controlled | closed
    results: dict[str, bool]
    details: dict[str, str]
    expect: dict[str, bool] = field(default_factory=dict)   # per probe; default `expected`

    def wants(self, kind: str) -> bool:
        return self.expect.get(kind, self.expected)

    @property
    def ok(self) -> bool:
        return all(v == self.wants(k) for k, v in self.results.items())


@dataclass
class Matrix:
    nics: list[LabNic]
    cells: dict[tuple[str, str], Cell]

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.cells.values() if not c.ok]

    def as_json(self) -> dict:
        return {
            "nics": [{"key": n.key, "vm": n.vm, "eth": n.eth, "tvd": n.tvd, "address": n.address,
                      "address6": n.address6}
                     for n in self.nics],
            "cells": [{"src": c.src.key, "dst": c.dst.key, "src_tvd": c.src.tvd,
                       "dst_tvd": c.dst.tvd, "flow": c.flow, "expected": c.expected,
                       "expect": {k: c.wants(k) for k in c.results},
                       "results": c.results, "ok": c.ok, "details": c.details}
                      for c in self.cells.values()],
            "pairs": len(self.cells), "probes": sum(len(c.results) for c in self.cells.values()),
            "mismatches": len(self.mismatches), "ok": not self.mismatches,
        }


def expectations(policy: Policy, src_tvd: str, dst_tvd: str,
                 kinds: tuple[str, ...] = PROBE_KINDS) -> tuple[str, dict[str, bool]]:
    """(flow label, probe -> expected) for a pair of NICs in these TVDs, from the policy."""
    if src_tvd == dst_tvd:
        return "same-tvd", {k: True for k in kinds}
    from xen_tvd.lab.ports import LAB_TCP_PORT, controlled_tcp_ports
    from xen_tvd.planner.routing import permitted_pairs
    from xen_tvd.policy.flows import FlowMatrix
    closed = {k: False for k in kinds}
    f = next((f for f in permitted_pairs(policy) if (f.src, f.dst) == (src_tvd, dst_tvd)), None)
    if f is None:
        kind = FlowMatrix(policy).kind(src_tvd, dst_tvd)
        return (kind.value if kind is FlowKind.CLOSED
                else f"{kind.value} (not routed: no subnets)"), closed
    if f.kind is FlowKind.OPEN:
        return "open", {k: f.replies and k != "arp" for k in kinds}
    rules = FlowMatrix(policy).rules(src_tvd, dst_tvd)

    def allows(proto: str, port: int | None = None) -> bool:
        return f.replies and any(
            r.proto == "any" or (r.proto == proto and (port is None or r.ports is None
                                                       or r.ports[0] <= port <= r.ports[1]))
            for r in rules)
    out = dict(closed)
    if "icmp" in kinds:
        out["icmp"] = allows("icmp")
    if "icmp6" in kinds:
        out["icmp6"] = allows("icmpv6")
    if "tcp6" in kinds:
        out["tcp6"] = allows("tcp", LAB_TCP_PORT)
    if "tcp" in kinds:
        out["tcp"] = allows("tcp", LAB_TCP_PORT)
        for p in controlled_tcp_ports(policy):
            out[f"tcp:{p}"] = allows("tcp", p)
    return "controlled", out


def _probe(c: "Cell", kind: str, timeout: float) -> dict:
    base, _, port = kind.partition(":")
    v6 = kind in IPV6_KINDS
    return {"id": f"{c.src.key}|{c.dst.key}|{kind}", "kind": base, "dev": c.src.eth,
            "src": c.src.ip6 if v6 else c.src.ip, "dst": c.dst.ip6 if v6 else c.dst.ip,
            "port": int(port) if port else TCP_PORT, "timeout": timeout}


def measure(topo: Topology, policy: Policy, timeout: float = DEFAULT_TIMEOUT,
            kinds: tuple[str, ...] = PROBE_KINDS, denied: frozenset[str] = frozenset()) -> Matrix:
    """`denied`: VMs whose admission the master must refuse (control: master); every probe
    from or to them is expected to fail, whatever their TVDs allow."""
    nics = topo.nics()
    cells: dict[tuple[str, str], Cell] = {}
    batches: dict[str, list[dict]] = {}
    memo: dict[tuple[str, str, bool], tuple[str, dict[str, bool]]] = {}
    for s in nics:
        for d in nics:
            if s.vm == d.vm:
                continue   # two NICs of one VM: traffic between them never leaves the VM
            key = (s.tvd, d.tvd, bool(s.ip6 and d.ip6))
            if key not in memo:
                memo[key] = expectations(policy, s.tvd, d.tvd,
                                         kinds + IPV6_KINDS * key[2])
            flow, expect = memo[key]
            if s.vm in denied or d.vm in denied:
                flow, expect = "denied", {k: False for k in expect}
            c = cells[(s.key, d.key)] = Cell(s, d, any(expect.values()), flow, {}, {},
                                             dict(expect))
            for k in expect:
                batches.setdefault(s.vm, []).append(_probe(c, k, timeout))
    _run_batches(topo, batches, cells)
    for c in cells.values():   # a probe that never reported counts as unreachable
        for k in c.expect:
            if k not in c.results:
                c.results[k] = False
                c.details[k] = "no result"
    # A loaded machine can delay an answer past the timeout, never invent one: re-probe only
    # "expected reachable but not reached" once, with a longer timeout, before calling it.
    retry: dict[str, list[dict]] = {}
    for c in cells.values():
        for k, ok in c.results.items():
            if c.wants(k) and not ok:
                retry.setdefault(c.src.vm, []).append(_probe(c, k, timeout * RETRY_FACTOR))
    if retry:
        _run_batches(topo, retry, cells)
    return Matrix(nics, cells)


def _run_batches(topo: Topology, batches: dict[str, list[dict]],
                 cells: dict[tuple[str, str], Cell]) -> None:
    """One agent per source VM, all at once; results land in `cells`."""
    procs = {}
    for vm, probes in batches.items():
        p = subprocess.Popen(agent_cmd(topo.vms[vm].ns, "probe"), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=agent_env())
        procs[vm] = (p, json.dumps(probes))
    outputs: dict[str, tuple[str, str]] = {}

    def talk(vm: str) -> None:   # concurrently: an agent starts probing once its stdin closes
        p, data = procs[vm]
        outputs[vm] = p.communicate(data)

    threads = [threading.Thread(target=talk, args=(vm,)) for vm in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for vm in procs:
        out, err = outputs[vm]
        try:
            res = json.loads(out)
        except ValueError:
            raise LabError(f"probe agent in VM {vm} failed: "
                           f"{(err.strip().splitlines() or ['no output'])[-1]}") from None
        for pid, r in res.items():
            sk, dk, k = pid.split("|")
            cell = cells[(sk, dk)]
            cell.results[k] = bool(r.get("ok"))
            cell.details[k] = str(r.get("detail"))


def render(m: Matrix, color: bool) -> str:
    """Rows = source NIC, columns = destination NIC; cell = I/T/A, '.' for unreachable."""
    green, red, reset = ("\033[32m", "\033[31;1m", "\033[0m") if color else ("", "", "")
    labels = [f"{n.vm}/{n.eth}({n.tvd})" for n in m.nics]
    short = [f"{n.vm}/{n.eth}" for n in m.nics]
    w0 = max(len(x) for x in labels)
    cw = max(5, max(len(x) for x in short))
    lines = [" " * w0 + " " + " ".join(s.rjust(cw) for s in short)]
    for i, s in enumerate(m.nics):
        row = [labels[i].ljust(w0)]
        for d in m.nics:
            c = m.cells.get((s.key, d.key))
            if c is None:
                row.append("-".rjust(cw))
                continue
            txt = "".join(LETTER[k] if c.results.get(k) else "." for k in LETTER
                          if k in c.results)
            port_probes = [k for k in c.results if k.startswith("tcp:")]
            if port_probes:   # controlled pair: how many of its probed ports answered
                txt += f"+{sum(c.results[k] for k in port_probes)}/{len(port_probes)}"
            mark = txt if c.ok else txt + "!"
            pad = " " * (cw - len(mark))
            row.append(pad + (green if c.ok else red) + mark + reset)
        lines.append(" ".join(row))
    lines.append("")
    lines.append("cell: I=ICMP T=TCP A=ARP (i=ICMPv6 t=TCP over IPv6) reached, '.' = not reached, "
                 "+k/n = k of the n probed ports of a controlled pair answered, '!' = differs "
                 "from the policy, '-' = same VM")
    bad = m.mismatches
    for c in bad:
        wrong = ", ".join(f"{k} {'reached' if v else 'not reached'} (policy: "
                          f"{'reachable' if c.wants(k) else 'isolated'})"
                          for k, v in c.results.items() if v != c.wants(k))
        lines.append(f"{red}MISMATCH{reset} {c.src.key}({c.src.tvd}) -> {c.dst.key}({c.dst.tvd}) "
                     f"[{c.flow}]: {wrong}")
    n = len(m.cells)
    lines.append(f"{n} NIC pairs, {sum(len(c.results) for c in m.cells.values())} probes: "
                 + (f"{green}all match the policy{reset}" if not bad
                    else f"{red}{len(bad)} pair(s) differ from the policy{reset}"))
    return "\n".join(lines)
