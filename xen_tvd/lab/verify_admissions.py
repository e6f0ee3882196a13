"""Verify of master mode: every VM vif admitted by its proxy and enslaved to its TVD's vSwitch
in the kernel, every decision in the master's audit (docs/lab.md "Master mode")."""
from __future__ import annotations

import json
import time

from xen_tvd.lab import nsutil
from xen_tvd.lab.common import LabError
from xen_tvd.lab.master import denied_vms, master_cli
from xen_tvd.lab.proxies import proxy_status, vm_uuid
from xen_tvd.lab.spec import LabSpec
from xen_tvd.lab.state import Paths
from xen_tvd.lab.topology import Topology
from xen_tvd.proxy.client import ProxyUnreachable

AUDIT_TIMEOUT = 20.0              # the proxies flush their audit spool every watch turn


def _kernel_masters(ns: str) -> dict[str, str | None]:
    """vif name -> the bridge it is enslaved to, read from the kernel."""
    links = nsutil.links(ns)
    by_idx = {l["index"]: l.get_attr("IFLA_IFNAME") for l in links}
    return {l.get_attr("IFLA_IFNAME"): by_idx.get(l.get_attr("IFLA_MASTER"))
            for l in links if (l.get_attr("IFLA_IFNAME") or "").startswith("vif")}


def verify(spec: LabSpec, topo: Topology) -> tuple[list[str], list[str]]:
    """(report lines, problems): every VM vif admitted by its proxy, enslaved to its TVD's
    vSwitch in the kernel, and audited `admitted` at the master; every VM the spec expects to
    be denied has no vif attached anywhere and a `denied` event in the master's audit."""
    paths = Paths(spec.name)
    problems: list[str] = []
    denied = denied_vms(spec)
    records: dict[str, dict[str, dict]] = {}
    bridges: dict[str, dict[str, str]] = {}
    kernel: dict[str, dict[str, str | None]] = {}
    with nsutil.handles():
        for h, host in topo.hosts.items():
            try:
                st = proxy_status(paths, h)
            except (ProxyUnreachable, LabError) as e:
                problems.append(f"tvd-proxy {h}: {e}")
                st = {}
            records[h] = {v["ifname"]: v for v in st.get("vifs", [])}
            bridges[h] = {s["tvd"]: s["bridge"] for s in st.get("segments", [])}
            kernel[h] = _kernel_masters(host.ns)
    want_admitted: set[tuple[str, str, str]] = set()     # (host, vm uuid, ifname)
    for vm, lv in sorted(topo.vms.items()):
        uuid = vm_uuid(spec.name, vm)
        for nic in lv.nics:
            rec = records.get(lv.host, {}).get(nic.vif)
            br = kernel.get(lv.host, {}).get(nic.vif)
            if vm in denied:
                if rec is not None or br is not None:
                    problems.append(f"VM {vm} {nic.vif}: must be denied, but is "
                                    f"{'admitted by the proxy' if rec else 'attached'}"
                                    f"{f' to {br}' if br else ''}")
                continue
            want_admitted.add((lv.host, uuid, nic.vif))
            if rec is None or rec.get("uuid") != uuid or rec.get("tvd") != nic.tvd:
                problems.append(f"VM {vm} {nic.vif}: not admitted into {nic.tvd} in the status "
                                f"of tvd-proxy {lv.host}")
            elif br is None or br != bridges[lv.host].get(nic.tvd):
                problems.append(f"VM {vm} {nic.vif}: admitted, but attached to {br or 'nothing'} "
                                f"instead of {bridges[lv.host].get(nic.tvd)}")
        if vm in denied:
            elsewhere = [f"{h}:{r['ifname']}" for h, rs in records.items() for r in rs.values()
                         if r.get("uuid") == uuid]
            if elsewhere:
                problems.append(f"VM {vm}: must be denied, but proxies hold its vifs {elsewhere}")
    want_denied = {vm_uuid(spec.name, v): v for v in denied}
    missing_adm, missing_den = set(want_admitted), set(want_denied)
    deadline = time.monotonic() + AUDIT_TIMEOUT
    audit_error = None
    while missing_adm or missing_den:   # the proxies' audit spools reach the master in turns
        try:
            events = [json.loads(l) for l in master_cli(spec.name, "audit", "--json").splitlines()
                      if l.strip()]
            audit_error = None
        except LabError as e:
            events, audit_error = [], str(e)
        for e in events:
            d, actor = e.get("detail") or {}, e.get("actor", "")
            if e.get("event") == "admitted":
                missing_adm.discard((actor.removeprefix("host:"), d.get("vm"), d.get("ifname")))
            elif e.get("event") == "denied":
                missing_den.discard(d.get("vm"))
        if not (missing_adm or missing_den) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if audit_error:
        problems.append(audit_error)
    for h, _, ifname in sorted(missing_adm):
        problems.append(f"audit: no `admitted` event from host {h} for {ifname}")
    for u in sorted(missing_den):
        problems.append(f"audit: no `denied` event for VM {want_denied[u]} ({u})")
    lines = [f"master mode: {len(want_admitted) - len(missing_adm)}/{len(want_admitted)} vifs "
             f"admitted by their tvd-proxy and audited `admitted` at the master; "
             f"{len(denied)} VM(s) denied as expected"
             + (f" ({', '.join(sorted(denied))}: no vif attached, denial audited)" if denied else "")]
    return lines, problems

