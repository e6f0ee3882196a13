"""Fixtures for the vif-tvd tier-1 tests (see tvd_harness.py for the stand-ins)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the dataplane tests' independent kernel read-backs (ethtool_k), until one shared test-support
# package serves every test directory (issue #14 point 5)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataplane"))
from tvd_fixtures import *  # noqa: E402,F401,F403
