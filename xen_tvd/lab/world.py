"""What Xen and the physical network would provide, and nothing more: namespaces, the fabric
(switches, host NICs, the WAN router), the VMs' side of every vif (a veth whose Dom0 end is
vif<domid>.<devid>), machines on external networks. Attaching a vif is the control plane's
job (direct.py: the lab's own tvd-proxies; master.py: tvd-master and its proxies)."""
from __future__ import annotations

import ipaddress

from xen_tvd.lab import nsutil
from xen_tvd.lab.common import Log
from xen_tvd.lab.topology import LabHost, LabNic, LabVm, Topology, external_net
from xen_tvd.policy.model import Policy

VM_TABLE_BASE = 100       # per-NIC routing table in multi-NIC VMs
VM_RULE_PRIO_BASE = 1000


def namespaces(name: str, topo: Topology, present: list[str], log: Log) -> None:
    """Remove the lab's namespaces the topology no longer has (and their processes), create
    and mark the ones it has. `present`: the lab's namespaces now (state.lab_namespaces)."""
    stale = [ns for ns in present if ns not in topo.namespaces()]
    if stale:
        nsutil.kill_pids(nsutil.pids_in_ns(stale))
        for ns in stale:
            nsutil.remove_ns(ns)
            log(f"removed stale namespace {ns}")
    routers = {h.router_ns for h in topo.hosts.values()}
    for ns in topo.namespaces():
        nsutil.ensure_ns(ns, name, quiet=ns not in routers)


def fabric(topo: Topology) -> None:
    fab = topo.fabric_ns
    for net, br in topo.bridges.items():
        nsutil.ensure_bridge(fab, br, topo.bridge_mtu.get(net))
    wires = list(topo.router_wires) + [w for h in topo.hosts.values() for w in h.wires]
    for w in wires:
        nsutil.ensure_veth(w.ns, w.ifname, fab, w.fabric_port)
        nsutil.set_link(fab, w.fabric_port, mtu=w.mtu, master=topo.bridges[w.network], up=True)
        nsutil.set_link(w.ns, w.ifname, mtu=w.mtu, up=True)
        nsutil.ensure_addresses(w.ns, w.ifname, [w.address] if w.address else [])
    if topo.router_ns:
        nsutil.sysctl(topo.router_ns, "net/ipv4/ip_forward", "1")
        # the WAN router forwards unicast only: no multicast routing daemon, no mroute table
    for h in topo.hosts.values():
        nsutil.sysctl(h.ns, "net/ipv4/ip_forward", "0")
        for r in h.routes:
            nsutil.ensure_route(h.ns, r.dst, gateway=r.gateway, dev=r.dev)


def vm(topo: Topology, v: LabVm, policy: Policy) -> list[LabNic]:
    """The VM's namespace settings and NICs; returns its vif NICs (the ones a control plane
    attaches: NICs on external networks are plugged into their switch here)."""
    _vm_base(v)
    vifs = []
    for nic in v.nics:
        if nic.tvd in policy.externals:
            _external_machine(topo, v, nic, policy)
            continue
        _vm_nic(v, nic, topo.hosts[v.host])
        _vm_gateway(v, nic, policy)
        vifs.append(nic)
    _prune_vm_nics(v)
    return vifs


def _vm_base(vm: LabVm) -> None:
    for key, val in (("net/ipv4/ip_forward", "0"),
                     # strong host model: a VM answers ARP only on the NIC owning the address,
                     # so a multi-TVD VM cannot make one TVD's address reachable from another
                     ("net/ipv4/conf/all/arp_ignore", "1"),
                     ("net/ipv4/conf/default/arp_ignore", "1"),
                     ("net/ipv4/conf/all/arp_announce", "2"),
                     ("net/ipv4/conf/default/arp_announce", "2")):
        nsutil.sysctl(vm.ns, key, val)


def _vm_nic(vm: LabVm, nic: LabNic, host: LabHost) -> None:
    nsutil.ensure_veth(host.ns, nic.vif, vm.ns, nic.eth)
    nsutil.set_link(vm.ns, nic.eth, address=nic.mac, up=True)
    if nic.address6:   # a dual-stack TVD
        nsutil.enable_ipv6(vm.ns, nic.eth)
    nsutil.ensure_addresses(vm.ns, nic.eth, [nic.address] + [nic.address6] * bool(nic.address6))
    if len(vm.nics) > 1:
        # Several NICs in one IP subnet: answer from the NIC that owns the address.
        table = VM_TABLE_BASE + nic.devid
        net = ipaddress.ip_interface(nic.address).network
        nsutil.ensure_route(vm.ns, str(net), dev=nic.eth, table=table, prefsrc=nic.ip)
        nsutil.ensure_rule(vm.ns, nic.ip, table, VM_RULE_PRIO_BASE + nic.devid)


def _vm_gateway(vm: LabVm, nic: LabNic, policy: Policy) -> None:
    """A VM with one NIC in a TVD that has subnets routes everything else via its gateway
    (as DHCP would tell it), closed TVDs included: what stops it is the network, not the VM.
    Multi-NIC VMs (shared membership) keep their per-NIC tables and get no gateway."""
    tvd = policy.tvds.get(nic.tvd)
    if len(vm.nics) != 1 or tvd is None:
        return
    for version, default in ((4, "0.0.0.0/0"), (6, "::/0")):
        gws = [g for g in tvd.gateways if ipaddress.ip_interface(g).version == version]
        if gws and (version == 4 or nic.address6):
            nsutil.ensure_route(vm.ns, default, gateway=str(ipaddress.ip_interface(gws[0]).ip),
                                dev=nic.eth)


def _external_machine(topo: Topology, vm: LabVm, nic: LabNic, policy: Policy) -> None:
    """A machine on an external network: plugged into that network's switch, and routing the
    TVD subnets to its host's external leg, as the external network's own router would be
    told to (no NAT: TVD addresses are routed). What stops it is the flow policy, not this."""
    nsutil.ensure_veth(topo.fabric_ns, nic.vif, vm.ns, nic.eth)
    nsutil.set_link(topo.fabric_ns, nic.vif, master=topo.bridges[external_net(nic.tvd)], up=True)
    nsutil.set_link(vm.ns, nic.eth, address=nic.mac, up=True)
    nsutil.ensure_addresses(vm.ns, nic.eth, [nic.address])
    leg = policy.hosts[vm.host].external_on(nic.tvd)
    via = str(ipaddress.ip_interface(leg.address).ip)
    for t in sorted(policy.tvds.values(), key=lambda t: t.name):
        for n in t.subnets:
            if ipaddress.ip_network(n).version == 4:
                nsutil.ensure_route(vm.ns, n, gateway=via, dev=nic.eth)


def set_frontend_mtu(vm: LabVm, nic: LabNic, mtu: int) -> None:
    """What netfront does with the backend's `mtu` key: the VM's NIC takes the vif's MTU."""
    nsutil.set_link(vm.ns, nic.eth, mtu=int(mtu))


def _prune_vm_nics(vm: LabVm) -> None:
    want = {n.eth for n in vm.nics}
    for link in nsutil.links(vm.ns):
        name = link.get_attr("IFLA_IFNAME")
        if nsutil.link_kind(link) == "veth" and name not in want:
            nsutil.delete_link(vm.ns, name)


def gone_vifs(topo: Topology) -> dict[str, list[str]]:
    """host -> vif devices in its namespace that no VM of the topology has (VMs removed)."""
    out: dict[str, list[str]] = {}
    for hname, host in topo.hosts.items():
        want = {n.vif for v in topo.vms.values() if v.host == hname for n in v.nics}
        out[hname] = [name for link in nsutil.links(host.ns)
                      if (name := link.get_attr("IFLA_IFNAME") or "").startswith("vif")
                      and name not in want]
    return out


def destroy_vif(host: LabHost, ifname: str) -> None:
    """The domain's vif goes away (after the hotplug `offline` call)."""
    nsutil.delete_link(host.ns, ifname)
