"""Prometheus metrics in the text exposition format (version 0.0.4), for tvd-proxy and
tvd-master (docs/metrics.md).

The daemons write them to a file for node-exporter's textfile collector (the Debian convention
for daemons: /var/lib/prometheus/node-exporter/*.prom): no new listening socket on a Dom0 or on
the master, so nothing new to authenticate or to defend against hostile clients. The file is
replaced atomically (write, rename) so the collector never reads half of it.
Standard library only: the format is a few lines of text, and the tests check it with
prometheus_client's own parser.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import threading
from bisect import bisect_left
from dataclasses import dataclass, field

from xen_tvd.log import log

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
KINDS = ("gauge", "counter", "histogram")
# request latencies: 1 ms .. 60 s (a bundle watch is answered by its wait, up to 60 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
MAX_LABEL_VALUE = 200     # label values come from names (hosts, TVDs); longer ones are cut


@dataclass
class Family:
    """One metric: its samples are (name suffix, labels, value). As the text format wants
    them: a counter's name ends in _total (its samples take no suffix), a histogram's is the
    base name (its samples are _bucket, _count and _sum)."""
    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name) or self.kind not in KINDS or (
                self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"bad metric {self.name!r} of kind {self.kind!r}")

    def add(self, value: float, suffix: str = "", **labels) -> "Family":
        self.samples.append((suffix, labels, value))
        return self


def _escape(value) -> str:
    s = str(value)[:MAX_LABEL_VALUE]
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(families: list[Family]) -> str:
    out = []
    for f in families:
        help_text = f.help.replace("\\", "\\\\").replace("\n", " ")
        out.append(f"# HELP {f.name} {help_text}\n# TYPE {f.name} {f.kind}\n")
        for suffix, labels, value in f.samples:
            for k in labels:
                if not LABEL_RE.match(k) or k.startswith("__"):
                    raise ValueError(f"bad label name {k!r} on {f.name}")
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(f"{f.name}{suffix}{{{lab}}} {_number(value)}\n" if lab
                       else f"{f.name}{suffix} {_number(value)}\n")
    return "".join(out)


class Histogram:
    """A thread-safe histogram per label tuple (cumulative buckets, as Prometheus wants)."""

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.labelnames, self.buckets = name, help, labelnames, buckets
        self._lock = threading.Lock()
        self._data: dict[tuple, list] = {}   # labels -> [counts per bucket + inf, sum]

    def observe(self, labels: tuple, value: float) -> None:
        i = bisect_left(self.buckets, value)
        with self._lock:
            d = self._data.get(labels)
            if d is None:
                d = self._data[labels] = [[0] * (len(self.buckets) + 1), 0.0]
            d[0][i] += 1
            d[1] += value

    def family(self) -> Family:
        f = Family(self.name, "histogram", self.help)
        with self._lock:
            data = {k: (list(v[0]), v[1]) for k, v in self._data.items()}
        for labels, (counts, total) in sorted(data.items()):
            lab = dict(zip(self.labelnames, labels))
            acc = 0
            for le, n in zip(self.buckets + (math.inf,), counts):
                acc += n
                f.add(acc, "_bucket", **lab, le=_number(float(le)))
            f.add(acc, "_count", **lab)
            f.add(total, "_sum", **lab)
        return f


def write_textfile(path: str, text: str) -> None:
    """Replace `path` with `text` atomically, readable by the collector (mode 0644)."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tvd-metrics-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class TextfileWriter:
    """Writes collect()'s families to `path` every `interval` seconds on a thread of its own,
    and removes the file on stop (a stale file would look like a live daemon; after a crash
    node-exporter's node_textfile_mtime_seconds shows the age)."""

    def __init__(self, path: str, collect, interval: float = 15.0) -> None:
        if not 0.1 <= interval <= 3600:
            raise ValueError("the metrics interval must be within 0.1..3600 seconds")
        self.path, self.collect, self.interval = path, collect, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    def write_once(self) -> None:
        write_textfile(self.path, render(self.collect()))

    def start(self) -> None:
        self.write_once()          # a bad path is refused at start, not found out later
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.write_once()
                failing = False
            except Exception as e:   # keep serving; say so once per failure streak
                if not failing:
                    log("warning", "metrics-write-failed", path=self.path,
                        error=f"{type(e).__name__}: {e}"[:300])
                failing = True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            os.unlink(self.path)
        except OSError:
            pass

