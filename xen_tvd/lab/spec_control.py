"""Lab spec keys of master mode (docs/lab.md "Master mode"); pure, like spec.py.

    control: master                  # top level; default `direct`
    replicas: 3                      # top level, master mode: tvd-master replicas on etcd
    vms:
      a1: {..., properties: {signed-kernel: trust}}   # evidence: a VM certificate from the master
      x1: {..., expect: denied}                       # admission must refuse this VM

`properties` and `expect` only mean something when a master decides admission, so a direct-mode
spec that uses them is refused rather than silently ignored.
"""
from __future__ import annotations

import yaml

from xen_tvd.policy.model import ASSURANCE_KINDS, Policy
from xen_tvd.yamlschema import Reader
from xen_tvd.yamlsrc import kind_name

CONTROL_MODES = ("direct", "master")
EXPECTATIONS = ("admitted", "denied")


def parse_control(node, r: Reader) -> str | None:
    v = r.nonempty_string(node, "control")
    if v is not None and v not in CONTROL_MODES:
        r.err(node, f"control {v!r} must be one of {', '.join(CONTROL_MODES)} "
                                        "(direct: the lab plugs vifs itself; master: a tvd-master "
                                        "and one tvd-proxy per host decide)")
        return None
    return v


MAX_REPLICAS = 5


def parse_replicas(node, r: Reader, control: str) -> int | None:
    """1 (one master on SQLite, the default) or up to MAX_REPLICAS replicas on as many etcd
    members (lab/replicas.py)."""
    if control != "master":
        r.err(node, "replicas needs `control: master` (replicas of the tvd-master)")
        return None
    return r.integer(node, "replicas", 1, MAX_REPLICAS)


def parse_expect(node, r: Reader, what: str) -> str | None:
    v = r.nonempty_string(node, f"{what}: expect")
    if v is not None and v not in EXPECTATIONS:
        r.err(node, f"{what}: expect {v!r} must be one of "
                                        f"{', '.join(EXPECTATIONS)}")
        return None
    return v


def parse_properties(node, r: Reader, policy: Policy | None, what: str) -> dict[str, str] | None:
    """{property: assurance kind}: what the master's VM certificate for this VM will state."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        r.err(node, f"{what}: properties must be a non-empty mapping of "
                                        f"property to assurance kind, got {kind_name(node)}")
        return None
    out: dict[str, str] = {}
    ok = True
    for k, v in node.value:
        prop = r.nonempty_string(k, f"{what}: property name")
        kind = r.nonempty_string(v, f"{what}: assurance of {prop}")
        if prop is None or kind is None:
            ok = False
            continue
        if prop in out:
            r.err(k, f"{what}: duplicate property {prop!r}")
            ok = False
        elif policy is not None and prop not in policy.properties:
            known = ", ".join(sorted(policy.properties)) or "none"
            r.err(k, f"{what}: property {prop!r} is not defined by the "
                                         f"policy (properties: {known})")
            ok = False
        elif kind not in ASSURANCE_KINDS:
            r.err(v, f"{what}: assurance {kind!r} of {prop} must be one of "
                                         f"{', '.join(ASSURANCE_KINDS)}")
            ok = False
        out[prop] = kind
    return out if ok else None


def check_mode(control: str, vms: dict, diags) -> None:
    """Evidence and expected refusals need a deciding master."""
    if control == "master":
        return
    for vm in vms.values():
        if vm.properties or vm.expect != "admitted":
            key = "properties" if vm.properties else "expect"
            diags.error(vm.pos, f"VM {vm.name}: {key} needs `control: master` (in direct mode "
                                "the lab attaches every vif itself and nothing decides admission)")
