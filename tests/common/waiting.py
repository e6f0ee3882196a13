"""Polling with a bound: tests wait for a condition, never for a fixed time."""
from __future__ import annotations

import time
from typing import Callable


def wait_for(cond: Callable, what: str, timeout: float = 15.0, step: float = 0.1, *,
             check: Callable[[], None] | None = None, ignore: tuple = (),
             detail: Callable[[], str] | None = None):
    """Call cond() until it returns something truthy and return that; after `timeout` seconds
    raise AssertionError naming `what` (plus detail(), e.g. a daemon's log). `check()` runs
    every round and may raise first (a daemon that died); exceptions in `ignore` count as
    "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            v = cond()
            if v:
                return v
        except ignore:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    extra = f": {detail()}" if detail is not None else ""
    raise AssertionError(f"no {what} within {timeout} s{extra}")
