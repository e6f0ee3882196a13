"""Where everything of a lab goes: namespaces, wires, addresses, names. Pure (no kernel).

    <name>-fabric        one bridge per policy network ("the physical switches")
    <name>-router        one leg per network when there are several (the WAN router; no
                         multicast routing, so VXLAN must use head-end replication across it)
    <name>-h-<host>      a Dom0: its policy NICs are veths into the fabric bridges
    <name>-vm-<vm>       a VM: eth<devid> is a veth whose Dom0 end is vif<domid>.<devid>
    <name>-h-<host>-rtr  the host's TVD router (created and configured by the dataplane's
                         apply(); the lab only creates and marks the namespace), for hosts
                         whose VMs are in a TVD with a router card
External networks (policy `externals:`): one more switch `x-<external>` in the fabric
namespace, "network" `external:<name>`; each lab host with a NIC on it gets a wire without an
address (the address belongs to the router's external leg, a macvlan the dataplane puts on
that NIC), and a spec VM whose NIC names the external is a machine on that LAN: its eth0 is
a veth whose other end (LabNic.vif) is a port of that switch, not a vif of the host.
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from xen_tvd.desired.names import IFNAME_MAX
from xen_tvd.lab.spec import LabSpec, address6_for
from xen_tvd.policy.model import Policy

EXTERNAL_NET = "external:"    # prefix of an external LAN's key in Topology.bridges


def external_net(name: str) -> str:
    return EXTERNAL_NET + name


class TopologyError(Exception):
    """The policy's capability model cannot be wired as a lab (one line per problem)."""


@dataclass(frozen=True)
class Wire:
    """A veth from a namespace's interface into a fabric bridge."""
    ns: str
    ifname: str
    fabric_port: str
    network: str
    address: str     # CIDR
    mtu: int


@dataclass(frozen=True)
class HostRoute:
    dst: str         # subnet CIDR
    gateway: str
    dev: str


@dataclass(frozen=True)
class LabHost:
    name: str
    ns: str
    wires: tuple[Wire, ...]
    routes: tuple[HostRoute, ...]
    router_ns: str | None = None     # the dataplane's router namespace for this host


@dataclass(frozen=True)
class LabNic:
    vm: str
    devid: int
    tvd: str
    address: str     # CIDR
    eth: str         # VM-side name
    vif: str         # Dom0-side name
    mac: str
    address6: str | None = None   # CIDR, in a TVD with an IPv6 subnet (spec.address6_for)

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)

    @property
    def ip6(self) -> str | None:
        return str(ipaddress.ip_interface(self.address6).ip) if self.address6 else None

    @property
    def key(self) -> str:
        return f"{self.vm}/{self.eth}"


@dataclass(frozen=True)
class LabVm:
    name: str
    host: str
    domid: int
    ns: str
    nics: tuple[LabNic, ...]


@dataclass(frozen=True)
class Topology:
    name: str
    fabric_ns: str
    router_ns: str | None
    bridges: dict[str, str]            # network -> fabric bridge name
    bridge_mtu: dict[str, int]
    router_wires: tuple[Wire, ...]
    hosts: dict[str, LabHost]
    vms: dict[str, LabVm]

    def namespaces(self) -> list[str]:
        out = [self.fabric_ns]
        if self.router_ns:
            out.append(self.router_ns)
        out += [h.ns for h in self.hosts.values()]
        out += [h.router_ns for h in self.hosts.values() if h.router_ns]
        out += [v.ns for v in self.vms.values()]
        return out

    def nics(self) -> list[LabNic]:
        return [n for v in self.vms.values() for n in v.nics]


def ns_names(name: str) -> dict[str, str]:
    return {"fabric": f"{name}-fabric", "router": f"{name}-router",
            "host": f"{name}-h-", "vm": f"{name}-vm-"}


def _short(preferred: str, fallback: str, used: set[str]) -> str:
    n = preferred if len(preferred) <= IFNAME_MAX and preferred not in used else fallback
    used.add(n)
    return n


def vm_mac(lab: str, vm: str, devid: int, used: set[str]) -> str:
    """Deterministic Xen-OUI MAC (00:16:3e:...), unique within the lab."""
    salt = 0
    while True:
        h = hashlib.sha256(f"{lab}/{vm}/{devid}/{salt}".encode()).digest()
        mac = "00:16:3e:%02x:%02x:%02x" % (h[0] & 0x7F, h[1], h[2])
        if mac not in used:
            used.add(mac)
            return mac
        salt += 1


def build(spec: LabSpec, policy: Policy) -> Topology:
    names = ns_names(spec.name)
    problems: list[str] = []
    nets = {n: net for n, net in policy.networks.items()}
    used_br: set[str] = set()
    bridges = {n: _short(f"br-{n}", f"br{i}", used_br) for i, n in enumerate(sorted(nets))}
    bridge_mtu = {n: nets[n].mtu for n in nets}
    for i, x in enumerate(sorted(policy.externals)):
        bridges[external_net(x)] = _short(f"x-{x}", f"x{i}", used_br)
        bridge_mtu[external_net(x)] = 1500
    multi = len(nets) > 1
    router_addr: dict[str, str] = {}
    used_ports: set[str] = set()
    router_wires = []
    if multi:
        for i, n in enumerate(sorted(nets)):
            subnet = ipaddress.ip_network(nets[n].subnet, strict=False)
            gw = next(subnet.hosts())
            router_addr[n] = str(gw)
            router_wires.append(Wire(names["router"], _short(f"r-{n}", f"r{i}", set()),
                                     _short(f"rtr-{n}", f"rtr{i}", used_ports), n,
                                     f"{gw}/{subnet.prefixlen}", nets[n].mtu))
    from xen_tvd.planner.routing import components
    cards = components(policy)
    hosts: dict[str, LabHost] = {}
    for hi, (hname, host) in enumerate(sorted(policy.hosts.items())):
        if not host.nics:
            continue
        ns = names["host"] + hname
        wires = []
        for ni, nic in enumerate(host.nics):
            net = nets.get(nic.network)
            where = f"{host.pos}: " if host.pos else ""
            if net is None:
                problems.append(f"{where}error: host {hname} nic {nic.nic} is on unknown "
                                f"network {nic.network!r}")
                continue
            subnet = ipaddress.ip_network(net.subnet, strict=False)
            ip = ipaddress.ip_interface(nic.address if "/" in nic.address
                                        else f"{nic.address}/{subnet.prefixlen}")
            if ip.ip not in subnet:
                problems.append(f"{where}error: host {hname} address {ip.ip} is outside network "
                                f"{nic.network} ({subnet})")
                continue
            if router_addr.get(nic.network) == str(ip.ip):
                problems.append(f"{where}error: host {hname} address {ip.ip} is the address the "
                                f"lab gives the WAN router on {nic.network} (first of {subnet}); "
                                "pick another host address")
                continue
            wires.append(Wire(ns, nic.nic, _short(f"{hname}-{nic.nic}", f"p{hi}n{ni}", used_ports),
                              nic.network, str(ip), net.mtu))
        for xi, hx in enumerate(host.externals):
            wires.append(Wire(ns, hx.nic, _short(f"{hname}-{hx.nic}", f"p{hi}x{xi}", used_ports),
                              external_net(hx.external), "", 1500))
        attached = {w.network for w in wires}
        routes = []
        if multi and wires:
            first = wires[0]
            for n in sorted(nets):
                if n not in attached:
                    routes.append(HostRoute(nets[n].subnet if "/" in nets[n].subnet else
                                            str(ipaddress.ip_network(nets[n].subnet)),
                                            router_addr[first.network], first.ifname))
        # same rule as the planner: a router wherever a VM's TVD has a card
        routed = any(n.tvd in cards for v in spec.vms.values() if v.host == hname for n in v.nics)
        hosts[hname] = LabHost(hname, ns, tuple(wires), tuple(routes),
                               f"{ns}-rtr" if routed else None)
    used_mac: set[str] = set()
    vms: dict[str, LabVm] = {}
    for vi, (vname, vm) in enumerate(spec.vms.items()):
        nics = tuple(LabNic(vname, n.devid, n.tvd, n.address, f"eth{n.devid}",
                            _short(f"xm-{vname}", f"xm{vi}", used_ports)
                            if n.tvd in policy.externals else f"vif{vm.domid}.{n.devid}",
                            vm_mac(spec.name, vname, n.devid, used_mac),
                            None if n.tvd in policy.externals
                            else address6_for(n.address, policy.tvds[n.tvd].subnets))
                     for n in vm.nics)
        vms[vname] = LabVm(vname, vm.host, vm.domid, names["vm"] + vname, nics)
    if problems:
        raise TopologyError("\n".join(problems))
    return Topology(spec.name, names["fabric"], names["router"] if multi else None, bridges,
                    bridge_mtu, tuple(router_wires), hosts, vms)
