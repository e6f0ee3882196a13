"""Tier 1: the tier-3 scenario-file mechanism (tvd_testing/xenscenario.py) without booting Xen:
a file from anywhere is loaded, its scenarios and checks become known, and bad files, names and
orders are refused with a message (the CLI exits 2 before any qemu starts)."""
from __future__ import annotations

import textwrap

import pytest

from tvd_testing import xenscenario, xentier

GOOD = textwrap.dedent('''
    from tvd_testing.xenscenario import scenario

    @scenario("tester-ping", checks=("alpha1-still-up",), needs=("positive",))
    def tester_ping(d, sc):
        sc.check("alpha1-still-up", "alpha1" in d.domains(), d.domains())
''')


def test_a_scenario_file_adds_a_scenario_with_its_checks(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(GOOD)
    reg = xentier.load_scenarios([f])
    assert reg["tester-ping"].checks == ("alpha1-still-up",)
    assert reg["tester-ping"].needs == ("positive",)
    assert xentier.expected_checks("migrate")          # the lifecycle file loads by default
    xenscenario.validate_order(["positive", "tester-ping"])
    with pytest.raises(xenscenario.ScenarioError, match="needs positive earlier"):
        xenscenario.validate_order(["tester-ping"])
    # a results.json that lacks the declared check fails the run
    res = {"scenarios": {"tester-ping": {"checks": [], "seconds": 1}}}
    assert xentier.failures(res, ["tester-ping"], [f]) == ["tester-ping: check alpha1-still-up missing"]


@pytest.mark.parametrize("body,why", [
    ("x = 1\n", "defines no @scenario"),
    ("import nosuchmodule_xyz\n", "did not import: ModuleNotFoundError"),
    ("from tvd_testing.xenscenario import scenario\n@scenario('Bad Name', checks=('a',))\ndef f(d, sc): pass\n",
     "use lower-case letters"),
    ("from tvd_testing.xenscenario import scenario\n@scenario('nochecks', checks=())\ndef f(d, sc): pass\n",
     "declares no checks"),
    ("from tvd_testing.xenscenario import scenario\n@scenario('positive', checks=('a',))\ndef f(d, sc): pass\n",
     "already defined by builtin"),
])
def test_bad_scenario_files_are_refused(tmp_path, body, why):
    xentier.load_scenarios()
    f = tmp_path / "bad.py"
    f.write_text(body)
    with pytest.raises(xenscenario.ScenarioError, match=why):
        xenscenario.load_file(f)


def test_cli_refuses_unknown_scenarios_before_booting(tmp_path, capsys):
    f = tmp_path / "mine2.py"
    f.write_text(GOOD.replace("tester-ping", "tester-two"))
    assert xentier.main(["--scenarios", "positive,nosuch", "--scenario-file", str(f),
                         "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'nosuch'" in err and "tester-two" in err


def test_the_documented_example_is_a_valid_scenario_file(tmp_path):
    """docs/test-tiers.md's example, as a tester would copy it."""
    import re
    from pathlib import Path
    doc = (Path(xentier.PROJECT) / "docs" / "test-tiers.md").read_text()
    code = re.search(r"```python\n(# my_scenarios.py\n.*?)```", doc, re.S).group(1)
    f = tmp_path / "my_scenarios.py"
    f.write_text(code)
    reg = xentier.load_scenarios([f])
    assert reg["pause-keeps-tvd"].checks == ("paused", "vif-still-on-alpha")
    xenscenario.validate_order(["positive", "pause-keeps-tvd"])
