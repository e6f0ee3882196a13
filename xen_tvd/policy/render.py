"""Views of a policy: the flow matrix (paper Figure 1) as text or JSON, and a Graphviz drawing
of TVDs, flows, shared-membership sets and hosts."""
from __future__ import annotations

import shutil
import subprocess

from xen_tvd.policy.flows import FlowMatrix
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import DUMMY_TVD, FlowKind, Policy

FORMATS = ("svg", "png")     # what Graphviz renders for `tvdctl graph`; .dot is written as is


def _cell(matrix: FlowMatrix, a: str, b: str) -> str:
    k = matrix.kind(a, b)
    if a == b or k is FlowKind.OPEN:
        return "1"
    if k is FlowKind.CLOSED:
        return "0"
    return f"P[{a},{b}]"


def matrix_text(policy: Policy, color: bool = False) -> str:
    """Rows: sender TVD; columns: receiver TVD. 1 open, 0 closed, P[x,y] controlled."""
    m = FlowMatrix(policy)
    names = sorted(policy.tvds) + sorted(policy.externals) + [DUMMY_TVD]
    cells = [[_cell(m, a, b) for b in names] for a in names]
    w0 = max(len("from \\ to"), *(len(n) for n in names))
    widths = [max(len(n), *(len(r[j]) for r in cells)) for j, n in enumerate(names)]
    paint = {"1": "\033[32m", "0": "\033[31m"}

    def fmt(text: str, width: int) -> str:
        padded = text.center(width)
        if not color:
            return padded
        return f"{paint.get(text, chr(27) + '[33m')}{padded}\033[0m"

    lines = ["from \\ to".ljust(w0) + " | " + " | ".join(n.center(w) for n, w in zip(names, widths))]
    lines.append("-" * len(lines[0]))
    for a, row in zip(names, cells):
        lines.append(a.ljust(w0) + " | " + " | ".join(fmt(c, w) for c, w in zip(row, widths)))
    lines.append("")
    lines.append("1 = open, 0 = closed, P[x,y] = controlled (sender side enforced by x for its "
                 "confidentiality, receiver side by y for its integrity)")
    if policy.externals:
        lines.append("external networks (not TVDs): " + "; ".join(
            f"{x.name} = {', '.join(x.subnets)}" for x in sorted(policy.externals.values(),
                                                                key=lambda x: x.name)))
    lines.append(f"dummy = VLANs outside every TVD{' ' + str(list(policy.dummy_vlans)) if policy.dummy_vlans else ''}: "
                 f"{policy.dummy_policy.value} to every TVD")
    for f in sorted(policy.flows, key=lambda f: (f.src, f.dst)):
        if f.kind is not FlowKind.CONTROLLED:
            continue
        passes = ", ".join(str(r) for r in m.rules(f.src, f.dst)) or "nothing"
        lines.append(f"P[{f.src},{f.dst}]: sender {f.src} allows "
                     f"{', '.join(map(str, f.sender))}; receiver {f.dst} allows "
                     f"{', '.join(map(str, f.receiver))}; passes {passes}"
                     f"{'' if f.replies else '; no replies'}")
    return "\n".join(lines)


def matrix_json(policy: Policy) -> dict:
    """The same facts as matrix_text, for programs (`tvdctl show --json`)."""
    m = FlowMatrix(policy)
    names = sorted(policy.tvds) + sorted(policy.externals) + [DUMMY_TVD]
    kind = {a: {b: ("open" if a == b else m.kind(a, b).value) for b in names} for a in names}
    controlled = [{"from": f.src, "to": f.dst, "sender": [str(r) for r in f.sender],
                   "receiver": [str(r) for r in f.receiver],
                   "passes": [str(r) for r in m.rules(f.src, f.dst)], "replies": f.replies}
                  for f in sorted(policy.flows, key=lambda f: (f.src, f.dst))
                  if f.kind is FlowKind.CONTROLLED]
    return {"tvds": sorted(policy.tvds),
            "externals": {x.name: list(x.subnets) for x in policy.externals.values()},
            "dummy": {"policy": policy.dummy_policy.value, "vlans": list(policy.dummy_vlans)},
            "matrix": kind, "controlled": controlled,
            "shared_membership": [list(s) for s in policy.shared_membership]}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(policy: Policy) -> str:
    m = FlowMatrix(policy)
    out = ["digraph tvds {", "  rankdir=LR;", '  node [shape=box, style="rounded"];']
    for t in sorted(policy.tvds.values(), key=lambda t: t.name):
        label = f"{t.name}\\nVLAN {t.vlan} / VNI {t.vni}\\n{', '.join(sorted(t.protection))}"
        out.append(f"  {_q(t.name)} [label=\"{label}\"];")
    for x in sorted(policy.externals.values(), key=lambda x: x.name):
        label = f"{x.name} (external)\\n{', '.join(x.subnets)}"   # names/CIDRs: no quotes
        out.append(f"  {_q(x.name)} [label=\"{label}\", shape=box3d, style=solid];")
    if policy.dummy_policy is FlowKind.OPEN:
        out.append(f'  {_q(DUMMY_TVD)} [label="dummy (outside every TVD)", style=dashed];')
        for t in sorted(policy.tvds):
            out.append(f'  {_q(t)} -> {_q(DUMMY_TVD)} [dir=both, color=gray, label="open"];')
    for f in sorted(policy.flows, key=lambda f: (f.src, f.dst)):
        if f.kind is FlowKind.OPEN:
            attrs = 'color=darkgreen, label="open"'
        elif f.kind is FlowKind.CONTROLLED:
            rules = ", ".join(str(r) for r in m.rules(f.src, f.dst)) or "nothing"
            attrs = f"color=orange, style=dashed, label={_q('controlled: ' + rules)}"
        else:
            attrs = 'color=red, style=dotted, label="closed"'
        out.append(f"  {_q(f.src)} -> {_q(f.dst)} [{attrs}];")
    out += _shared_dot(policy) + _hosts_dot(policy)
    out.append("}")
    return "\n".join(out) + "\n"


def _shared_dot(policy: Policy) -> list[str]:
    """One node per shared-membership set, joined to its TVDs: a VM may be in all of them at
    once, so the verifier counts the set as an open channel between them."""
    out = []
    for i, tvds in enumerate(policy.shared_membership, 1):
        node = _q(f"shared:{i}")
        out.append(f"  {node} [label={_q('shared membership ' + str(i))}, shape=ellipse, "
                   f"style=filled, fillcolor=lightyellow];")
        out += [f"  {node} -> {_q(t)} [dir=none, color=purple, penwidth=2];" for t in tvds]
    return out


def _hosts_dot(policy: Policy) -> list[str]:
    """The capability model: each host with its address, C(h), properties and networks, and a
    grey line to each TVD its properties let it carry (M(t) alone; the planner may still refuse
    a TVD the host's networks cannot realise)."""
    if not policy.hosts:
        return []
    out = ["  subgraph cluster_hosts {", '    label="hosts (capability model)"; style=dashed;']
    for h in sorted(policy.hosts.values(), key=lambda h: h.name):
        lines = [h.name, h.address, "C(h): " + (", ".join(sorted(h.capabilities)) or "none")]
        if h.properties:
            lines.append(", ".join(f"{p}:{k}" for p, k in sorted(h.properties.items())))
        lines += [f"{n.network}: {n.nic} {n.address}" for n in h.nics]
        lines += [f"{x.external}: {x.nic} {x.address}" for x in h.externals]
        label = "\\n".join(x.replace("\\", "").replace('"', "") for x in lines)
        out.append(f"    {_q('host:' + h.name)} [label=\"{label}\", shape=box3d, style=solid];")
    out.append("  }")
    for h in sorted(policy.hosts.values(), key=lambda h: h.name):
        for t in sorted(policy.tvds):
            if admit(policy, [t], dict(h.properties)).admitted:
                out.append(f"  {_q('host:' + h.name)} -> {_q(t)} [dir=none, color=gray, "
                           f"style=dashed];")
    return out


class RenderError(Exception):
    """Drawing failed for a reason the admin can fix (e.g. Graphviz not installed)."""


def render(dot: str, out: str, fmt: str) -> None:
    """Draw `dot` into `out` as `fmt` (one of FORMATS) with Graphviz."""
    if fmt not in FORMATS:
        raise RenderError(f"cannot draw {fmt}: one of {', '.join(FORMATS)}")
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError("Graphviz 'dot' is not installed (apt-get install graphviz); "
                         "write .dot instead")
    proc = subprocess.run([exe, f"-T{fmt}", "-o", out], input=dot.encode(), capture_output=True,
                          timeout=60)
    if proc.returncode != 0:
        raise RenderError(f"Graphviz failed: {proc.stderr.decode(errors='replace').strip()}")
