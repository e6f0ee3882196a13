"""Helpers for the libvirt tests (paths, small domain XML builders)."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOOK = os.path.join(REPO, "hotplug", "libvirt-hook")
EXAMPLE = os.path.join(REPO, "xl-configs", "libvirt-domain.xml")
POLICY = os.path.join(REPO, "xl-configs", "paper-figure1.yaml")
HOSTS_POLICY = os.path.join(REPO, "xl-configs", "tvd-hosts-policy.yaml")  # the example domain's
# what lv_fakeproxy asks of a VM per TVD: a toy echo of HOSTS_POLICY's M(t), no dominance
FAKE_TVDS = {"alpha": set(), "beta": set(), "gamma": {"tpm-measured-boot"}}
NS = "https://xen-tvd.org/xmlns/libvirt/1"


def domain_xml(interfaces: str = "", metadata: str = "", name: str = "vm1",
               uuid: str = "11111111-2222-4333-8444-555555555555") -> str:
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    return (f"<domain type='xen'><name>{name}</name><uuid>{uuid}</uuid>{meta}"
            f"<memory>524288</memory><os><type>linux</type></os>"
            f"<devices>{interfaces}</devices></domain>")


def membership(body: str = "", **attrs) -> str:
    a = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<tvd:membership xmlns:tvd='{NS}'{a}>{body}</tvd:membership>"


def nic(kind: str, source: str | None, mac: str) -> str:
    src = f"<source {kind}='{source}'/>" if source else ""
    return f"<interface type='{kind}'><mac address='{mac}'/>{src}</interface>"


