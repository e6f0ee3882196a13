"""Flood from one VM NIC and sniff on every other VM NIC of a running lab.

The flooder (xen_tvd.lab.agent flood) sends broadcast, multicast, unknown-unicast, unicast to
every foreign VM's MAC, ARP requests for every foreign address, 802.1Q-tagged frames carrying
the other TVDs' VLAN ids, and IPv4 broadcasts, all marked with a fresh random nonce, then END
markers. Sniffers (AF_PACKET, one per NIC, in the VMs' namespaces) count marked frames.

Completion is event-driven: we wait until every same-TVD sniffer has seen the END marker (the
positive control proves the frames crossed every path), drain briefly, then stop all sniffers.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass

from xen_tvd.lab.common import LabError, agent_cmd, agent_env
from xen_tvd.lab.topology import LabNic, Topology

END_WAIT_S = 15.0   # upper bound for the positive control; normally milliseconds
DRAIN_S = 0.3


@dataclass
class SniffResult:
    nic: LabNic
    same_tvd: bool
    marked: dict[str, int]       # frame kind -> count of marked frames received
    end_seen: bool

    @property
    def total(self) -> int:
        return sum(self.marked.values())


def flood_and_sniff(topo: Topology, policy, src_vm: str, src_eth: str = "eth0",
                    count: int = 20) -> tuple[dict, list[SniffResult]]:
    src = next((n for n in topo.vms[src_vm].nics if n.eth == src_eth), None)
    if src is None:
        raise LabError(f"VM {src_vm} has no {src_eth}")
    magic = os.urandom(12).hex()
    targets = [n for n in topo.nics() if n.vm != src_vm]
    foreign = [n for n in targets if n.tvd != src.tvd]
    sniffers: dict[str, tuple[LabNic, subprocess.Popen]] = {}
    try:
        for n in targets:
            p = subprocess.Popen(agent_cmd(topo.vms[n.vm].ns, "sniff", "--dev", n.eth,
                                           "--magic", magic),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=agent_env())
            sniffers[n.key] = (n, p)
        for key, (n, p) in sniffers.items():
            line = p.stdout.readline().strip()
            if line != "ready":
                raise LabError(f"sniffer on {key} did not start: {p.stderr.read().strip()}")
        # machines on an external network have no VLAN of their own to forge tags with
        vlans = sorted({policy.tvds[t].vlan for t in {n.tvd for n in foreign} | {src.tvd}
                        if t in policy.tvds})
        cmd = ["flood", "--dev", src.eth, "--magic", magic, "--count", str(count),
               "--src-ip", src.ip]
        for n in foreign:
            cmd += ["--unicast", n.mac, "--arp-target", n.ip]
        for v in vlans:
            cmd += ["--vlan", str(v)]
        r = subprocess.run(agent_cmd(topo.vms[src_vm].ns, *cmd), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=agent_env())
        if r.returncode != 0:
            raise LabError(f"flooder in {src_vm} failed: {r.stderr.strip()}")
        sent = json.loads(r.stdout)
        # positive control: every same-TVD NIC must see END
        waiting = {p.stdout.fileno(): key for key, (n, p) in sniffers.items() if n.tvd == src.tvd}
        ended: set[str] = set()
        deadline = time.monotonic() + END_WAIT_S
        while waiting and time.monotonic() < deadline:
            rd, _, _ = select.select(list(waiting), [], [], deadline - time.monotonic())
            for fd in rd:
                key = waiting.pop(fd)
                line = sniffers[key][1].stdout.readline().strip()
                if line == "end":
                    ended.add(key)
        time.sleep(DRAIN_S)
        results = []
        for key, (n, p) in sniffers.items():
            p.stdin.close()
            out = p.stdout.read()
            p.wait()
            end_seen = key in ended
            data = None
            for line in out.splitlines():
                line = line.strip()
                if line == "end":
                    end_seen = True
                elif line.startswith("{"):
                    data = json.loads(line)
            if data is None:
                raise LabError(f"sniffer on {key} gave no result: {p.stderr.read().strip()}")
            results.append(SniffResult(n, n.tvd == src.tvd, data["marked"], end_seen))
        return sent, results
    finally:
        for _, p in sniffers.values():
            if p.poll() is None:
                p.kill()
                p.wait()
