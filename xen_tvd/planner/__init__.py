"""The planner: policy + capability model + VM placement -> desired state per Dom0 (pure).

Decisions, per TVD segment (paper sections 4.2, 4.3, 5.2 step 3):
- Hosts that carry it: those with an admitted vif of the TVD (plus any the caller adds).
- Transport: the first of xen_tvd.desired.transports.ORDER that can connect the carrying hosts
  (802.1Q VLAN when every one has the `vlan` capability and sits on one VLAN-capable network;
  otherwise VXLAN, Ethernet in UDP, which connects any). The transport gives each host its
  uplink, the segment's MTU (VXLAN: the underlay MTU minus 50, unless every underlay network
  can be raised, max-mtu, so that VMs keep 1500), underlay MTUs, NICs whose VLAN offload goes
  off, and the underlay peers (desired/transports/<name>.py says how).
- A segment on one host only has no uplink: co-hosted VMs talk through the local vSwitch.
- Protection: a TVD that requires integrity or confidentiality may only use networks the
  capability model trusts for those goals; traffic between two networks crosses an unmodelled
  path and is trusted only if both ends are, unless the transport itself provides the goal
  (Transport.protects: WireGuard), which it then must ride; over a network that requires
  encryption every TVD must. Anything else is refused (fail closed) rather than silently
  downgraded.
- Underlay filter: each host's `underlay_peers` lists the underlay addresses of the hosts that
  share a VXLAN segment with it; the dataplane accepts VXLAN only from those.
- Routed inter-TVD flows (planner/routing.py): a host whose VMs are in a TVD with a card gets
  a router with legs for that TVD's whole component of permitted pairs (VM-less segments are
  added for the TVDs it does not carry yet) and the stateful flow filter plan.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xen_tvd.desired import transports
from xen_tvd.desired.model import HostState, Segment, VifPort
from xen_tvd.desired.names import bridge_name
from xen_tvd.desired.transports import VM_MTU
from xen_tvd.planner import routing
from xen_tvd.policy.model import Host, HostNic, Policy, Tvd

GUARDED_GOALS = ("integrity", "confidentiality")


class PlanError(Exception):
    """The policy cannot be realised on these hosts; the message says what to change."""


@dataclass(frozen=True)
class _Underlay:
    host: Host
    nic: HostNic


def _primary(policy: Policy, host: Host) -> _Underlay:
    if not host.nics:
        raise PlanError(f"host '{host.name}' has no nics in the capability model, so it cannot "
                        f"reach other hosts; add one under hosts.{host.name}.nics")
    return _Underlay(host, host.nics[0])


def _protecting(policy: Policy, tvd: Tvd, unders: dict[str, _Underlay]) -> tuple[list, str, str]:
    """The transports that may carry the TVD between these hosts, and why the list is short:
    all of them where the networks provide the TVD's guarded goals, else only those that
    provide the missing goals themselves (Transport.protects); only encrypting ones over a
    network that requires encryption. None left: refused, never downgraded."""
    candidates = list(transports.ORDER)
    goals = [g for g in GUARDED_GOALS if g in tvd.protection]
    why = fix = ""
    for a in unders.values():
        for b in unders.values():
            if not a.host.name < b.host.name:
                continue
            nets = {a.nic.network, b.nic.network}
            required = sorted(n for n in nets if policy.networks[n].require_encryption)
            if required:
                candidates = [t for t in candidates if t.protects]
                why = why or (f"TVD '{tvd.name}' crosses network {', '.join(required)} between "
                              f"hosts '{a.host.name}' and '{b.host.name}', which requires "
                              "encryption")
            for g in goals:
                untrusted = sorted(n for n in nets if g not in policy.networks[n].trusted_for)
                if not untrusted:
                    continue
                candidates = [t for t in candidates if g in t.protects]
                if not why:
                    why = (f"TVD '{tvd.name}' requires {g}, but hosts '{a.host.name}' and "
                           f"'{b.host.name}' would carry it over network {', '.join(untrusted)}, "
                           f"which the capability model does not trust for {g}")
                    fix = f"mark the network trusted-for: [{g}] if it is, "
            if not candidates:
                raise PlanError(f"{why}, and no transport provides it; {fix}or keep the TVD's "
                                "VMs apart")
    return candidates, why, fix


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
    # underlay addresses an encapsulating transport (VXLAN) may come from: the other hosts
    # sharing such a segment with h
    peers: dict[str, set[str]] = {h: set() for h in carried}
    for tvd_name, host_names in sorted(hosts_of.items()):
        tvd = policy.tvds[tvd_name]
        hosts = [policy.hosts[h] for h in host_names]
        for seg_host, seg, up in _plan_segment(policy, tvd, hosts):
            segments[seg_host].append(dataclasses.replace(
                seg, allow_dhcp_server=tvd.allow_dhcp_server,
                allow_router_advertisements=tvd.allow_router_advertisements,
                flood_limit=tvd.flood_limit))
            peers[seg_host].update(up.peers)
            for nic, mtu in up.underlay_mtu:
                underlay_mtu[seg_host][nic] = max(underlay_mtu[seg_host].get(nic, 0), mtu)
            vlan_nics[seg_host].update(up.vlan_offload_off)

    return {h: HostState(host=h,
                         segments=tuple(sorted(segments[h], key=lambda s: s.tvd)),
                         ports=tuple(sorted(ports.get(h, []), key=lambda p: p.ifname)),
                         vlan_offload_off=tuple(sorted(vlan_nics[h])),
                         underlay_mtu=underlay_mtu[h],
                         underlay_peers=tuple(sorted(peers[h])),
                         router=routing.router(policy, h, routed[h]),
                         flows=routing.flow_plan(policy, routed[h]))
            for h in sorted(carried)}


def _plan_segment(policy: Policy, tvd: Tvd, hosts: list[Host]):
    bridge = bridge_name(tvd.name)
    csum = tvd.tx_checksum_offload
    if len(hosts) == 1:
        yield hosts[0].name, Segment(tvd.name, bridge, None, VM_MTU, csum), transports.HostUplink(None, VM_MTU)
        return
    unders = {h.name: _primary(policy, h) for h in hosts}
    primary = {name: u.nic for name, u in unders.items()}
    candidates, why, fix = _protecting(policy, tvd, unders)
    for t in candidates:
        placed = t.place(policy, tvd, hosts, primary)
        if placed is not None:
            break
    else:
        lacking = "; ".join(f"{t.title} would, but {', '.join(t.missing(hosts))}"
                            for t in candidates if t.missing(hosts))
        if why:
            raise PlanError(f"{why}; {lacking or 'no transport can connect its hosts'}: give "
                            "every host carrying it that capability and a WireGuard key "
                            f"(hosts.NAME.wireguard-key), {fix}or keep the TVD's VMs apart")
        raise PlanError(f"no transport can connect the hosts of TVD '{tvd.name}' "
                        f"({', '.join(h.name for h in hosts)}){': ' + lacking if lacking else ''}")
    for h in hosts:
        up = placed[h.name]
        yield h.name, Segment(tvd.name, bridge, up.uplink, up.mtu, csum), up
