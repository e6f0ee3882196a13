"""Identifier rules shared by every layer (one definition each).

vif-tvd keeps standard-library copies of UUID_RE, NAME_RE and IFNAME_RE (tests/desired checks
they stay equal). Canonical forms only: a caller that accepts other spellings (upper-case hex,
say) normalises before matching.
"""
from __future__ import annotations

import base64
import binascii
import re

# A VM's UUID as Xen and libvirt write it: lower-case hex, 8-4-4-4-12.
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# A policy name (TVD, external network, ...; docs/policy.md): 1-32 of a-z 0-9 _ -, a letter first.
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# An Ethernet MAC address, lower-case.
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# A network interface name. Linux (dev_valid_name) refuses names over 15 bytes (IFNAMSIZ 16
# with its NUL), "." and "..", and any '/', ':' or white space. We accept a strict subset: an
# ASCII letter or digit first, then letters, digits, '_', '.', '-'. That keeps every name safe
# as it is used: in nftables chain names (portsec escapes the rest), `ip` output (which writes
# a veth as name@peer), log lines and argv (no leading '-').
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def is_wireguard_key(text: object) -> bool:
    """A WireGuard public key as the policy, the capability report and the bundle carry it:
    base64 of 32 bytes (44 characters with the padding), as `wg pubkey` prints it."""
    if not isinstance(text, str) or len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False
