"""The policy for tiers 2 and 3 (qemu): a missing prerequisite fails the test under CI=true
(CI must run the tier) and skips it elsewhere with the exact reason."""
from __future__ import annotations

import os
from typing import Callable

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tier(tier: str, check: Callable, missing: type[Exception]):
    """Run check() (the tier's prerequisite probe) and return its result; on `missing`, fail
    under CI and skip elsewhere, naming the tier and what is missing."""
    try:
        return check()
    except missing as e:
        if in_ci():
            pytest.fail(f"{tier} cannot run in CI: {e}", pytrace=False)
        pytest.skip(f"{tier}: {e}")
