"""tests/packaging run the installed products against the namespace harness of tests/hotplug."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hotplug"))
from tvd_fixtures import *  # noqa: E402,F401,F403
