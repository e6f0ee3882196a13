"""The capability report (docs/master-protocol.md, step 3): what this Dom0 can do and claims.

- functional: detected, not configured. Each probe creates the real device (or nft table, or
  xfrm state) inside a throw-away network namespace (`unshare --net`), so a kernel module that
  autoloads counts and one that is missing does not, and nothing in the host's own namespaces
  is touched. A probe that fails for any reason reports the capability as absent (the master
  then plans without it: fail closed).
- wireguard-key: this host's WireGuard public key (proxy/wgkey.py; the private key stays here).
- nics and security: from a JSON file the administrator writes (default
  /etc/xen-tvd/capabilities.json):

      {"nics": [{"network": "lan", "nic": "eth0", "address": "10.0.0.1"}],
       "security": [{"property": "tpm-measured-boot", "assurance": "immutable-log",
                     "evidence": "text or base64", "evidence-file": "/path (instead of evidence)"}]}

  The proxy cannot measure security properties itself; it forwards the claim and its evidence,
  and the master records them (it decides what it believes).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess

from xen_tvd.desired import capabilities

DEFAULT_FILE = "/etc/xen-tvd/capabilities.json"
MAX_EVIDENCE = 256 * 1024

# functional word -> shell commands run in a fresh network namespace; exit 0 = present (the one
# vocabulary, xen_tvd.desired.capabilities: each transport's probe comes from its unit)
PROBES = capabilities.PROBES


class CapabilityError(Exception):
    """The administrator's capability file is unusable; one line saying what to fix."""


def probe(name: str, timeout: float = 10.0) -> bool:
    """One functional probe (PROBES[name]) in a throw-away network namespace."""
    try:
        r = subprocess.run(["unshare", "--net", "--", "sh", "-c", PROBES[name]],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def detect_functional(timeout: float = 10.0) -> list[str]:
    return [name for name in PROBES if probe(name, timeout)]


def _str(d: dict, key: str, where: str, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise CapabilityError(f"{where}: '{key}' must be a non-empty string")
    return v


def load_file(path: str, required: bool) -> tuple[list[dict], list[dict]]:
    """(nics, security claims) from the administrator's file; ([], []) when the default file
    is absent (a host that claims nothing gets no security properties)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        if required:
            raise CapabilityError(f"capability file {path} does not exist") from None
        return [], []
    except (OSError, ValueError) as e:
        raise CapabilityError(f"capability file {path} is unreadable ({e}); fix its JSON") from None
    if not isinstance(raw, dict):
        raise CapabilityError(f"capability file {path}: want an object with 'nics' and 'security'")
    nics = []
    for i, n in enumerate(raw.get("nics") or []):
        where = f"{path}: nics[{i}]"
        if not isinstance(n, dict):
            raise CapabilityError(f"{where} must be an object")
        nics.append({"network": _str(n, "network", where), "nic": _str(n, "nic", where),
                     "address": _str(n, "address", where)})
    security = []
    for i, s in enumerate(raw.get("security") or []):
        where = f"{path}: security[{i}]"
        if not isinstance(s, dict):
            raise CapabilityError(f"{where} must be an object")
        evidence = _str(s, "evidence", where, required=False)
        efile = _str(s, "evidence-file", where, required=False)
        if efile is not None:
            evidence = _read_evidence(efile, where)
        security.append({"property": _str(s, "property", where),
                         "assurance": _str(s, "assurance", where), "evidence": evidence or ""})
    return nics, security


def _read_evidence(path: str, where: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_EVIDENCE + 1)
    except OSError as e:
        raise CapabilityError(f"{where}: evidence-file {path}: {e.strerror or e}") from None
    if len(data) > MAX_EVIDENCE:
        raise CapabilityError(f"{where}: evidence-file {path} is larger than {MAX_EVIDENCE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    # binary evidence (a TPM event log) travels as base64; the master cannot tell otherwise
    if text is None or any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        return base64.b64encode(data).decode()
    return text


def report(path: str = DEFAULT_FILE, required: bool = False,
           wireguard_key: str | None = None, wireguard_next_key: str | None = None,
           wireguard_accepts=()) -> dict:
    """The body of PUT /v1/hosts/HOST/capabilities. wireguard_next_key: the pending key of a
    rotation; wireguard_accepts: the next keys of rotating peers this host's bundle in force
    makes it accept (docs/master-protocol.md)."""
    nics, security = load_file(path, required)
    body = {"functional": detect_functional(), "nics": nics, "security": security}
    if wireguard_key is not None:
        body["wireguard-key"] = wireguard_key
    if wireguard_next_key is not None:
        body["wireguard-next-key"] = wireguard_next_key
    if wireguard_accepts:
        body["wireguard-accepts"] = sorted(wireguard_accepts)
    return body


def file_required(path: str | None) -> tuple[str, bool]:
    """(path, required): an explicitly named file must exist; the default may be absent."""
    if path:
        return os.path.abspath(path), True
    return DEFAULT_FILE, False
