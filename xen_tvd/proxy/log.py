"""Structured logs: one line per event on stderr, `key=value`, journald-friendly.

journald adds the timestamp and the unit; `level=` maps to the syslog priority a reader filters
on. Values with spaces, quotes or `=` are JSON-quoted so a line always splits unambiguously.
"""
from __future__ import annotations

import json
import sys
import threading
import time

_lock = threading.Lock()
_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/,+@%")


def _fmt(v) -> str:
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        v = f"{v:.1f}"
    s = str(v)
    if s and all(c in _PLAIN for c in s):
        return s
    return json.dumps(s)


def log(level: str, event: str, **kv) -> None:
    parts = [f"ts={time.strftime('%Y-%m-%dT%H:%M:%S')}", f"level={level}", f"event={event}"]
    parts += [f"{k}={_fmt(v)}" for k, v in kv.items()]
    line = " ".join(parts).replace("\n", " ")
    with _lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
