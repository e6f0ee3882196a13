"""`tvdctl explain --lab SPEC` (issue #17.1): the lab as a source of endpoints, plan, live kernel
and probes. The plan is the planner's for the lab's VMs (what direct mode applies); the kernel
is read in each host namespace with the dataplane's readers (health, fdb, drop_counters); a
probe is one real packet sent by the lab's agent from the source VM, and where it died is the
drop counter that rose by it (every drop rule counts under its reason and TVD pair or vif).
"""
from __future__ import annotations

import json
import subprocess

from xen_tvd.lab.common import LabError, agent_cmd, agent_env
from xen_tvd.lab.ports import LAB_TCP_PORT
from xen_tvd.lab.state import require_state, topology_from_json
from xen_tvd.proxy.observe import segment_view

PROBE_PROTOCOLS = ("icmp", "tcp")


class LabSource:
    kind = "lab"

    def __init__(self, name: str, policy) -> None:
        state = require_state(name)
        self.name, self.policy = name, policy
        self.topo = topology_from_json(state["topology"])
        self.ids = {t.vlan: t.name for t in policy.tvds.values()}
        self._states = None

    # -- endpoints -----------------------------------------------------------------------------
    def endpoints(self) -> list[dict]:
        return [{"key": n.key, "vm": n.vm, "uuid": None, "nic": n.eth, "vif": n.vif,
                 "tvd": n.tvd, "address": n.ip, "mac": n.mac, "host": self.topo.vms[n.vm].host}
                for n in self.topo.nics() if n.vif.startswith("vif")]

    # -- plan ----------------------------------------------------------------------------------
    def states(self) -> dict:
        if self._states is None:
            from xen_tvd.desired.model import VifPort
            from xen_tvd.planner import plan
            ports: dict = {h: [] for h in self.topo.hosts}
            for vm in self.topo.vms.values():
                ports[vm.host].extend(VifPort(n.vif, n.tvd, mac=n.mac, addresses=(n.ip,))
                                      for n in vm.nics if n.tvd not in self.policy.externals)
            self._states = plan(self.policy, ports)
        return self._states

    def plan(self, ends: list[dict]) -> dict:
        """host -> {segments: {tvd: view}, router: {tvd: gateways}} for the endpoints' hosts
        and TVDs."""
        out = {}
        tvds = {e["tvd"] for e in ends}
        for host in sorted({e["host"] for e in ends}):
            st = self.states().get(host)
            segs = {s.tvd: segment_view(s) for s in (st.segments if st else ()) if s.tvd in tvds}
            legs = {leg.tvd: list(leg.gateways) for leg in (st.router.legs if st and st.router
                                                            else ()) if leg.tvd in tvds}
            out[host] = {"segments": segs, "router": legs}
        return out

    # -- live kernel ---------------------------------------------------------------------------
    def kernel(self, src: dict, dst: dict) -> dict:
        """Per host involved: is each endpoint's vif on its TVD's vSwitch, the vSwitch's and
        uplink's health, where the source's vSwitch forwards the destination MAC (same TVD),
        and the drop counters that concern this pair."""
        import dataclasses

        from xen_tvd.dataplane import DataplaneError, drop_counters, fdb, health
        from xen_tvd.desired.model import HostState, VifPort
        out = {}
        sid, did = self._id(src["tvd"]), self._id(dst["tvd"])
        for host in sorted({src["host"], dst["host"]}):
            ns = self.topo.hosts[host].ns
            st = self.states().get(host) or HostState(host)
            mine = [e for e in (src, dst) if e["host"] == host]
            probe_state = dataclasses.replace(
                st, segments=tuple(s for s in st.segments if s.tvd in {e["tvd"] for e in mine}),
                ports=tuple(VifPort(e["vif"], e["tvd"]) for e in mine))
            try:
                h = health(probe_state, netns=ns)
                c = drop_counters(ns)
            except DataplaneError as e:
                out[host] = {"error": str(e)}
                continue
            entry = {"segments": h["segments"], "vifs": h["ports"],
                     "flow_counters": {f"{r} {self.ids.get(a, a)}->{self.ids.get(b, b)}": n
                                       for (r, a, b), n in sorted(c["flows"].items())
                                       if {a, b} == {sid, did} and sid != did},
                     "port_counters": {f"{e['vif']} {r}": n for e in mine
                                       for r, n in sorted(c["ports"].get(e["vif"], {}).items())}}
            if src["host"] == host and src["tvd"] == dst["tvd"]:
                seg = probe_state.segment(src["tvd"]) if probe_state.segments else None
                if seg is not None:
                    try:
                        entry["fdb"] = {dst["mac"]: fdb(seg.bridge, dst["mac"], ns)}
                    except DataplaneError as e:
                        entry["fdb"] = {"error": str(e)}
            out[host] = entry
        return out

    def _id(self, tvd: str) -> int | None:
        t = self.policy.tvds.get(tvd)
        return t.vlan if t is not None else None

    # -- probe ---------------------------------------------------------------------------------
    def counters(self) -> dict:
        from xen_tvd.dataplane import drop_counters
        out = {}
        for h, host in self.topo.hosts.items():
            c = drop_counters(host.ns)
            for (r, a, b), n in c["flows"].items():
                out[(h, "flow filter", r, self.ids.get(a, str(a)), self.ids.get(b, str(b)))] = n
            for ifname, per in c["ports"].items():
                for r, n in per.items():
                    out[(h, "port security", r, ifname, "")] = n
            out[(h, "dom0 guard", "dom0-guard", "", "")] = c["dom0_guard"]
        return out

    def probe(self, src: dict, dst: dict, proto: str, port: int | None,
              timeout: float = 1.5) -> dict:
        """One real packet (an ICMP echo or a TCP SYN) from src's NIC to dst's address:
        {arrived, detail, drops: [{host, where, reason, from, to, packets}]}."""
        if proto not in PROBE_PROTOCOLS:
            raise LabError(f"--probe sends icmp or tcp (an answer shows it arrived); "
                           f"{proto} cannot be probed")
        before = self.counters()
        vm = self.topo.vms[src["vm"]]
        req = [{"id": "explain", "kind": proto, "dev": src["nic"], "src": src["address"],
                "dst": dst["address"], "port": port or LAB_TCP_PORT, "timeout": timeout}]
        r = subprocess.run(agent_cmd(vm.ns, "probe"), input=json.dumps(req), text=True,
                           capture_output=True, env=agent_env(), timeout=timeout + 30)
        try:
            res = json.loads(r.stdout)["explain"]
        except (ValueError, KeyError):
            raise LabError(f"probe agent in VM {vm.name} failed: "
                           f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}") from None
        after = self.counters()
        # only the rules this packet meets: the pair's flow filter counters (either way: a
        # reply) and the two vifs' port security; the Dom0 guard and other pairs count what
        # the rest of the lab sends meanwhile
        mine = {(src["host"], src["vif"]), (dst.get("host"), dst.get("vif"))}
        pair = {src["tvd"], dst["tvd"]}
        drops = [{"host": k[0], "where": k[1], "reason": k[2], "from": k[3], "to": k[4],
                  "packets": n - before.get(k, 0)}
                 for k, n in sorted(after.items()) if n > before.get(k, 0)
                 and ((k[1] == "flow filter" and {k[3], k[4]} == pair)
                      or (k[1] == "port security" and (k[0], k[3]) in mine))]
        detail = str(res.get("detail"))
        # a refusal (RST) came from the destination: the packet arrived, nothing listened
        arrived = bool(res.get("ok")) or "refused" in detail.lower()
        return {"arrived": arrived, "answered": bool(res.get("ok")), "detail": detail,
                "drops": drops}
