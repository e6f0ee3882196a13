"""Tier 3 from the normal suite: boot Xen 4.17 + a PV dom0 (Debian's stock kernel) under qemu
TCG once, and run real `xl create` / `tvdctl xl create` / `xl network-attach` / `xl destroy`
scenarios with PV domUs against the project's vif-tvd and tvd-proxy inside dom0
(tvd_testing/xentier.py, docs/test-tiers.md "Tier 3").

Every named check of every scenario must pass and be present. Missing packages fail under
CI=true and skip with the exact reason elsewhere. On failure the message carries the failed
checks and the tails of the serial log, the dom0 driver log and the proxy log; all artefacts
(results.json, serial.log, console/guest-*.log) stay in the test's tmp dir.
Deselect with `-m "not xentier"` for a quick local run.
"""
from __future__ import annotations


import pytest

from tvd_testing import xentier

from tests.common.tiers import require_tier

pytestmark = pytest.mark.xentier


def _prereqs():
    return require_tier("nested-Xen tier", xentier.check_prerequisites, xentier.MissingPrerequisite)


def test_xl_scenarios_on_nested_xen(tmp_path):
    _prereqs()
    scenarios = xentier.CI_SCENARIOS
    res = xentier.run(scenarios, results_dir=tmp_path / "xentier")
    print(res.summary())
    if res.returncode != 0 or res.problems:
        pytest.fail(f"{res.summary()}\nresults: {res.results_dir}\n{res.log_tail(60)}", pytrace=False)
    # belt and braces: the JSON itself, not only the harness's verdict
    got = res.results["scenarios"]
    assert list(got) == list(scenarios), got.keys()
    for name in scenarios:
        checks = {c["name"]: c for c in got[name]["checks"]}
        for want in xentier.expected_checks(name):
            assert want in checks and checks[want]["ok"], (name, want, checks.get(want))
