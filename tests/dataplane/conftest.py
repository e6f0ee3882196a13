"""Tier-1 fixtures: real kernel objects inside throwaway network namespaces.

Every namespace is named tvdt-<random>-<tag> and removed in teardown even when the test fails;
the session ends with a check that none are left behind. Nothing touches the host namespace.
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from pyroute2 import IPRoute, netns

from pyroute2.netlink.exceptions import NetlinkError

NS_PREFIX = "tvdt-"
# Several pytest runs may share this machine (other engineers, CI): each session only ever
# checks and cleans the namespaces carrying its own id.
SESSION_PREFIX = f"{NS_PREFIX}{uuid.uuid4().hex[:4]}"
SKIP_8021Q = "needs 8021q (host kernel lacks it); runs in the stock-kernel VM tier"


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces():
    if os.geteuid() != 0:
        pytest.skip("dataplane tests need root (network namespaces)")
    yield
    left = [n for n in netns.listnetns() if n.startswith(SESSION_PREFIX)]
    for n in left:
        netns.remove(n)
    assert not left, f"tests leaked namespaces: {left}"


@pytest.fixture
def mkns():
    """Factory: mkns("hostA") -> name of a fresh namespace with lo up."""
    run = uuid.uuid4().hex[:4]
    made: list[str] = []

    def make(tag: str = "ns") -> str:
        name = f"{SESSION_PREFIX}{run}-{tag}"[:40]
        netns.create(name)
        made.append(name)
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        # No IPv6: its autoconf/MLD chatter would make "this VM received nothing" unprovable.
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        return name

    yield make
    errors = []
    for name in reversed(made):
        try:
            netns.remove(name)
        except OSError as e:  # keep removing the others
            errors.append(f"{name}: {e}")
    assert not errors, errors


@pytest.fixture
def ns(mkns):
    return mkns("h")


_vlan_support: list[bool] = []


def kernel_has_8021q() -> bool:
    """Probe by creating a VLAN device in a throwaway namespace (no guessing from /proc)."""
    if not _vlan_support:
        name = f"{SESSION_PREFIX}-probe"
        netns.create(name)
        try:
            with IPRoute(netns=name, flags=0) as ipr:
                ipr.link("add", ifname="p0", kind="veth", peer="p1")
                try:
                    ipr.link("add", ifname="p0.5", kind="vlan", link=ipr.link_lookup(ifname="p0")[0], vlan_id=5)
                    _vlan_support.append(True)
                except NetlinkError:
                    _vlan_support.append(False)
        finally:
            netns.remove(name)
    return _vlan_support[0]


@pytest.fixture
def needs_8021q():
    if not kernel_has_8021q():
        pytest.skip(SKIP_8021Q)
