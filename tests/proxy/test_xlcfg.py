"""xen_tvd.xlcfg: xl.cfg grammar, positions in errors, TVD membership, the copy handed to xl."""
from __future__ import annotations

import glob
import os

import pytest

from xen_tvd import xlcfg
from xen_tvd.xlcfg import XlCfgError, loads, membership

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_grammar_values_comments_continuation():
    cfg = loads('''# comment
name = "web"   # trailing comment
memory = 512; vcpus = 0x2
maxmem = 0755
vif = [ 'mac=00:16:3e:00:00:01, bridge=tvd:alpha',   # first
        "bridge=tvd:beta",
      ]
extra = "a \\"q\\" \\\\ \\t\\x41\\101"
cpus = [[1, 2], "3"]
empty = []
disk += ["x"]
''', "t.cfg")
    assert cfg.get("name") == "web"
    assert cfg.get("memory") == 512 and cfg.get("vcpus") == 2 and cfg.get("maxmem") == 0o755
    assert cfg.get("vif") == ["mac=00:16:3e:00:00:01, bridge=tvd:alpha", "bridge=tvd:beta"]
    assert cfg.get("extra") == 'a "q" \\ \tAA'
    assert cfg.get("cpus") == [[1, 2], "3"]
    assert cfg.get("empty") == []
    assert cfg.setting("vif").line == 5 and cfg.setting("vif").col == 1


def test_roundtrip_through_dumps():
    src = 'name = "a\\"b"\nvif = ["x=1", "y=2"]\nmemory = 64\nextra = "tab\\there"\n'
    cfg = loads(src)
    again = loads(cfg.dumps())
    assert [(s.key, s.value) for s in again.settings] == [(s.key, s.value) for s in cfg.settings]


@pytest.mark.parametrize("src,line,col,needle", [
    ('name = web\n', 1, 8, "strings need quotes"),
    ('name = "web\n', 1, 8, "newline inside a string"),
    ('vif = ["a", "b"\nmemory = 1\n', 2, 1, "expected ',' or ']'"),
    ('vif = ["a",\n', 1, 7, "unterminated list"),
    ('memory 512\n', 1, 8, "expected '=' after memory"),
    ('memory = \n', 1, 10, "missing value"),
    ('name = "a" "b"\n', 1, 12, "one setting per line"),
    ('= 3\n', 1, 1, "expected a setting name"),
    ('x = "\\q"\n', 1, 6, "unknown escape"),
])
def test_errors_have_positions(src, line, col, needle):
    with pytest.raises(XlCfgError) as ei:
        loads(src, "bad.cfg")
    e = ei.value
    assert str(e).startswith(f"bad.cfg:{line}:{col}: error: "), str(e)
    assert needle in str(e)


def test_membership_forms():
    m = membership(loads('name="a"\nvif=["mac=1", "mac=2"]\ntvd="alpha"\n'))
    assert m.nics == [(0, "alpha"), (1, "alpha")] and m.uuid is None
    m = membership(loads('name="a"\nvif=["mac=1", "mac=2"]\ntvd=["alpha", "gamma"]\n'))
    assert m.nics == [(0, "alpha"), (1, "gamma")]
    m = membership(loads('name="a"\nuuid="6B1E3C3A6F0E4F7E9C550D1F6B6F2A01"\n'
                         'vif=["bridge=tvd:beta"]\ntvd_properties=["p:trust", "q"]\n'))
    assert m.nics == [(0, "beta")] and m.uuid == "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01"
    assert m.properties == {"p": "trust", "q": None}


@pytest.mark.parametrize("src,needle", [
    ('vif=["x"]\ntvd="alpha"\n', "needs name"),
    ('name="a"\nvif=["x", "y"]\ntvd=["alpha"]\n', "lists 1 TVD(s) but the domain has 2 vif(s)"),
    ('name="a"\nvif=["bridge=tvd:beta"]\ntvd="alpha"\n', "bridge=tvd:beta but tvd= puts it in alpha"),
    ('name="a"\nvif=["bridge=xenbr0"]\n', "vif 0 has no TVD"),
    ('name="a"\nvif=["bridge=tvd:Bad!"]\n', "not tvd:<name>"),
    ('name="a"\nvif=["x"]\ntvd="UPPER"\n', "is not a TVD name"),
    ('name="a"\nuuid="nope"\nvif=["x"]\ntvd="a"\n', "is not a UUID"),
])
def test_membership_errors(src, needle):
    with pytest.raises(XlCfgError) as ei:
        membership(loads(src, "m.cfg"))
    assert needle in str(ei.value) and str(ei.value).startswith("m.cfg:")


def test_copy_for_xl_pins_uuid_script_and_bridge():
    cfg = loads('name="a"\nvif=["mac=1, script=vif-bridge, bridge=xenbr0", "mac=2"]\ntvd=["alpha", "beta"]\n')
    m = membership(cfg)
    out = loads(xlcfg.for_xl(cfg, m, "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01").dumps())
    assert out.get("uuid") == "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01"
    assert out.get("vif") == ["mac=1,bridge=tvd:alpha,script=vif-tvd", "mac=2,bridge=tvd:beta,script=vif-tvd"]
    assert out.get("name") == "a"


def test_example_configs_parse():
    files = sorted(glob.glob(os.path.join(REPO, "xl-configs", "*.cfg")))
    assert len(files) >= 3
    for f in files:
        m = membership(xlcfg.load(f))
        assert m.nics, f
