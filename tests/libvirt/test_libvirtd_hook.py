"""The hook as libvirtd itself runs it: a real libvirtd (lv_libvirtd) with our hook installed
in qemu.d/, starting a real qemu guest (TCG, no KVM needed) whose NICs are in TVDs alpha and
gamma, with lv_fakeproxy.FakeProxy standing in for tvd-proxy at /run/xen-tvd/proxy.sock.

libvirt's libxl driver (the Xen one) needs a running Xen and cannot start here; it calls the
same hook with the same arguments (/etc/libvirt/hooks/libxl.d/), which the nested-Xen tier
exercises. The qemu driver proves the contract: argv, XML on stdin, a failing hook fails the
start with our stderr in the error, stopped/release on destroy."""
from __future__ import annotations

import os

import pytest
from lxml import etree

from tests.libvirt.lv_fakeproxy import FakeProxy
from tests.libvirt.lv_helpers import EXAMPLE, FAKE_TVDS, HOSTS_POLICY, QEMU, qemu_domain
from tests.common.waiting import wait_for

UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
pytestmark = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (apt-get install "
                                "--no-install-recommends qemu-system-x86) for libvirt's qemu driver")


def example_guest(drop_property: str | None = None) -> str:
    """The example domain's name, UUID, metadata and NICs, as a tiny TCG guest (no disk)."""
    ex = etree.parse(EXAMPLE).getroot()
    meta = ex.find("metadata")
    if drop_property:
        for p in meta.iter("{*}property"):
            if p.get("name") == drop_property:
                p.getparent().remove(p)
    macs = [m.get("address") for m in ex.iter("mac")]
    return qemu_domain(
        f"<interface type='bridge'><mac address='{macs[0]}'/><source bridge='tvd-alpha'/></interface>"
        f"<interface type='network'><mac address='{macs[1]}'/><source network='tvd-gamma'/></interface>",
        "".join(etree.tostring(m, encoding="unicode") for m in meta),
        name=ex.findtext("name"), uuid=ex.findtext("uuid"))


@pytest.fixture
def host(make_libvirtd, capsys):
    from xen_tvd.cli.tvdctl import main
    d = make_libvirtd(hooks=True)
    for br in ("tvd-alpha", "tvd-gamma"):       # tvd-proxy's vSwitches, in libvirtd's netns
        d.nsexec("ip", "link", "add", "name", br, "type", "bridge")
        d.nsexec("ip", "link", "set", br, "up")
    assert main(["libvirt", "networks", HOSTS_POLICY, "--define", "--start", "--uri", d.uri]) == 0
    capsys.readouterr()
    proxy = FakeProxy(os.path.join(d.proxy_dir, "proxy.sock"),
                      FAKE_TVDS)
    conn = d.connect()
    yield d, conn, proxy
    for dom in conn.listAllDomains():
        if dom.isActive():
            dom.destroy()
    conn.close()
    proxy.close()


def test_admitted_guest_starts_and_is_unregistered_on_destroy(host):
    d, conn, proxy = host
    dom = conn.defineXML(example_guest())
    dom.create()
    assert dom.isActive()
    regs = [r for r in proxy.requests if r["op"] == "register"]
    assert regs and all(r["uuid"] == UUID for r in regs)
    assert regs[0]["nics"] == [{"devid": 0, "tvd": "alpha"}, {"devid": 1, "tvd": "gamma"}]
    assert regs[0]["properties"] == {"tpm-measured-boot": "immutable-log"}
    # the guest's taps landed on the TVD vSwitches
    links = d.nsexec("ip", "-o", "link", "show").stdout
    assert "master tvd-alpha" in links and "master tvd-gamma" in links
    dom.destroy()
    wait_for(lambda: any(r["op"] == "unregister" for r in proxy.requests), "unregister request", timeout=10)
    assert UUID not in proxy.registrations


def test_denied_guest_does_not_start(host):
    import libvirt
    d, conn, proxy = host
    dom = conn.defineXML(example_guest(drop_property="tpm-measured-boot"))
    with pytest.raises(libvirt.libvirtError) as e:
        dom.create()
    msg = str(e.value)
    assert "refusing to prepare domain web-frontend: admission denied" in msg, msg
    assert not dom.isActive()
    assert "tap" not in d.nsexec("ip", "-o", "link", "show").stdout


def test_guest_does_not_start_without_the_proxy(host):
    import libvirt
    d, conn, proxy = host
    proxy.close()
    dom = conn.defineXML(example_guest())
    with pytest.raises(libvirt.libvirtError) as e:
        dom.create()
    assert "tvd-proxy is not running" in str(e.value)
    assert not dom.isActive()
