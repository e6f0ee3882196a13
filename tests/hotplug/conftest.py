"""Fixtures for the vif-tvd tier-1 tests (see tvd_harness.py for the stand-ins)."""
from tests.hotplug.tvd_fixtures import *  # noqa: E402,F401,F403
