"""xen_tvd.lab.proxies: how a lab waits for a tvd-proxy's answer."""
from __future__ import annotations

import time

from xen_tvd.lab import proxies
from xen_tvd.lab.state import Paths

from tests.libvirt.lv_fakeproxy import FakeProxy


def test_a_slow_status_is_awaited_not_asked_again(tmp_path):
    """A poller that gave up after 2 s and asked again queued one request more behind each
    one still worked on: with 3 s per answer it never saw one (CI: a tier-2 lab whose four
    proxies 'gave no answer within 180 s')."""
    paths = Paths("t")
    paths.root = str(tmp_path)
    busy = FakeProxy(paths.socket("h1"), {}, delay=3.0)
    try:
        st = proxies.status_by(paths, "h1", time.monotonic() + 20)
        assert st["host"] == "fake" and [r["op"] for r in busy.requests] == ["status"]
    finally:
        busy.close()
