"""The developers' launchers in scripts/ (docs/test-tiers.md names them as the way to run tiers 2
and 3 by hand): each is executable and reaches its harness."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.common import paths


@pytest.mark.parametrize("name, prog", [("tvdctl-vmtest", "tvdctl-vmtest"),
                                        ("tvdctl-xentest", "tvdctl-xentest")])
def test_harness_launcher_runs_its_harness(name, prog):
    path = os.path.join(paths.REPO, "scripts", name)
    assert os.access(path, os.X_OK), f"{path} is not executable"
    p = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"usage: {prog}"), p.stdout[:200]


def test_build_xen_shadow_does_nothing_when_its_output_is_there(tmp_path):
    """Bootstrap runs scripts/build-xen-shadow on every CI run: a rerun with the hypervisor
    already built must not fetch or build anything (no network, no compiler here: an empty
    PATH would fail at the first tool it ran)."""
    out = tmp_path / "xen.gz"
    out.write_bytes(b"\x1f\x8b built")
    out.with_name("xen.gz.version").write_text("xen 4.17.5 (Debian source), CONFIG_SHADOW_PAGING=y\n")
    path = os.path.join(paths.REPO, "scripts", "build-xen-shadow")
    p = subprocess.run(["/bin/bash", path, str(out)], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/nonexistent"})
    assert p.returncode == 0, p.stderr
    assert "is there (xen 4.17.5" in p.stdout
    assert out.read_bytes() == b"\x1f\x8b built"
