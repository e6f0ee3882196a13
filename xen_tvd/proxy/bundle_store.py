"""The master's signed bundle on the proxy side: parse a verified payload, store and reload it.

The signature check itself is the master package's `verify_bundle` (one implementation for
both ends); this module turns the verified payload into what the daemon needs (a Policy, the
per-TVD segments the master decided, the evidence rules) and keeps the envelope on disk
verbatim (DIR/master/bundle.json, 0600, atomic) so that a restarted proxy keeps enforcing it.
A stored bundle is verified again on every load: a file someone edited is no bundle at all
(fail closed), never a policy.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from xen_tvd.desired.model import FlowPlan, Router, Segment
from xen_tvd.desired.serial import SerialError, from_json, segments_from_json
from xen_tvd.diagnostics import Collector
from xen_tvd.policy.model import Policy
from xen_tvd.policy.schema import PolicyReader
from xen_tvd.policy.verify import verify
from xen_tvd.yamlsrc import compose

from .evidence import Evidence, EvidenceError

BUNDLE_FILE = "bundle.json"
GENERATION_FILE = "generation"
FORMAT = 1


class BundleInvalid(Exception):
    """A bundle the proxy will not enforce; one line saying why."""


@dataclass(frozen=True)
class Bundle:
    generation: int
    master: str
    host: str
    issued: float
    policy: Policy = field(hash=False)
    segments: dict[str, Segment] = field(hash=False)    # TVD -> this host's segment
    underlay_peers: tuple[str, ...] = ()
    vlan_offload_off: tuple[str, ...] = ()
    underlay_mtu: dict[str, int] = field(default_factory=dict, hash=False)
    refused: dict[str, str] = field(default_factory=dict, hash=False)
    evidence: Evidence = field(default_factory=Evidence, hash=False)
    # routed inter-TVD flows for every TVD this host may carry (None: none routed here)
    router: Router | None = None
    flows: FlowPlan | None = None


def parse_policy(text: str, where: str) -> Policy:
    """The same checks as `tvdctl check` (schema + semantic verification) on the pushed YAML."""
    diags = Collector()
    root = compose(text.encode("utf-8"), where, diags)
    policy = PolicyReader(where, diags).policy(root) if root is not None else None
    if policy is not None and not diags.errors:
        verify(policy, diags)
    if policy is None or diags.errors:
        first = diags.errors[0] if diags.errors else "empty policy"
        raise BundleInvalid(f"{where}: the policy does not verify: {first}")
    return policy


def parse_payload(payload: dict, host: str, master: str) -> Bundle:
    """A verified payload (dict) -> Bundle; BundleInvalid when it is not for us or malformed."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BundleInvalid(f"bundle format {payload.get('format') if isinstance(payload, dict) else '?'!r} "
                            f"is not {FORMAT}; upgrade tvd-proxy or the master")
    if payload.get("host") != host:
        raise BundleInvalid(f"bundle is for host {payload.get('host')!r}, not {host!r}")
    if payload.get("master") != master:
        raise BundleInvalid(f"bundle is from master {payload.get('master')!r}, not {master!r} "
                            "(the URL this host enrolled with)")
    gen = payload.get("generation")
    if isinstance(gen, bool) or not isinstance(gen, int) or gen < 0:
        raise BundleInvalid("bundle generation is not a non-negative integer")
    policy = parse_policy(payload.get("policy") or "", f"bundle generation {gen} policy")
    plan = payload.get("plan")
    if not isinstance(plan, dict):
        raise BundleInvalid(f"bundle generation {gen} has no plan")
    try:
        segs = segments_from_json(plan.get("segments", []))
    except SerialError as e:
        raise BundleInvalid(f"bundle generation {gen} plan: {e}") from None
    by_tvd = {}
    for s in segs:
        if s.tvd not in policy.tvds:
            raise BundleInvalid(f"bundle generation {gen} plans TVD {s.tvd!r}, which its policy lacks")
        by_tvd[s.tvd] = s
    router, flows = _routing(plan, by_tvd, gen)
    try:
        evidence = Evidence.from_json(payload.get("evidence") or {})
    except EvidenceError as e:
        raise BundleInvalid(f"bundle generation {gen}: {e}") from None
    peers = plan.get("underlay_peers") or []
    offl = plan.get("vlan_offload_off") or []
    mtu = plan.get("underlay_mtu") or {}
    refused = payload.get("refused") or {}
    if not (isinstance(peers, list) and all(isinstance(p, str) for p in peers)
            and isinstance(offl, list) and all(isinstance(n, str) for n in offl)
            and isinstance(mtu, dict) and all(isinstance(v, int) for v in mtu.values())
            and isinstance(refused, dict)):
        raise BundleInvalid(f"bundle generation {gen}: malformed underlay_peers, vlan_offload_off, "
                            "underlay_mtu or refused")
    return Bundle(generation=gen, master=master, host=host,
                  issued=float(payload.get("issued") or 0.0), policy=policy, segments=by_tvd,
                  underlay_peers=tuple(sorted(peers)), vlan_offload_off=tuple(sorted(offl)),
                  underlay_mtu={str(k): v for k, v in mtu.items()},
                  refused={str(k): str(v) for k, v in refused.items()}, evidence=evidence,
                  router=router, flows=flows)


def _routing(plan: dict, segments: dict[str, Segment], gen: int):
    """plan.router and plan.flows (optional: a bundle without them routes nothing, every
    inter-TVD pair closed). Both or neither, and every leg on a planned segment's bridge:
    anything else is a bundle the proxy will not enforce (fail closed)."""
    if plan.get("router") is None and plan.get("flows") is None:
        return None, None
    if plan.get("router") is None or plan.get("flows") is None:
        raise BundleInvalid(f"bundle generation {gen} plan has router without flows or flows "
                            "without router")
    try:
        router = from_json(Router, plan["router"], "plan.router")
        flows = from_json(FlowPlan, plan["flows"], "plan.flows")
    except SerialError as e:
        raise BundleInvalid(f"bundle generation {gen}: {e}") from None
    for leg in router.legs:
        seg = segments.get(leg.tvd)
        if seg is None or seg.bridge != leg.bridge:
            raise BundleInvalid(f"bundle generation {gen} plans a router leg for TVD "
                                f"{leg.tvd!r} on bridge {leg.bridge!r} without that segment")
    return router, flows


def write_private(path: str, data: bytes) -> None:
    """Replace `path` atomically with `data`, mode 0600, durable (fsync file and directory)."""
    d = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def store(directory: str, envelope: dict) -> None:
    write_private(os.path.join(directory, BUNDLE_FILE),
                  json.dumps(envelope, sort_keys=True).encode() + b"\n")


def read_envelope(directory: str) -> dict | None:
    """The stored envelope, None when there is none; BundleInvalid when unreadable."""
    path = os.path.join(directory, BUNDLE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            env = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise BundleInvalid(f"stored bundle {path} is unreadable ({e})") from None
    if not isinstance(env, dict):
        raise BundleInvalid(f"stored bundle {path} is not an envelope object")
    return env


def read_high_water(directory: str) -> int:
    """The highest generation this enrolment ever accepted (0 if none): a stored bundle older
    than that is a rollback (a restored backup of the state directory, say) and refused."""
    try:
        with open(os.path.join(directory, GENERATION_FILE), encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as e:
        raise BundleInvalid(f"{os.path.join(directory, GENERATION_FILE)} is unreadable ({e}); "
                            "remove it to accept the master's next bundle") from None


def write_high_water(directory: str, generation: int) -> None:
    if generation > read_high_water(directory):
        write_private(os.path.join(directory, GENERATION_FILE), f"{generation}\n".encode())


def remove(directory: str) -> None:
    try:
        os.unlink(os.path.join(directory, BUNDLE_FILE))
    except FileNotFoundError:
        pass
