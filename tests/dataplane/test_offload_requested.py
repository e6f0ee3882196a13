"""vif tx checksum "off" must also clear *requested* features that are not active yet.

Found under real Xen 4.17 (tier 3, tvd_testing/xentier.py): vif-tvd runs while the
frontend is not connected, and xen-netback then masks tx-checksum-ipv6 (`off [requested on]`).
Turning off only the active features left it requested; when the guest's netfront connected,
netback re-enabled it and the vif had tx checksum offload again until the proxy's next full
apply. A veth cannot show a requested-but-inactive feature, so a stand-in driver does.
"""
from __future__ import annotations

from types import SimpleNamespace

from tests.dataplane.dp_helpers import FakeNicDriver, offload_ctx
from xen_tvd.dataplane import ethtool, offload

F = ethtool.Feature


class FakeNetback(FakeNicDriver):
    """tx-checksum-ipv6 is available and requested but inactive until the frontend connects."""

    def __init__(self):
        super().__init__({
            "tx-checksum-ipv4": F(available=True, active=True, fixed=False, requested=True),
            "tx-checksum-ipv6": F(available=True, active=False, fixed=False, requested=True),
            "tx-checksum-ip-generic": F(available=False, active=False, fixed=True, requested=False),
            "tx-checksum-sctp": F(available=False, active=False, fixed=True, requested=False),
        }, stay_inactive=("tx-checksum-ipv6",))

    def frontend_connects(self):
        f = self.feats["tx-checksum-ipv6"]
        self.feats["tx-checksum-ipv6"] = F(f.available, f.requested, f.fixed, f.requested)


def test_off_clears_requested_but_inactive_features(monkeypatch):
    nb = FakeNetback().install(monkeypatch)
    ctx, changes, _ = offload_ctx()
    offload.ensure_tx_csum(ctx, SimpleNamespace(name="vif1.0"), on=False)
    assert nb.calls == [{"tx-checksum-ipv4": False, "tx-checksum-ipv6": False}]
    nb.frontend_connects()
    assert not any(f.active for f in nb.feats.values()), nb.feats
    assert changes == ["set tx checksum offload off on vif1.0"]


def test_off_is_idempotent_once_nothing_is_requested(monkeypatch):
    nb = FakeNetback().install(monkeypatch)
    ctx, changes, _ = offload_ctx()
    offload.ensure_tx_csum(ctx, SimpleNamespace(name="vif1.0"), on=False)
    offload.ensure_tx_csum(ctx, SimpleNamespace(name="vif1.0"), on=False)
    assert len(nb.calls) == 1 and len(changes) == 1


def test_requested_but_inactive_counts_as_not_off():
    feats = FakeNetback().feats
    feats["tx-checksum-ipv4"] = F(True, False, False, False)
    assert not offload._tx_csum_ok(feats, on=False)
