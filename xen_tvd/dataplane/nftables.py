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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Table:
    """One nftables table xen-tvd owns. `digest_chain`: read the digest from this chain only
    (a large table listed whole as JSON costs seconds; a converged rerun must stay cheap)."""
    family: str
    name: str
    digest_chain: str | None = None

    def __str__(self) -> str:
        return f"{self.family} {self.name}"


def render(tables: list[tuple[Table, str]]) -> tuple[str, str]:
    """nft input replacing each (table, body) in one transaction, every body's DIGEST_MARK
    stamped with one digest of all bodies, and that digest."""
    digest = digest_of("\x00".join(body for _, body in tables))
    return "".join(replace_table(t.family, t.name, stamp(body, digest)[0])
                   for t, body in tables), digest


def installed_digest(netns: str | None, table: Table) -> str | None | bool:
    """False: no such table; None: a table without our digest; else the digest it carries."""
    if table.digest_chain is None:
        objs = list_json(netns, "table", table.family, table.name)
    else:
        objs = list_json(netns, "chain", table.family, table.name, table.digest_chain)
    return False if objs is None else digest_in(objs)


def converge(netns: str | None, tables: list[tuple[Table, str]], what: str) -> str | None:
    """Render -> stamp digest -> compare -> replace: the one way xen-tvd loads a table it owns.
    The first table's digest stands for all (they are loaded together). None when it already
    matches (nothing written), else "created" or "replaced"."""
    script, digest = render(tables)
    have = installed_digest(netns, tables[0][0])
    if have == digest:
        return None
    run(netns, script, what)
    return "created" if have is False else "replaced"


def drop(netns: str | None, tables: list[Table], what: str) -> bool:
    """Delete those of `tables` that exist, in one transaction; whether any did."""
    present = [t for t in tables if list_json(netns, "table", t.family, t.name) is not None]
    if present:
        run(netns, "".join(f"delete table {t}\n" for t in present), what)
    return bool(present)


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
