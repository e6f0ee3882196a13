"""A libvirt domain's TVD membership, read from its XML (standard library only, no libvirt).

Per interface, first match wins (docs/libvirt.md):
  1. our metadata: <tvd:membership><tvd:nic mac='…' tvd='alpha'/></tvd:membership>
  2. the network it uses, <source network='tvd-alpha'/>, or the bridge, <source bridge='tvd-alpha'/>
     (or the migration-safe xl form <source bridge='tvd:alpha'/>)
  3. the domain-wide <tvd:membership tvd='alpha'/>
An interface in a TVD network/bridge that metadata puts in another TVD is a contradiction and
refused. So is an interface in no TVD when the domain is in one (it would be a path out of the
TVD that no policy governs; paper 4.5, the dummy TVD is closed) — fail closed.
Properties for admission come from <tvd:property name='…' assurance='…'/> in the same element;
<tvd:membership tx-checksum-offload='off'> turns vif tx checksum offload off on the domain's
vifs that vif-tvd plugs (as xl.cfg tvd_tx_checksum_offload = 0).

devid: libvirt's libxl driver numbers vifs in document order, skipping type='hostdev'
interfaces (passed-through PCI functions, no vif); we number the same way.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from xen_tvd.desired.names import BACKEND_BRIDGE_PREFIX
from xen_tvd.desired.patterns import MAC_RE, NAME_RE, UUID_RE
from xen_tvd.libvirt import NETWORK_PREFIX, NS

ASSURANCE_KINDS = ("trust", "mutable-log", "immutable-log", "evaluation", "introspection",
                   "policy", "audit")              # xen_tvd.policy.model (not imported: fast start)
MEMBERSHIP = f"{{{NS}}}membership"
NIC = f"{{{NS}}}nic"
PROPERTY = f"{{{NS}}}property"
CSUM_ATTR = "tx-checksum-offload"
MAX_XML = 4 * 1024 * 1024


class MembershipError(ValueError):
    """The domain XML states a membership we cannot honour; the message is one line."""


@dataclass(frozen=True)
class Nic:
    devid: int | None       # None: type='hostdev' (no vif)
    mac: str | None
    type: str               # interface type: network, bridge, ethernet, hostdev, …
    source: str | None      # network or bridge name it attaches to
    tvd: str | None
    why: str                # where the TVD came from: metadata, network, bridge, domain, none


@dataclass(frozen=True)
class Membership:
    uuid: str
    name: str
    nics: tuple[Nic, ...]
    domain_tvd: str | None = None
    properties: dict[str, str | None] = field(default_factory=dict, hash=False)
    tx_checksum_offload: bool = True      # 'off': the VM's opt-out (docs/libvirt.md)

    @property
    def tvds(self) -> list[str]:
        out = {n.tvd for n in self.nics if n.tvd}
        if self.domain_tvd:
            out.add(self.domain_tvd)
        return sorted(out)

    @property
    def is_member(self) -> bool:
        return bool(self.tvds)

    def register(self):
        """The tvd-proxy `register` request (docs/proxy-protocol.md)."""
        from xen_tvd.proxy.requests import Nic, Register
        return Register(uuid=self.uuid, name=self.name,
                        nics=tuple(Nic(tvd=n.tvd, devid=n.devid) for n in self.nics
                                   if n.tvd and n.devid is not None),
                        properties=dict(sorted(self.properties.items())),
                        tx_checksum_offload=self.tx_checksum_offload)

    def register_request(self) -> dict:
        """register() as it goes on the wire (`tvdctl libvirt membership --json`)."""
        from xen_tvd.proxy.protocol import VERSION
        return {"v": VERSION, **self.register().to_wire()}


def _tvd_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise MembershipError(f"{what}: '{value}' is not a TVD name (1-32 of a-z 0-9 _ -, "
                              f"starting with a letter)")
    return value


def _mac(value: str | None, what: str) -> str:
    mac = (value or "").strip().lower()
    if not MAC_RE.match(mac):
        raise MembershipError(f"{what}: '{value}' is not a MAC address like 00:16:3e:12:34:56")
    return mac


def tvd_of_source(kind: str, name: str | None) -> str | None:
    """TVD named by a network/bridge an interface uses, or None for any other name."""
    if not name:
        return None
    if kind == "bridge" and name.startswith(BACKEND_BRIDGE_PREFIX):
        return _tvd_name(name[len(BACKEND_BRIDGE_PREFIX):], f"<source bridge='{name}'/>")
    if name.startswith(NETWORK_PREFIX):
        rest = name[len(NETWORK_PREFIX):]
        if re.fullmatch(r"[0-9a-f]{11}", rest):
            raise MembershipError(f"<source {kind}='{name}'/> is the hashed vSwitch of a long TVD "
                                  f"name; name the TVD with network tvd-<name> or <tvd:nic> instead")
        if NAME_RE.match(rest):
            return rest
        raise MembershipError(f"<source {kind}='{name}'/> looks like a TVD {kind} but '{rest}' "
                              f"is not a TVD name")
    return None


def _metadata(root: ET.Element):
    meta = root.find("metadata")
    if meta is None:
        return None
    ours = [e for e in meta if isinstance(e.tag, str) and e.tag.startswith(f"{{{NS}}}")]
    if not ours:
        return None
    if len(ours) > 1 or ours[0].tag != MEMBERSHIP:
        tags = ", ".join(e.tag.split("}", 1)[1] for e in ours)
        raise MembershipError(f"<metadata> holds {tags} in the xen-tvd namespace {NS}; "
                              f"exactly one <tvd:membership> element is allowed")
    return ours[0]


def read_xml(xml: str | bytes, what: str, root_tag: str, limit: int = MAX_XML) -> ET.Element:
    """The root of a document libvirt handed a hook; MembershipError when it is too large, not
    well-formed or not a <root_tag>."""
    if len(xml) > limit:
        raise MembershipError(f"{what} larger than {limit} bytes")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise MembershipError(f"{what} is not well-formed: {e}") from None
    if root.tag != root_tag:
        raise MembershipError(f"expected a <{root_tag}> document, got <{root.tag}>")
    return root


def parse_domain(xml: str | bytes) -> Membership:
    """Membership of the domain described by `xml`; MembershipError when it is contradictory."""
    root = read_xml(xml, "domain XML", "domain")
    name = (root.findtext("name") or "").strip()
    uuid = (root.findtext("uuid") or "").strip().lower()
    if not UUID_RE.match(uuid):
        raise MembershipError(f"domain '{name or '?'}' has no valid <uuid> ({uuid or 'missing'})")

    domain_tvd = None
    by_mac: dict[str, str] = {}
    props: dict[str, str | None] = {}
    csum = "on"
    m = _metadata(root)
    if m is not None:
        if m.get("tvd") is not None:
            domain_tvd = _tvd_name(m.get("tvd"), "<tvd:membership tvd=…>")
        csum = m.get(CSUM_ATTR, "on")
        if csum not in ("on", "off"):
            raise MembershipError(f"<tvd:membership {CSUM_ATTR}='{csum}'> must be 'off' (this "
                                  f"VM's vifs) or 'on' (as its TVDs say, the default)")
        unknown = set(m.attrib) - {"tvd", CSUM_ATTR}
        if unknown:
            raise MembershipError(f"<tvd:membership> has unknown attribute(s) {', '.join(sorted(unknown))}")
        for e in m:
            if not isinstance(e.tag, str):
                continue
            if e.tag == NIC:
                mac = _mac(e.get("mac"), "<tvd:nic mac=…>")
                tvd = _tvd_name(e.get("tvd") or "", f"<tvd:nic mac='{mac}' tvd=…>")
                if by_mac.get(mac, tvd) != tvd:
                    raise MembershipError(f"<tvd:nic mac='{mac}'> is listed in two TVDs "
                                          f"({by_mac[mac]}, {tvd})")
                by_mac[mac] = tvd
            elif e.tag == PROPERTY:
                pname = (e.get("name") or "").strip()
                if not pname:
                    raise MembershipError("<tvd:property> needs a name='…'")
                kind = e.get("assurance")
                if kind is not None and kind not in ASSURANCE_KINDS:
                    raise MembershipError(f"<tvd:property name='{pname}'>: unknown assurance "
                                          f"'{kind}' (one of: {', '.join(ASSURANCE_KINDS)})")
                props[pname] = kind
            else:
                raise MembershipError(f"<tvd:membership> has an unknown child <{e.tag.split('}', 1)[-1]}> "
                                      f"(allowed: tvd:nic, tvd:property)")

    nics: list[Nic] = []
    devid = 0
    seen_macs: set[str] = set()
    devices = root.find("devices")
    for itf in (devices.findall("interface") if devices is not None else []):
        kind = itf.get("type", "")
        mac_el = itf.find("mac")
        mac = _mac(mac_el.get("address"), "<interface><mac address=…>") if mac_el is not None else None
        if mac:
            seen_macs.add(mac)
        src = itf.find("source")
        source = None
        if src is not None and kind == "bridge" and src.get("network"):
            # a running domain's live XML: a type='network' NIC shows as type='bridge' with
            # <source network='…' portid='…' bridge='…'/>; the network names the TVD (its
            # bridge may be the hashed vSwitch of a long TVD name)
            kind = "network"
        if src is not None and kind in ("network", "bridge"):
            source = src.get(kind)
        where = f"interface {mac or '#' + str(len(nics))}"
        src_tvd = tvd_of_source(kind, source) if kind in ("network", "bridge") else None
        meta_tvd = by_mac.get(mac) if mac else None
        if meta_tvd and src_tvd and meta_tvd != src_tvd:
            raise MembershipError(f"{where}: metadata puts it in TVD '{meta_tvd}' but it uses "
                                  f"{kind} '{source}' of TVD '{src_tvd}'")
        if meta_tvd:
            tvd, why = meta_tvd, "metadata"
        elif src_tvd:
            tvd, why = src_tvd, kind
        elif domain_tvd:
            tvd, why = domain_tvd, "domain"
        else:
            tvd, why = None, "none"
        nid = None if kind == "hostdev" else devid
        if nid is not None:
            devid += 1
        nics.append(Nic(nid, mac, kind, source, tvd, why))

    stray = sorted(set(by_mac) - seen_macs)
    if stray:
        raise MembershipError(f"<tvd:nic mac='{stray[0]}'> matches no <interface> of domain "
                              f"'{name}' (a typo would leave that NIC outside its TVD)")
    memb = Membership(uuid, name, tuple(nics), domain_tvd, props, csum == "on")
    if memb.is_member:
        for n in nics:
            if n.devid is None:
                raise MembershipError(
                    f"domain '{name}' is in TVD {', '.join(memb.tvds)} but has a passed-through "
                    f"PCI NIC (interface type='hostdev' {n.mac or ''}) that no vSwitch can "
                    f"confine: remove it")
            if n.tvd is None:
                raise MembershipError(
                    f"domain '{name}' is in TVD {', '.join(memb.tvds)} but its {n.type} "
                    f"interface {n.mac or '#' + str(n.devid)} ({n.source or 'no source'}) is in "
                    f"no TVD: put it in one (<tvd:nic mac=… tvd=…/> or a tvd-<name> network) "
                    f"or remove it")
    return memb
