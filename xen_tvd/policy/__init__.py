"""The TVD policy: load, verify, and query it."""
from __future__ import annotations

from xen_tvd.diagnostics import Collector, Diagnostic
from xen_tvd.policy.model import Policy, Pos
from xen_tvd.policy.schema import PolicyReader
from xen_tvd.policy.verify import verify
from xen_tvd.yamlsrc import YamlUnreadable, compose, gc_paused, read_source

__all__ = ["check_file", "load_policy", "PolicyInvalid", "YamlUnreadable", "Policy"]


class PolicyInvalid(Exception):
    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics if d.is_error))


def check_file(path: str, semantic: bool = True,
               all_pairs: bool = False) -> tuple[Policy | None, list[Diagnostic]]:
    """Parse, schema-check and (if the schema is clean) verify. Raises YamlUnreadable only.

    all_pairs: one indirect-flow diagnostic per bypassed closed pair instead of per group."""
    diags = Collector()
    with gc_paused():
        root = compose(read_source(path), path, diags)
        policy = None
        if root is not None:
            policy = PolicyReader(path, diags).policy(root)
        if root is None and not diags.items:
            diags.error(Pos(path, 1, 1), "the file is empty; a policy starts with 'version: 1'")
        if policy is not None and semantic:
            verify(policy, diags, all_pairs)
    return (policy if not diags.errors else None), diags.items


def load_policy(path: str) -> Policy:
    """A verified policy, or PolicyInvalid carrying every error."""
    try:
        policy, diags = check_file(path)
    except YamlUnreadable as e:
        raise PolicyInvalid([Diagnostic("error", str(e))]) from None
    if policy is None:
        raise PolicyInvalid(diags)
    return policy
