"""Reading a metrics textfile as Prometheus would: prometheus_client's own parser (the test
extra's reason to exist), never our writer's assumptions. Shared by tests/master and
tests/proxy."""
from __future__ import annotations

import os
import time

from prometheus_client.parser import text_string_to_metric_families


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, for every sample of every family; the parser raises
    on anything Prometheus would refuse."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def families(text: str) -> dict[str, str]:
    """family name -> its type, as the parser read the TYPE lines."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(samples: dict, metric: str, /, **labels) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def scrape_until(path: str, ok, timeout: float = 20.0) -> dict:
    """Parse the textfile until ok(samples) holds (the daemon rewrites it on its interval)."""
    deadline = time.monotonic() + timeout
    samples: dict = {}
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                samples = parse(f.read())
            if ok(samples):
                return samples
        time.sleep(0.1)
    raise AssertionError(f"{path} never satisfied the condition; last: {sorted(samples)[:40]}")
