"""Tier-1 lab fixtures: the paper lab (xl-configs/lab-paper.yaml) under a unique name.

The lab is brought up once per module through the CLI (`python3 -m xen_tvd.lab up`, what
`tvdctl lab up` runs) and `down` always runs in teardown, even when a test fails.
"""
from __future__ import annotations

import pytest
from tests.lab.lab_helpers import PAPER_POLICY, PAPER_SPEC, running_lab


@pytest.fixture(scope="module")
def paper_lab(tmp_path_factory):
    with running_lab(PAPER_SPEC, PAPER_POLICY, "p", str(tmp_path_factory.mktemp("lab"))) as lab:
        yield lab
