"""tests/cli/test_xl.py runs tvdctl xl against a real tvd-proxy: the namespace harness of
tests/hotplug (its fixtures are imported by that module alone, so the other CLI tests need no
root)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hotplug"))
