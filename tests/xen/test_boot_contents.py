"""What a tier-3 boot runs: which Xen image (xentier.find_xen): the one named, else the shadow-paging
build of scripts/build-xen-shadow (live migration needs it: the `migrate` scenario), else
Debian's in /boot (the summary says which booted); and the project under test in dom0."""
import pytest

from tvd_testing import xentier


def test_named_image_wins(tmp_path, monkeypatch):
    built, named = tmp_path / "built.gz", tmp_path / "mine.gz"
    built.write_bytes(b"x")
    named.write_bytes(b"y")
    monkeypatch.setattr(xentier, "SHADOW_XEN", built)
    assert xentier.find_xen(named) == named


def test_a_named_image_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(xentier.MissingPrerequisite, match="is not a file"):
        xentier.find_xen(tmp_path / "nosuch.gz")


def test_shadow_build_is_preferred_when_it_is_there(tmp_path, monkeypatch):
    built = tmp_path / "built.gz"
    monkeypatch.setattr(xentier, "SHADOW_XEN", built)
    fallback = None
    try:
        fallback = xentier.find_xen()
    except xentier.MissingPrerequisite:
        pass                                   # no Debian hypervisor on this machine
    assert fallback != built
    built.write_bytes(b"x")
    assert xentier.find_xen() == built


def test_summary_names_the_hypervisor_and_seconds_per_scenario(tmp_path):
    r = xentier.XenResult(0, tmp_path, tmp_path / "serial.log", None, {"scenario_positive": 65.2},
                          [], "max", "/x/xen.gz")
    assert "Xen /x/xen.gz" in r.summary() and "scenario_positive 65s" in r.summary()


def test_ci_runs_the_live_migration_and_not_its_stand_in():
    assert "migrate" in xentier.CI_SCENARIOS and "migrate-standin" not in xentier.CI_SCENARIOS
    checks = xentier.expected_checks("migrate")
    for c in ("live-migrate", "incoming-vif-admitted", "old-vif-cleaned", "pings-after-migration"):
        assert c in checks and f"tvdctl-{c}" in checks


def test_dom0_runs_the_project_under_test(tmp_path):
    """The proxy and tvdctl in dom0 import this checkout's xen_tvd, not the one a shared
    .venv's editable install points at: PYTHONPATH is the project before the proxy starts."""
    init = xentier.write_dom0_init(tmp_path, tmp_path / "r", "/venv/bin/python", [tmp_path],
                                   ("positive",), 5.0).read_text()
    export = init.index(f"export PYTHONPATH={xentier.PROJECT}\n")
    assert export < init.index("-m xen_tvd.proxy.main run") < init.index("-m tvd_testing.xentier dom0")
