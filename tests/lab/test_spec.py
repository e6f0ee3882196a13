"""Lab spec validation: one `FILE:LINE:COL: error: message` line per problem, exit 1 for an
invalid spec, 2 for an unreadable one; never a traceback. Needs no kernel objects."""
from __future__ import annotations

import re

import pytest

from tests.lab.lab_helpers import PAPER_POLICY, PAPER_SPEC, lab_cli
from xen_tvd.lab.spec import SpecInvalid, SpecUnreadable, load_lab
from xen_tvd.lab.topology import build

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.+)$")


def write(tmp_path, body: str, name="spec.yaml") -> str:
    p = tmp_path / name
    p.write_text(body.replace("POLICY", PAPER_POLICY))
    return str(p)


def errors(path: str) -> list[tuple[int, int, str]]:
    with pytest.raises(SpecInvalid) as e:
        load_lab(path)
    out = []
    for line in str(e.value).splitlines():
        m = LINE.match(line)
        assert m, f"not FILE:LINE:COL: error: ... -> {line!r}"
        if m["file"] == path:
            out.append((int(m["line"]), int(m["col"]), m["msg"]))
    return out


def test_paper_spec_is_valid_and_shares_one_subnet():
    spec, policy = load_lab(PAPER_SPEC)
    assert spec.name == "paper" and len(spec.vms) == 11
    nets = {n.address.split(".")[0:3] and n.address.rsplit(".", 1)[0] for v in spec.vms.values()
            for n in v.nics}
    assert nets == {"192.168.50"}
    tvds = {n.tvd for v in spec.vms.values() for n in v.nics}
    assert tvds == {"alpha", "beta", "gamma"}
    assert [n.tvd for n in spec.vms["ab"].nics] == ["alpha", "beta"]
    topo = build(spec, policy)
    assert topo.router_ns == "paper-router"
    assert {h: [w.network for w in lh.wires] for h, lh in topo.hosts.items()} == {
        "h1": ["lan"], "h2": ["lan"], "h3": ["wan2"]}


def where(body: str, token: str) -> tuple[int, int]:
    """1-based line:col of the first occurrence of `token` in body (what the error points at)."""
    i = body.index(token) + len(token) - len(token.lstrip())   # leading blanks: context only
    return body.count("\n", 0, i) + 1, i - (body.rfind("\n", 0, i) + 1) + 1


ONE_VM = "vms: {a: {host: h1, nics: [{tvd: alpha, address: 10.0.0.1/24}]}}\n"


@pytest.mark.parametrize("body,token,msg", [
    ("policy: POLICY\ncolour: red\n" + ONE_VM, "colour", "unknown key 'colour'"),
    ("policy: POLICY\nvms:\n  a: {host: h9, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n",
     "h9", "host 'h9' is not in the policy's capability model"),
    ("policy: POLICY\nvms:\n  a: {host: h1, nics: [{tvd: delta, address: 10.0.0.1/24}]}\n",
     "delta", "TVD 'delta' is not defined by the policy"),
    ("policy: POLICY\nvms:\n  a: {host: h1, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n"
     "  b: {host: h2, nics: [{tvd: beta, address:   10.0.0.1/24}]}\n",
     "   10.0.0.1/24", "address 10.0.0.1 is already used at"),
    ("policy: POLICY\nvms:\n  a: {host: h1, domid: 5, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n"
     "  b: {host: h1, domid:  5, nics: [{tvd: beta, address: 10.0.0.2/24}]}\n",
     "  5,", "domid 5 is already used by VM a on host h1"),
    ("policy: POLICY\nvms:\n  a: {host: h1, domid: 0, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n",
     "0,", "domid must be an integer"),
    ("policy: POLICY\nvms:\n  a: {host: h1, nics: [{tvd: alpha, address: 10.0.0.1}]}\n",
     "10.0.0.1", "a prefix length is required"),
    ("policy: POLICY\nvms:\n  a: {host: h1, nics: [{tvd: alpha, address: 10.0.0.1/24, mac: x}]}\n",
     "mac", "unknown key 'mac'"),
    ("policy: POLICY\nvms:\n  a: {host: h1, nics: []}\n", "[]", "nics must be a non-empty list"),
    ("policy: POLICY\nvms:\n  Bad_Name: {host: h1, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n",
     "Bad_Name", "VM name 'Bad_Name'"),
    ("policy: POLICY\nname: UPPER\n" + ONE_VM, "UPPER", "name 'UPPER' must be"),
    ("policy: nowhere.yaml\n" + ONE_VM, "nowhere", "does not exist"),
    (ONE_VM, "vms", "missing key 'policy'"),
    ("policy: POLICY\nvms: [a, b]\n", "[a", "vms must be a mapping"),
    ("- just\n- a list\n", "- just", "a lab spec must be a mapping"),
])
def test_invalid_spec_reports_file_line_col(tmp_path, body, token, msg):
    path = write(tmp_path, body)
    text = open(path).read()
    errs = errors(path)
    assert any(msg in m for _, _, m in errs), errs
    assert where(text, token) in [(l, c) for l, c, m in errs if msg in m], errs


def test_yaml_syntax_error_has_a_position(tmp_path):
    errs = errors(write(tmp_path, "policy: [\n"))
    assert errs and "YAML syntax" in errs[0][2]


def test_vm_on_a_host_without_nics(tmp_path):
    pol = tmp_path / "pol.yaml"
    pol.write_text(open(PAPER_POLICY).read() +
                   "  h9: {address: 10.77.9.9, capabilities: [ethernet, ip]}\n")
    path = write(tmp_path, "policy: pol.yaml\nvms:\n"
                           "  a: {host: h9, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n")
    errs = errors(path)
    assert any("host 'h9' has no nics in the policy" in m for _, _, m in errs), errs


def test_invalid_policy_is_reported_with_its_own_positions(tmp_path):
    pol = tmp_path / "pol.yaml"
    pol.write_text("version: 1\ntvds: {alpha: {vlan: 9999}}\n")
    path = write(tmp_path, "policy: pol.yaml\nvms: {a: {host: h1, nics: [{tvd: alpha, "
                           "address: 10.0.0.1/24}]}}\n")
    with pytest.raises(SpecInvalid) as e:
        load_lab(path)
    lines = str(e.value).splitlines()
    assert any(l.startswith(str(pol) + ":2:") for l in lines), lines
    assert any(l.startswith(path + ":1:9: error: the policy named here is invalid") for l in lines)


def test_domids_are_assigned_per_host_when_omitted(tmp_path):
    path = write(tmp_path, "policy: POLICY\nvms:\n"
                           "  a: {host: h1, domid: 1, nics: [{tvd: alpha, address: 10.0.0.1/24}]}\n"
                           "  b: {host: h1, nics: [{tvd: alpha, address: 10.0.0.2/24}]}\n"
                           "  c: {host: h2, nics: [{tvd: alpha, address: 10.0.0.3/24}]}\n")
    spec, _ = load_lab(path)
    assert (spec.vms["a"].domid, spec.vms["b"].domid, spec.vms["c"].domid) == (1, 2, 1)
    assert spec.name == "spec"      # default: the file's stem


def test_unreadable_spec_raises_unreadable(tmp_path):
    with pytest.raises(SpecUnreadable):
        load_lab(str(tmp_path / "missing.yaml"))
    with pytest.raises(SpecUnreadable):
        load_lab(str(tmp_path))


# ---- through the CLI: exit codes, one line per problem, no traceback --------------------------

@pytest.mark.parametrize("cmd", ["up", "verify", "status"])
def test_cli_invalid_spec_exits_1(tmp_path, cmd):
    path = write(tmp_path, "policy: POLICY\nvms:\n  a: {host: h9, nics: [{tvd: alpha, "
                           "address: 10.0.0.1/24}]}\n")
    r = lab_cli(cmd, path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    line, col = where(open(path).read(), "h9")
    assert [l for l in r.stderr.splitlines() if l] == [
        f"{path}:{line}:{col}: error: VM a: host 'h9' is not in the policy's capability model "
        "(hosts: h1, h2, h3)"]


def test_cli_unreadable_spec_exits_2(tmp_path):
    r = lab_cli("up", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing.yaml" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_usage_errors_exit_2():
    assert lab_cli().returncode == 2
    assert lab_cli("frobnicate", PAPER_SPEC).returncode == 2
    r = lab_cli("down")
    assert r.returncode == 2 and "Traceback" not in r.stderr
