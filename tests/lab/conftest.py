"""Tier-1 lab fixtures: the paper lab (xl-configs/lab-paper.yaml) under a unique name.

The lab is brought up once per module through the CLI (`python3 -m xen_tvd.lab up`, what
`tvdctl lab up` runs) and `down` always runs in teardown, even when a test fails.
"""
from __future__ import annotations

import pytest
from lab_helpers import Lab, lab_cli, need_root_and_tools, unique_name, write_spec


@pytest.fixture(scope="module")
def paper_lab(tmp_path_factory):
    need_root_and_tools()
    name = unique_name("p")
    spec = write_spec(str(tmp_path_factory.mktemp("lab")), name)
    lab = Lab(spec, name)
    try:
        lab.cli("up", check=True)
        yield lab
    finally:
        r = lab_cli("down", "--name", name)
        assert r.returncode == 0, r.stderr
