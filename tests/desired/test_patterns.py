"""xen_tvd.desired.patterns: one rule per identifier, and vif-tvd's standard-library copies
(it runs without xen_tvd) equal to it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import xen_tvd
from xen_tvd.desired import names, patterns

VIF_TVD = Path(xen_tvd.__file__).parent / "data" / "hotplug" / "vif-tvd"
COPIED_PATTERNS = ("UUID_RE", "NAME_RE", "IFNAME_RE")
COPIED_NAMES = ("BACKEND_BRIDGE_PREFIX",)


def _vif_tvd_constants() -> dict[str, str]:
    """Module-level NAME = "..." and NAME = re.compile(r"...") of vif-tvd, read without running it."""
    out = {}
    for node in ast.parse(VIF_TVD.read_text()).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        v = node.value
        if isinstance(v, ast.Call) and ast.unparse(v.func) == "re.compile" and len(v.args) == 1 \
                and not v.keywords and isinstance(v.args[0], ast.Constant):
            out[node.targets[0].id] = v.args[0].value
        elif isinstance(v, ast.Constant) and isinstance(v.value, str):
            out[node.targets[0].id] = v.value
    return out


@pytest.mark.parametrize("name", COPIED_PATTERNS)
def test_vif_tvd_pattern_copies_equal_desired(name):
    assert _vif_tvd_constants().get(name) == getattr(patterns, name).pattern
    assert getattr(patterns, name).flags == re.compile("").flags   # no flags the copy would lack


@pytest.mark.parametrize("name", COPIED_NAMES)
def test_vif_tvd_name_copies_equal_desired(name):
    assert _vif_tvd_constants().get(name) == getattr(names, name)


@pytest.mark.parametrize("ifname", ["vif1.0", "vif12.3-emu", "eth0", "tvd-alpha", "ul0",
                                    "a" * 15, "br_lan.10"])
def test_interface_names_linux_accepts(ifname):
    assert patterns.IFNAME_RE.match(ifname)


@pytest.mark.parametrize("ifname", ["", "a" * 16, ".", "..", "../x", "a/b", "eth0:1", "a b",
                                    "-x", "_x", "veth0@if3", "vif1.0\t"])
def test_interface_names_refused(ifname):
    # Linux refuses '/', ':' and white space and names over 15 bytes; '@' reads as name@peer in
    # `ip` output, a leading '-' as an option
    assert not patterns.IFNAME_RE.match(ifname)


def test_identifiers():
    assert patterns.UUID_RE.match("0b7a3c4e-1f2d-4a5b-8c9d-0e1f2a3b4c5d")
    assert not patterns.UUID_RE.match("0B7A3C4E-1F2D-4A5B-8C9D-0E1F2A3B4C5D")   # canonical only
    assert patterns.NAME_RE.match("alpha_2-x") and not patterns.NAME_RE.match("2alpha")
    assert not patterns.NAME_RE.match("a" * 33)
    assert patterns.MAC_RE.match("00:16:3e:00:00:01") and not patterns.MAC_RE.match("00:16:3E:00:00:01")
