"""The audit spool: every audit event is on disk before anyone tries to send it.

DIR/master/audit-spool.jsonl (0600), one JSON event per line, appended and fsynced under a
lock. The sender takes events from the front, posts them, and only after the master answered
2xx removes exactly those from the front (rewrite + rename, so an event appended meanwhile is
kept). A crash between "master stored them" and "spool rewritten" re-sends them with the same
ids, which the master ignores (POST /v1/audit is idempotent on `id`): nothing is lost and
nothing is counted twice, in order.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid as uuidlib

from xen_tvd.log import log

from .bundle_store import write_private

SPOOL_FILE = "audit-spool.jsonl"


class AuditSpool:
    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, SPOOL_FILE)
        self.lock = threading.Lock()
        self.pending = threading.Event()

    def append(self, event: str, **fields) -> dict:
        ev = {"id": str(uuidlib.uuid4()), "ts": time.time(), "event": event}
        ev.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(ev, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.pending.set()
        return ev

    def _lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def head(self, limit: int = 500) -> tuple[list[dict], int]:
        """(up to `limit` events from the front, how many lines they span). A line cut short by
        a crash mid-append is skipped (it never reached fsync, so nobody was told of it)."""
        with self.lock:
            lines = self._lines()
        events, used = [], 0
        for raw in lines:
            if len(events) >= limit:
                break
            used += 1
            try:
                ev = json.loads(raw)
            except ValueError:
                log("warning", "audit-spool-skipped", path=self.path, detail="unparsable line")
                continue
            if isinstance(ev, dict) and isinstance(ev.get("id"), str):
                events.append(ev)
        return events, used

    def drop(self, count: int) -> None:
        """Remove the first `count` lines (those just delivered)."""
        with self.lock:
            rest = self._lines()[count:]
            write_private(self.path, b"".join(line + b"\n" for line in rest))

    def size(self) -> int:
        with self.lock:
            return len(self._lines())
