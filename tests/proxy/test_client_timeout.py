"""The clients' wait for tvd-proxy's answer: TVD_PROXY_TIMEOUT, the variable vif-tvd reads, else
10 s. The lab's attach and tvdctl stand in for vif-tvd, so under software emulation (tiers 2
and 3 set 30 s) they must wait as long as the hotplug script would."""
from __future__ import annotations

import socket
import threading

import pytest

from xen_tvd.proxy.client import ProxyClient, ProxyUnreachable
from xen_tvd.proxy.protocol import DEFAULT_TIMEOUT, default_timeout


@pytest.mark.parametrize("env, want", [(None, DEFAULT_TIMEOUT), ("30", 30.0), ("2.5", 2.5),
                                       ("", DEFAULT_TIMEOUT), ("soon", DEFAULT_TIMEOUT),
                                       ("0", DEFAULT_TIMEOUT), ("-3", DEFAULT_TIMEOUT)])
def test_default_timeout_follows_tvd_proxy_timeout(monkeypatch, env, want):
    if env is None:
        monkeypatch.delenv("TVD_PROXY_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("TVD_PROXY_TIMEOUT", env)
    assert default_timeout() == want
    assert ProxyClient("/nonexistent.sock").timeout == want
    assert ProxyClient("/nonexistent.sock", 1.0).timeout == 1.0      # explicit wins


def test_a_silent_proxy_is_given_up_on_after_tvd_proxy_timeout(monkeypatch, tmp_path):
    path = str(tmp_path / "proxy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    held = []
    t = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
    t.start()
    monkeypatch.setenv("TVD_PROXY_TIMEOUT", "0.3")
    try:
        with pytest.raises(ProxyUnreachable, match=r"did not answer within 0\.3 s"):
            ProxyClient(path).ping()
    finally:
        t.join(5)
        for c in held:
            c.close()
        srv.close()
