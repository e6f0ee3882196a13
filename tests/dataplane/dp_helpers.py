"""Test-side helpers. They read kernel state back with pyroute2/ethtool independently of the
code under test, so a bug in the dataplane's own parsing cannot hide itself."""
from __future__ import annotations

import socket
import subprocess

from pyroute2 import IPRoute

from xen_tvd.desired.model import HostState, Segment, VifPort, VlanUplink, VxlanUplink


def ipr(ns: str) -> IPRoute:
    return IPRoute(netns=ns, flags=0)


def link(ns: str, name: str) -> dict | None:
    """Flattened view of one interface, or None if absent."""
    with ipr(ns) as i:
        idx = i.link_lookup(ifname=name)
        if not idx:
            return None
        msg = i.get_links(idx[0])[0]
        master = msg.get("IFLA_MASTER")
        master_name = i.get_links(master)[0].get("IFLA_IFNAME") if master else None
    info = msg.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    return {
        "index": msg["index"],
        "kind": info.get("IFLA_INFO_KIND") if info is not None else None,
        "alias": msg.get("IFLA_IFALIAS"),
        "master": master_name,
        "mtu": msg.get("IFLA_MTU"),
        "up": bool(msg["flags"] & 1),
        "link": msg.get("IFLA_LINK"),
        "data": {k: data.get(k) for k in _attr_names(data)} if data is not None else {},
    }


def _attr_names(nla):
    return [a[0] for a in nla["attrs"] if a[0] != "UNKNOWN"]


def names(ns: str) -> set[str]:
    with ipr(ns) as i:
        return {m.get("IFLA_IFNAME") for m in i.get_links()}


def veth(ns: str, a: str, b: str, peer_ns: str | None = None, up: bool = True) -> None:
    """veth pair a<->b in ns; b moved to peer_ns if given."""
    with ipr(ns) as i:
        peer = {"ifname": b}
        if peer_ns:
            peer["net_ns_fd"] = peer_ns
        i.link("add", ifname=a, kind="veth", peer=peer)
        if up:
            i.link("set", index=i.link_lookup(ifname=a)[0], state="up")
    if up:
        with ipr(peer_ns or ns) as i:
            i.link("set", index=i.link_lookup(ifname=b)[0], state="up")


def addr(ns: str, dev: str, ip: str, plen: int = 24) -> None:
    with ipr(ns) as i:
        idx = i.link_lookup(ifname=dev)[0]
        i.addr("add", index=idx, address=ip, prefixlen=plen)
        i.link("set", index=idx, state="up")


def set_link(ns: str, name: str, **kw) -> None:
    with ipr(ns) as i:
        i.link("set", index=i.link_lookup(ifname=name)[0], **kw)


def add_link(ns: str, **kw) -> None:
    with ipr(ns) as i:
        i.link("add", **kw)


def del_link(ns: str, name: str) -> None:
    with ipr(ns) as i:
        i.link("del", index=i.link_lookup(ifname=name)[0])


def flood_list(ns: str, dev: str) -> set[str]:
    """dst of the all-zero FDB entries of a VXLAN device (BUM destinations)."""
    with ipr(ns) as i:
        idx = i.link_lookup(ifname=dev)[0]
        return {e.get("NDA_DST") for e in i.get_neighbours(family=socket.AF_BRIDGE)
                if e["ifindex"] == idx and e.get("NDA_LLADDR") == "00:00:00:00:00:00"}


def sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


def ethtool_k(ns: str, dev: str) -> dict[str, str]:
    """`ethtool -k` as {feature: 'on'|'off'} (the independent read-back for offloads)."""
    out = sh(ns, "ethtool", "-k", dev).stdout
    feats = {}
    for line in out.splitlines()[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            feats[k.strip()] = v.split()[0] if v.split() else ""
    return feats


def ping(ns: str, ip: str, size: int | None = None, count: int = 3) -> bool:
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2"]
    if size is not None:
        cmd += ["-M", "do", "-s", str(size)]
    return sh(ns, *cmd, ip, check=False).returncode == 0


def rx_packets(ns: str, dev: str) -> int:
    with ipr(ns) as i:
        return i.get_links(i.link_lookup(ifname=dev)[0])[0].get("IFLA_STATS64")["rx_packets"]


# --- desired-state builders -------------------------------------------------------------

def vx_segment(tvd: str, vni: int, local: str, dev: str = "ul0", mtu: int = 1450, **kw) -> Segment:
    csum = kw.pop("vif_tx_csum_offload", False)
    return Segment(tvd=tvd, bridge=f"tvd-{tvd}", mtu=mtu, vif_tx_csum_offload=csum,
                   uplink=VxlanUplink(vni=vni, local_ip=local, underlay_dev=dev, **kw))


def vlan_segment(tvd: str, vid: int, phys: str = "ul0", mtu: int = 1500) -> Segment:
    return Segment(tvd=tvd, bridge=f"tvd-{tvd}", mtu=mtu, uplink=VlanUplink(vlan_id=vid, phys_dev=phys))


def state(*segments: Segment, ports: tuple[tuple[str, str], ...] = (), **kw) -> HostState:
    return HostState(host="h", segments=tuple(segments),
                     ports=tuple(VifPort(ifname=i, tvd=t) for i, t in ports), **kw)


def underlay(ns: str, ip: str = "10.0.0.1") -> None:
    """A stand-in physical NIC 'ul0' with an address (peer end left dangling in the same ns)."""
    veth(ns, "ul0", "ul0p")
    addr(ns, "ul0", ip)


def mac(ns: str, dev: str) -> str:
    with ipr(ns) as i:
        return i.get_links(i.link_lookup(ifname=dev)[0])[0].get("IFLA_ADDRESS")


class Sniffer:
    """AF_PACKET socket opened inside `ns` on `dev`: every frame the interface receives queues
    up in the socket, so "did X ever arrive" is answered by draining it — no sleeps, no timing."""

    def __init__(self, ns: str, dev: str):
        from pyroute2 import netns as pr_netns
        self.sock = pr_netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003), flags=0)
        self.sock.bind((dev, 0))
        self.sock.setblocking(False)

    def sources(self) -> list[str]:
        """Source MACs of all frames received so far (drains the queue)."""
        return [":".join(f"{b:02x}" for b in data[6:12]) for data in self.frames()]

    def frames(self) -> list[bytes]:
        """Every frame received so far, whole (drains the queue)."""
        out = []
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return out
            if addr[2] != socket.PACKET_OUTGOING:
                out.append(data)

    def close(self):
        self.sock.close()


class FakeNicDriver:
    """Stands in for a NIC driver behind SIOCETHTOOL (xen_tvd.dataplane.ethtool), for feature
    states veth cannot show. `feats`: name -> ethtool.Feature; names in `stay_inactive` become
    requested but not active when turned on (xen-netback masks some until the frontend
    connects). install() patches the ethtool module; offload_ctx() is a Ctx for offload.py."""

    def __init__(self, feats: dict, stay_inactive: tuple[str, ...] = ()):
        self.feats, self.stay_inactive, self.calls = dict(feats), stay_inactive, []

    def get(self, fd, name):
        return dict(self.feats)

    def set(self, fd, name, wanted):
        from xen_tvd.dataplane.ethtool import Feature
        self.calls.append(dict(wanted))
        for n, on in wanted.items():
            f = self.feats[n]
            if f.available:
                self.feats[n] = Feature(f.available, on and n not in self.stay_inactive, f.fixed, on)

    def install(self, monkeypatch) -> "FakeNicDriver":
        from xen_tvd.dataplane import ethtool
        monkeypatch.setattr(ethtool, "get_features", self.get)
        monkeypatch.setattr(ethtool, "set_features", self.set)
        return self


def offload_ctx():
    """(ctx, changes, warnings): the parts of dataplane.common.Ctx that offload.py uses."""
    from types import SimpleNamespace
    changes, warnings = [], []
    ctx = SimpleNamespace(ipr=SimpleNamespace(fileno=lambda: -1), where="dom0",
                          changed=changes.append, report=SimpleNamespace(warnings=warnings))
    return ctx, changes, warnings
