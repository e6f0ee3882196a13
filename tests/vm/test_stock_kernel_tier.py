"""Tier 2 from the normal suite: boot Debian's stock 6.1 kernel under qemu (TCG) and run the
VLAN transport tests there (this host kernel has no 8021q, so tier 1 skips them), the VLAN lab
with `tvdctl lab verify`, one dishonest-VM test per attack kind of port security, the
underlay filter, and the routed inter-TVD flow filter (nftables on 6.1, br_netfilter loaded)
- vmtier.DEFAULT_SELECTION.

The inner run fails a VLAN / port-security / underlay-filter / routed-flows test that skips
(a skip there proves nothing).
A missing kernel/qemu/virtme-ng fails under CI=true and skips with the exact reason elsewhere.
Takes several minutes (emulated CPU): deselect with `-m "not vmtier"` for a quick local run.
Results: junit.xml, vm.log and guest.sh in the test's tmp dir (path printed on failure).
"""
from __future__ import annotations


import pytest

from tvd_testing import vmtier

from tests.common.tiers import require_tier

pytestmark = pytest.mark.vmtier


def _prereqs():
    return require_tier("stock-kernel VM tier", vmtier.check_prerequisites, vmtier.MissingPrerequisite)


def test_dataplane_on_stock_debian_kernel(tmp_path):
    _prereqs()
    res = vmtier.run(results_dir=tmp_path / "vmtier")
    print(res.summary())
    if res.returncode != 0 or res.failures:
        pytest.fail(f"{res.summary()}\nresults: {res.results_dir}\n--- vm.log tail ---\n"
                    f"{res.log_tail(80)}", pytrace=False)
    assert res.counts.get("tests", 0) >= len(vmtier.DEFAULT_SELECTION), res.summary()
    assert res.counts.get("skipped", 0) == 0, res.summary()
