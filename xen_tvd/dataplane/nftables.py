"""A tiny runner for the `nft` binary (nftables userspace), inside a network namespace.

There is no stable netlink library for nftables, so we feed `nft -f -` and read back only with
`nft -j` (JSON): nothing ever parses nft's human output. One call of run() is one nftables
transaction: the kernel commits all of its input or none of it.

A named namespace is entered with `nsenter --net=/run/netns/NAME` in the child only, so this
(possibly multi-threaded) process never changes namespace; netns=None acts on our own.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

from .netlink import where
from .report import DataplaneError

NETNS_DIR = "/run/netns"
# Every table we own carries a digest of its rules in one rule comment, so a converged rerun
# compares one string instead of the whole ruleset (nft 1.0.6's JSON has no table comments).
DIGEST_PREFIX = "xen-tvd:rules="
DIGEST_MARK = "@DIGEST@"


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(body: str, digest: str | None = None) -> tuple[str, str]:
    """`body` with its DIGEST_MARK comment filled in (by default with the digest of `body`)."""
    digest = digest or digest_of(body)
    return body.replace(DIGEST_MARK, DIGEST_PREFIX + digest), digest


def replace_table(family: str, table: str, body: str) -> str:
    """nft input that creates or replaces `family table` with `body` in one transaction (the
    empty `table` line makes the delete valid when it does not exist yet)."""
    t = f"{family} {table}"
    return f"table {t} {{}}\ndelete table {t}\ntable {t} {{\n{body}}}\n"


def digest_in(objs: list[dict] | None, chain: str | None = None) -> str | None:
    """The digest a listed table (or only its `chain`) carries; None when there is none."""
    for o in objs or ():
        r = o.get("rule", {})
        c = r.get("comment") or ""
        if c.startswith(DIGEST_PREFIX) and (chain is None or r.get("chain") == chain):
            return c[len(DIGEST_PREFIX):]
    return None


def _argv(netns: str | None, args: list[str]) -> list[str]:
    nft = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
    if nft is None:
        raise DataplaneError("nft not found: xen-tvd's port security and underlay filter need the "
                             "nftables userspace (Debian: apt-get install nftables)")
    if netns is None:
        return [nft, *args]
    path = os.path.join(NETNS_DIR, netns)
    if not os.path.exists(path):
        raise DataplaneError(f"network namespace {netns!r} does not exist (create it first)")
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    return [nsenter, f"--net={path}", "--", nft, *args]


def run(netns: str | None, script: str, what: str) -> None:
    """Feed `script` to `nft -f -` as one transaction; DataplaneError (one line) on failure."""
    p = subprocess.run(_argv(netns, ["-f", "-"]), input=script, capture_output=True, text=True)
    if p.returncode != 0:
        err = " | ".join(l.strip() for l in p.stderr.splitlines() if l.strip())[:600]
        raise DataplaneError(f"{what} in {where(netns)} failed (nft exit {p.returncode}): {err}; "
                             f"nothing of it was applied (nft transactions are all-or-nothing)")


def list_json(netns: str | None, *obj: str) -> list[dict] | None:
    """`nft -j list <obj...>` as the list of its objects, or None when the object does not exist."""
    p = subprocess.run(_argv(netns, ["-j", "list", *obj]), capture_output=True, text=True)
    if p.returncode != 0:
        if "No such file or directory" in p.stderr:
            return None
        err = " | ".join(l.strip() for l in p.stderr.splitlines() if l.strip())[:400]
        raise DataplaneError(f"reading nftables {' '.join(obj)} in {where(netns)} failed: {err}")
    try:
        return json.loads(p.stdout)["nftables"]
    except (ValueError, KeyError) as e:
        raise DataplaneError(f"nft -j list {' '.join(obj)} in {where(netns)}: unreadable JSON ({e})") from None
