"""tests/proxy share the namespace harness and fixtures of tests/hotplug (and the
adversarial corpus's helpers)."""
from __future__ import annotations

from tests.hotplug.tvd_fixtures import *  # noqa: E402,F401,F403

import pytest  # noqa: E402

from tests.proxy import master_lab  # noqa: E402
from tests.proxy.routed_helpers import Scene  # noqa: E402


@pytest.fixture
def scene(lab2):
    """The routed scene (routed_helpers.Scene) on two Dom0 namespaces."""
    s = Scene(lab2)
    try:
        yield s
    finally:
        master_lab.close(lab2)     # stops the master if one runs; the proxies stop in lab2
        for p in lab2.proxies.values():
            p.stop()
        s.close()
