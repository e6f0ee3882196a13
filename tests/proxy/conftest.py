"""tests/proxy share the namespace harness and fixtures of tests/hotplug (and the
adversarial corpus's helpers)."""
from __future__ import annotations

from tests.hotplug.tvd_fixtures import *  # noqa: E402,F401,F403
