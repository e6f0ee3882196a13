"""pytest plugin loaded inside the tier-2 VM (``-p tvd_testing.vmtier_plugin``).

``--vm-forbid-skip=SUBSTR`` (repeatable): a test whose node id contains SUBSTR and that skips
is reported as *failed*. Inside the stock-kernel VM the kernel features these tests wait for
(8021q, ...) are present, so a skip there means the tier proved nothing.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--vm-forbid-skip", action="append", default=[], metavar="SUBSTR",
                     help="fail (not skip) tests whose node id contains SUBSTR")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    pats = item.config.getoption("--vm-forbid-skip")
    if rep.skipped and not hasattr(rep, "wasxfail") and any(p in item.nodeid for p in pats):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"skipped inside the stock-kernel VM tier, where it must run "
                        f"(--vm-forbid-skip): {reason}")
