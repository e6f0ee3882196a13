"""tvdctl check/show/graph/admit and --version: exit codes, output forms, --json."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from xen_tvd.cli import tvdctl as tvdctl_mod

from tests.cli.cli_helpers import FIGURE1, REPO, diag_lines, no_traceback, tvdctl

HOSTS_POLICY = REPO / "xl-configs" / "tvd-hosts-policy.yaml"   # shared-membership and hosts

CLEAN = """\
version: 1
properties:
  tpm: {dominates: [signed]}
  signed: {}
tvds:
  alpha: {vlan: 100, membership: [signed]}
  beta: {vlan: 200}
flows:
  - {from: alpha, to: beta, policy: open}
  - {from: beta, to: alpha, policy: open}
"""

BROKEN = "version: 1\ntvds:\n  a: {vlan: 0}\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "clean.yaml").write_text(CLEAN)
    (tmp_path / "broken.yaml").write_text(BROKEN)
    shutil.copy(FIGURE1, tmp_path / "fig1.yaml")
    return tmp_path


# --- check -----------------------------------------------------------------------------------

def test_check_clean_exits_0(files):
    p = tvdctl("check", "clean.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 0 and p.stdout == ""
    assert p.stderr.strip() == "1 file(s): 0 error(s), 0 warning(s)"


def test_check_warnings_only_exits_0(files):
    p = tvdctl("check", "fig1.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 0
    lines = diag_lines(p, "fig1.yaml")
    assert lines and all(": warning: " in ln for ln in lines)
    assert "fig1.yaml:34:5: warning: closed pair alpha -> beta is reachable through guarded " \
           "path alpha -> gamma -> beta" in p.stdout


def test_check_errors_exit_1(files):
    p = tvdctl("check", "broken.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 1
    assert diag_lines(p, "broken.yaml") == [
        "broken.yaml:3:13: error: vlan of TVD 'a' 0 is out of range 1..4094"]


def test_check_several_files_reports_all(files):
    p = tvdctl("check", "clean.yaml", "broken.yaml", "fig1.yaml", cwd=files)
    assert p.returncode == 1
    assert "broken.yaml:3:13: error:" in p.stdout and "fig1.yaml:34:5: warning:" in p.stdout
    assert p.stderr.startswith("3 file(s): 1 error(s), 4 warning(s)")


@pytest.mark.parametrize("target", ["missing.yaml", "."])
def test_check_unreadable_exits_2(files, target):
    p = tvdctl("check", target, cwd=files)
    no_traceback(p)
    assert p.returncode == 2
    assert p.stdout == ""
    assert f"tvdctl: {target}: cannot read:" in p.stderr


def test_check_unreadable_wins_over_errors(files):
    p = tvdctl("check", "broken.yaml", "missing.yaml", cwd=files)
    assert p.returncode == 2
    assert "broken.yaml:3:13: error:" in p.stdout


@pytest.mark.parametrize("argv", [[], ["check"], ["frobnicate"], ["check", "--bogus", "x.yaml"],
                                  ["graph", "clean.yaml"], ["admit", "--policy", "clean.yaml"],
                                  ["show"]])
def test_usage_errors_exit_2(files, argv):
    p = tvdctl(*argv, cwd=files)
    no_traceback(p)
    assert p.returncode == 2
    assert "usage: tvdctl" in p.stderr


def test_check_json(files):
    p = tvdctl("check", "--json", "broken.yaml", "fig1.yaml", "missing.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 2
    out = json.loads(p.stdout)
    assert out["errors"] == 1 and out["warnings"] == 4
    by_file = {f["file"]: f for f in out["files"]}
    assert by_file["missing.yaml"]["readable"] is False
    [d] = by_file["broken.yaml"]["diagnostics"]
    assert d == {"severity": "error", "code": "schema",
                 "message": "vlan of TVD 'a' 0 is out of range 1..4094",
                 "file": "broken.yaml", "line": 3, "column": 13}
    for d in by_file["fig1.yaml"]["diagnostics"]:
        assert d["file"] == "fig1.yaml" and d["line"] >= 1 and d["column"] >= 1
        assert d["severity"] == "warning"
    codes = {d["code"] for d in by_file["fig1.yaml"]["diagnostics"]}
    assert codes == {"indirect-flow", "shared-over-controlled"}


def test_check_json_clean_exit_0(files):
    p = tvdctl("check", "--json", "clean.yaml", cwd=files)
    assert p.returncode == 0
    assert json.loads(p.stdout)["files"][0]["diagnostics"] == []


def test_main_in_process(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    assert tvdctl_mod.main(["check", "broken.yaml"]) == 1
    out = capsys.readouterr()
    assert out.out == "broken.yaml:3:13: error: vlan of TVD 'a' 0 is out of range 1..4094\n"
    assert tvdctl_mod.main(["check", "clean.yaml"]) == 0
    with pytest.raises(SystemExit) as e:
        tvdctl_mod.main(["check"])
    assert e.value.code == 2


# --- show ------------------------------------------------------------------------------------

def _matrix(stdout: str) -> dict[tuple[str, str], str]:
    rows = [ln for ln in stdout.splitlines() if " | " in ln]
    header = [c.strip() for c in rows[0].split("|")]
    cols = header[1:]
    cells = {}
    for row in rows[1:]:
        parts = [c.strip() for c in row.split("|")]
        for col, cell in zip(cols, parts[1:]):
            cells[(parts[0], col)] = cell
    return cells


def test_show_figure1_matrix(files):
    p = tvdctl("show", "fig1.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 0
    m = _matrix(p.stdout)
    assert m == {
        ("alpha", "alpha"): "1", ("alpha", "beta"): "0", ("alpha", "gamma"): "P[alpha,gamma]",
        ("alpha", "dummy"): "0",
        ("beta", "alpha"): "0", ("beta", "beta"): "1", ("beta", "gamma"): "P[beta,gamma]",
        ("beta", "dummy"): "0",
        ("gamma", "alpha"): "P[gamma,alpha]", ("gamma", "beta"): "P[gamma,beta]",
        ("gamma", "gamma"): "1", ("gamma", "dummy"): "0",
        ("dummy", "alpha"): "0", ("dummy", "beta"): "0", ("dummy", "gamma"): "0",
        ("dummy", "dummy"): "1",
    }
    assert "P[alpha,gamma]: sender alpha allows tcp/443, tcp/80; receiver gamma allows " \
           "tcp/443; passes tcp/443" in p.stdout
    assert "dummy = VLANs outside every TVD [1]: closed to every TVD" in p.stdout
    assert "\033[" not in p.stdout       # not a terminal: no colour


def test_show_json_figure1(files):
    p = tvdctl("show", "--json", "fig1.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert set(out) == {"tvds", "externals", "dummy", "matrix", "controlled", "shared_membership"}
    assert out["tvds"] == ["alpha", "beta", "gamma"]
    assert out["dummy"] == {"policy": "closed", "vlans": [1]}
    # the same cells as the text matrix: 1 = open, 0 = closed, P[x,y] = controlled
    text = {k: {"1": "open", "0": "closed"}.get(v, "controlled")
            for k, v in _matrix(tvdctl("show", "fig1.yaml", cwd=files).stdout).items()}
    assert {(a, b): k for a, row in out["matrix"].items() for b, k in row.items()} == text
    ag = next(c for c in out["controlled"] if (c["from"], c["to"]) == ("alpha", "gamma"))
    assert ag == {"from": "alpha", "to": "gamma", "sender": ["tcp/443", "tcp/80"],
                  "receiver": ["tcp/443"], "passes": ["tcp/443"], "replies": True}
    assert len(out["controlled"]) == 4


def test_show_json_refuses_broken_policy(files):
    p = tvdctl("show", "--json", "broken.yaml", cwd=files)
    assert p.returncode == 1 and p.stdout == ""


def test_show_refuses_broken_policy(files):
    p = tvdctl("show", "broken.yaml", cwd=files)
    no_traceback(p)
    assert p.returncode == 1 and p.stdout == ""
    assert "broken.yaml:3:13: error: vlan of TVD 'a' 0 is out of range" in p.stderr
    assert "run 'tvdctl check broken.yaml'" in p.stderr


def test_show_missing_exits_2(files):
    p = tvdctl("show", "missing.yaml", cwd=files)
    assert p.returncode == 2 and "cannot read" in p.stderr


# --- graph -----------------------------------------------------------------------------------

def test_graph_dot(files):
    p = tvdctl("graph", "fig1.yaml", "-o", "out.dot", cwd=files)
    no_traceback(p)
    assert p.returncode == 0 and p.stdout.strip() == "wrote out.dot"
    dot = (files / "out.dot").read_text()
    assert dot.startswith("digraph tvds {")
    assert '"alpha" -> "gamma" [color=orange, style=dashed, label="controlled: tcp/443"];' in dot
    assert '"alpha" -> "beta" [color=red, style=dotted, label="closed"];' in dot
    assert '"beta" [label="beta\\nVLAN 200 / VNI 10200\\nintegrity, isolation"];' in dot


def test_graph_dot_shows_shared_membership_and_hosts(files):
    p = tvdctl("graph", HOSTS_POLICY, "-o", "hosts.dot", cwd=files)
    assert p.returncode == 0, p.stderr
    dot = (files / "hosts.dot").read_text()
    lines = {ln.strip() for ln in dot.splitlines()}
    # shared-membership: [alpha, gamma]
    assert '"shared:1" -> "alpha" [dir=none, color=purple, penwidth=2];' in lines
    assert '"shared:1" -> "gamma" [dir=none, color=purple, penwidth=2];' in lines
    assert not any(ln.startswith('"shared:1" -> "beta"') for ln in lines)
    assert "subgraph cluster_hosts {" in lines
    assert ('"host:dom0-a" [label="dom0-a\\n10.77.1.11\\nC(h): ethernet, ip\\n'
            'tpm-measured-boot:immutable-log\\nlan: eth0 10.77.1.11", shape=box3d, '
            'style=solid];') in lines
    carries = {tuple(ln.split(" [")[0].replace('"', "").split(" -> "))
               for ln in lines if ln.startswith('"host:') and " -> " in ln}
    # vault needs pci-audited, which only dom0-b holds (the policy's own comment)
    assert carries == {(f"host:{h}", t) for h in ("dom0-a", "dom0-b")
                       for t in ("alpha", "beta", "gamma")} | {("host:dom0-b", "vault")}


@pytest.mark.skipif(not shutil.which("dot"), reason="Graphviz missing: scripts/bootstrap "
                                                    "installs it (tier 1 in CI)")
def test_graph_png(files):
    p = tvdctl("graph", HOSTS_POLICY, "-o", "out.png", cwd=files)
    no_traceback(p)
    assert p.returncode == 0 and p.stdout.strip() == "wrote out.png", p.stderr
    assert (files / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_svg_or_clear_error(files):
    p = tvdctl("graph", "fig1.yaml", "-o", "out.svg", cwd=files)
    no_traceback(p)
    if shutil.which("dot"):
        assert p.returncode == 0, p.stderr
        svg = (files / "out.svg").read_text()
        assert "<svg" in svg and "alpha" in svg and "gamma" in svg
    else:
        assert p.returncode == 2
        assert "Graphviz 'dot' is not installed (apt-get install graphviz)" in p.stderr


def test_graph_svg_without_graphviz_is_a_clear_usage_error(files, tmp_path_factory):
    # a PATH holding only the interpreter: 'dot' cannot be found whether or not it is installed
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "python3").symlink_to(sys.executable)
    p = tvdctl("graph", "fig1.yaml", "-o", "out.svg", cwd=files, env={"PATH": str(bindir)})
    no_traceback(p)
    assert p.returncode == 2
    assert p.stderr.strip() == ("tvdctl: Graphviz 'dot' is not installed (apt-get install "
                                "graphviz); write .dot instead")
    assert not (files / "out.svg").exists()


@pytest.mark.parametrize("out, message", [
    ("out.jpg", "cannot tell the format of 'out.jpg': name it .dot, .svg or .png"),
    ("out", "cannot tell the format of 'out': name it .dot, .svg or .png"),
    ("nodir/out.dot", "cannot write nodir/out.dot: No such file or directory"),
])
def test_graph_bad_output_exits_2(files, out, message):
    p = tvdctl("graph", "fig1.yaml", "-o", out, cwd=files)
    no_traceback(p)
    assert p.returncode == 2 and p.stderr.strip() == f"tvdctl: {message}"


def test_graph_refuses_broken_policy(files):
    p = tvdctl("graph", "broken.yaml", "-o", "out.dot", cwd=files)
    assert p.returncode == 1 and not (files / "out.dot").exists()


# --- admit -----------------------------------------------------------------------------------

def _admit(files, *args):
    p = tvdctl("admit", "--policy", "fig1.yaml", *args, cwd=files)
    no_traceback(p)
    return p


def test_admit_ok(files):
    p = _admit(files, "--tvd", "beta", "--properties", "tpm-measured-boot")
    assert p.returncode == 0 and p.stdout.strip() == "admit: beta"


def test_admit_with_assurance(files):
    p = _admit(files, "--tvd", "alpha", "--properties", "tpm-measured-boot:immutable-log")
    assert p.returncode == 0 and p.stdout.strip() == "admit: alpha"


def test_admit_json(files):
    p = _admit(files, "--json", "--tvd", "beta", "--properties", "tpm-measured-boot")
    assert p.returncode == 0
    assert json.loads(p.stdout) == {"admitted": True, "tvds": ["beta"],
                                    "properties": {"tpm-measured-boot": None}, "reason": None,
                                    "unknown_properties": []}


def test_deny_json_has_the_reason_and_unknown_properties(files):
    p = _admit(files, "--json", "--tvd", "beta", "--tvd", "gamma",
               "--properties", "signed-kernel,bogus:audit")
    assert p.returncode == 1
    assert json.loads(p.stdout) == {"admitted": False, "tvds": ["beta", "gamma"],
                                    "properties": {"signed-kernel": None, "bogus": "audit"},
                                    "reason": "TVD gamma requires disk-encryption",
                                    "unknown_properties": ["bogus"]}


def test_deny_says_which_requirement_failed(files):
    p = _admit(files, "--tvd", "alpha", "--properties", "tpm-measured-boot:mutable-log")
    assert p.returncode == 1
    assert p.stdout.strip() == ("deny: TVD alpha requires tpm-measured-boot "
                                "(assured by immutable-log)")


def test_deny_multi_tvd_names_each_unmet(files):
    p = _admit(files, "--tvd", "beta", "--tvd", "gamma", "--properties", "signed-kernel,bogus")
    assert p.returncode == 1
    assert p.stdout.splitlines() == [
        "deny: TVD gamma requires disk-encryption",
        "note: properties unknown to the policy (dominate nothing): bogus"]
    p = _admit(files, "--tvd", "beta", "--tvd", "gamma",
               "--properties", "signed-kernel,disk-encryption")
    assert p.returncode == 0 and p.stdout.strip() == "admit: beta + gamma"


def test_deny_exclusion_conflict(files):
    p = _admit(files, "--tvd", "beta", "--properties",
               "signed-kernel,internet-facing,disk-encryption-exempt")
    assert p.returncode == 1
    assert p.stdout.strip() == ("deny: properties disk-encryption-exempt and internet-facing "
                                "exclude each other")


def test_deny_tvds_outside_shared_membership(files):
    p = _admit(files, "--tvd", "alpha", "--tvd", "beta",
               "--properties", "tpm-measured-boot:immutable-log")
    assert p.returncode == 1
    assert "alpha + beta are not a shared-membership set" in p.stdout


def test_deny_unknown_tvd(files):
    p = _admit(files, "--tvd", "delta", "--properties", "signed-kernel")
    assert p.returncode == 1 and p.stdout.strip() == "deny: unknown TVD delta"


def test_admit_bad_assurance_kind_is_usage_error(files):
    p = _admit(files, "--tvd", "alpha", "--properties", "tpm-measured-boot:hope")
    assert p.returncode == 2
    assert "unknown assurance kind 'hope' for 'tpm-measured-boot'" in p.stderr


def test_admit_broken_or_missing_policy(files):
    p = tvdctl("admit", "--policy", "broken.yaml", "--tvd", "a", "--properties", "x", cwd=files)
    assert p.returncode == 1 and "broken.yaml:3:13: error:" in p.stderr
    p = tvdctl("admit", "--policy", "missing.yaml", "--tvd", "a", "--properties", "x", cwd=files)
    assert p.returncode == 2 and "cannot read" in p.stderr


def test_version_is_the_installed_distribution():
    from importlib.metadata import version
    p = tvdctl("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"tvdctl {version('xen-tvd')}"
