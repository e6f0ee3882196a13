"""`tvdctl lab status`: what each lab host's drop rules counted (issue #16.7), read with the
dataplane's own reader, the same numbers `tvd-proxy status` shows on a real Dom0."""
from __future__ import annotations

from xen_tvd.dataplane import DataplaneError, drop_counters


def tvd_ids(policy_path: str | None) -> dict[int, str]:
    """VLAN id -> TVD name from the lab's policy (the flow filter names TVDs by VLAN id); empty
    when it cannot be read (the counters then show ids)."""
    from xen_tvd.policy import PolicyInvalid, load_policy
    try:
        policy = load_policy(policy_path) if policy_path else None
    except (PolicyInvalid, OSError):
        return {}
    return {t.vlan: t.name for t in policy.tvds.values()} if policy else {}


def host_drops(ns: str, tvd_of_id: dict[int, str]) -> dict:
    """{"flows": [{reason, from, to, packets}], "ports": [{ifname, reason, packets}],
    "dom0_guard": packets} for one host namespace (TVD ids are VLAN ids)."""
    try:
        c = drop_counters(ns)
    except DataplaneError as e:
        return {"error": str(e)}
    return {"flows": [{"reason": r, "from": tvd_of_id.get(s, str(s)),
                       "to": tvd_of_id.get(d, str(d)), "packets": n}
                      for (r, s, d), n in sorted(c["flows"].items())],
            "ports": [{"ifname": i, "reason": r, "packets": n}
                      for i, per in sorted(c["ports"].items()) for r, n in sorted(per.items())],
            "dom0_guard": c["dom0_guard"]}


def render(d: dict) -> str:
    """One line: the non-zero counters."""
    if "error" in d:
        return f"drops: unreadable ({d['error']})"
    parts = [f"{x['reason']} {x['from']}->{x['to']} {x['packets']}" for x in d["flows"]
             if x["packets"]]
    parts += [f"{x['ifname']} {x['reason']} {x['packets']}" for x in d["ports"] if x["packets"]]
    if d["dom0_guard"]:
        parts.append(f"dom0-guard {d['dom0_guard']}")
    return "drops: " + (", ".join(parts) or "none")
