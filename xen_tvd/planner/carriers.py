"""Which hosts may carry a TVD (paper 3.2: a host must satisfy M(t) with its own properties).

The one rule the standalone proxy (its peers and its own admission) and the master (every
host's plan) apply; written here once so they cannot drift.
"""
from __future__ import annotations

from xen_tvd.desired.capabilities import BRIDGE
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import Policy

BRIDGING = BRIDGE.policy   # the capability a carrier needs to have a vSwitch at all


def refusal(policy: Policy, host: str, tvd: str) -> str | None:
    """Why `host` may not carry `tvd` by M(t) and its capability-model properties; None: it may."""
    result = admit(policy, [tvd], dict(policy.hosts[host].properties))
    return None if result.admitted else result.reason()


def may_carry(policy: Policy, host: str, tvd: str) -> bool:
    return refusal(policy, host, tvd) is None


def carriers(policy: Policy, tvd: str, hosts=None) -> tuple[list[str], dict[str, str]]:
    """(the hosts of `hosts` (default: the policy's) that may carry `tvd`, {host: why not}).
    A host without the bridging capability cannot carry anything."""
    ok, refused = [], {}
    for h in (policy.hosts if hosts is None else hosts):
        if BRIDGING not in policy.hosts[h].capabilities:
            refused[h] = (f"host {h} cannot bridge: capability {BRIDGING} is not confirmed by a "
                          f"reported '{BRIDGE.functional}'")
            continue
        why = refusal(policy, h, tvd)
        if why is None:
            ok.append(h)
        else:
            refused[h] = f"host {h} does not satisfy M({tvd}): {why}"
    return ok, refused
