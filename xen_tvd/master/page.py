"""tvd-master's read-only page (docs/master.md, "The page"): the TVD graph and flow matrix as
SVG, hosts, VM NICs per TVD and the recent audit, as one static HTML document (no script: the
answer carries a Content-Security-Policy that forbids any). Served at GET /v1/page to admin
certificates and, with `serve --page-listen`, over plain HTTP on a loopback address.

Every name on it comes from admins or hosts (VM names are reported by Dom0s): all text goes
through html.escape. Elements carry data-* attributes with the numbers they show, so a test (or
a scraper) can compare them with the API's answers.
"""
from __future__ import annotations

import html
import math
import time

from xen_tvd.policy import PolicyInvalid
from xen_tvd.policy.render import matrix_json

AUDIT_ROWS = 50          # recent audit records on the page
MAX_DRAWN_TVDS = 60      # larger policies: the matrix and graph would be unreadable; say so
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
KIND_COLOR = {"open": "#2e7d32", "closed": "#c62828", "controlled": "#ef6c00"}
KIND_MARK = {"open": "1", "closed": "0", "controlled": "P"}


def _e(s) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _when(ts) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _last_audit_seq(store) -> int:
    """The newest audit record's seq through the store's public reads: "a record above k"
    is monotone in k, so doubling then bisection finds it in about 2*log2(n) one-row reads."""
    if not store.audit_events(0, 1):
        return 0
    lo, hi = 0, 1                     # a record above lo; above hi: to be found out
    while store.audit_events(hi, 1):
        lo, hi = hi, hi * 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if store.audit_events(mid, 1):
            lo = mid
        else:
            hi = mid
    return hi


def collect(master) -> dict:
    """The page's facts, read as the API reads them."""
    store = master.store
    try:
        policy, policy_error = master.policy(), None
    except PolicyInvalid:
        policy, policy_error = None, "the policy in force no longer verifies with this master"
    cur = store.policy()
    last = _last_audit_seq(store)
    carriers = {t: sorted(h) for t, h in master.tvd_carriers().items()}
    return {"now": time.time(), "url": master.url,
            "policy_version": cur[0] if cur else None, "policy_error": policy_error,
            "matrix": matrix_json(policy) if policy is not None else None,
            "tvds": {n: {"vlan": t.vlan, "vni": t.vni, "hosts": carriers.get(n, [])}
                     for n, t in sorted(policy.tvds.items())} if policy is not None else {},
            "hosts": store.hosts(), "contacts": master.seen.contacts(),
            "admissions": store.admissions(),
            "audit": store.audit_events(max(0, last - AUDIT_ROWS), AUDIT_ROWS)}


# ---- SVG ---------------------------------------------------------------------------------

def matrix_svg(mj: dict) -> str:
    """Rows: sender; columns: receiver; each cell coloured and marked 1 / 0 / P."""
    names = mj["tvds"] + sorted(mj["externals"])
    cell, label = 30, 14 + 8 * max(len(n) for n in names)
    size = label + cell * len(names)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="matrix-svg" width="{size + 10}" '
           f'height="{size + 10}" role="img" aria-label="flow matrix">',
           f'<text x="4" y="14" font-size="11">from \\ to</text>']
    for j, n in enumerate(names):
        x = label + j * cell + cell // 2 + 4
        out.append(f'<text x="{x}" y="{label - 4}" font-size="12" transform="rotate(-60 {x} '
                   f'{label - 4})">{_e(n)}</text>')
    for i, a in enumerate(names):
        y = label + i * cell
        out.append(f'<text x="4" y="{y + cell // 2 + 4}" font-size="12">{_e(a)}</text>')
        for j, b in enumerate(names):
            kind = mj["matrix"][a][b]
            x = label + j * cell
            out.append(f'<g class="cell" data-from="{_e(a)}" data-to="{_e(b)}" data-kind="{kind}">'
                       f'<title>{_e(a)} to {_e(b)}: {kind}</title>'
                       f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" rx="3" '
                       f'fill="{KIND_COLOR[kind]}"/><text x="{x + cell // 2 - 5}" '
                       f'y="{y + cell // 2 + 4}" font-size="13" fill="#fff">{KIND_MARK[kind]}'
                       f'</text></g>')
    out.append("</svg>")
    return "".join(out)


def graph_svg(mj: dict, tvds: dict) -> str:
    """TVDs (and external networks) on a circle; an arrow per open or controlled direction
    between two of them (closed pairs draw nothing)."""
    names = mj["tvds"] + sorted(mj["externals"])
    n = len(names)
    r = max(110, 22 * n)
    w = 2 * r + 260
    h = 2 * r + 120
    cx, cy = w / 2, h / 2
    pos = {a: (cx + r * math.cos(2 * math.pi * i / n - math.pi / 2),
               cy + r * math.sin(2 * math.pi * i / n - math.pi / 2)) for i, a in enumerate(names)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="graph-svg" width="{w:.0f}" '
           f'height="{h:.0f}" role="img" aria-label="TVD graph">',
           '<defs>' + "".join(
               f'<marker id="arrow-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
               f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
               f'fill="{KIND_COLOR[k]}"/></marker>' for k in ("open", "controlled")) + '</defs>']
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ab, ba = mj["matrix"][a][b], mj["matrix"][b][a]
            for src, dst, kind, off in ((a, b, ab, 5), (b, a, ba, -5)):
                if kind == "closed":
                    continue
                (x1, y1), (x2, y2) = pos[src], pos[dst]
                d = math.hypot(x2 - x1, y2 - y1) or 1
                ux, uy = (x2 - x1) / d, (y2 - y1) / d
                # start and end outside the node boxes, the two directions side by side
                sx, sy = x1 + ux * 40 - uy * off, y1 + uy * 40 + ux * off
                ex, ey = x2 - ux * 40 - uy * off, y2 - uy * 40 + ux * off
                dash = ' stroke-dasharray="6 4"' if kind == "controlled" else ""
                out.append(f'<line class="edge" data-from="{_e(src)}" data-to="{_e(dst)}" '
                           f'data-kind="{kind}" x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" '
                           f'y2="{ey:.1f}" stroke="{KIND_COLOR[kind]}" stroke-width="2"{dash} '
                           f'marker-end="url(#arrow-{kind})"><title>{_e(src)} to {_e(dst)}: '
                           f'{kind}</title></line>')
    for a in names:
        x, y = pos[a]
        info = tvds.get(a)
        sub = (f"VLAN {info['vlan']} / VNI {info['vni']}" if info else "external")
        hosts = len(info["hosts"]) if info else 0
        out.append(f'<g class="node" data-tvd="{_e(a)}" data-hosts="{hosts}">'
                   f'<rect x="{x - 70:.1f}" y="{y - 22:.1f}" width="140" height="44" rx="8" '
                   f'fill="{"#e3f2fd" if info else "#eeeeee"}" stroke="#1565c0"/>'
                   f'<text x="{x:.1f}" y="{y - 4:.1f}" font-size="13" text-anchor="middle" '
                   f'font-weight="bold">{_e(a)}</text><text x="{x:.1f}" y="{y + 13:.1f}" '
                   f'font-size="10" text-anchor="middle">{_e(sub)}'
                   f'{f", {hosts} host(s)" if info else ""}</text></g>')
    out.append("</svg>")
    return "".join(out)


# ---- HTML --------------------------------------------------------------------------------

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;font-size:13px}th{background:#f0f0f0}h2{margin-top:1.5em}
.revoked,.denied,.session-expired{color:#c62828}.admitted,.enrolled{color:#2e7d32}
.figs{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}.note{color:#555}"""


def _table(cls: str, head: list[str], rows: list[str]) -> str:
    return (f'<table id="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def render(d: dict) -> str:
    hosts, adm = d["hosts"], d["admissions"]
    enrolled = sum(1 for h in hosts if h["state"] == "enrolled")
    admitted = sum(1 for a in adm if a["state"] == "admitted")
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
             f'<title>tvd-master {_e(d["url"])}</title><style>{STYLE}</style></head><body>',
             f'<h1>tvd-master <small>{_e(d["url"])}</small></h1>',
             f'<p id="summary" data-hosts-enrolled="{enrolled}" data-hosts="{len(hosts)}" '
             f'data-nics-admitted="{admitted}" data-policy-version="{_e(d["policy_version"])}">'
             f'Policy version {_e(d["policy_version"] or "none")}; {enrolled} host(s) enrolled '
             f'of {len(hosts)} on record; {admitted} VM NIC(s) admitted. '
             f'<span class="note">Read-only, generated {_when(d["now"])}.</span></p>']
    mj = d["matrix"]
    parts.append('<h2>TVDs and flows</h2>')
    if d["policy_error"]:
        parts.append(f'<p class="denied">{_e(d["policy_error"])}</p>')
    elif mj is None:
        parts.append('<p class="note">No policy has been pushed yet.</p>')
    elif len(mj["tvds"]) + len(mj["externals"]) > MAX_DRAWN_TVDS:
        parts.append(f'<p class="note">{len(mj["tvds"])} TVDs: more than {MAX_DRAWN_TVDS} are not '
                     f'drawn; see <code>tvdctl show</code> or GET /v1/tvds.</p>')
    else:
        parts.append(f'<div class="figs"><figure>{graph_svg(mj, d["tvds"])}<figcaption>TVD '
                     f'graph: solid = open, dashed = controlled, none = closed</figcaption>'
                     f'</figure><figure>{matrix_svg(mj)}<figcaption>Flow matrix (row: sender, '
                     f'column: receiver): 1 open, 0 closed, P controlled; dummy: '
                     f'{_e(mj["dummy"]["policy"])}</figcaption></figure></div>')
        if mj["controlled"]:
            parts.append(_table("controlled", ["from", "to", "sender allows", "receiver allows",
                                               "passes", "replies"], [
                f'<tr><td>{_e(c["from"])}</td><td>{_e(c["to"])}</td>'
                f'<td>{_e(", ".join(c["sender"]))}</td><td>{_e(", ".join(c["receiver"]))}</td>'
                f'<td>{_e(", ".join(c["passes"]) or "nothing")}</td>'
                f'<td>{"yes" if c["replies"] else "no"}</td></tr>' for c in mj["controlled"]]))

    parts.append("<h2>Hosts</h2>")
    contacts = d["contacts"]
    parts.append(_table("hosts", ["host", "state", "enrolled", "revoked", "last report",
                                  "last contact", "bundle generation"], [
        f'<tr data-host="{_e(h["host"])}" data-state="{_e(h["state"])}" '
        f'data-generation="{h["generation"]}"><td>{_e(h["host"])}</td>'
        f'<td class="{_e(h["state"])}">{_e(h["state"])}</td><td>{_when(h["enrolled_at"])}</td>'
        f'<td>{_when(h["revoked_at"])}</td><td>{_when(h["reported_at"])}</td>'
        f'<td>{_when(contacts.get(h["host"]))}</td><td>{h["generation"]}</td></tr>'
        for h in hosts]))

    parts.append("<h2>VMs per TVD</h2>")
    by_tvd: dict[str, list[dict]] = {}
    for a in adm:
        by_tvd.setdefault(a["tvd"], []).append(a)
    for t in sorted(set(d["tvds"]) | set(by_tvd)):
        rows = by_tvd.get(t, [])
        n = sum(1 for a in rows if a["state"] == "admitted")
        hosts_of = ", ".join(d["tvds"].get(t, {}).get("hosts", [])) or "none"
        parts.append(f'<h3 class="tvd" data-tvd="{_e(t)}" data-admitted="{n}">{_e(t)}: {n} '
                     f'admitted NIC(s); carried by {_e(hosts_of)}</h3>')
        if rows:
            parts.append(_table(f"vms-{_e(t)}", ["VM", "UUID", "host", "NIC", "state",
                                                 "reason", "since"], [
                f'<tr class="vm" data-vm="{_e(a["vm"])}" data-state="{_e(a["state"])}">'
                f'<td>{_e(a["name"])}</td><td>{_e(a["vm"])}</td><td>{_e(a["host"])}</td>'
                f'<td>{_e(a["ifname"])}</td><td class="{_e(a["state"])}">{_e(a["state"])}</td>'
                f'<td>{_e(a["reason"] or "")}</td><td>{_when(a["ts"])}</td></tr>'
                for a in rows]))

    parts.append(f"<h2>Recent audit</h2><p class='note'>The last {AUDIT_ROWS} records, newest "
                 f"first; all of them: <code>tvd-master audit</code> or GET /v1/audit.</p>")
    parts.append(_table("audit", ["seq", "time", "actor", "event", "detail"], [
        f'<tr data-seq="{e["seq"]}" data-event="{_e(e["event"])}"><td>{e["seq"]}</td>'
        f'<td>{_when(e["ts"])}</td><td>{_e(e["actor"])}</td>'
        f'<td class="{_e(e["event"])}">{_e(e["event"])}</td>'
        f'<td>{_e(", ".join(f"{k}={v}" for k, v in sorted(e["detail"].items())))}</td></tr>'
        for e in reversed(d["audit"])]))
    parts.append("</body></html>")
    return "".join(parts)


class Html(str):
    """A rendered page (server.py answers it as text/html, not JSON)."""


def headers(send_header) -> None:
    send_header("Content-Type", "text/html; charset=utf-8")
    send_header("Content-Security-Policy", CSP)
    send_header("X-Content-Type-Options", "nosniff")
    send_header("Cache-Control", "no-store")


def page(master) -> str:
    return render(collect(master))
