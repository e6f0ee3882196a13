"""xen_tvd.lab.common: the one limit a lab puts on daemons it starts (XEN_TVD_LAB_START_TIMEOUT)."""
from __future__ import annotations

import pytest

from xen_tvd.lab.common import START_TIMEOUT_DEFAULT, LabError, start_timeout


def test_start_timeout_is_30_s_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("XEN_TVD_LAB_START_TIMEOUT", raising=False)
    assert start_timeout() == START_TIMEOUT_DEFAULT == 30.0
    monkeypatch.setenv("XEN_TVD_LAB_START_TIMEOUT", "180")
    assert start_timeout() == 180.0


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "nan", "inf", "3601"])
def test_a_bad_start_timeout_is_refused_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("XEN_TVD_LAB_START_TIMEOUT", raw)
    with pytest.raises(LabError, match="XEN_TVD_LAB_START_TIMEOUT=.*give seconds"):
        start_timeout()
