"""Policy file (YAML, version 1) -> Policy, with every schema and reference problem reported.

Structural checks live here because they need the YAML nodes for positions: types, ranges,
unknown keys, unknown names, duplicates. Whole-policy semantics (cycles, indirect flows,
membership conflicts) live in xen_tvd.policy.verify and work on the Policy alone.
"""
from __future__ import annotations

import ipaddress
import re

import yaml

from xen_tvd.desired.patterns import IFNAME_RE, is_wireguard_key
from xen_tvd.desired.wireguard import key_tag
from xen_tvd.diagnostics import Collector
from xen_tvd.policy.model import (ASSURANCE_KINDS, DUMMY_TVD, FUNCTIONAL_CAPABILITIES,
                                  PROTECTION_GOALS, External, Flow, FlowKind, Host,
                                  HostExternal, HostNic,
                                  MembershipRequirement, Network, Policy, Property, Rule, Tvd)
from xen_tvd.yamlschema import Reader

# a vif's broadcast/multicast frames per second (flood-limit); 0 = no limit
MAX_FLOOD_LIMIT = 1_000_000
PORT_RANGE_RE = re.compile(r"^(\d{1,5})-(\d{1,5})$")
PROTOS = ("tcp", "udp", "icmp", "icmpv6", "any")
VNI_FROM_VLAN = 10000  # default vni = 10000 + vlan, so vlan 100 <-> vni 10100

TOP_KEYS = {"version": True, "properties": False, "tvds": True, "flows": False, "dummy": False,
            "shared-membership": False, "networks": False, "hosts": False, "externals": False}
PROPERTY_KEYS = {"dominates": False, "excludes": False, "description": False}
TVD_KEYS = {"vlan": True, "vni": False, "protection": False, "membership": False,
            "multicast-group": False, "tx-checksum-offload": False, "session-seconds": False,
            "subnets": False, "gateway": False, "allow-dhcp-server": False, "flood-limit": False,
            "allow-router-advertisements": False, "description": False}
FLOW_KEYS = {"from": True, "to": True, "policy": True, "allow": False, "sender": False,
             "receiver": False, "replies": False, "description": False}
NETWORK_KEYS = {"subnet": True, "vlan-capable": False, "multicast": False, "trusted-for": False,
                "mtu": False, "max-mtu": False, "require-encryption": False, "description": False}
HOST_KEYS = {"address": True, "capabilities": True, "properties": False, "nics": False,
             "externals": False, "wireguard-key": False, "wireguard-next-key": False,
             "description": False}
EXTERNAL_KEYS = {"subnets": True, "description": False}
HOST_EXTERNAL_KEYS = {"external": True, "nic": True, "address": True, "gateway": False}


def default_multicast_group(vni: int) -> str:
    """239.0.0.0/8 is organisation-local scope; derive a distinct group per VNI."""
    return f"239.{(vni >> 16) & 255}.{(vni >> 8) & 255}.{vni & 255}"


class PolicyReader(Reader):
    def __init__(self, file: str, diags: Collector) -> None:
        super().__init__(file, diags)
        self.refs: list[tuple[str, str, yaml.Node, str]] = []  # (kind, name, node, context)
        self._addr_nodes: list = []     # (host, address, node) for the uniqueness check
        self._nic_nodes: list = []      # (host, HostNic, node)

    def ref(self, kind: str, name: str | None, node, context: str) -> None:
        if name is not None:
            self.refs.append((kind, name, node, context))

    # ---------------------------------------------------------------------------------------
    def policy(self, root) -> Policy | None:
        top = self.mapping(root, "the policy file", TOP_KEYS)
        if top is None:
            return None
        if "version" in top:
            v = top["version"][1]
            if self.integer(v, "version", 1, 1_000_000) not in (None, 1):
                self.err(v, "unsupported policy version (this xen-tvd reads version: 1)")
        props = self.properties(top["properties"][1]) if "properties" in top else {}
        tvds = self.tvds(top["tvds"][1]) if "tvds" in top else {}
        flows = tuple(self.flows(top["flows"][1])) if "flows" in top else ()
        dummy_kind, dummy_vlans = (self.dummy(top["dummy"][1]) if "dummy" in top
                                   else (FlowKind.CLOSED, ()))
        shared = (tuple(self.shared(top["shared-membership"][1]))
                  if "shared-membership" in top else ())
        networks = self.networks(top["networks"][1]) if "networks" in top else {}
        externals = self.externals(top["externals"][1], tvds) if "externals" in top else {}
        self._externals = externals
        hosts = self.hosts(top["hosts"][1]) if "hosts" in top else {}
        self.check_refs(props, tvds, networks, externals)
        self.check_unique(tvds, dummy_vlans, hosts, networks)
        return Policy(1, props, tvds, flows, dummy_kind, dummy_vlans, shared, networks, hosts,
                      self.file, externals)

    def properties(self, node) -> dict[str, Property]:
        out = {}
        for name, kn, vn in self.items(node, "properties"):
            if self.name(kn, "property name") is None:
                continue
            if isinstance(vn, yaml.ScalarNode) and vn.value in ("", "~", "null") \
                    and vn.tag.endswith(":null"):
                out[name] = Property(name, pos=self.pos(kn))
                continue
            body = self.mapping(vn, f"property '{name}'", PROPERTY_KEYS) or {}
            dom = exc = ()
            if "dominates" in body:
                dom = tuple(self._names(body["dominates"][1], f"dominates of '{name}'",
                                        "property", f"property '{name}' dominates"))
            if "excludes" in body:
                exc = tuple(self._names(body["excludes"][1], f"excludes of '{name}'",
                                        "property", f"property '{name}' excludes"))
            if "description" in body:
                self.string(body["description"][1], "description")
            out[name] = Property(name, dom, exc, self.pos(kn))
        return out

    def _names(self, node, what: str, kind: str, context: str) -> list[str]:
        out = []
        for v, item in self.string_list(node, what):
            out.append(v)
            self.ref(kind, v, item, context)
        return out

    def tvds(self, node) -> dict[str, Tvd]:
        out = {}
        for name, kn, vn in self.items(node, "tvds"):
            if self.name(kn, "TVD name") is None:
                continue
            if name == DUMMY_TVD:
                self.err(kn, f"'{DUMMY_TVD}' is reserved for the dummy TVD; configure it under "
                             "the top-level 'dummy' key")
                continue
            body = self.mapping(vn, f"TVD '{name}'", TVD_KEYS)
            if body is None:
                continue
            vlan = self.integer(body["vlan"][1], f"vlan of TVD '{name}'", 1, 4094) \
                if "vlan" in body else None
            vni = (self.integer(body["vni"][1], f"vni of TVD '{name}'", 1, 16_777_215)
                   if "vni" in body else (VNI_FROM_VLAN + vlan if vlan else None))
            protection = frozenset({"isolation"})
            if "protection" in body:
                protection = frozenset(v for v, _ in self.string_list(
                    body["protection"][1], f"protection of TVD '{name}'",
                    lambda n, w: self.choice(n, w, PROTECTION_GOALS)))
            membership = tuple(self.requirements(body["membership"][1], name)) \
                if "membership" in body else ()
            group = default_multicast_group(vni) if vni else ""
            if "multicast-group" in body:
                group = self.multicast(body["multicast-group"][1], name) or group
            csum = True   # as vif-bridge (docs/policy.md, tx-checksum-offload: what is verified and what not)
            if "tx-checksum-offload" in body:
                csum = bool(self.boolean(body["tx-checksum-offload"][1],
                                         f"tx-checksum-offload of TVD '{name}'"))
            session = None
            if "session-seconds" in body:
                session = self.integer(body["session-seconds"][1],
                                       f"session-seconds of TVD '{name}'", 1, 31_536_000)
            subnets, gateways = self.routing(body, name)
            knobs = {}
            for key, attr in (("allow-dhcp-server", "allow_dhcp_server"),
                              ("allow-router-advertisements", "allow_router_advertisements")):
                if key in body:
                    knobs[attr] = bool(self.boolean(body[key][1], f"{key} of TVD '{name}'"))
            if "flood-limit" in body:
                limit = self.integer(body["flood-limit"][1], f"flood-limit of TVD '{name}'", 0,
                                     MAX_FLOOD_LIMIT)
                if limit is not None:
                    knobs["flood_limit"] = limit
            if "description" in body:
                self.string(body["description"][1], "description")
            # keep a TVD with a bad id (already reported) so references to it stay valid
            out[name] = Tvd(name, vlan or 0, vni or 0, protection, membership, group, csum, session,
                            self.pos(kn), subnets, gateways, **knobs)
        return out

    def subnets(self, body, owner: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """`subnets` of a TVD or an external (`owner`: "TVD 'x'" / "external 'x'"); each one
        is remembered for the disjointness check across all of them."""
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in (self.sequence(body["subnets"][1], f"subnets of {owner}") or []
                     if "subnets" in body else []):
            v = self.string(item, f"subnet of {owner}")
            if v is None:
                continue
            try:
                net = ipaddress.ip_network(v, strict=True)
            except ValueError as e:
                hint = ("; write the network address, e.g. "
                        f"{ipaddress.ip_network(v, strict=False)}") if "host bits" in str(e) else ""
                self.err(item, f"subnet '{v}' of {owner} is not an IP network like "
                               f"10.1.0.0/24 or fd00:1::/64 ({e}){hint}")
                continue
            if net.num_addresses < 4:
                self.err(item, f"subnet {net} of {owner} is too small: it needs room for a "
                               "gateway and VMs (IPv4 /30 or larger, IPv6 /126 or larger)")
                continue
            if net.is_multicast or net.is_loopback or net.is_link_local or net.is_unspecified:
                self.err(item, f"subnet {net} of {owner} is not a unicast range a router "
                               "can serve (multicast, loopback, link-local or unspecified)")
                continue
            nets.append(net)
            self._subnet_nodes = getattr(self, "_subnet_nodes", []) + [(owner, net, item)]
        return nets

    def routing(self, body, tvd: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """`subnets` and `gateway` of a TVD -> (subnets, one gateway interface per subnet)."""
        nets = self.subnets(body, f"TVD '{tvd}'")
        gws = {net: next(net.hosts()) for net in nets}   # default: first host address
        if "gateway" in body:
            gn = body["gateway"][1]
            g = self.string(gn, f"gateway of TVD '{tvd}'")
            try:
                addr = ipaddress.ip_address(g) if g is not None else None
            except ValueError:
                self.err(gn, f"gateway '{g}' of TVD '{tvd}' is not an IP address")
                addr = None
            if addr is not None:
                home = [n for n in nets if addr.version == n.version and addr in n]
                if not home:
                    have = ", ".join(str(n) for n in nets) or "none; add 'subnets' first"
                    self.err(gn, f"gateway {addr} of TVD '{tvd}' is inside none of its subnets "
                                 f"({have})")
                elif addr in (home[0].network_address, home[0].broadcast_address) \
                        and home[0].version == 4:
                    self.err(gn, f"gateway {addr} of TVD '{tvd}' is the network or broadcast "
                                 f"address of {home[0]}")
                else:
                    gws[home[0]] = addr
        return (tuple(str(n) for n in nets),
                tuple(f"{gws[n]}/{n.prefixlen}" for n in nets))

    def requirements(self, node, tvd: str):
        for item in self.sequence(node, f"membership of TVD '{tvd}'") or []:
            if isinstance(item, yaml.MappingNode):
                body = self.mapping(item, "membership requirement",
                                    {"property": True, "assurance": False}) or {}
                prop = self.string(body["property"][1], "property") if "property" in body else None
                kinds = frozenset()
                if "assurance" in body:
                    kinds = frozenset(v for v, _ in self.string_list(
                        body["assurance"][1], "assurance",
                        lambda n, w: self.choice(n, w, ASSURANCE_KINDS)))
                ref_node = body["property"][1] if "property" in body else item
            else:
                prop, kinds, ref_node = self.string(item, f"membership of TVD '{tvd}'"), frozenset(), item
            if prop is None:
                continue
            self.ref("property", prop, ref_node, f"membership of TVD '{tvd}'")
            yield MembershipRequirement(prop, kinds, self.pos(item))

    def multicast(self, node, tvd: str) -> str | None:
        v = self.string(node, f"multicast-group of TVD '{tvd}'")
        if v is None:
            return None
        try:
            a = ipaddress.IPv4Address(v)
        except ValueError:
            self.err(node, f"multicast-group of TVD '{tvd}' '{v}' is not an IPv4 address")
            return None
        if not a.is_multicast or a in ipaddress.IPv4Network("224.0.0.0/24"):
            self.err(node, f"multicast-group of TVD '{tvd}' {v} must be a routable multicast "
                           "address (224.0.1.0-239.255.255.255; 239.0.0.0/8 for private use)")
            return None
        return v

    # ---------------------------------------------------------------------------------------
    def flows(self, node):
        seen: dict[tuple[str, str], yaml.Node] = {}
        for item in self.sequence(node, "flows") or []:
            body = self.mapping(item, "flow entry", FLOW_KEYS)
            if body is None:
                continue
            src = self.name(body["from"][1], "from") if "from" in body else None
            dst = self.name(body["to"][1], "to") if "to" in body else None
            self.ref("tvd", src, body.get("from", (None, item))[1], "flow")
            self.ref("tvd", dst, body.get("to", (None, item))[1], "flow")
            kind_s = self.choice(body["policy"][1], "policy", [k.value for k in FlowKind]) \
                if "policy" in body else None
            if src is None or dst is None or kind_s is None:
                continue
            kind = FlowKind(kind_s)
            if src == dst:
                self.err(item, f"flow from '{src}' to itself: inside a TVD traffic is always open")
                continue
            if (src, dst) in seen:
                first = self.pos(seen[(src, dst)])
                self.err(item, f"second entry for {src} -> {dst} (first at line {first.line}); "
                               "one entry per ordered pair")
                continue
            seen[(src, dst)] = item
            allow = self.rules(body["allow"][1], "allow") if "allow" in body else None
            sender = self.side(body["sender"][1], "sender") if "sender" in body else None
            receiver = self.side(body["receiver"][1], "receiver") if "receiver" in body else None
            replies = True
            if "replies" in body:
                replies = self.boolean(body["replies"][1], "replies") is not False
            if "description" in body:
                self.string(body["description"][1], "description")
            if kind is not FlowKind.CONTROLLED:
                for key in ("allow", "sender", "receiver"):
                    if key in body:
                        self.err(body[key][0], f"'{key}' only belongs to a controlled flow "
                                               f"({src} -> {dst} is {kind.value})")
                sender = receiver = ()
            else:
                if allow is not None and (sender is not None or receiver is not None):
                    self.err(body["allow"][0], "give either 'allow' (both sides) or "
                                               "'sender'/'receiver', not both")
                if allow is not None:
                    sender = receiver = allow
                if sender is None and receiver is None:
                    self.err(item, f"controlled flow {src} -> {dst} has no rules; add 'allow' "
                                   "(or 'sender' and 'receiver'), or make it closed")
                    continue
                if sender is None or receiver is None:
                    missing = "receiver" if receiver is None else "sender"
                    self.err(item, f"controlled flow {src} -> {dst} lacks its '{missing}' side: "
                                   "each TVD enforces its own half (paper section 3.3)")
                    continue
            yield Flow(src, dst, kind, tuple(sender), tuple(receiver), replies, self.pos(item))

    def side(self, node, what: str):
        body = self.mapping(node, what, {"allow": True})
        if body is None or "allow" not in body:
            return None
        return self.rules(body["allow"][1], f"{what} allow")

    def rules(self, node, what: str) -> list[Rule]:
        out = []
        for item in self.sequence(node, what) or []:
            body = self.mapping(item, "rule", {"proto": True, "port": False})
            if body is None or "proto" not in body:
                continue
            proto = self.choice(body["proto"][1], "proto", PROTOS)
            ports = None
            if "port" in body:
                pn = body["port"][1]
                if proto not in ("tcp", "udp"):
                    if proto is not None:
                        self.err(pn, f"port only applies to tcp or udp, not {proto}")
                    continue
                ports = self.port(pn)
                if ports is None:
                    continue
            if proto is not None:
                out.append(Rule(proto, ports, self.pos(item)))
        return out

    def port(self, node) -> tuple[int, int] | None:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":str"):
            m = PORT_RANGE_RE.match(node.value)
            if not m:
                self.err(node, f"port '{node.value}' must be a number or a range like 8000-8080")
                return None
            lo, hi = int(m[1]), int(m[2])
            if not 1 <= lo <= hi <= 65535:
                self.err(node, f"port range {lo}-{hi} must satisfy 1 <= low <= high <= 65535")
                return None
            return lo, hi
        p = self.integer(node, "port", 1, 65535)
        return None if p is None else (p, p)

    def dummy(self, node):
        body = self.mapping(node, "dummy", {"policy": False, "vlans": False}) or {}
        kind = FlowKind.CLOSED
        if "policy" in body:
            k = self.choice(body["policy"][1], "dummy policy", ("open", "closed"))
            kind = FlowKind(k) if k else FlowKind.CLOSED
        vlans = []
        for item in self.sequence(body["vlans"][1], "dummy vlans") or [] if "vlans" in body else []:
            v = self.integer(item, "dummy VLAN id", 1, 4094)
            if v is not None:
                vlans.append((v, item))
        self._dummy_vlan_nodes = vlans
        return kind, tuple(v for v, _ in vlans)

    def shared(self, node):
        for item in self.sequence(node, "shared-membership") or []:
            names = self.string_list(item, "shared-membership set", self.name)
            if isinstance(item, yaml.SequenceNode) and len(names) < 2:
                self.err(item, "a shared-membership set names at least two TVDs")
                continue
            for n, nn in names:
                self.ref("tvd", n, nn, "shared-membership")
            yield tuple(n for n, _ in names)

    # ---------------------------------------------------------------------------------------
    def externals(self, node, tvds: dict[str, Tvd]) -> dict[str, External]:
        out = {}
        for name, kn, vn in self.items(node, "externals"):
            if self.name(kn, "external name") is None:
                continue
            if name == DUMMY_TVD or name in tvds:
                # flows name both the same way, so one name must mean one thing
                self.err(kn, f"external '{name}' has the name of a "
                             f"{'reserved dummy ' if name == DUMMY_TVD else ''}TVD; flows name "
                             "TVDs and externals alike, so rename the external")
                continue
            body = self.mapping(vn, f"external '{name}'", EXTERNAL_KEYS)
            if body is None:
                continue
            nets = self.subnets(body, f"external '{name}'")
            if "description" in body:
                self.string(body["description"][1], "description")
            sn = body.get("subnets", (None, None))[1]
            if isinstance(sn, yaml.SequenceNode) and not sn.value:
                self.err(sn, f"external '{name}' needs at least one subnet: its subnets are "
                             "how its traffic is recognised and what its leg routes to")
            out[name] = External(name, tuple(str(n) for n in nets), self.pos(kn))
        return out

    def host_externals(self, node, host: str) -> list[HostExternal]:
        out = []
        for item in self.sequence(node, f"externals of host '{host}'") or []:
            b = self.mapping(item, "external NIC", HOST_EXTERNAL_KEYS)
            if not b or not all(k in b for k in ("external", "nic", "address")):
                continue
            ext = self.name(b["external"][1], "external")
            self.ref("external", ext, b["external"][1], f"host '{host}'")
            dev = self.string(b["nic"][1], "nic", IFNAME_RE,
                              "a Linux interface name of at most 15 characters")
            a = self.string(b["address"][1], "external address")
            try:
                iface = ipaddress.ip_interface(a) if a else None
            except ValueError:
                iface = None
            if a and (iface is None or "/" not in a):
                self.err(b["address"][1], f"address '{a}' of host '{host}' on external "
                                          f"'{ext}' must be an address with prefix, like "
                                          "198.51.100.2/24")
                iface = None
            known = getattr(self, "_externals", {}).get(ext)
            if known is not None and iface is not None and known.subnets and not any(
                    iface.ip in ipaddress.ip_network(n) for n in known.subnets):
                self.err(b["address"][1], f"address {iface} of host '{host}' on external "
                                          f"'{ext}' is inside none of its subnets "
                                          f"({', '.join(known.subnets)}); the leg must sit on "
                                          "the external network")
                continue
            gw = None
            if "gateway" in b and iface is not None:
                g = self.string(b["gateway"][1], "gateway")
                try:
                    gwa = ipaddress.ip_address(g) if g else None
                except ValueError:
                    gwa = None
                if g and (gwa is None or gwa not in iface.network or gwa == iface.ip):
                    self.err(b["gateway"][1], f"gateway '{g}' of host '{host}' on external "
                                              f"'{ext}' must be another address inside "
                                              f"{iface.network} (the next hop towards the "
                                              "external's other subnets)")
                    continue
                gw = str(gwa) if gwa else None
            far = [n for n in (known.subnets if known and iface is not None else ())
                   if ipaddress.ip_network(n).version != iface.version
                   or not ipaddress.ip_network(n).subnet_of(iface.network)]
            if far and gw is None:
                self.err(item, f"host '{host}' reaches external '{ext}' on {iface.network}, but "
                               f"its subnet(s) {', '.join(far)} lie beyond it: add 'gateway: "
                               "ADDRESS' (the next hop on that network)")
                continue
            if ext and dev and iface is not None:
                if any(e.external == ext for e in out):
                    self.err(item, f"host '{host}' lists external '{ext}' twice; one NIC "
                                   "per external and host")
                    continue
                out.append(HostExternal(ext, dev, str(iface), gw))
        return out

    def networks(self, node) -> dict[str, Network]:
        out = {}
        for name, kn, vn in self.items(node, "networks"):
            if self.name(kn, "network name") is None:
                continue
            body = self.mapping(vn, f"network '{name}'", NETWORK_KEYS)
            if body is None or "subnet" not in body:
                continue
            sn = self.string(body["subnet"][1], f"subnet of network '{name}'")
            try:
                subnet = str(ipaddress.IPv4Network(sn)) if sn else None
            except ValueError:
                self.err(body["subnet"][1], f"subnet '{sn}' is not an IPv4 network like 10.0.1.0/24")
                subnet = None
            vlan_capable = bool(body and "vlan-capable" in body and
                                self.boolean(body["vlan-capable"][1], "vlan-capable"))
            multicast = True
            if "multicast" in body:
                multicast = self.boolean(body["multicast"][1], "multicast") is not False
            trusted = frozenset()
            if "trusted-for" in body:
                trusted = frozenset(v for v, _ in self.string_list(
                    body["trusted-for"][1], "trusted-for",
                    lambda n, w: self.choice(n, w, PROTECTION_GOALS)))
            mtu = self.integer(body["mtu"][1], "mtu", 576, 65535) if "mtu" in body else 1500
            max_mtu = (self.integer(body["max-mtu"][1], "max-mtu", 576, 65535)
                       if "max-mtu" in body else mtu)
            if mtu and max_mtu and max_mtu < mtu:
                self.err(body["max-mtu"][1], f"max-mtu {max_mtu} is below mtu {mtu}")
            if subnet is None or mtu is None or max_mtu is None:
                continue
            encrypt = ("require-encryption" in body and
                       self.boolean(body["require-encryption"][1], "require-encryption") is True)
            out[name] = Network(name, subnet, vlan_capable, multicast, trusted, mtu, max_mtu,
                                self.pos(kn), encrypt)
        return out

    def hosts(self, node) -> dict[str, Host]:
        out = {}
        key_of: dict[str, str] = {}     # WireGuard public key -> the host that has it
        for name, kn, vn in self.items(node, "hosts"):
            if self.name(kn, "host name") is None:
                continue
            body = self.mapping(vn, f"host '{name}'", HOST_KEYS)
            if body is None or "address" not in body or "capabilities" not in body:
                continue
            addr = self.address(body["address"][1], f"address of host '{name}'")
            caps = frozenset(v for v, _ in self.string_list(
                body["capabilities"][1], f"capabilities of host '{name}'",
                lambda n, w: self.choice(n, w, FUNCTIONAL_CAPABILITIES)))
            props = {}
            if "properties" in body:
                for p, pk, pv in self.items(body["properties"][1], f"properties of host '{name}'"):
                    kind = self.choice(pv, f"assurance of '{p}'", ASSURANCE_KINDS)
                    self.ref("property", p, pk, f"host '{name}'")
                    if kind:
                        props[p] = kind
            nics = []
            if "nics" in body:
                for item in self.sequence(body["nics"][1], f"nics of host '{name}'") or []:
                    nb = self.mapping(item, "nic", {"network": True, "nic": True, "address": True})
                    if not nb or len(nb) < 3:
                        continue
                    net = self.name(nb["network"][1], "network")
                    self.ref("network", net, nb["network"][1], f"host '{name}'")
                    dev = self.string(nb["nic"][1], "nic", IFNAME_RE,
                                      "a Linux interface name of at most 15 characters")
                    a = self.address(nb["address"][1], "nic address")
                    if net and dev and a:
                        nics.append((HostNic(net, dev, a), item))
            exts = (self.host_externals(body["externals"][1], name)
                    if "externals" in body else [])
            wg_key = self.wireguard_key(body, "wireguard-key", name, key_of)
            wg_next = self.wireguard_key(body, "wireguard-next-key", name, key_of)
            if wg_next is not None:
                node = body["wireguard-next-key"][1]
                if wg_key is None:
                    self.err(node, f"wireguard-next-key of host '{name}' needs its "
                             "wireguard-key too (the key it runs with now; the next one is the "
                             "key it rotates to, docs/wireguard.md)")
                    wg_next = None
                elif wg_next == wg_key:
                    self.err(node, f"wireguard-next-key of host '{name}' is its "
                             "wireguard-key: give the new key of `tvd-proxy wireguard-key "
                             "--rotate`, or remove the entry")
                    wg_next = None
                elif key_tag(wg_next) == key_tag(wg_key):
                    self.err(node, f"wireguard-next-key of host '{name}' begins with the same "
                             "four bytes as its wireguard-key, so both would have one inner "
                             "address: make another key pair (`tvd-proxy wireguard-key "
                             "--rotate` never makes such a pair)")
                    wg_next = None
            if addr is None:
                continue
            self._addr_nodes.append((name, addr, body["address"][1]))
            self._nic_nodes.extend((name, n, i) for n, i in nics)
            out[name] = Host(name, addr, caps, props, tuple(n for n, _ in nics), self.pos(kn),
                             tuple(exts), wg_key, wg_next)
        return out

    def wireguard_key(self, body, key: str, host: str, key_of: dict[str, str]) -> str | None:
        """A host's `wireguard-key` or `wireguard-next-key`: a public key, no other host's."""
        if key not in body:
            return None
        node = body[key][1]
        wg_key = self.string(node, f"{key} of host '{host}'")
        if wg_key is not None and not is_wireguard_key(wg_key):
            self.err(node, f"{key} of host '{host}' is not a WireGuard public key (44 "
                     "characters of base64, as `tvd-proxy wireguard-key` prints it)")
            return None
        if wg_key is not None and key_of.setdefault(wg_key, host) != host:
            self.err(node, f"{key} of host '{host}' is host '{key_of[wg_key]}'s too; each "
                     "tvd-proxy makes its own key pair: copy each host's from `tvd-proxy "
                     "wireguard-key` there")
            return None
        return wg_key

    def address(self, node, what: str) -> str | None:
        v = self.string(node, what)
        if v is None:
            return None
        try:
            return str(ipaddress.IPv4Address(v))
        except ValueError:
            self.err(node, f"{what} '{v}' is not an IPv4 address")
            return None

    # ---------------------------------------------------------------------------------------
    def check_refs(self, props, tvds, networks, externals) -> None:
        # a flow end ("tvd" refs) may name a TVD, the dummy TVD or an external network
        known = {"property": props, "tvd": {**tvds, DUMMY_TVD: None, **externals},
                 "network": networks, "external": externals}
        for kind, name, node, context in self.refs:
            if name not in known[kind]:
                what = "TVD or external" if kind == "tvd" and externals else kind
                self.err(node, f"unknown {what} '{name}' in {context}", "unknown-name")

    def check_subnets_disjoint(self) -> None:
        """A packet's TVD is derived from its address (design item 4): overlap would make that
        ambiguous, so any overlap, within one TVD or across two, is an error at the later one."""
        seen: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network, yaml.Node]] = []
        for tvd, net, node in getattr(self, "_subnet_nodes", []):
            for other_tvd, other, onode in seen:
                if net.version == other.version and net.overlaps(other):
                    owner = "itself" if other_tvd == tvd else other_tvd
                    self.err(node, f"subnet {net} of {tvd} overlaps {other} of {owner} "
                                   f"(line {self.pos(onode).line}); TVD and external subnets "
                                   "must be disjoint because a packet's TVD is read from its "
                                   "address", "subnet-overlap")
                    break
            else:
                seen.append((tvd, net, node))

    def check_unique(self, tvds, dummy_vlans, hosts, networks) -> None:
        by_vlan: dict[int, str] = {}
        by_vni: dict[int, str] = {}
        by_group: dict[str, str] = {}
        for t in tvds.values():
            pos = t.pos
            # a bad id (0: already reported) must not hide a duplicate of the other one
            if t.vlan and t.vlan in by_vlan:
                self.diags.error(pos, f"TVD '{t.name}' reuses VLAN {t.vlan} of TVD "
                                      f"'{by_vlan[t.vlan]}' (a VLAN belongs to at most one TVD)",
                                 "duplicate-vlan")
            if t.vlan:
                by_vlan.setdefault(t.vlan, t.name)
            if not t.vni:
                continue
            if t.vni in by_vni:
                self.diags.error(pos, f"TVD '{t.name}' reuses VNI {t.vni} of TVD "
                                      f"'{by_vni[t.vni]}'", "duplicate-vni")
            by_vni.setdefault(t.vni, t.name)
            if t.multicast_group in by_group:
                self.diags.warning(pos, f"TVD '{t.name}' shares multicast group "
                                        f"{t.multicast_group} with '{by_group[t.multicast_group]}'"
                                        " (isolation holds, but each host receives the other "
                                        "TVD's floods)", "shared-group")
            by_group.setdefault(t.multicast_group, t.name)
        self.check_subnets_disjoint()
        for v, node in getattr(self, "_dummy_vlan_nodes", []):
            if v in by_vlan:
                self.err(node, f"dummy VLAN {v} belongs to TVD '{by_vlan[v]}'", "duplicate-vlan")
        seen_addr: dict[str, str] = {}
        for host, addr, node in self._addr_nodes:
            if addr in seen_addr:
                self.err(node, f"address {addr} of host '{host}' is already host "
                               f"'{seen_addr[addr]}'s")
            seen_addr.setdefault(addr, host)
        for host, nic, node in self._nic_nodes:
            net = networks.get(nic.network)
            if net and ipaddress.IPv4Address(nic.address) not in ipaddress.IPv4Network(net.subnet):
                self.err(node, f"host '{host}' address {nic.address} is outside network "
                               f"'{net.name}' ({net.subnet})")
            if nic.address in seen_addr and seen_addr[nic.address] != host:
                self.err(node, f"address {nic.address} of host '{host}' is already host "
                               f"'{seen_addr[nic.address]}'s")
            seen_addr.setdefault(nic.address, host)
