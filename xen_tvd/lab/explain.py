"""`tvdctl explain --lab SPEC` (issue #17.1): the lab as a source of endpoints, plan, live kernel
and probes. Every lab host runs a real tvd-proxy, so the plan and the kernel come from each
involved host's proxy (its `inspect` answer: what it applied, and what the kernel does for this
exchange), exactly as on real hosts; a lab-wide plan could be stale against what the proxies
have. A probe is one real packet sent by the lab's agent from inside the source VM, and where it
died is the drop counter that rose by it (every drop rule counts under its reason and TVD pair
or vif); real hosts probe through the proxies instead (cli/explain.py, --yes).
"""
from __future__ import annotations

import json
import subprocess

from xen_tvd.cli.explain_sources import ProxySource
from xen_tvd.lab.common import LabError, agent_cmd, agent_env
from xen_tvd.lab.ports import LAB_TCP_PORT
from xen_tvd.lab.proxies import client
from xen_tvd.lab.state import require_state, topology_from_json

PROBE_PROTOCOLS = ("icmp", "tcp")


class LabSource(ProxySource):
    kind = "lab"

    def __init__(self, name: str, policy) -> None:
        state = require_state(name)
        self.name, self.policy = name, policy
        self.topo = topology_from_json(state["topology"])
        self.ids = {t.vlan: t.name for t in policy.tvds.values()}
        self.clients = {h: client(name, h, 30.0) for h in self.topo.hosts}
        self.st: dict = {}
        self._live: dict = {}

    # -- endpoints -----------------------------------------------------------------------------
    def endpoints(self) -> list[dict]:
        return [{"key": n.key, "vm": n.vm, "uuid": None, "nic": n.eth, "vif": n.vif,
                 "tvd": n.tvd, "address": n.ip, "mac": n.mac, "host": self.topo.vms[n.vm].host}
                for n in self.topo.nics() if n.vif.startswith("vif")]

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
