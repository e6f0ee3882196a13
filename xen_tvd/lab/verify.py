"""Measure the reachability matrix of a running lab and compare it with the policy.

For every ordered pair of VM NICs (src, dst) on different VMs, three probes run from src's NIC:
  I  ICMP echo (ping -I eth<n>)
  T  TCP connect to the listener the lab runs in every VM
  A  broadcast ARP request for dst's address, answered or not
Expected: reachable iff same TVD or FlowMatrix.kind(src, dst) != CLOSED. One agent process per
source VM runs all of its probes concurrently, and all agents run at once, so the whole matrix
costs about one probe timeout.
"""
from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass

from xen_tvd.lab.lab import TCP_PORT, LabError, agent_cmd, agent_env
from xen_tvd.lab.topology import LabNic, Topology
from xen_tvd.policy.model import FlowKind, Policy

PROBE_KINDS = ("icmp", "tcp", "arp")
LETTER = {"icmp": "I", "tcp": "T", "arp": "A"}
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

    @property
    def ok(self) -> bool:
        return all(v == self.expected for v in self.results.values())


@dataclass
class Matrix:
    nics: list[LabNic]
    cells: dict[tuple[str, str], Cell]

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.cells.values() if not c.ok]

    def as_json(self) -> dict:
        return {
            "nics": [{"key": n.key, "vm": n.vm, "eth": n.eth, "tvd": n.tvd, "address": n.address}
                     for n in self.nics],
            "cells": [{"src": c.src.key, "dst": c.dst.key, "src_tvd": c.src.tvd,
                       "dst_tvd": c.dst.tvd, "flow": c.flow, "expected": c.expected,
                       "results": c.results, "ok": c.ok, "details": c.details}
                      for c in self.cells.values()],
            "pairs": len(self.cells), "probes": sum(len(c.results) for c in self.cells.values()),
            "mismatches": len(self.mismatches), "ok": not self.mismatches,
        }


def measure(topo: Topology, policy: Policy, timeout: float = DEFAULT_TIMEOUT,
            kinds: tuple[str, ...] = PROBE_KINDS) -> Matrix:
    nics = topo.nics()
    fm = None
    cells: dict[tuple[str, str], Cell] = {}
    batches: dict[str, list[dict]] = {}
    for s in nics:
        for d in nics:
            if s.vm == d.vm:
                continue   # two NICs of one VM: traffic between them never leaves the VM
            if s.tvd == d.tvd:
                exp, flow = True, "same-tvd"
            else:
                if fm is None:
                    from xen_tvd.policy.flows import FlowMatrix
                    fm = FlowMatrix(policy)
                kind = fm.kind(s.tvd, d.tvd)
                exp, flow = kind != FlowKind.CLOSED, kind.value
            cells[(s.key, d.key)] = Cell(s, d, exp, flow, {}, {})
            for k in kinds:
                batches.setdefault(s.vm, []).append({
                    "id": f"{s.key}|{d.key}|{k}", "kind": k, "dev": s.eth, "src": s.ip,
                    "dst": d.ip, "port": TCP_PORT, "timeout": timeout})
    _run_batches(topo, batches, cells)
    for c in cells.values():   # a probe that never reported counts as unreachable
        for k in kinds:
            if k not in c.results:
                c.results[k] = False
                c.details[k] = "no result"
    # A loaded machine can delay an answer past the timeout, never invent one: re-probe only
    # "expected reachable but not reached" once, with a longer timeout, before calling it.
    retry: dict[str, list[dict]] = {}
    for c in cells.values():
        if c.expected:
            for k, ok in c.results.items():
                if not ok:
                    retry.setdefault(c.src.vm, []).append({
                        "id": f"{c.src.key}|{c.dst.key}|{k}", "kind": k, "dev": c.src.eth,
                        "src": c.src.ip, "dst": c.dst.ip, "port": TCP_PORT,
                        "timeout": timeout * RETRY_FACTOR})
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
            txt = "".join(LETTER[k] if c.results.get(k) else "." for k in PROBE_KINDS
                          if k in c.results)
            mark = txt if c.ok else txt + "!"
            pad = " " * (cw - len(mark))
            row.append(pad + (green if c.ok else red) + mark + reset)
        lines.append(" ".join(row))
    lines.append("")
    lines.append("cell: I=ICMP T=TCP A=ARP reached, '.' = not reached, '!' = differs from the "
                 "policy, '-' = same VM")
    bad = m.mismatches
    for c in bad:
        exp = "reachable" if c.expected else "isolated"
        got = ", ".join(f"{k}={'reached' if v else 'no'}" for k, v in c.results.items())
        lines.append(f"{red}MISMATCH{reset} {c.src.key}({c.src.tvd}) -> {c.dst.key}({c.dst.tvd}): "
                     f"policy says {exp} ({c.flow}); measured {got}")
    n = len(m.cells)
    lines.append(f"{n} NIC pairs, {sum(len(c.results) for c in m.cells.values())} probes: "
                 + (f"{green}all match the policy{reset}" if not bad
                    else f"{red}{len(bad)} pair(s) differ from the policy{reset}"))
    return "\n".join(lines)
