"""Where `tvdctl explain` gets endpoints, the live plan, the kernel and probes from real hosts
(cli/explain.py; the lab's source, lab/explain.py, builds on ProxySource): tvd-proxies, asked
with their `inspect` and `probe` requests (docs/proxy-protocol.md), and the master."""
from __future__ import annotations

import ipaddress
import os

from xen_tvd.errors import Refused


# ---- sources -------------------------------------------------------------------------------

def _kernel_view(a: dict, mine: list[dict], mac: str | None) -> dict:
    """An `inspect` answer as the kernel step shows it: the segments of the endpoints' TVDs
    here (a missing one is a problem: its vif has no vSwitch), vifs, FDB, the pair's flow
    filter with counters, port security's counters."""
    segs = {s["tvd"]: s["problems"] for s in a["segments"].values()}
    for e in mine:
        if e["tvd"] in a["missing"]:
            segs[e["tvd"]] = [f"no segment for {e['tvd']} here, where {e['vif']} is"]
    fdb = {f"{mac} on {a['segments'][tvd]['bridge'] if tvd in a['segments'] else tvd}": entries
           for tvd, entries in a["fdb"].items()}
    counters = {n: c for f in a["flows"].values() for n, c in f["counters"].items()}
    ports = {}
    for r in a["rules"]:
        if r["reason"] and r["packets"] is not None:
            k = f"{r['for']} {r['reason']}"
            ports[k] = ports.get(k, 0) + r["packets"]
    return {"segments": segs, "vifs": a["vifs"], "fdb": fdb, "flows": a["flows"],
            "flow_counters": counters, "port_counters": ports, "rules": a["rules"]}


class ProxySource:
    """tvd-proxies (`--socket PATH`, one per host: this Dom0's, or others' forwarded here):
    endpoints from their status, the live plan and kernel from their `inspect` answers, and
    with --yes a real probe (arm on each host involved, send from the source's, collect)."""
    kind = "proxy"

    def __init__(self, sockets, timeout: float = 30.0) -> None:
        from xen_tvd.proxy.client import ProxyClient, ProxyUnreachable
        self.clients: dict = {}
        self.st: dict = {}
        for path in list(sockets or ()) or [None]:
            c = ProxyClient(path, timeout)
            try:
                st = c.status()
            except (Refused, ProxyUnreachable) as e:
                raise Refused(str(e)) from None
            self.clients[st["host"]], self.st[st["host"]] = c, st
        self._live: dict = {}

    def endpoints(self) -> list[dict]:
        out = []
        for host, st in self.st.items():
            for v in st.get("vifs", []):
                nic = f"eth{v['devid']}" if v.get("devid") is not None else v["ifname"]
                addrs = v.get("addresses") or []
                out.append({"key": f"{v.get('vm') or v.get('uuid')}/{nic}", "vm": v.get("vm"),
                            "uuid": v.get("uuid"), "nic": nic, "vif": v["ifname"],
                            "tvd": v["tvd"], "address": addrs[0].split("/")[0] if addrs else None,
                            "mac": v.get("mac"), "host": host})
        return out

    def inspect(self, src: dict, dst: dict, fresh: bool = False) -> dict:
        """host -> its proxy's `inspect` answer (or {"error"}) for this exchange, for the
        endpoints' hosts that have a proxy here; asked once per exchange unless `fresh`."""
        from xen_tvd.proxy.client import ProxyUnreachable
        key = (src.get("key"), dst.get("key"), src["tvd"], dst["tvd"])
        if not fresh and key in self._live:
            return self._live[key]
        tvds = list(dict.fromkeys((src["tvd"], dst["tvd"])))
        out = {}
        for host in dict.fromkeys(e["host"] for e in (src, dst) if e.get("host")):
            if host not in self.clients:
                continue
            vifs = [e["vif"] for e in (src, dst) if e.get("host") == host and e.get("vif")]
            try:
                out[host] = self.clients[host].inspect(tvds, vifs, dst.get("mac"))
            except (Refused, ProxyUnreachable) as e:
                out[host] = {"error": str(e)}
        self._live[key] = out
        return out

    def plan(self, src: dict, dst: dict) -> dict:
        out = {}
        live = self.inspect(src, dst)
        for host in dict.fromkeys(e["host"] for e in (src, dst) if e.get("host")):
            a = live.get(host)
            if a is None:
                out[host] = {"unasked": f"no --socket for host {host}'s tvd-proxy"}
            elif "error" in a:
                out[host] = {"unasked": a["error"]}
            else:
                out[host] = {"live": True, "segments": a["segments"], "router": a["router"],
                             "missing": a["missing"]}
        return out

    def kernel(self, src: dict, dst: dict) -> dict:
        out = {}
        for host, a in self.inspect(src, dst, fresh=True).items():
            mine = [e for e in (src, dst) if e.get("host") == host]
            out[host] = dict(a) if "error" in a else _kernel_view(a, mine, dst.get("mac"))
        for e in (src, dst):
            h = e.get("host")
            if h and h not in out:
                out[h] = {"unasked": f"no --socket for host {h}'s tvd-proxy (on a remote "
                                     "Dom0, forward it: ssh -L /tmp/h.sock:/run/xen-tvd/proxy.sock)"}
        return out

    def probe(self, src: dict, dst: dict, proto: str, port: int | None,
              timeout: float = 1.5) -> dict:
        return probe_via_proxies(self.clients, src, dst, proto, port, timeout)


def probe_via_proxies(clients: dict, src: dict, dst: dict, proto: str, port: int | None,
                      timeout: float) -> dict:
    """One real packet: armed on each host involved that has a proxy here (the destination's
    first, watching its vif), sent from the source's vif by the source's host, collected on
    each. {arrived, answered, detail, drops, trace}."""
    import random

    from xen_tvd.proxy.client import ProxyUnreachable
    if src["host"] not in clients:
        raise Refused(f"--probe: no --socket for the source's host {src['host']}: its "
                      "tvd-proxy sends the packet")
    for e in (src, dst):
        try:
            if ipaddress.ip_address(e.get("address") or "").version != 4:
                raise ValueError
        except ValueError:
            raise Refused(f"--probe: {e.get('key') or e.get('vm')} has no IPv4 address the "
                          "proxy knows (declare it: xl.cfg vif ip=...); the probe is IPv4 "
                          "and sent as the source's VM would send it") from None
    pid, ip_id = os.urandom(8).hex(), random.randint(1, 65535)
    hosts = [h for h in dict.fromkeys((dst.get("host"), src["host"])) if h in clients]
    armed, results = [], {}
    try:
        for h in hosts:
            watch = [dst["vif"]] if dst.get("host") == h and dst.get("vif") else []
            clients[h].probe_arm(pid, src["address"], dst["address"], proto, port, ip_id,
                                 inject=src["vif"] if h == src["host"] else None,
                                 dst_mac=dst.get("mac"), watch=watch, timeout=timeout)
            armed.append(h)
    except (Refused, ProxyUnreachable) as e:
        for h in armed:
            try:
                clients[h].probe_collect(pid)
            except (Refused, ProxyUnreachable):
                pass
        raise Refused(str(e)) from None
    for h in armed:
        try:
            results[h] = clients[h].probe_collect(pid)
        except (Refused, ProxyUnreachable) as e:
            results[h] = {"error": str(e), "arrived": [], "answered": None, "drop": None,
                          "events": []}
    arrived_at = [(h, i) for h, r in results.items() for i in r["arrived"]
                  if dst.get("host") == h and i == dst.get("vif")]
    answered = results.get(src["host"], {}).get("answered")
    drops = [dict(r["drop"], host=h, packets=None) for h, r in results.items() if r.get("drop")]
    arrived = bool(arrived_at) or bool(answered)
    if arrived_at:
        detail = f"delivered to {arrived_at[0][1]} on {arrived_at[0][0]}" + \
            (f", answered: {answered}" if answered else ", no answer seen on the source's vif")
    elif answered:
        detail = f"answered: {answered}"
    elif drops:
        detail = "dropped on " + ", ".join(dict.fromkeys(d["host"] for d in drops))
    else:
        detail = (f"not seen arriving in {timeout:g} s; no xen-tvd rule dropped it on "
                  f"{', '.join(armed)}"
                  + ("" if dst.get("host") in clients else
                     f" (the destination's host {dst.get('host') or '(unknown)'} was not asked)"))
    for h, r in results.items():
        if r.get("error"):
            detail += f"; {h}: {r['error']}"
    trace = {h: _trace_path(r.get("events", [])) for h, r in results.items()}
    return {"arrived": arrived, "answered": bool(answered), "detail": detail, "drops": drops,
            "trace": trace, "id": pid, "hosts": results}


def _trace_path(events: list[dict]) -> list[str]:
    """The chains that decided about the packet on one host, in order per namespace (the
    host's, then its router's: two trace sockets, so their relative order is not known):
    `chain verdict`, jumps and gotos left out."""
    out = []
    for where in ("host", "router"):
        steps = [f"{e['chain']} " + (f"policy {e['policy']}" if e["type"] == "policy"
                                     else e["verdict"])
                 for e in events if e.get("where") == where and (
                     e["type"] == "policy" or e.get("verdict") in ("accept", "drop"))]
        if steps:
            out.append(("router: " if where == "router" else "") + " > ".join(steps))
    return out


class MasterSource(ProxySource):
    """The master: policy, admitted NICs and carrying hosts; the proxies given with --socket
    (this Dom0's, others' forwarded here) for the live view of the hosts they run on."""
    kind = "master"

    def __init__(self, client, sockets) -> None:
        from xen_tvd.master.client import MasterError
        try:
            self.adm = client.call("GET", "/v1/admissions")["admissions"]
            self.tvds = {t["name"]: t for t in client.call("GET", "/v1/tvds")["tvds"]}
            self.policy_text = client.call("GET", "/v1/policy")
        except MasterError as e:
            raise Refused(str(e)) from None
        self.clients, self.st, self._live = {}, {}, {}
        if sockets:
            super().__init__(sockets)

    def policy(self):
        from xen_tvd.master.service import verify_policy_text
        pol, diags = verify_policy_text(self.policy_text["yaml"], self.policy_text["name"])
        if pol is None:
            raise Refused("the master's policy does not verify here: " + "; ".join(diags[:3]))
        return pol

    def endpoints(self) -> list[dict]:
        live = {(e["host"], e["vif"]): e for e in super().endpoints()}
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

    def plan(self, src: dict, dst: dict) -> dict:
        out = super().plan(src, dst)
        for h in out:
            out[h]["carriers"] = sorted(t for t, x in self.tvds.items() if h in x["hosts"])
        return out
