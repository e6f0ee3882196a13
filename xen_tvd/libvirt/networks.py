"""One libvirt <network> per TVD vSwitch, and defining them idempotently.

    <network>
      <name>tvd-alpha</name>
      <uuid>…uuid5(NETWORK_UUID_NS, 'alpha')…</uuid>
      <metadata><tvd:tvd xmlns:tvd="https://xen-tvd.org/xmlns/libvirt/1" name="alpha"
                         vlan="100" vni="10100" mtu="1450"/></metadata>
      <forward mode="bridge"/>
      <bridge name="tvd-alpha"/>          (desired.names.bridge_name: the vSwitch tvd-proxy owns)
    </network>

The bridge belongs to tvd-proxy (it creates it, with its uplink, when the first vif or libvirt
port of the TVD arrives), so libvirt only points guests at it.

MTU: libvirt refuses <mtu size=…> on a <forward mode='bridge'/> network ("mtu size only allowed
in open, route, nat, and isolated mode"; libvirt 9.0 and later alike), so the plan's MTU (the
VM-facing MTU the planner gives the TVD's segment, planned like tvd-proxy plans it: with every
host that may carry the TVD) travels in our metadata, for people and tools to read. What makes
it real is the bridge: tvd-proxy sets the vSwitch to that MTU and libvirt gives each tap the
bridge's MTU (libxl's vif-bridge does the same for vifs). No <port isolated>: guests of one TVD talk freely
(paper: the diagonal of the flow matrix is 1). The UUID is derived from the TVD name so every
host defines the same network and a redefinition never collides with the stored UUID.
"""
from __future__ import annotations

import uuid as _uuid
from dataclasses import dataclass

from lxml import etree

from xen_tvd.desired.names import bridge_name
from xen_tvd.libvirt import NETWORK_PREFIX, NS, NS_PREFIX
from xen_tvd.planner import PlanError, plan
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import Policy, Tvd

NETWORK_UUID_NS = _uuid.uuid5(_uuid.NAMESPACE_URL, NS + "#network")


class DefineError(Exception):
    """A network could not be defined; the message says which and why."""


def network_name(tvd: str) -> str:
    return NETWORK_PREFIX + tvd


def network_uuid(tvd: str) -> str:
    return str(_uuid.uuid5(NETWORK_UUID_NS, tvd))


def segment_mtu(policy: Policy, tvd: str) -> int | None:
    """The MTU tvd-proxy gives TVD `tvd`'s vSwitch: the planner's segment MTU with every host
    that may carry the TVD as a carrier (as the proxy plans it). None when no host may."""
    carriers = {h: {tvd} for h, host in policy.hosts.items()
                if admit(policy, [tvd], dict(host.properties)).admitted}
    if not carriers:
        return None
    try:
        states = plan(policy, {}, carriers)
    except PlanError as e:
        raise DefineError(f"{network_name(tvd)}: the planner cannot place TVD '{tvd}': {e}") from None
    return min((s.mtu for st in states.values() for s in st.segments if s.tvd == tvd), default=None)


def network_element(tvd: Tvd, uuid: str | None = None, mtu: int | None = None) -> etree._Element:
    net = etree.Element("network")
    etree.SubElement(net, "name").text = network_name(tvd.name)
    etree.SubElement(net, "uuid").text = uuid or network_uuid(tvd.name)
    meta = etree.SubElement(net, "metadata")
    attrs = {"name": tvd.name, "vlan": str(tvd.vlan), "vni": str(tvd.vni)}
    if mtu is not None:   # none: no host may carry the TVD, so it has no segment anywhere
        attrs["mtu"] = str(mtu)
    etree.SubElement(meta, f"{{{NS}}}tvd", nsmap={NS_PREFIX: NS}, **attrs)
    etree.SubElement(net, "forward", mode="bridge")
    etree.SubElement(net, "bridge", name=bridge_name(tvd.name))
    return net


def to_string(el: etree._Element) -> str:
    return etree.tostring(el, pretty_print=True, encoding="unicode")


def networks(policy: Policy) -> dict[str, str]:
    """network name -> XML, one per TVD, sorted by name. DefineError when a TVD cannot be planned."""
    return {network_name(t): to_string(network_element(policy.tvds[t], mtu=segment_mtu(policy, t)))
            for t in sorted(policy.tvds)}


def owned_parts(xml: str | bytes) -> dict:
    """What xen-tvd owns in a <network>, normalised for comparison: everything except the UUID
    and other applications' metadata. Any element we do not write (an <ip>, <vlan>, <port>…)
    shows up here too, so a hand-edited network counts as changed and is redefined."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml,
                            etree.XMLParser(remove_blank_text=True))
    ours = None
    rest = []
    for el in root:
        if el.tag == "uuid":
            continue
        if el.tag == "metadata":
            mine = [m for m in el if m.tag == f"{{{NS}}}tvd"]
            ours = dict(mine[0].attrib) if mine else None
            continue
        rest.append(_canon(el))
    return {"tvd": ours, "elements": sorted(rest)}


def _canon(el) -> str:
    attrs = " ".join(f'{k}="{v}"' for k, v in sorted(el.attrib.items()))
    kids = "".join(_canon(c) for c in el if isinstance(c.tag, str))
    text = (el.text or "").strip()
    return f"<{el.tag} {attrs}>{text}{kids}</{el.tag}>"


@dataclass
class Result:
    name: str
    action: str      # defined | redefined | unchanged
    note: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.action}" + (f" ({self.note})" if self.note else "")


def define(conn, policy: Policy, autostart: bool = False, start: bool = False) -> list[Result]:
    """Define every TVD network on `conn` (a libvirt.virConnect): new ones defined, changed
    ones redefined, identical ones left alone. A same-named network that is not ours (no
    xen-tvd metadata) is refused rather than taken over."""
    import libvirt

    results = []
    for tname in sorted(policy.tvds):
        tvd = policy.tvds[tname]
        name = network_name(tname)
        mtu = segment_mtu(policy, tname)
        try:
            existing = conn.networkLookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise DefineError(f"{name}: {e}") from None
            existing = None
        uuid = None
        action = "defined"
        if existing is not None:
            cur = existing.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
            have = owned_parts(cur)
            if have["tvd"] is None:
                raise DefineError(f"{name}: a network of that name exists and was not made by "
                                  f"xen-tvd (no {NS} metadata); rename or undefine it")
            uuid = existing.UUIDString()
            xml = to_string(network_element(tvd, uuid, mtu))
            action = "unchanged" if owned_parts(xml) == have else "redefined"
        else:
            xml = to_string(network_element(tvd, mtu=mtu))
        net = existing
        if action != "unchanged":
            try:
                net = conn.networkDefineXML(xml)
            except libvirt.libvirtError as e:
                raise DefineError(f"{name}: libvirt refused the definition: {e}") from None
        note = []
        try:
            if action == "redefined" and net.isActive():
                note.append("active: the new definition applies when the network restarts")
            if autostart and not net.autostart():
                net.setAutostart(1)
                note.append("autostart on")
            if start and not net.isActive():
                net.create()
                note.append("started")
        except libvirt.libvirtError as e:
            raise DefineError(f"{name}: {e}") from None
        results.append(Result(name, action, ", ".join(note)))
    return results
