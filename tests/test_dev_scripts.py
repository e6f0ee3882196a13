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
