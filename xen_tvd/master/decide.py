"""The master's decision (pure): what each enrolled host must instantiate for which TVD.

Paper 5.2 step 3-4, contract docs/master-protocol.md "Capability report" and "Bundle".

1. Effective host = the policy's `hosts:` entry (the admin's capability model, the upper bound)
   narrowed by what the host reported:
   - functional capabilities: a policy capability counts only if the Dom0 reported the kernel
     feature that implements it (FUNCTIONAL_EVIDENCE: ethernet <- bridge, ip <- vxlan,
     vlan <- vlan);
   - security properties: only those the policy lists for the host AND the report claims with
     the same assurance kind, with non-empty evidence unless the kind is `trust`;
   - NICs: as in the policy (a differing reported address is a warning, not an override).
   Claims beyond the policy are ignored (and returned as warnings for the audit log).
2. Carriers of TVD t = enrolled, not revoked, reporting hosts whose effective properties
   satisfy M(t) (xen_tvd.policy.lattice.admit, as the proxy does for its peers).
3. Per TVD, the planner (xen_tvd.planner.plan) places the segment on all carriers; a carrier
   that cannot provide what the plan needs is dropped with a reason and the TVD re-planned:
   no bridge support; VXLAN needed but no `ip` capability; a protection goal over a network
   not trusted for it (no encrypting transport: refuse, never downgrade).
4. One final plan over all hosts with their kept TVDs gives each host's segments, underlay
   peers (only enrolled, non-revoked carriers), VLAN-offload NICs, underlay MTUs and, for
   routed components, its router legs and flow filter plan (for every TVD it may carry; the
   proxy keeps those its local TVDs need, xen_tvd.proxy.routes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from xen_tvd.dataplane.model import HostState, VxlanUplink
from xen_tvd.dataplane.serial import segments_to_json, to_json
from xen_tvd.planner import GUARDED_GOALS, PlanError, plan, routing
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import Host, Policy

FUNCTIONAL_EVIDENCE = {"ethernet": "bridge", "ip": "vxlan", "vlan": "vlan"}
EVIDENCE_OPTIONAL_KINDS = {"trust"}   # trust is an admin's statement: nothing to record


@dataclass
class Decision:
    """What one host gets: its HostState (segments, peers, …) and refusals per TVD."""
    state: HostState
    refused: dict[str, str] = field(default_factory=dict)


def effective_host(host: Host, report: dict) -> tuple[Host, list[str]]:
    """The policy host narrowed to what the report backs, and warnings for the audit log."""
    warnings: list[str] = []
    functional = set(report.get("functional") or [])
    caps = frozenset(c for c in host.capabilities
                     if FUNCTIONAL_EVIDENCE.get(c, c) in functional)
    for c in sorted(host.capabilities - caps):
        warnings.append(f"capability {c} not confirmed: report lacks "
                        f"'{FUNCTIONAL_EVIDENCE.get(c, c)}'")
    claims = {}
    for s in report.get("security") or []:
        claims[s.get("property")] = s
    props = {}
    for name, kind in host.properties.items():
        claim = claims.get(name)
        if claim is None:
            continue
        if claim.get("assurance") != kind:
            warnings.append(f"property {name} claimed with assurance "
                            f"{claim.get('assurance')}, policy requires {kind}: ignored")
            continue
        if kind not in EVIDENCE_OPTIONAL_KINDS and not claim.get("evidence"):
            warnings.append(f"property {name} ({kind}) claimed without evidence: ignored")
            continue
        props[name] = kind
    for name in sorted(set(claims) - set(host.properties)):
        warnings.append(f"property {name} claimed but not in the policy for this host: ignored")
    reported = {(n.get("network"), n.get("nic")): n.get("address")
                for n in report.get("nics") or [] if isinstance(n, dict)}
    for nic in host.nics:
        addr = reported.get((nic.network, nic.nic))
        if addr is not None and addr != nic.address:
            warnings.append(f"nic {nic.nic} on {nic.network} reported address {addr}, policy "
                            f"says {nic.address}: the policy's address is used")
    return dataclasses.replace(host, capabilities=caps, properties=props), warnings


def decide(policy: Policy, reports: dict[str, dict],
           enrolled: set[str]) -> dict[str, Decision]:
    """A Decision for every enrolled host (revoked hosts are simply not in `enrolled`)."""
    out: dict[str, Decision] = {}
    eff_hosts: dict[str, Host] = {}
    for name in sorted(enrolled):
        if name not in policy.hosts:
            out[name] = Decision(HostState(host=name, underlay_peers=()),
                                 {t: f"host {name} is not in the policy's hosts:"
                                  for t in policy.tvds})
        elif name not in reports:
            out[name] = Decision(HostState(host=name, underlay_peers=()),
                                 {t: f"host {name} has not reported its capabilities yet"
                                  for t in policy.tvds})
        else:
            eff_hosts[name] = effective_host(policy.hosts[name], reports[name])[0]
    eff = dataclasses.replace(policy, hosts=eff_hosts)
    refused: dict[str, dict[str, str]] = {h: {} for h in eff_hosts}
    carry: dict[str, set[str]] = {h: set() for h in eff_hosts}
    for tvd in sorted(policy.tvds):
        carriers = []
        for h, host in eff_hosts.items():
            if "ethernet" not in host.capabilities:
                refused[h][tvd] = (f"host {h} cannot bridge: capability ethernet is not "
                                   "confirmed by a reported 'bridge'")
                continue
            result = admit(eff, [tvd], dict(host.properties))
            if result.admitted:
                carriers.append(h)
            else:
                refused[h][tvd] = f"host {h} does not satisfy M({tvd}): {result.reason()}"
        if _may_fail(eff, tvd, carriers):
            for h, reason in _place(eff, tvd, carriers).items():
                refused[h][tvd] = reason
        for h in carriers:
            if tvd not in refused[h]:
                carry[h].add(tvd)
    _drop_routed_into_refused(eff, carry, refused)
    try:
        states = plan(eff, {}, carry) if eff_hosts else {}
    except PlanError:
        # something _may_fail did not foresee: place every TVD on its own, then plan again
        for tvd in sorted(policy.tvds):
            hosts = [h for h in carry if tvd in carry[h]]
            for h, reason in _place(eff, tvd, hosts).items():
                refused[h][tvd] = reason
                carry[h].discard(tvd)
        states = plan(eff, {}, carry)
    for h in eff_hosts:
        state = states.get(h, HostState(host=h, underlay_peers=()))
        out[h] = Decision(state, refused[h])
    return out


def _drop_routed_into_refused(policy: Policy, carry: dict[str, set[str]],
                              refused: dict[str, dict[str, str]]) -> None:
    """The planner gives a host's router a leg (and so a segment) for every TVD routed
    together with one it carries. A TVD whose routed component holds one the host may not
    carry would smuggle that segment onto the host: refuse the whole component there."""
    for h, tvds in carry.items():
        for t in sorted(tvds):
            comp = routing.routed_tvds(policy, {h: {t}})[h]
            barred = sorted(comp - tvds)
            if barred:
                refused[h][t] = (f"TVD {t} is routed together with {', '.join(barred)}, which "
                                 f"host {h} may not carry: {refused[h].get(barred[0], '')}"
                                 .rstrip(": "))
        carry[h] -= set(refused[h])


def _may_fail(policy: Policy, tvd: str, carriers: list[str]) -> bool:
    """Whether placing the TVD on these carriers could need a carrier dropped. Trial-planning
    every TVD doubles the planner's work, which dominates a recompute with many hosts."""
    if len(carriers) < 2:
        return False
    if any(g in policy.tvds[tvd].protection for g in GUARDED_GOALS):
        return True
    return any("ip" not in policy.hosts[h].capabilities or not policy.hosts[h].nics
               for h in carriers)


def _place(policy: Policy, tvd: str, carriers: list[str]) -> dict[str, str]:
    """Carriers to drop for this TVD, with reasons, so the rest can be planned."""
    dropped: dict[str, str] = {}
    goals = [g for g in GUARDED_GOALS if g in policy.tvds[tvd].protection]
    while True:
        keep = [h for h in carriers if h not in dropped]
        if not keep:
            return dropped
        try:
            states = plan(policy, {}, {h: {tvd} for h in keep})
        except PlanError as e:
            if len(keep) > 1 and goals:
                bad = _untrusted(policy, keep, goals)
                if bad:
                    dropped.update(bad)
                    continue
            for h in keep:
                dropped[h] = f"TVD {tvd} cannot be placed: {e}"
            return dropped
        no_ip = {h: (f"TVD {tvd} needs VXLAN between its hosts here, but host {h} has no "
                     "confirmed ip capability (report lacks 'vxlan')")
                 for h in keep
                 if isinstance(states[h].segment(tvd).uplink, VxlanUplink)
                 and "ip" not in policy.hosts[h].capabilities}
        if not no_ip:
            return dropped
        dropped.update(no_ip)


def _untrusted(policy: Policy, hosts: list[str], goals: list[str]) -> dict[str, str]:
    out = {}
    for h in hosts:
        host = policy.hosts[h]
        if not host.nics:
            out[h] = f"host {h} has no nics in the capability model to reach other hosts"
            continue
        net = policy.networks[host.nics[0].network]
        missing = [g for g in goals if g not in net.trusted_for]
        if missing:
            out[h] = (f"requires {' and '.join(missing)}, but host {h} reaches other hosts "
                      f"over network {net.name}, not trusted for it, and xen-tvd has no "
                      "encrypting transport: refused rather than downgraded")
    return out


def bundle_content(policy_text: str, master_url: str, host: str, decision: Decision,
                   evidence: dict) -> dict:
    """The payload without generation and issued time (those are added when signing); its
    canonical hash tells whether the host's bundle changed."""
    s = decision.state
    plan_json = {"segments": segments_to_json(s.segments),
                 "underlay_peers": list(s.underlay_peers or ()),
                 "vlan_offload_off": list(s.vlan_offload_off),
                 "underlay_mtu": dict(s.underlay_mtu)}
    # routed inter-TVD flows: optional keys, present only when a TVD here has a card, so a
    # host without routed TVDs keeps the same bundle hash (no new generation on upgrade)
    if s.router is not None and s.flows is not None:
        plan_json["router"] = to_json(s.router)
        plan_json["flows"] = to_json(s.flows)
    return {"format": 1, "master": master_url, "host": host, "policy": policy_text,
            "plan": plan_json,
            "refused": dict(sorted(decision.refused.items())),
            "evidence": evidence}
