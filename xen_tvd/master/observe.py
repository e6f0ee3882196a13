"""What tvd-master observes about itself while serving, for its metrics and its page: request
latency per route and status, and when each host last made a request (its last contact).
The Master holds one Observations; the request handler feeds it (server.py)."""
from __future__ import annotations

import threading
import time

from xen_tvd.metrics import Histogram

MAX_HOSTS = 100_000    # last-contact entries kept (a host name is only recorded once authorized)


class Observations:
    def __init__(self) -> None:
        self.latency = Histogram(
            "tvd_master_request_duration_seconds",
            "Time from a whole request to its answer, by route (handler) and HTTP status; a "
            "bundle watch includes its wait.", ("route", "code"))
        self._lock = threading.Lock()
        self.last_contact: dict[str, float] = {}
        self.recompute_errors = 0

    def request(self, route: str, status: int, seconds: float, who: str) -> None:
        self.latency.observe((route, str(status)), seconds)
        if who.startswith("host:") and status < 400:
            with self._lock:
                if len(self.last_contact) < MAX_HOSTS or who[5:] in self.last_contact:
                    self.last_contact[who[5:]] = time.time()

    def contacts(self) -> dict[str, float]:
        with self._lock:
            return dict(self.last_contact)
