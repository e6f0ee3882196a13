"""Fixtures shared by tests/hotplug and tests/proxy (see tvd_harness.py for the stand-ins)."""
from __future__ import annotations

import os

import pytest

from tests.hotplug import tvd_harness  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _root_and_no_leftovers():
    if os.geteuid() != 0:
        pytest.skip("needs root: the tests build network namespaces, bridges and VXLAN devices")
    yield
    left = tvd_harness.leftover_namespaces()
    for ns in left:
        tvd_harness.ip("netns", "del", ns, check=False)
    assert not left, f"tests leaked namespaces: {left}"


@pytest.fixture
def lab(tmp_path):
    lab = tvd_harness.Lab(str(tmp_path))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab2(tmp_path):
    lab = tvd_harness.Lab(str(tmp_path), hosts=("dom0-a", "dom0-b"))
    try:
        yield lab
    finally:
        lab.close()
