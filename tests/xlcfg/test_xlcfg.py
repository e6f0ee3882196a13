"""xen_tvd.xlcfg and xlmembership: xl.cfg grammar, positions in errors, TVD membership, the copy
handed to xl. (Agreement with Xen's own parser: test_libxlu_differential.py.)"""
from __future__ import annotations

import glob
import os

import pytest

from xen_tvd import xlcfg
from xen_tvd.xlcfg import XlCfgError, loads
from xen_tvd.xlmembership import for_xl, membership

from tests.common.paths import REPO



def test_grammar_values_comments_continuation():
    cfg = loads('''# comment
name = "web"   # trailing comment
memory = 512; vcpus = 0x2
maxmem = 0755
vif = [ 'mac=00:16:3e:00:00:01, bridge=tvd:alpha',   # first
        "bridge=tvd:beta",
      ]
extra = "a \\"q\\" \\\\ \\t\\101"
cpus = [[1, 2], "3"]
empty = []
disk += ["x"]
extra += " root=/dev/xvda1"
''', "t.cfg")
    assert cfg.get("name") == "web"
    # numbers are atoms kept as written; xl reads them with strtol(base 0)
    assert cfg.get("memory") == "512" and cfg.get("maxmem") == "0755"
    assert cfg.get_long("memory") == 512 and cfg.get_long("vcpus") == 2 and cfg.get_long("maxmem") == 0o755
    assert cfg.get("vif") == ["mac=00:16:3e:00:00:01, bridge=tvd:alpha", "bridge=tvd:beta"]
    # xl 4.17 drops a digit escape (\101) from the string, and we say so
    assert cfg.get("extra") == 'a "q" \\ \t root=/dev/xvda1'
    assert any("drops the escape \\101" in w and w.startswith("t.cfg:8:") for w in cfg.warnings)
    assert cfg.get("cpus") == [["1", "2"], "3"]
    assert cfg.get("empty") == []
    assert cfg.get("disk") == ["x"]
    assert cfg.setting("vif").line == 5 and cfg.setting("vif").col == 1


def test_getters_as_xl_reads_them():
    cfg = loads('a = "0x1f"\nb = 2f\nc = [1]\nd = 1\nd += 2\ne = 99999999999999999999\n', "g.cfg")
    assert cfg.get_long("a") == 31 and cfg.get_string("b") == "2f" and cfg.get_list("c") == ["1"]
    assert cfg.get_string("d") == "12" and cfg.get_long("missing") is None
    for key, needle in (("b", "not a number"), ("c", "not a list"), ("d", r"\+="), ("e", "out of range")):
        with pytest.raises(XlCfgError, match=needle) as ei:
            cfg.get_long(key)
        assert str(ei.value).startswith("g.cfg:")
    with pytest.raises(XlCfgError, match="must be a list"):
        cfg.get_list("a")


def test_dotted_idents_and_string_append():
    cfg = loads('vif.default.script = "vif-tvd"\nextra = "console=hvc0"\nextra += " root=/dev/xvda1"\n')
    assert cfg.get("vif.default.script") == "vif-tvd"
    assert cfg.get("extra") == "console=hvc0 root=/dev/xvda1"


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
    ('x = "\\x41"\n', 1, 6, "\\x escapes are an error in xl 4.17"),
    ('x = 1\r\n', 1, 6, "CRLF"),
    ('Memory = 1\n', 1, 1, "setting names are lower case"),
    ('_x = 1\n', 1, 1, "setting names are lower case"),
    ('memory = 1.5\n', 1, 11, "no decimal numbers"),
    ('m = 0X200\n', 1, 6, "lower-case hex"),
    ('x = [1]\nx += "a"\n', 2, 6, "cannot add a single value to x, which is a list"),
    ('x = 1 # no newline', 1, 7, "comment on the last line needs a newline"),
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
    assert m.tx_checksum_offload                          # no key: as the TVDs say
    # the VM's opt-out of vif tx checksum offload, as xl writes booleans (or quoted)
    for value, on in (("0", False), ("1", True), ('"0"', False)):
        m = membership(loads(f'name="a"\nvif=["mac=1"]\ntvd="alpha"\ntvd_tx_checksum_offload={value}\n'))
        assert m.tx_checksum_offload is on, value


@pytest.mark.parametrize("src,needle", [
    ('vif=["x"]\ntvd="alpha"\n', "needs name"),
    ('name="a"\nvif=["x", "y"]\ntvd=["alpha"]\n', "lists 1 TVD(s) but the domain has 2 vif(s)"),
    ('name="a"\nvif=["bridge=tvd:beta"]\ntvd="alpha"\n', "bridge=tvd:beta but tvd= puts it in alpha"),
    ('name="a"\nvif=["bridge=xenbr0"]\n', "vif 0 has no TVD"),
    ('name="a"\nvif=["bridge=tvd:Bad!"]\n', "not tvd:<name>"),
    ('name="a"\nvif=["x"]\ntvd="UPPER"\n', "is not a TVD name"),
    ('name="a"\nuuid="nope"\nvif=["x"]\ntvd="a"\n', "is not a UUID"),
    # vif keys xl reads but a TVD vif cannot have, or that xl would stop on
    ('name="a"\nvif=["backend=driverdom, bridge=tvd:alpha"]\ntvd="alpha"\n', "vif 0: backend=driverdom: a network driver domain is not supported"),
    ('name="a"\nvif=["vifname=web0"]\ntvd="alpha"\n', "vif 0: vifname=web0: tvd-proxy knows a vif by its vif<domid>.<devid> name"),
    ('name="a"\nvif=["devid=1", "mac=2"]\ntvd="alpha"\n', "vif 1 and vif 0 both have devid 1"),
    ('name="a"\nvif=["devid=x1"]\ntvd="alpha"\n', "vif 0: devid='x1' must be a decimal number"),
    ('name="a"\nvif=["mtu=1500abc"]\ntvd="alpha"\n', "vif 0: mtu='1500abc' must be a decimal number 68..65535"),
    ('name="a"\nvif=["mtu=abc,mtu=1500"]\ntvd="alpha"\n', "vif 0: mtu='abc'"),
    ('name="a"\nvif="mac=1"\ntvd="alpha"\n', "vif must be a list: xl creates no vif from a single string"),
    ('name="a"\nvif=["mac=1", ["x"]]\ntvd="alpha"\n', "vif 1 is a list"),
    ('name="a"\nvif=["x"]\ntvd="alpha"\ntvd_tx_checksum_offload="off"\n',
     "4:1: error: tvd_tx_checksum_offload must be 0 (tx checksum offload off on this VM's vifs"),
    ('name="a"\nvif=["x"]\ntvd="alpha"\ntvd_tx_checksum_offload=2\n', "or 1 (as its TVDs say, the default), got '2'"),
    ('name="a"\nvif=["x"]\ntvd="alpha"\ntvd_tx_checksum_offload=[0]\n', "got ['0']"),
])
def test_membership_errors(src, needle):
    with pytest.raises(XlCfgError) as ei:
        membership(loads(src, "m.cfg"))
    assert needle in str(ei.value) and str(ei.value).startswith("m.cfg:")
    if needle.startswith("vif"):
        assert str(ei.value).startswith("m.cfg:2:1: error: ")      # at the vif setting


def test_copy_for_xl_pins_uuid_script_and_bridge():
    src = 'name="a"\nvif=["mac=1, script=vif-bridge, bridge=xenbr0", "mac=2"]\ntvd=["alpha", "beta"]\n'
    cfg = loads(src)
    m = membership(cfg)
    copy = for_xl(cfg, m, "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01")
    out = loads(copy.text)
    assert out.get("uuid") == "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01"
    assert out.get("vif") == ["mac=1,bridge=tvd:alpha,script=vif-tvd", "mac=2,bridge=tvd:beta,script=vif-tvd"]
    assert out.get("name") == "a"
    assert copy.text.startswith(src)        # the user's text, then the overriding assignments
    assert copy.notes == ["vif 0: bridge=xenbr0 replaced by bridge=tvd:alpha",
                          "vif 0: script=vif-bridge replaced by script=vif-tvd (it hands the vif to tvd-proxy)"]


def test_copy_for_xl_keeps_what_xl_read():
    """The \\r inside a string that the old re-serialiser turned into \\x0d (an error for xl)
    stays as written; a file without a final newline or ending in a byte xl ignores still reads
    the same with the overrides after it."""
    for src in ('name="a"\nextra = "x\ry"\nvif=["mac=1"]\ntvd="alpha"', 'name="a"\ntvd="alpha"\r'):
        cfg = loads(src)
        out = loads(for_xl(cfg, membership(cfg), "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01").text)
        assert out.get("extra") == cfg.get("extra") and out.get("tvd") == "alpha"


def test_vif_keys_devid_mtu():
    cfg = loads('name="a"\nvif=["mac=1,devid=4,mtu=9000", " mtu=1400", "devid=7"]\ntvd="alpha"\n')
    m = membership(cfg)
    assert m.nics == [(4, "alpha"), (1, "alpha"), (7, "alpha")]
    copy = for_xl(cfg, m, "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01", tvd_mtu={"alpha": 1450})
    assert loads(copy.text).get("vif") == ["mac=1,devid=4,mtu=1450,bridge=tvd:alpha,script=vif-tvd",
                                           "mtu=1400,bridge=tvd:alpha,script=vif-tvd",
                                           "devid=7,bridge=tvd:alpha,script=vif-tvd"]
    assert copy.notes == ["vif 0: mtu=9000 is above TVD alpha's MTU 1450 on this host; lowered to mtu=1450"]
    # without the TVD's MTU (dry run): kept as written
    assert for_xl(cfg, m, "6b1e3c3a-6f0e-4f7e-9c55-0d1f6b6f2a01").overrides["vif"][0].startswith(
        "mac=1,devid=4,mtu=9000,")


def test_example_configs_parse():
    files = sorted(glob.glob(os.path.join(REPO, "xl-configs", "*.cfg")))
    assert len(files) >= 3
    for f in files:
        m = membership(xlcfg.load(f))
        assert m.nics, f
