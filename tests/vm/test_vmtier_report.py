"""What the tier-2 harness reports from the inner run's junit (tier 1: no VM needed)."""
from __future__ import annotations

from tvd_testing import vmtier

JUNIT = """<?xml version="1.0"?>
<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="0">
 <testcase classname="tests.dataplane.test_storm" name="test_storm" time="37.5"/>
 <testcase classname="tests.dataplane.test_routed_flows" name="test_matrix" time="137.9">
  <failure message="30 cells: 1 wrong">...</failure></testcase>
 <testcase classname="tests.dataplane.test_vlan" name="test_uplink" time="11.6"/>
</testsuite></testsuites>
"""


def test_seconds_per_test_slowest_first(tmp_path):
    j = tmp_path / "junit.xml"
    j.write_text(JUNIT)
    assert vmtier.seconds_per_test(j) == [
        (137.9, "tests.dataplane.test_routed_flows::test_matrix"),
        (37.5, "tests.dataplane.test_storm::test_storm"),
        (11.6, "tests.dataplane.test_vlan::test_uplink")]


def test_summary_names_the_slowest_inner_tests_and_the_failures(tmp_path):
    j = tmp_path / "junit.xml"
    j.write_text(JUNIT)
    counts, failures = vmtier.parse_junit(j)
    r = vmtier.VmResult(1, tmp_path, tmp_path / "vm.log", j, {"boot": 33.0}, counts, failures,
                        kernel="6.1.0-57-amd64", slowest=vmtier.seconds_per_test(j))
    s = r.summary()
    assert "slowest inside the VM:\n   137.9s tests.dataplane.test_routed_flows::test_matrix" in s
    assert s.index("test_matrix") < s.index("test_storm") < s.index("test_uplink")
    assert "failed inside the VM:\n  tests.dataplane.test_routed_flows::test_matrix - 30 cells: 1 wrong" in s
