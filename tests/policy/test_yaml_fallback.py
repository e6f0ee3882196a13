"""The pure-Python PyYAML loader (used when libyaml is missing) gives the same positions."""
from __future__ import annotations

import pytest
import yaml

import xen_tvd.yamlsrc as yamlsrc

from tests.policy.policy_helpers import check_text, errors, where

CASES = [
    ("version: 1\ntvds:\n\ta: {vlan: 10}\n", "found character '\\t' that cannot start any token", (3, 1)),
    ("version: 1\ntvds:\n  a: {vlan: 1\x00}\n", "unacceptable character #x0000", (3, 14)),
    ("version: 1\ntvds: &t {a: {vlan: 10}}\n", "YAML anchors are not allowed", (2, 7)),
    ("version: 1\ntvds:\n  a: {vlan: 4095}\n", "vlan of TVD 'a' 4095 is out of range", (3, 13)),
    ("version: 1\ntvds:\n  a: {vlan: 2020-13-45}\n", "unreadable value '2020-13-45'", (3, 13)),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "nesting deeper than 64 levels", (1, 67)),
]


@pytest.mark.parametrize("loader", [yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)],
                         ids=["python", "libyaml"])
@pytest.mark.parametrize("text, fragment, pos", CASES)
def test_same_positions_with_either_loader(tmp_path, monkeypatch, loader, text, fragment, pos):
    monkeypatch.setattr(yamlsrc, "_Loader", loader)
    _, diags = check_text(tmp_path, text)
    assert any(fragment in d.message and where(d) == pos for d in errors(diags)), diags
