"""Structured logs of tvd-proxy and tvd-master: one line per event on stderr, `key=value`,
journald-friendly.

journald adds the timestamp and the unit. When stderr is the journal stream systemd connected
(JOURNAL_STREAM names its device:inode, sd-daemon(3)), each line starts with the `<N>` syslog
priority of its `level=`, which journald strips and stores as PRIORITY (its stream default,
SyslogLevelPrefix=yes), so `journalctl -p warning` finds warnings; anywhere else (a terminal,
a log file) lines carry no prefix. Values with spaces, quotes or `=` are JSON-quoted so a line
always splits unambiguously.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

# syslog priorities (RFC 5424) of the levels used; an unknown level is logged as an error
PRIORITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3, "critical": 2}
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


def to_journal() -> bool:
    """Is stderr still the journal stream systemd set up for this service?"""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in want.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def log(level: str, event: str, **kv) -> None:
    parts = [f"ts={time.strftime('%Y-%m-%dT%H:%M:%S')}", f"level={level}", f"event={event}"]
    parts += [f"{k}={_fmt(v)}" for k, v in kv.items()]
    say(level, " ".join(parts))


def say(level: str, text: str) -> None:
    """One line of free text on stderr (e.g. the reason a daemon exits) at `level`."""
    line = text.replace("\n", " ")
    if to_journal():
        line = f"<{PRIORITY.get(level, 3)}>{line}"
    with _lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
