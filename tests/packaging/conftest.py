"""tests/packaging run the installed products against the namespace harness of tests/hotplug."""
from __future__ import annotations

from tests.hotplug.tvd_fixtures import *  # noqa: E402,F401,F403
