"""libvirt without gaps, against a real libvirtd 9.0 (lv_libvirtd) and the real tvd-proxy in
libvirtd's own network namespace (Dom0 dom0-a of xl-configs/tvd-hosts-policy.yaml):

- NICs of type='network' are admitted per port by the network hook (hooks/network.d): at the
  domain's start, and when hot-plugged with attach-device; tvd-proxy builds the TVD's vSwitch
  with the plan's MTU, which libvirt gives the tap; port-deleted forgets the port.
- libvirtd restarted with the guest running (`reconnect`): membership is checked again; a
  revoked guest is stopped, an unreachable proxy leaves it running.

The guests are qemu (TCG). libvirt's libxl driver makes the same network-port calls and the
same `reconnect` hook call (src/libxl), but needs a running Xen (tests/xen)."""
from __future__ import annotations

import json
import os
import subprocess
import uuid as uuidlib
from dataclasses import dataclass

import pytest

from xen_tvd.libvirt.network_hook import Port, parse_port
from xen_tvd.proxy import protocol

from tests.libvirt.lv_helpers import HOSTS_POLICY, NS, QEMU, idle_initramfs, qemu_domain, real_proxy
from tests.common.waiting import wait_for

pytestmark = pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64 (apt-get install "
                                "--no-install-recommends qemu-system-x86) for libvirt's qemu driver")

UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
MAC = {"alpha": "52:54:00:5a:00:01", "gamma": "52:54:00:5a:00:02", "beta": "52:54:00:5a:00:03",
       "lan": "52:54:00:5a:00:04"}
# what web-frontend claims for admission: alpha wants signed-kernel (dominated), gamma this
MEMBERSHIP = (f"<tvd:membership xmlns:tvd='{NS}'>"
              f"<tvd:property name='tpm-measured-boot' assurance='immutable-log'/></tvd:membership>")


def nic(network: str, mac: str) -> str:
    return f"<interface type='network'><mac address='{mac}'/><source network='{network}'/></interface>"


def web(*tvds: str, kernel=None) -> str:
    return qemu_domain("".join(nic(f"tvd-{t}", MAC[t]) for t in tvds), MEMBERSHIP, kernel=kernel)


@dataclass
class TvdHost:
    libvirtd: object
    conn: object
    sock: str
    proxy: object          # the tvd-proxy Popen
    proxy_log: str

    def request(self, obj: dict) -> dict:
        r = protocol.request(obj, self.sock, 15)
        assert r["ok"], r
        return r

    def status(self) -> dict:
        return self.request({"op": "status"})

    def ports(self) -> dict[str, dict]:
        """TVD -> the proxy's record of the VM's port in it."""
        return {p["tvd"]: p for p in self.status()["ports"] if p["uuid"] == UUID}

    def links(self) -> dict[str, dict]:
        out = self.libvirtd.nsexec("ip", "-j", "link", "show").stdout
        return {d["ifname"]: d for d in json.loads(out)}

    def taps_on(self, bridge: str) -> list[str]:
        return [n for n, d in self.links().items() if d.get("master") == bridge and n.startswith("vnet")]


@pytest.fixture
def host(make_libvirtd, tmp_path, capsys):
    """A Dom0 in a namespace: libvirtd (our hooks and a recorder) and tvd-proxy side by side,
    eth0 dom0-a's underlay NIC (a veth whose peer lan0 stands in for the LAN), the TVD networks defined (autostart: a
    bridge network whose bridge is gone at a libvirtd start is marked inactive, and autostart
    starts it again)."""
    from xen_tvd.cli.tvdctl import main
    d = make_libvirtd(hooks=True, record=True)
    netns = d.name_netns(f"tvdlv-{uuidlib.uuid4().hex[:6]}")
    for cmd in (("link", "add", "eth0", "type", "veth", "peer", "name", "lan0"),
                ("addr", "add", "10.77.1.11/24", "dev", "eth0"), ("link", "set", "lan0", "up"),
                ("link", "set", "eth0", "up")):
        d.nsexec("ip", *cmd)
    sock = os.path.join(d.proxy_dir, "proxy.sock")   # /run/xen-tvd/proxy.sock inside
    log = str(tmp_path / "proxy.log")
    try:
        with real_proxy(sock, str(tmp_path / "state"), netns, log, "--segment-grace", "0") as proc:
            assert main(["libvirt", "networks", HOSTS_POLICY, "--define", "--autostart", "--start",
                         "--uri", d.uri]) == 0
            capsys.readouterr()
            h = TvdHost(d, d.connect(), sock, proc, log)
            yield h
            h.conn.close()   # tests reconnect after restarting libvirtd
            conn = d.connect()
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
            conn.close()
    finally:
        d.stop_daemon()
        # tvd-proxy names its router namespace after the host's (--netns); stopping it changes
        # nothing in the network, so it is removed here
        subprocess.run(["ip", "netns", "delete", f"{netns}-rtr"], capture_output=True)


def test_network_nics_are_admitted_with_the_plans_mtu_and_forgotten(host):
    dom = host.conn.defineXML(web("alpha", "gamma"))
    dom.create()
    ports = host.ports()
    assert sorted(ports) == ["alpha", "gamma"]
    assert {t: p["mac"] for t, p in ports.items()} == {"alpha": MAC["alpha"], "gamma": MAC["gamma"]}
    # tvd-proxy built both vSwitches with the plan's MTU (VXLAN over the 1500-byte LAN: 1450)
    # and libvirt gave its taps the bridge's MTU; our metadata says the same
    links = host.links()
    for t in ("alpha", "gamma"):
        (tap,) = host.taps_on(f"tvd-{t}")
        assert links[f"tvd-{t}"]["mtu"] == links[tap]["mtu"] == 1450
        xml = host.conn.networkLookupByName(f"tvd-{t}").XMLDesc(0)
        assert 'mtu="1450"' in xml
    # the hook data libvirt sent is what the hook reads
    seen = [parse_port(data.encode()) for drv, argv, data in host.libvirtd.hook_calls()
            if drv == "network.d" and argv[1] == "port-created" and argv[0] == "tvd-alpha"]
    assert seen == [Port(network="tvd-alpha", tvd="alpha", port=ports["alpha"]["port"], owner=UUID,
                         owner_name="web-frontend", mac=MAC["alpha"], bridge="tvd-alpha")]
    dom.destroy()
    wait_for(lambda: host.status()["ports"] == [] and host.status()["segments"] == [],
             "no ports and no segments", timeout=10)
    assert UUID not in {r["uuid"] for r in host.status()["registrations"]}


def test_hot_plugged_nics_are_admitted_or_refused(host):
    import libvirt
    dom = host.conn.defineXML(web("alpha"))
    dom.create()
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.attachDeviceFlags(nic("tvd-gamma", MAC["gamma"]), live)      # alpha + gamma may share
    assert sorted(host.ports()) == ["alpha", "gamma"] and len(host.taps_on("tvd-gamma")) == 1
    with pytest.raises(libvirt.libvirtError) as e:
        dom.attachDeviceFlags(nic("tvd-beta", MAC["beta"]), live)
    msg = str(e.value)
    assert f"refusing the NIC {MAC['beta']} of domain web-frontend on network tvd-beta: admission " \
           f"denied" in msg and "together" in msg, msg
    # a network outside every TVD: a way out of alpha and gamma
    host.libvirtd.nsexec("ip", "link", "add", "br-lan", "type", "bridge")
    lan = host.conn.networkDefineXML("<network><name>lan</name><forward mode='bridge'/>"
                                     "<bridge name='br-lan'/></network>")
    lan.create()
    with pytest.raises(libvirt.libvirtError) as e:
        dom.attachDeviceFlags(nic("lan", MAC["lan"]), live)
    assert "is in TVD alpha, gamma and this network is in none" in str(e.value), str(e.value)
    assert sorted(host.ports()) == ["alpha", "gamma"]
    assert host.taps_on("tvd-beta") == [] and host.taps_on("br-lan") == []
    assert len(dom.XMLDesc(0).split("<interface ")) == 3     # alpha, gamma
    # a domain in no TVD may use that network
    plain = host.conn.defineXML(qemu_domain(nic("lan", "52:54:00:00:0f:01"), name="plain",
                                            uuid=str(uuidlib.uuid4())))
    plain.create()
    assert len(host.taps_on("br-lan")) == 1


def _kernel(tmp_path):
    from tvd_testing.vmtier import MissingPrerequisite, find_kernel
    try:
        k = find_kernel()
    except MissingPrerequisite as e:
        pytest.skip(f"a hot-unplug needs a guest kernel to acknowledge it: {e}")
    return str(k), idle_initramfs(str(tmp_path / "idle-initramfs.gz"))


def test_hot_unplugged_nic_is_forgotten(host, tmp_path):
    import libvirt
    dom = host.conn.defineXML(web("alpha", kernel=_kernel(tmp_path)))
    dom.create()
    dev = nic("tvd-gamma", MAC["gamma"])
    dom.attachDeviceFlags(dev, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert "gamma" in host.ports()

    def unplugged():   # each request waits up to 5 s for the guest; it boots for ~10 s (TCG)
        try:
            dom.detachDeviceFlags(dev, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError:
            pass       # e.g. "device not found" once a previous request went through
        return "gamma" not in host.ports()
    wait_for(unplugged, "ports unplugged", timeout=120, step=1.0, detail=lambda: str(host.status()["ports"]))
    assert sorted(host.ports()) == ["alpha"] and host.taps_on("tvd-gamma") == []


def _reconnected(dom) -> bool:
    """True once libvirtd's reconnect of `dom` is over and it still runs: reconnect holds the
    domain's job, and a memory-stats query waits for it."""
    import libvirt
    try:
        dom.memoryStats()
        return True
    except libvirt.libvirtError:
        return False


def test_reconnect_rechecks_membership_and_stops_a_revoked_guest(host):
    import libvirt
    d = host.libvirtd
    dom = host.conn.defineXML(web("alpha", "gamma"))
    dom.create()
    host.conn.close()

    d.restart()                                    # nothing changed: it keeps running
    host.conn = d.connect()
    dom = host.conn.lookupByUUIDString(UUID)
    assert _reconnected(dom) and dom.isActive()
    assert f"event=check uuid={UUID} tvds=alpha,gamma" in open(host.proxy_log).read()
    assert ["web-frontend", "reconnect", "begin", "-"] in [a for drv, a, _ in d.hook_calls()]

    host.conn.close()
    d.stop_daemon()                                # membership revoked while libvirtd is down
    gamma_port = host.ports()["gamma"]["port"]
    r = host.request({"op": "leave", "uuid": UUID, "tvd": "gamma"})
    assert r["libvirt_ports"] == [gamma_port]      # the proxy cannot detach libvirt's tap
    assert len(host.taps_on("tvd-gamma")) == 1
    d.start()
    host.conn = d.connect()
    dom = host.conn.lookupByUUIDString(UUID)
    wait_for(lambda: not dom.isActive(), "domain stopped", timeout=30)
    assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DAEMON]
    assert "stopping domain web-frontend (libvirtd reconnected): admission denied for VM " \
           "web-frontend (running, re-checked): VM web-frontend left TVD 'gamma'" in open(d.log).read()
    wait_for(lambda: host.ports() == {}, "no ports", timeout=10)
    assert host.taps_on("tvd-alpha") == [] and host.taps_on("tvd-gamma") == []


def test_reconnect_with_the_proxy_down_keeps_the_guest(host):
    d = host.libvirtd
    dom = host.conn.defineXML(web("alpha"))
    dom.create()
    host.conn.close()
    d.stop_daemon()
    host.proxy.terminate()
    host.proxy.wait(15)
    d.start()
    host.conn = d.connect()
    dom = host.conn.lookupByUUIDString(UUID)
    assert _reconnected(dom) and dom.isActive()
    assert ["web-frontend", "reconnect", "begin", "-"] in [a for drv, a, _ in d.hook_calls()]
    assert len(host.taps_on("tvd-alpha")) == 1
