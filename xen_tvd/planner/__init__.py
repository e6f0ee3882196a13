"""The planner: policy + capability model + VM placement -> desired state per Dom0 (pure).

Decisions, per TVD segment (paper sections 4.2, 4.3, 5.2 step 3):
- Hosts that carry it: those with an admitted vif of the TVD (plus any the caller adds).
- Transport: 802.1Q VLAN when every carrying host sits on one VLAN-capable network and has the
  `vlan` capability; otherwise VXLAN (Ethernet in UDP). With VXLAN, peers on the host's own
  multicast-capable network are reached through the TVD's multicast group; peers on other
  networks (the WAN case, no multicast routing) by unicast head-end replication.
- A segment on one host only has no uplink: co-hosted VMs talk through the local vSwitch.
- Protection: a TVD that requires integrity or confidentiality may only use networks the
  capability model trusts for those goals; traffic between two networks crosses an unmodelled
  path and is trusted only if both ends are. xen-tvd has no encrypting transport yet, so
  anything else is refused (fail closed) rather than silently downgraded.
- Underlay filter: each host's `underlay_peers` lists the underlay addresses of the hosts that
  share a VXLAN segment with it; the dataplane accepts VXLAN only from those.
- Routed inter-TVD flows (planner/routing.py): a host whose VMs are in a TVD with a card gets
  a router with legs for that TVD's whole component of permitted pairs (VM-less segments are
  added for the TVDs it does not carry yet) and the stateful flow filter plan.
- MTU: a VXLAN segment's VM-facing MTU is the smallest underlay MTU minus 50, unless every
  underlay network can be raised (max-mtu) so that VMs keep 1500.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from xen_tvd.dataplane.model import (VXLAN_OVERHEAD_IPV4, HostState, Segment, VifPort,
                                     VlanUplink, VxlanUplink)
from xen_tvd.planner import routing
from xen_tvd.policy.model import Host, HostNic, Policy, Tvd

GUARDED_GOALS = ("integrity", "confidentiality")
VM_MTU = 1500


class PlanError(Exception):
    """The policy cannot be realised on these hosts; the message says what to change."""


def bridge_name(tvd: str) -> str:
    name = f"tvd-{tvd}"
    if len(name) <= 15:
        return name
    return "tvd-" + hashlib.sha1(tvd.encode()).hexdigest()[:11]


@dataclass(frozen=True)
class _Underlay:
    host: Host
    nic: HostNic


def _primary(policy: Policy, host: Host) -> _Underlay:
    if not host.nics:
        raise PlanError(f"host '{host.name}' has no nics in the capability model, so it cannot "
                        f"reach other hosts; add one under hosts.{host.name}.nics")
    return _Underlay(host, host.nics[0])


def _vlan_network(policy: Policy, hosts: list[Host]) -> str | None:
    """A VLAN-capable network every host sits on, if all of them can tag."""
    if not all("vlan" in h.capabilities for h in hosts):
        return None
    common = None
    for h in hosts:
        nets = {n.network for n in h.nics if policy.networks[n.network].vlan_capable}
        common = nets if common is None else common & nets
    return min(common) if common else None


def _check_protection(policy: Policy, tvd: Tvd, a: _Underlay, b: _Underlay) -> None:
    goals = [g for g in GUARDED_GOALS if g in tvd.protection]
    nets = {a.nic.network, b.nic.network}
    for g in goals:
        untrusted = sorted(n for n in nets if g not in policy.networks[n].trusted_for)
        if untrusted:
            raise PlanError(
                f"TVD '{tvd.name}' requires {g}, but hosts '{a.host.name}' and '{b.host.name}' "
                f"would carry it over network {', '.join(untrusted)}, which the capability model "
                f"does not trust for {g}; xen-tvd has no encrypting transport yet, so mark the "
                f"network trusted-for: [{g}] if it is, or keep the TVD's VMs apart")


def plan(policy: Policy, ports: dict[str, list[VifPort]],
         extra: dict[str, set[str]] | None = None) -> dict[str, HostState]:
    """Desired HostState for every host that has ports or extra TVDs to carry."""
    carried: dict[str, set[str]] = {}
    for host, plist in ports.items():
        for p in plist:
            if p.tvd not in policy.tvds:
                raise PlanError(f"vif {p.ifname} on host '{host}' names unknown TVD '{p.tvd}'")
            carried.setdefault(host, set()).add(p.tvd)
    for host, tvds in (extra or {}).items():
        carried.setdefault(host, set()).update(tvds)
    for host in carried:
        if host not in policy.hosts:
            raise PlanError(f"host '{host}' is not in the policy's capability model (hosts:)")
    try:
        routed = routing.routed_tvds(policy, carried)
    except routing.RoutingError as e:
        raise PlanError(str(e)) from None
    for host, tvds in routed.items():
        # a router leg needs the TVD's segment, VMs or not (externals have no segment)
        carried[host].update(t for t in tvds if t in policy.tvds)

    hosts_of: dict[str, list[str]] = {}
    for host, tvds in sorted(carried.items()):
        for t in tvds:
            hosts_of.setdefault(t, []).append(host)

    segments: dict[str, list[Segment]] = {h: [] for h in carried}
    underlay_mtu: dict[str, dict[str, int]] = {h: {} for h in carried}
    vlan_nics: dict[str, set[str]] = {h: set() for h in carried}
    # underlay addresses VXLAN may come from: the other hosts sharing a VXLAN segment with h
    peers: dict[str, set[str]] = {h: set() for h in carried}
    for tvd_name, host_names in sorted(hosts_of.items()):
        tvd = policy.tvds[tvd_name]
        hosts = [policy.hosts[h] for h in host_names]
        for seg_host, seg, mtus, vnic, seg_peers in _plan_segment(policy, tvd, hosts):
            segments[seg_host].append(dataclasses.replace(
                seg, allow_dhcp_server=tvd.allow_dhcp_server,
                allow_router_advertisements=tvd.allow_router_advertisements))
            peers[seg_host].update(seg_peers)
            for nic, mtu in mtus.items():
                underlay_mtu[seg_host][nic] = max(underlay_mtu[seg_host].get(nic, 0), mtu)
            if vnic:
                vlan_nics[seg_host].add(vnic)

    return {h: HostState(host=h,
                         segments=tuple(sorted(segments[h], key=lambda s: s.tvd)),
                         ports=tuple(sorted(ports.get(h, []), key=lambda p: p.ifname)),
                         vlan_offload_off=tuple(sorted(vlan_nics[h])),
                         underlay_mtu=underlay_mtu[h],
                         underlay_peers=tuple(sorted(peers[h])),
                         router=routing.router(policy, h, routed[h], bridge_name),
                         flows=routing.flow_plan(policy, routed[h], bridge_name))
            for h in sorted(carried)}


def _plan_segment(policy: Policy, tvd: Tvd, hosts: list[Host]):
    bridge = bridge_name(tvd.name)
    csum = tvd.tx_checksum_offload
    if len(hosts) == 1:
        yield hosts[0].name, Segment(tvd.name, bridge, None, VM_MTU, csum), {}, None, ()
        return
    unders = {h.name: _primary(policy, h) for h in hosts}
    for a in unders.values():
        for b in unders.values():
            if a.host.name < b.host.name:
                _check_protection(policy, tvd, a, b)

    vnet = _vlan_network(policy, hosts)
    if vnet is not None:
        net = policy.networks[vnet]
        for h in hosts:
            nic = h.nic_on(vnet)
            yield (h.name, Segment(tvd.name, bridge, VlanUplink(tvd.vlan, nic.nic), net.mtu, csum),
                   {}, nic.nic, ())
        return

    nets = {policy.networks[u.nic.network] for u in unders.values()}
    low_mtu = min(n.mtu for n in nets)
    if all(n.max_mtu >= VM_MTU + VXLAN_OVERHEAD_IPV4 for n in nets) and \
            low_mtu < VM_MTU + VXLAN_OVERHEAD_IPV4:
        raise_to, vm_mtu = VM_MTU + VXLAN_OVERHEAD_IPV4, VM_MTU   # raise the underlay
    else:
        raise_to, vm_mtu = None, min(VM_MTU, low_mtu - VXLAN_OVERHEAD_IPV4)
    for h in hosts:
        me = unders[h.name]
        my_net = policy.networks[me.nic.network]
        same_mcast = [u for u in unders.values() if u.host.name != h.name
                      and u.nic.network == me.nic.network and my_net.multicast]
        # by host name: comparing the dataclasses made this O(n^3) for n carriers (the
        # master plans every host at once; 200 hosts took ~20 s, bench/master_enrol.py)
        mcast_hosts = {u.host.name for u in same_mcast}
        remotes = tuple(sorted(u.nic.address for u in unders.values()
                               if u.host.name != h.name and u.host.name not in mcast_hosts))
        uplink = VxlanUplink(vni=tvd.vni, local_ip=me.nic.address, underlay_dev=me.nic.nic,
                             group=tvd.multicast_group if same_mcast else None, remotes=remotes)
        mtus = {me.nic.nic: raise_to} if raise_to else {}
        # every other carrying host, multicast or not: their VXLAN source is their local_ip
        seg_peers = tuple(u.nic.address for u in unders.values() if u.host.name != h.name)
        yield h.name, Segment(tvd.name, bridge, uplink, vm_mtu, csum), mtus, None, seg_peers
