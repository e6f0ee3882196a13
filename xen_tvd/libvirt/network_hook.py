"""The libvirt network hook: /etc/libvirt/hooks/network (or network.d/).

libvirtd runs it as `hook NETWORK OPERATION begin -` with the network, and for port events the
port, on stdin: <hookData><network>…</network><networkport>…</networkport></hookData>, the
port carrying its owner domain's name and UUID, its MAC and the bridge it plugs into. What
libvirt 9.0 does with it (src/network/bridge_driver.c; tests/libvirt prove each point):

  port-created   before a NIC of type='network' is attached to the network's bridge: at a
                 domain's start (after the domain hook's `prepare`), for attach-device /
                 attach-interface, and again for every existing port when libvirtd starts (the
                 exit status is ignored then). A non-zero exit fails the start or the attach,
                 with our stderr in libvirt's error.
  port-deleted   the NIC is gone (domain stopped, NIC detached); the exit status is ignored.
  anything else  (start, started, stopped, updated): exit 0 at once.

port-created asks tvd-proxy (`port-online`) for every port, TVD network or not: the proxy
admits the owner into the network's TVD and builds its vSwitch, or refuses a port outside every
TVD when the VM is in one. Any refusal, an unreachable proxy or unreadable hook data: exit 1
(fail closed). port-deleted sends `port-offline` and never fails.

A network's TVD: our metadata (<tvd:tvd name=…>, networks.py) or its name tvd-<name> (the same
rule as the domain hook's for <source network=…>); both present must agree. Standard library
and xen_tvd's light modules only: it runs for every port of every network.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from xen_tvd.desired.patterns import MAC_RE, NAME_RE, UUID_RE
from xen_tvd.libvirt import NS
from xen_tvd.libvirt.domain import MembershipError, read_xml, tvd_of_source
from xen_tvd.libvirt.hook import ask, say

MAX_XML = 1024 * 1024


@dataclass(frozen=True)
class Port:
    network: str
    tvd: str | None      # None: a network outside every TVD
    port: str            # libvirt's port UUID
    owner: str           # the domain's UUID
    owner_name: str
    mac: str | None
    bridge: str | None   # where libvirt plugs it (plug bridge=, else the network's bridge)

    def online_request(self):
        """The tvd-proxy `port-online` request (docs/proxy-protocol.md)."""
        from xen_tvd.proxy.requests import PortOnline
        return PortOnline(port=self.port, uuid=self.owner, tvd=self.tvd, name=self.owner_name,
                          mac=self.mac, network=self.network, bridge=self.bridge)

    def __str__(self) -> str:
        return (f"the NIC {self.mac or '?'} of domain {self.owner_name or self.owner} on "
                f"network {self.network}")


def network_tvd(net: ET.Element) -> str | None:
    name = (net.findtext("name") or "").strip()
    meta = net.find(f"metadata/{{{NS}}}tvd")
    meta_tvd = None
    if meta is not None:
        meta_tvd = meta.get("name") or ""
        if not NAME_RE.match(meta_tvd):
            raise MembershipError(f"network {name}: <tvd:tvd name='{meta_tvd}'> is not a TVD name")
    name_tvd = tvd_of_source("network", name)
    if meta_tvd and name_tvd and meta_tvd != name_tvd:
        raise MembershipError(f"network {name} is named for TVD '{name_tvd}' but its xen-tvd "
                              f"metadata says '{meta_tvd}'")
    return meta_tvd or name_tvd


def parse_port(xml: bytes) -> Port:
    """The port of a port-created/port-deleted hookData; MembershipError when unreadable."""
    root = read_xml(xml, "hook data", "hookData", MAX_XML)
    net, port = root.find("network"), root.find("networkport")
    if net is None or port is None:
        raise MembershipError("hook data has no <hookData><network/><networkport/></hookData>")
    name = (net.findtext("name") or "").strip()
    port_uuid = (port.findtext("uuid") or "").strip().lower()
    owner = (port.findtext("owner/uuid") or "").strip().lower()
    if not UUID_RE.match(port_uuid) or not UUID_RE.match(owner):
        raise MembershipError(f"port on network {name} has no valid port or owner UUID "
                              f"('{port_uuid}', '{owner}')")
    mac_el = port.find("mac")
    mac = (mac_el.get("address") or "").strip().lower() if mac_el is not None else None
    if mac is not None and not MAC_RE.match(mac):
        raise MembershipError(f"port {port_uuid} has a malformed MAC '{mac}'")
    plug, br = port.find("plug"), net.find("bridge")
    bridge = (plug.get("bridge") if plug is not None else None) or \
        (br.get("name") if br is not None else None)
    return Port(network=name, tvd=network_tvd(net), port=port_uuid, owner=owner,
                owner_name=(port.findtext("owner/name") or "").strip(), mac=mac, bridge=bridge)


def main(argv: list[str] | None = None, stdin=None) -> int:
    argv = sys.argv if argv is None else argv
    stdin = sys.stdin.buffer if stdin is None else stdin
    if len(argv) < 3:
        say(f"usage: {argv[0] if argv else 'libvirt-network-hook'} NETWORK OPERATION "
            f"[SUB-OP [EXTRA]] (run by libvirtd, hook data on stdin)")
        return 2
    net, op = argv[1], argv[2]
    if op not in ("port-created", "port-deleted"):
        return 0
    data = stdin.read()

    from xen_tvd.proxy.client import ProxyClient, ProxyRefused, ProxyUnreachable

    if op == "port-deleted":   # never fails: libvirt ignores it, the port is gone anyway
        try:
            port = parse_port(data)
            ProxyClient().port_offline(port.port)
        except ProxyRefused as e:
            say(f"port-deleted on {net}: tvd-proxy did not forget port {port.port}: {e.error}")
        except (MembershipError, ProxyUnreachable) as e:
            say(f"port-deleted on {net}: {e}")
        return 0

    try:
        port = parse_port(data)
    except MembershipError as e:
        say(f"refusing a port on network {net}: {e}")
        return 1
    return ask(port.online_request(), f"refusing {port}")
