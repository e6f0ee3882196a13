"""Standalone admission's routed-component rule (proxy/admission.check_routed), pure."""
from __future__ import annotations

import os

import pytest

from xen_tvd.policy import load_policy
from xen_tvd.proxy.admission import Denied, check_routed

from tests.common.paths import REPO

GATEWAY_POLICY = os.path.join(REPO, "xl-configs", "lab-gateway-policy.yaml")


def test_an_external_in_the_routed_component_is_no_tvd_to_carry():
    """app and web reach the external corp: corp has no segment, so it cannot make h1 refuse
    them (whether a host has a NIC on corp is the planner's check)."""
    policy = load_policy(GATEWAY_POLICY)
    for tvd in ("app", "web"):
        check_routed(policy, "h1", tvd)


def test_a_tvd_routed_with_one_the_host_may_not_carry_is_still_refused(tmp_path):
    """Without corp-access, h1 may carry neither app nor web: app's leg would pull web's
    segment onto h1, so app is refused there too."""
    text = open(GATEWAY_POLICY).read()
    assert "    properties: {corp-access: trust}\n" in text
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("    properties: {corp-access: trust}\n", ""))
    with pytest.raises(Denied, match="routed together with 'web'"):
        check_routed(load_policy(str(path)), "h1", "app")
