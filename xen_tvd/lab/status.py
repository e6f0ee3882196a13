"""`tvdctl lab status`: everything about a running lab, read back from the kernel (and, with a
control plane, from its daemons)."""
from __future__ import annotations

import json
import os

from xen_tvd.lab import drops, nsutil
from xen_tvd.lab.common import LabError
from xen_tvd.lab.master import URL, master_ns
from xen_tvd.lab.processes import MASTER_MODULE, PROXY_MODULE, listener_alive, running
from xen_tvd.lab.proxies import proxy_status
from xen_tvd.lab.state import Paths, require_state, topology_from_json
from xen_tvd.lab.topology import Topology
from xen_tvd.proxy.client import ProxyUnreachable


def status(name: str) -> dict:
    """Everything about a running lab, read back from the kernel."""
    with nsutil.handles():
        return _status(name)


def _status(name: str) -> dict:
    from xen_tvd.desired.names import OWNER_ALIAS_PREFIX
    state = require_state(name)
    topo = topology_from_json(state["topology"])
    out: dict = {"name": name, "status": state.get("status"), "spec": state.get("spec"),
                 "policy": state.get("policy"), "errors": state.get("errors", []),
                 "namespaces": [], "hosts": {}, "vms": {}}
    for ns in state.get("namespaces", []):
        out["namespaces"].append({"name": ns, "present": nsutil.ns_exists(ns)})
    ids = drops.tvd_ids(state.get("policy"))
    for hname, host in topo.hosts.items():
        entry: dict = {"namespace": host.ns, "nics": [], "vswitches": [], "vifs": []}
        out["hosts"][hname] = entry
        if not nsutil.ns_exists(host.ns):
            entry["missing"] = True
            continue
        entry["drops"] = drops.host_drops(host.ns, ids)
        links = nsutil.links(host.ns)
        by_idx = {l["index"]: l for l in links}
        name_of = lambda i: by_idx[i].get_attr("IFLA_IFNAME") if i in by_idx else None  # noqa
        for w in host.wires:
            l = next((x for x in links if x.get_attr("IFLA_IFNAME") == w.ifname), None)
            entry["nics"].append({"name": w.ifname, "network": w.network, "address": w.address,
                                  "mtu": l.get_attr("IFLA_MTU") if l else None,
                                  "present": l is not None})
        for l in links:
            alias = l.get_attr("IFLA_IFALIAS") or ""
            if nsutil.link_kind(l) == "bridge" and alias.startswith(OWNER_ALIAS_PREFIX):
                members = [x for x in links if x.get_attr("IFLA_MASTER") == l["index"]]
                entry["vswitches"].append({
                    "name": l.get_attr("IFLA_IFNAME"), "alias": alias,
                    "mtu": l.get_attr("IFLA_MTU"), "state": l.get("state"),
                    "ports": [_port(x) for x in members]})
        for vm in topo.vms.values():
            if vm.host != hname:
                continue
            for nic in vm.nics:
                if not nic.vif.startswith("vif"):
                    continue   # a machine on an external network: on its LAN, not a vif here
                l = next((x for x in links if x.get_attr("IFLA_IFNAME") == nic.vif), None)
                v = {"name": nic.vif, "vm": vm.name, "domid": vm.domid, "eth": nic.eth,
                     "tvd": nic.tvd, "address": nic.address, "mac": nic.mac,
                     "present": l is not None}
                if l is not None:
                    v.update(bridge=name_of(l.get_attr("IFLA_MASTER")),
                             mtu=l.get_attr("IFLA_MTU"), state=l.get("state"))
                entry["vifs"].append(v)
    for vm in topo.vms.values():
        ve: dict = {"namespace": vm.ns, "host": vm.host, "domid": vm.domid,
                    "listener_pid": state.get("listeners", {}).get(vm.name), "nics": []}
        ve["listener_alive"] = bool(ve["listener_pid"] and
                                    listener_alive(ve["listener_pid"], vm.ns, name, vm.name))
        links = nsutil.links(vm.ns) if nsutil.ns_exists(vm.ns) else []
        for nic in vm.nics:
            l = next((x for x in links if x.get_attr("IFLA_IFNAME") == nic.eth), None)
            ve["nics"].append({"name": nic.eth, "tvd": nic.tvd, "address": nic.address,
                               "mac": nic.mac, "vif": nic.vif, "present": l is not None,
                               "mtu": l.get_attr("IFLA_MTU") if l else None,
                               "state": l.get("state") if l else None})
        out["vms"][vm.name] = ve
    if state.get("control"):
        out["control"] = control_status(name, topo, state["control"].get("mode", "master"))
    return out


def _port(l) -> dict:
    d = {"name": l.get_attr("IFLA_IFNAME"), "kind": nsutil.link_kind(l) or "",
         "mtu": l.get_attr("IFLA_MTU")}
    info = l.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    if d["kind"] == "vxlan" and data is not None:
        d.update(vni=data.get_attr("IFLA_VXLAN_ID"), group=data.get_attr("IFLA_VXLAN_GROUP"),
                 local=data.get_attr("IFLA_VXLAN_LOCAL"))
    elif d["kind"] == "vlan" and data is not None:
        d.update(vid=data.get_attr("IFLA_VLAN_ID"))
    return d


def control_status(name: str, topo: Topology, mode: str) -> dict:
    """The control plane: per host its tvd-proxy (pid, segments, vifs), in master mode also
    the master and each proxy's bundle generation."""
    paths = Paths(name)
    out: dict = {"mode": mode, "proxies": {}}
    if mode == "master":
        try:        # replicas (lab/replicas.py) record their URLs; one master has URL
            with open(os.path.join(paths.root, "replicas.json")) as f:
                urls = json.load(f)["urls"]
        except (OSError, ValueError, KeyError):
            urls = [URL]
        out.update(url=urls[0], urls=urls, namespace=master_ns(name),
                   namespace_present=nsutil.ns_exists(master_ns(name)),
                   master={"pid": running(paths.master_pid, MASTER_MODULE, paths.master),
                           "log": paths.master_log})
    for h in sorted(topo.hosts):
        e: dict = {"pid": running(paths.proxy_pid(h), PROXY_MODULE, paths.proxy_dir(h)),
                   "socket": paths.socket(h), "log": paths.proxy_log(h)}
        try:
            st = proxy_status(paths, h, 5)
            e.update(vifs={v["ifname"]: v["tvd"] for v in st.get("vifs", [])},
                     segments=[s["tvd"] for s in st.get("segments", [])])
            if mode == "master":
                e.update(generation=(st.get("master") or {}).get("generation"),
                         contact_age=(st.get("master") or {}).get("contact_age"))
        except (ProxyUnreachable, LabError) as ex:
            e["error"] = str(ex)
        out["proxies"][h] = e
    return out


def render_status(c: dict) -> list[str]:
    lines = []
    if c["mode"] == "master":
        m = c["master"]
        lines.append(f"tvd-master {c['url']} in {c['namespace']}: "
                     + (f"pid {m['pid']}" if m["pid"] else "NOT RUNNING"))
    for h, p in c["proxies"].items():
        if "error" in p:
            lines.append(f"  tvd-proxy {h}: DOWN ({p['error']})")
            continue
        vifs = ", ".join(f"{k}->{v}" for k, v in sorted(p["vifs"].items())) or "none"
        gen = f", bundle generation {p['generation']}" if "generation" in p else ""
        lines.append(f"  tvd-proxy {h}: pid {p['pid']}{gen}, "
                     f"segments {','.join(p['segments']) or 'none'}; vifs {vifs}")
    return lines
