"""What tvdctl and its sub-command modules share (they import this, never tvdctl itself)."""
from __future__ import annotations

import sys

from xen_tvd.errors import UsageError
from xen_tvd.policy import YamlUnreadable, check_file


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("xen-tvd")
    except PackageNotFoundError:     # run from a source tree that was never installed
        return "unknown (not installed)"


def load_or_report(path: str):
    """A clean policy, or None after printing why (errors only)."""
    try:
        policy, diags = check_file(path)
    except YamlUnreadable as e:
        raise UsageError(str(e)) from None
    if policy is None:
        for d in diags:
            if d.is_error:
                print(d, file=sys.stderr)
        print(f"tvdctl: {path} has errors; run 'tvdctl check {path}'", file=sys.stderr)
    return policy
