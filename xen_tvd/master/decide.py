"""The master's decision (pure): what each enrolled host must instantiate for which TVD.

Paper 5.2 step 3-4, contract docs/master-protocol.md "Capability report" and "Bundle".

1. Effective host = the policy's `hosts:` entry (the admin's capability model, the upper bound)
   narrowed by what the host reported:
   - functional capabilities: a policy capability counts only if the Dom0 reported the kernel
     feature that implements it (xen_tvd.desired.capabilities.EVIDENCE: ethernet <- bridge,
     ip <- vxlan, vlan <- vlan);
   - security properties: only those the policy lists for the host AND the report claims with
     the same assurance kind, with non-empty evidence unless the kind is `trust`;
   - NICs: as in the policy (a differing reported address is a warning, not an override).
   Claims beyond the policy are ignored (and returned as warnings for the audit log).
2. Carriers of TVD t = enrolled, not revoked, reporting hosts whose effective properties
   satisfy M(t) (xen_tvd.planner.carriers, the rule the standalone proxy applies too).
3. Per TVD, the planner (xen_tvd.planner.plan) places the segment on all carriers; a carrier
   that cannot provide what the plan needs is dropped with a reason and the TVD re-planned:
   no bridge support; a transport needed (VXLAN) without its capability (`ip`); a protection
   goal over a network not trusted for it (or one requiring encryption) on a host that cannot
   ride WireGuard (no confirmed wireguard capability or no reported key): refuse, never
   downgrade; the hosts that can keep the TVD, encrypted.
4. One final plan over all hosts with their kept TVDs gives each host's segments, underlay
   peers (only enrolled, non-revoked carriers), VLAN-offload NICs, underlay MTUs and, for
   routed components, its router legs and flow filter plan (for every TVD it may carry; the
   proxy keeps those its local TVDs need, xen_tvd.proxy.routes).
5. WireGuard key rotation: a host's reported next key is accepted by its peers (both keys in
   their plans); the host runs with it once all of them reported accepting it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from xen_tvd.desired import transports
from xen_tvd.desired.capabilities import EVIDENCE
from xen_tvd.desired.model import HostState
from xen_tvd.desired.serial import segments_to_json, to_json
from xen_tvd.desired.transports.wireguard import WireguardUplink
from xen_tvd.desired.wireguard import key_tag
from xen_tvd.planner import GUARDED_GOALS, PlanError, plan, routing
from xen_tvd.planner import carriers as carrier_rule
from xen_tvd.policy.model import Host, Policy

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
                     if EVIDENCE.get(c, c) in functional)
    for c in sorted(host.capabilities - caps):
        warnings.append(f"capability {c} not confirmed: report lacks "
                        f"'{EVIDENCE.get(c, c)}'")
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
    # the host's WireGuard public keys are the ones it reports (it made the pairs); where the
    # policy pins keys (wireguard-key, and wireguard-next-key for a rotation) a reported key
    # must be one of them, else the host has none here (its encrypted segments fail closed)
    wg_key, wg_next = report.get("wireguard-key"), report.get("wireguard-next-key")
    pinned = {k for k in (host.wireguard_key, host.wireguard_next_key) if k}
    if pinned and wg_key not in pinned:
        warnings.append("wireguard-key reported " + ("none" if wg_key is None else
                        "differs from the policy's hosts entry") + ": the host gets no "
                        "encrypted segments until the two agree")
        wg_key = None
    if wg_next is not None and (wg_key is None or wg_next == wg_key):
        wg_next = None
    elif wg_next is not None and pinned and wg_next not in pinned:
        warnings.append("wireguard-next-key reported is not the policy's hosts entry "
                        "(wireguard-next-key): the rotation waits until the two agree")
        wg_next = None
    elif wg_next is not None and key_tag(wg_next) == key_tag(wg_key):
        warnings.append("wireguard-next-key reported begins with the same four bytes as the "
                        "wireguard-key (one inner address for both): ignored; make another "
                        "pair")
        wg_next = None
    return dataclasses.replace(host, capabilities=caps, properties=props,
                               wireguard_key=wg_key, wireguard_next_key=wg_next), warnings


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
        carriers, why_not = carrier_rule.carriers(eff, tvd)
        for h, reason in why_not.items():
            refused[h][tvd] = reason
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
    _switch_accepted_keys(eff_hosts, reports, states)
    for h in eff_hosts:
        state = states.get(h, HostState(host=h, underlay_peers=()))
        out[h] = Decision(state, refused[h])
    return out


def _switch_accepted_keys(hosts: dict[str, Host], reports: dict[str, dict],
                          states: dict[str, HostState]) -> None:
    """Key rotation (docs/wireguard.md): a host with a next key runs with it once every host
    whose plan has it as a WireGuard peer reported that it accepts the key (the report's
    wireguard-accepts, sent after applying a bundle with both keys). Until then it keeps its
    current key; the peers accept both either way."""
    owner = {n.address: h for h, host in hosts.items() for n in host.nics}
    peers_of: dict[str, set[str]] = {}
    for p, st in states.items():
        for seg in st.segments:
            if isinstance(seg.uplink, WireguardUplink):
                for addr, _ in seg.uplink.peers:
                    if addr in owner:
                        peers_of.setdefault(owner[addr], set()).add(p)
    for h, host in hosts.items():
        nxt = host.wireguard_next_key
        if not nxt or h not in states:
            continue
        if all(nxt in (reports.get(p, {}).get("wireguard-accepts") or ())
               for p in peers_of.get(h, ())):
            st = states[h]
            states[h] = dataclasses.replace(st, segments=tuple(
                dataclasses.replace(seg, uplink=dataclasses.replace(seg.uplink, key=nxt))
                if isinstance(seg.uplink, WireguardUplink) else seg for seg in st.segments))


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
    # a transport that connects any hosts does so without asking for its capability (the
    # others are eligible only where every host has theirs): a host without it would be dropped
    anyway = [t.capability.policy for t in transports.ORDER if t.connects_any]
    return any(any(w not in policy.hosts[h].capabilities for w in anyway)
               or not policy.hosts[h].nics for h in carriers) or any(
        policy.networks[policy.hosts[h].nics[0].network].require_encryption for h in carriers)


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
            if len(keep) > 1:
                bad = _untrusted(policy, keep, goals)
                if bad:
                    dropped.update(bad)
                    continue
            for h in keep:
                dropped[h] = f"TVD {tvd} cannot be placed: {e}"
            return dropped
        incapable = {}
        for h in keep:
            uplink = states[h].segment(tvd).uplink
            t = transports.of_uplink(uplink) if uplink is not None else None
            if t is not None and t.capability.policy not in policy.hosts[h].capabilities:
                incapable[h] = (f"TVD {tvd} needs {t.title} between its hosts here, but host {h} "
                                f"has no confirmed {t.capability.policy} capability (report "
                                f"lacks '{t.capability.functional}')")
        if not incapable:
            return dropped
        dropped.update(incapable)


def _untrusted(policy: Policy, hosts: list[str], goals: list[str]) -> dict[str, str]:
    out = {}
    for h in hosts:
        host = policy.hosts[h]
        if not host.nics:
            out[h] = f"host {h} has no nics in the capability model to reach other hosts"
            continue
        net = policy.networks[host.nics[0].network]
        missing = [g for g in goals if g not in net.trusted_for]
        if not missing and not net.require_encryption:
            continue
        # an encrypting transport this host can use keeps it (the others are dropped)
        protecting = [t for t in transports.ORDER if t.protects and set(missing) <= t.protects]
        if any(not t.missing([host]) and t.capability.policy in host.capabilities
               for t in protecting):
            continue
        need = (f"requires {' and '.join(missing)}" if missing else "must be encrypted")
        why = "; ".join(p for t in protecting for p in t.missing([host])) or \
            "no transport provides it"
        out[h] = (f"{need}, but host {h} reaches other hosts over network {net.name}"
                  f"{', not trusted for it' if missing else ', which requires encryption'}, "
                  f"and {why}: refused rather than downgraded")
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
