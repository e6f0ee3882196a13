"""A two-host routed-flows rig for dataplane tests: hosts h1/h2 joined by an underlay veth,
VMs as namespaces behind vifs, everything planned from one policy by the real planner."""
from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass

from xen_tvd.dataplane import apply
from xen_tvd.dataplane.netlink import opened_inside
from xen_tvd.desired.model import HostState, VifPort
from xen_tvd.planner import plan
from xen_tvd.policy import load_policy

from tests.common.paths import REPO
from tests.dataplane.dp_helpers import addr, ipr, sh, veth

POLICY = """
version: 1
tvds:
  a: {vlan: 100, subnets: [10.1.0.0/24]}
  b: {vlan: 200, subnets: [10.2.0.0/24]}
  c: {vlan: 300, subnets: [10.3.0.0/24]}
  d: {vlan: 400, subnets: [10.4.0.0/24]}
flows:
  - {from: a, to: b, policy: open}
  - from: a
    to: c
    policy: controlled
    sender: {allow: [{proto: tcp, port: 22}, {proto: tcp, port: 80}, {proto: icmp}]}
    receiver: {allow: [{proto: tcp, port: 22}, {proto: tcp, port: 8080}, {proto: icmp}]}
  - {from: c, to: a, policy: controlled, replies: false, allow: [{proto: udp, port: 514}]}
  - {from: d, to: a, policy: closed}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true}
hosts:
  h1: {address: 10.0.0.1, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.1}]}
  h2: {address: 10.0.0.2, capabilities: [ethernet, ip], nics: [{network: lan, nic: ul0, address: 10.0.0.2}]}
"""

# vm -> (host, tvd, address, domid)
VMS = {"a1": ("h1", "a", "10.1.0.11", 1), "c1": ("h1", "c", "10.3.0.11", 2),
       "d1": ("h1", "d", "10.4.0.11", 3), "a2": ("h2", "a", "10.1.0.12", 1),
       "b2": ("h2", "b", "10.2.0.12", 2), "c2": ("h2", "c", "10.3.0.12", 3)}


@dataclass
class Rig:
    hosts: dict[str, str]          # host -> netns
    vms: dict[str, str]            # vm -> netns
    states: dict[str, HostState]
    policy: object

    def ip(self, vm: str) -> str:
        return VMS[vm][2]

    def ip6(self, vm: str) -> str:
        """The VM's IPv6 address (build() gives one to VMs of TVDs with an IPv6 subnet)."""
        net = _subnet6(self.policy, VMS[vm][1])
        return str(net[int(VMS[vm][2].rsplit(".", 1)[1])])

    def apply_all(self) -> dict[str, list[str]]:
        return {h: apply(self.states[h], netns=ns).changes for h, ns in self.hosts.items()}


def mac_of(vm: str) -> str:
    return "00:16:3e:00:%02x:%02x" % (int(VMS[vm][2].split(".")[1]), int(VMS[vm][2].split(".")[3]))


def _subnet6(pol, tvd: str) -> ipaddress.IPv6Network | None:
    return next((n for n in map(ipaddress.ip_network, pol.tvds[tvd].subnets) if n.version == 6),
                None)


def build(mkns, tmp_path, policy_text: str = POLICY, vms=None, unpinned=()) -> Rig:
    vms = vms or VMS
    f = tmp_path / "policy.yaml"
    f.write_text(textwrap.dedent(policy_text))
    pol = load_policy(str(f))
    hosts = {"h1": mkns("h1"), "h2": mkns("h2")}
    veth(hosts["h1"], "ul0", "ul0", peer_ns=hosts["h2"])
    addr(hosts["h1"], "ul0", "10.0.0.1")
    addr(hosts["h2"], "ul0", "10.0.0.2")
    ports: dict[str, list[VifPort]] = {"h1": [], "h2": []}
    vm_ns = {}
    for vm, (host, tvd, ip, domid) in vms.items():
        ns = mkns(f"vm-{vm}")
        vm_ns[vm] = ns
        vif = f"vif{domid}.0"
        veth(hosts[host], vif, "eth0", peer_ns=ns, up=False)
        with ipr(ns) as i:
            i.link("set", index=i.link_lookup(ifname="eth0")[0], address=mac_of(vm))
        addr(ns, "eth0", ip)
        addresses = (ip,)
        if pol.tvds[tvd].subnets:   # a TVD without subnets is not routed: no gateway
            gw = str(next(ipaddress.ip_network(pol.tvds[tvd].subnets[0]).hosts()))
            sh(ns, "ip", "route", "add", "default", "via", gw)
        net6 = _subnet6(pol, tvd)
        if net6 is not None:        # dual-stack: host part = the IPv4 address's last octet
            ip6 = str(net6[int(ip.rsplit(".", 1)[1])])
            # mkns() disables IPv6 (no autoconf chatter); this VM needs it, without RAs
            sh(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
               "net.ipv6.conf.eth0.disable_ipv6=0", "net.ipv6.conf.eth0.accept_ra=0")
            sh(ns, "ip", "-6", "addr", "add", f"{ip6}/{net6.prefixlen}", "dev", "eth0", "nodad")
            sh(ns, "ip", "-6", "route", "add", "default", "via", str(net6[1]))
            addresses += (ip6,)
        ports[host].append(VifPort(vif, tvd, mac=mac_of(vm),
                                   addresses=None if vm in unpinned else addresses))
    states = plan(pol, ports)
    rig = Rig(hosts, vm_ns, states, pol)
    rig.apply_all()
    return rig


def teardown(rig: Rig) -> None:
    """Reconcile every host to nothing: the router namespaces and tables must go with it."""
    for h, ns in rig.hosts.items():
        apply(HostState(h), netns=ns)


def agent_argv(ns: str, *args: str) -> list[str]:
    """The traffic agent (flow_agent.py) inside namespace `ns`; run it with cwd=REPO."""
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.dataplane.flow_agent", *args]


def tcp_ok(rig: Rig, src: str, dst: str, port: int, timeout: float = 1.0,
           v6: bool = False) -> bool:
    """Whether VM `src` completes a TCP handshake with `dst`:`port` within `timeout` s. The
    socket is opened inside src's namespace by a thread of this process (opened_inside), not
    by an agent process: a Python start costs 1-2 s of tier 2's emulated CPU, and the exact
    matrix alone makes 90 of these probes."""
    sock = opened_inside(rig.vms[src], lambda: socket.socket(
        socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM))
    try:
        sock.settimeout(timeout)
        sock.connect((rig.ip6(dst) if v6 else rig.ip(dst), port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def ping_ok(rig: Rig, src: str, dst: str, timeout: float = 1.0, v6: bool = False) -> bool:
    return sh(rig.vms[src], "ping", "-n", "-q", "-c", "1", "-W", str(timeout),
              rig.ip6(dst) if v6 else rig.ip(dst), check=False).returncode == 0


class Bg:
    """An agent command running in a VM until stop(); waits for its "ready" line."""

    def __init__(self, rig: Rig, vm: str, *args: str):
        """`vm`: a VM's name, or any namespace's (a router's, to sniff its legs)."""
        self.p = subprocess.Popen(agent_argv(rig.vms.get(vm, vm), *args), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO)
        line = self.p.stdout.readline().strip()
        assert line == "ready", (line, self.p.stderr.read())

    def stop(self) -> str:
        out, _ = self.p.communicate("", timeout=10)
        return out.strip()


def agent(rig: Rig, vm: str, *args: str) -> str:
    r = subprocess.run(agent_argv(rig.vms[vm], *args), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def leg_mac(rig: Rig, host: str, tvd: str) -> str:
    return next(l.mac for l in rig.states[host].router.legs if l.tvd == tvd)


def nft(ns: str, *args: str) -> subprocess.CompletedProcess:
    return sh(ns, "nft", *args, check=False)
