"""tests/proxy share the namespace harness and fixtures of tests/hotplug (and the
adversarial corpus's helpers)."""
from __future__ import annotations

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TESTS, "hotplug"))
sys.path.insert(0, os.path.join(TESTS, "adversarial"))   # the corpus, for the attack tests
from tvd_fixtures import *  # noqa: E402,F401,F403
