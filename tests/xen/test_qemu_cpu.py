"""Which qemu -cpu model a tier-3 boot uses (xentier.choose_qemu_cpu): the libvirt scenario needs
an Intel model (libvirt 9.0's libxl driver cannot decode Xen's hw_caps under `-cpu max`,
docs/test-tiers.md, Tier 3), every other selection keeps the default; an explicit choice wins."""
import pytest

from tvd_testing import xentier


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("TVD_XEN_QEMU_CPU", raising=False)


def test_ci_runs_libvirt_and_so_boots_on_westmere():
    assert "libvirt" in xentier.CI_SCENARIOS
    assert xentier.choose_qemu_cpu(xentier.CI_SCENARIOS) == "Westmere"
    # libvirt needs positive's domUs; destroy's checks want no domain left, so it stays last
    ci = list(xentier.CI_SCENARIOS)
    assert ci.index("positive") < ci.index("libvirt") < ci.index("destroy") == len(ci) - 1


def test_other_selections_keep_the_default_model():
    assert xentier.choose_qemu_cpu(xentier.SCENARIOS) == xentier.QEMU_CPU == "max,-smap,-smep"


def test_libvirt_boots_with_westmere():
    assert xentier.choose_qemu_cpu(("positive", "libvirt")) == "Westmere"


def test_explicit_model_wins_over_the_scenarios(monkeypatch):
    assert xentier.choose_qemu_cpu(("positive", "libvirt"), "Nehalem") == "Nehalem"
    monkeypatch.setenv("TVD_XEN_QEMU_CPU", "SandyBridge")
    assert xentier.choose_qemu_cpu(("positive", "libvirt")) == "SandyBridge"
    assert xentier.choose_qemu_cpu(("positive",)) == "SandyBridge"


def test_scenarios_needing_different_models_are_refused(monkeypatch):
    monkeypatch.setitem(xentier.SCENARIO_QEMU_CPU, "positive", "Nehalem")
    with pytest.raises(ValueError, match="different qemu CPU models"):
        xentier.choose_qemu_cpu(("positive", "libvirt"))


def test_models_are_named_for_known_scenarios():
    assert set(xentier.SCENARIO_QEMU_CPU) <= set(xentier.load_scenarios())


def test_summary_names_the_model(tmp_path):
    r = xentier.XenResult(0, tmp_path, tmp_path / "serial.log", None, {"prepare": 1.0}, [], "Westmere")
    assert "-cpu Westmere" in r.summary()
