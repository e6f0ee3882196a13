"""Sysctls inside a network namespace: a child enters it (nsenter); this process never does.

Used by the router (forwarding, reverse-path filter, ...) and the flow filter (br_netfilter).
"""
from __future__ import annotations

import os
import shutil
import subprocess

from .nftables import NETNS_DIR
from .report import DataplaneError


def ensure(netns: str | None, wanted: dict[str, str], what: str) -> list[str]:
    """Set /proc/sys keys in `netns` (None: ours) where they differ; return the changed keys."""
    script = "".join(
        f'[ "$(cat /proc/sys/{k})" = "{v}" ] || {{ echo "{v}" > /proc/sys/{k} && echo {k}; }}\n'
        for k, v in wanted.items())
    argv = ["sh", "-ec", script]
    if netns is not None:
        path = os.path.join(NETNS_DIR, netns)
        argv = [shutil.which("nsenter") or "/usr/bin/nsenter", f"--net={path}", "--", *argv]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        err = " | ".join(l.strip() for l in p.stderr.splitlines() if l.strip())[:300]
        raise DataplaneError(f"{what}: setting sysctls in {netns or 'the current netns'} "
                             f"failed: {err}")
    return p.stdout.split()
