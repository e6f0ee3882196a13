"""Fixtures for the vif-tvd tier-1 tests (see tvd_harness.py for the stand-ins)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tvd_fixtures import *  # noqa: E402,F401,F403
