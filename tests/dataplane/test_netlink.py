"""xen_tvd.dataplane.netlink.open_ipr: a socket in the namespace asked for, or a refusal."""
from __future__ import annotations

import pytest

from xen_tvd.dataplane import DataplaneError
from xen_tvd.dataplane.netlink import open_ipr


@pytest.mark.parametrize("in_process", [False, True])
def test_a_socket_acts_in_its_namespace_and_a_missing_one_is_refused(mkns, in_process):
    ns = mkns("nl")
    with open_ipr(ns, in_process=in_process) as ipr:
        ipr.link("add", ifname="nl-a", kind="veth", peer="nl-b")
        names = {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
    assert names == {"lo", "nl-a", "nl-b"}
    with open_ipr(None) as ipr:                  # this process's namespace saw nothing
        assert not ipr.link_lookup(ifname="nl-a")
    with pytest.raises(DataplaneError, match="does not exist"):
        with open_ipr(ns + "-gone", in_process=in_process):
            pass
