"""The lab spec: which VMs (with which TVD NICs) run on which policy host. See docs/lab.md.

    name: paper                      # optional; prefix of every namespace (default: file stem)
    policy: lab-paper-policy.yaml    # relative to this file
    vms:
      a1: {host: h1, domid: 1, nics: [{tvd: alpha, address: 192.168.50.11/24}]}

Hosts and the networks they sit on come from the policy's capability model. Every problem is
reported as one `FILE:LINE:COL: error: message` line; nothing here touches the kernel.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field

import yaml

from xen_tvd.policy.model import Policy, Pos  # first: xen_tvd.diagnostics imports it back
from xen_tvd.diagnostics import Collector  # noqa: I001
from xen_tvd.yamlschema import Reader
from xen_tvd.yamlsrc import YamlUnreadable, compose, kind_name, read_source
from xen_tvd.lab import spec_control  # noqa: I001

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
VM_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
MAX_DOMID = 32751   # DOMID_FIRST_RESERVED - 1
MAX_NICS = 16


def address6_for(address: str, subnets: tuple[str, ...]) -> str | None:
    """A dual-stack TVD's VMs get an IPv6 address too: the TVD's first IPv6 subnet with the
    host number of the NIC's IPv4 address in its own subnet (10.1.0.11/24 -> fd00:1::b/64),
    so a lab spec names one address per NIC and its IPv6 one is predictable."""
    v4 = ipaddress.ip_interface(address)
    net6 = next((n for n in map(ipaddress.ip_network, subnets) if n.version == 6), None)
    if net6 is None or v4.version != 4:
        return None
    return f"{net6[int(v4.ip) - int(v4.network.network_address)]}/{net6.prefixlen}"


class SpecUnreadable(Exception):
    """The spec (or its policy) cannot be read at all: a usage error (exit 2)."""


class SpecInvalid(Exception):
    """str() is one diagnostics line per problem (exit 1)."""


@dataclass(frozen=True)
class NicSpec:
    devid: int
    tvd: str
    address: str            # IPv4 interface, CIDR notation
    pos: Pos | None = None

    @property
    def ip(self) -> str:
        return str(ipaddress.ip_interface(self.address).ip)


@dataclass(frozen=True)
class VmSpec:
    name: str
    host: str
    domid: int
    nics: tuple[NicSpec, ...]
    pos: Pos | None = None
    properties: dict[str, str] = field(default_factory=dict, hash=False)  # master mode: VM cert
    expect: str = "admitted"                                   # master mode: admission outcome


@dataclass(frozen=True)
class LabSpec:
    path: str               # absolute path of the spec file
    name: str
    policy_path: str        # absolute
    vms: dict[str, VmSpec]
    control: str = "direct"     # direct: the lab plugs vifs; master: tvd-master + tvd-proxy
    replicas: int = 1           # master mode: N tvd-master replicas on an N-member etcd


def default_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0].lower()
    stem = re.sub(r"[^a-z0-9-]+", "-", stem).strip("-") or "lab"
    return stem[:24].rstrip("-")


def _policy_loader():
    from xen_tvd.policy import PolicyInvalid, load_policy
    return load_policy, PolicyInvalid


def load_lab(path: str) -> tuple[LabSpec, Policy]:
    """Parse and validate the spec and the policy it names; raise SpecUnreadable/SpecInvalid."""
    try:
        data = read_source(path)
    except YamlUnreadable as e:
        raise SpecUnreadable(str(e)) from None
    if os.path.isdir(path):
        raise SpecUnreadable(f"{path}: cannot read: Is a directory")
    diags = Collector()
    root = compose(data, path, diags)
    if root is None:
        if not diags.errors:
            diags.error(Pos(path, 1, 1), "the lab spec is empty")
        raise SpecInvalid("\n".join(str(d) for d in diags.errors))
    spec_path = os.path.abspath(path)
    r = Reader(path, diags)

    if not isinstance(root, yaml.MappingNode):
        r.err(root, f"a lab spec must be a mapping, got {kind_name(root)}")
        raise SpecInvalid("\n".join(str(d) for d in diags.errors))

    top = r.mapping(root, "lab spec", dict.fromkeys(("name", "policy", "vms", "control",
                                                            "replicas"), False))
    name = default_name(path)
    if "name" in top:
        k, v = top["name"]
        val = r.nonempty_string(v, "name")
        if val is not None:
            if NAME_RE.match(val):
                name = val
            else:
                r.err(v, f"name {val!r} must be 1-24 of a-z 0-9 - (it prefixes "
                         "namespace names), starting with a letter or digit")
    policy: Policy | None = None
    policy_path = ""
    if "policy" not in top:
        r.err(root, "missing key 'policy' (path of the TVD policy, relative to this file)")
    else:
        k, v = top["policy"]
        rel = r.nonempty_string(v, "policy")
        if rel is not None:
            policy_path = os.path.normpath(os.path.join(os.path.dirname(spec_path), rel))
            policy = _load_policy(policy_path, r.pos(v), diags)
    control = "direct"
    if "control" in top:
        control = spec_control.parse_control(top["control"][1], r) or control
    replicas = 1
    if "replicas" in top:
        replicas = spec_control.parse_replicas(top["replicas"][1], r, control) or replicas
    vms: dict[str, VmSpec] = {}
    if "vms" not in top:
        r.err(root, "missing key 'vms' (the lab's virtual machines)")
    else:
        vms = _vms(top["vms"][1], r, policy)
        spec_control.check_mode(control, vms, diags)
    if diags.errors:
        raise SpecInvalid("\n".join(str(d) for d in diags.errors))
    assert policy is not None
    return LabSpec(spec_path, name, policy_path, vms, control, replicas), policy


def _load_policy(policy_path: str, where: Pos | None, diags: Collector) -> Policy | None:
    load_policy, PolicyInvalid = _policy_loader()
    if not os.path.isfile(policy_path):
        diags.error(where, f"policy file {policy_path} does not exist or is not a file")
        return None
    try:
        return load_policy(policy_path)
    except PolicyInvalid as e:
        for line in str(e).splitlines():
            if line.strip():
                diags.items.append(_Raw(line))
        diags.error(where, "the policy named here is invalid (problems above)")
    except (OSError, YamlUnreadable) as e:
        diags.error(where, f"cannot read policy {policy_path}: {e}")
    return None


class _Raw:
    """A diagnostics line produced elsewhere (the policy loader), passed through verbatim."""
    is_error = True

    def __init__(self, line: str) -> None:
        self.line = line

    def __str__(self) -> str:
        return self.line


VM_KEYS = dict.fromkeys(("host", "domid", "nics", "properties", "expect"), False)


def _vms(node, r: Reader, policy: Policy | None) -> dict[str, VmSpec]:
    if not isinstance(node, yaml.MappingNode):
        r.err(node, f"vms must be a mapping of VM name to VM, got {kind_name(node)}")
        return {}
    if not node.value:
        r.err(node, "vms is empty: a lab needs at least one VM")
    vms: dict[str, VmSpec] = {}
    seen_addr: dict[str, Pos | None] = {}
    seen_domid: dict[tuple[str, int], str] = {}
    pending_domid: list[str] = []    # VMs without a domid, in spec order
    raw: dict[str, tuple] = {}
    for name, (k, v) in r.mapping(node, "vms").items():
        if not VM_RE.match(name):
            r.err(k, f"VM name {name!r} must be 1-24 of a-z 0-9 - "
                     "(it names a namespace), starting with a letter or digit")
            continue
        raw[name] = (k, v)
    for name, (k, v) in raw.items():
        what = f"VM {name}"
        if not isinstance(v, yaml.MappingNode):
            r.err(v, f"{what} must be a mapping with host and nics, got {kind_name(v)}")
            continue
        f = r.mapping(v, what, VM_KEYS)
        host = None
        if "host" not in f:
            r.err(v, f"{what}: missing key 'host'")
        else:
            hn = f["host"][1]
            host = r.nonempty_string(hn, f"{what}: host")
            if host is not None and policy is not None:
                h = policy.hosts.get(host)
                if h is None:
                    known = ", ".join(sorted(policy.hosts)) or "none"
                    r.err(hn, f"{what}: host {host!r} is not in the policy's capability "
                              f"model (hosts: {known})")
                    host = None
                elif not h.nics:
                    r.err(hn, f"{what}: host {host!r} has no nics in the policy, so the "
                              "lab cannot tell which network it sits on")
                    host = None
        domid = None
        if "domid" in f:
            domid = _domid(f["domid"][1], r, what, name, host, seen_domid)
        nics: list[NicSpec] = []
        if "nics" not in f:
            r.err(v, f"{what}: missing key 'nics'")
        else:
            nn = f["nics"][1]
            if not isinstance(nn, yaml.SequenceNode) or not nn.value:
                r.err(nn, f"{what}: nics must be a non-empty list of "
                          "{tvd: NAME, address: A.B.C.D/LEN}")
            elif len(nn.value) > MAX_NICS:
                r.err(nn, f"{what}: at most {MAX_NICS} nics")
            else:
                for devid, item in enumerate(nn.value):
                    nic = _nic(item, devid, r, policy, f"{what} nic {devid}", seen_addr)
                    if nic is not None:
                        nics.append(nic)
        _external_machine(name, host, nics, policy, r.pos(v), r.diags)
        props = expect = None
        if "properties" in f:
            props = spec_control.parse_properties(f["properties"][1], r, policy, what)
        if "expect" in f:
            expect = spec_control.parse_expect(f["expect"][1], r, what)
        if host is not None and domid is None:
            pending_domid.append(name)
        vms[name] = VmSpec(name, host or "", domid or 0, tuple(nics), r.pos(k), props or {},
                           expect or "admitted")
    # Domids not given are assigned per host, smallest free first, in spec order.
    for name in pending_domid:
        host = vms[name].host
        d = 1
        while (host, d) in seen_domid:
            d += 1
        seen_domid[(host, d)] = name
        vms[name] = dataclasses.replace(vms[name], domid=d)
    return vms


def _domid(dn, r: Reader, what: str, name: str, host: str | None,
           seen_domid: dict[tuple[str, int], str]) -> int | None:
    dv, ok = r.value(dn, f"{what}: domid") if isinstance(dn, yaml.ScalarNode) else (None, True)
    if not ok:
        return None
    if type(dv) is not int or not 1 <= dv <= MAX_DOMID:
        r.err(dn, f"{what}: domid must be an integer 1..{MAX_DOMID} "
                  f"(0 is Dom0), got {kind_name(dn) if type(dv) is not int else dv}")
        return None
    if host is not None:
        other = seen_domid.get((host, dv))
        if other:
            r.err(dn, f"{what}: domid {dv} is already used by VM {other} on host {host}")
        else:
            seen_domid[(host, dv)] = name
    return dv


def _external_machine(name: str, host: str | None, nics: list[NicSpec], policy: Policy | None,
                      pos: Pos, diags: Collector) -> None:
    """A NIC naming an external makes the VM a machine on that external network (a server on
    the corp LAN), wired to the LAN of `host`'s external NIC, not a vif: it is in no TVD."""
    exts = [n for n in nics if policy is not None and n.tvd in policy.externals]
    if not exts:
        return
    if len(nics) > 1:
        diags.error(exts[0].pos or pos, f"VM {name}: a machine on external {exts[0].tvd!r} has "
                                        "exactly one NIC (it is in no TVD); split it into "
                                        "several machines")
        return
    nic = exts[0]
    h = policy.hosts.get(host) if host else None
    hx = h.external_on(nic.tvd) if h else None
    if h is not None and hx is None:
        diags.error(nic.pos or pos, f"VM {name}: host {host!r} has no NIC on external "
                                    f"{nic.tvd!r} (policy hosts.{host}.externals); put the "
                                    "machine on a host that has one")
    elif hx is not None and ipaddress.ip_interface(nic.address).ip not in \
            ipaddress.ip_interface(hx.address).network:
        diags.error(nic.pos or pos, f"VM {name}: address {nic.address} is not on "
                                    f"{ipaddress.ip_interface(hx.address).network}, the LAN of "
                                    f"host {host!r}'s NIC on external {nic.tvd!r}")
    elif hx is not None and ipaddress.ip_interface(nic.address).ip == \
            ipaddress.ip_interface(hx.address).ip:
        diags.error(nic.pos or pos, f"VM {name}: address {nic.address} is the address of "
                                    f"host {host!r} on external {nic.tvd!r} (the router's "
                                    "leg there)")


def _nic(node, devid, r: Reader, policy, what, seen_addr) -> NicSpec | None:
    if not isinstance(node, yaml.MappingNode):
        r.err(node, f"{what} must be a mapping {{tvd: NAME, address: A.B.C.D/LEN}}, "
                    f"got {kind_name(node)}")
        return None
    f = r.mapping(node, what, {"tvd": False, "address": False})
    ok = True
    tvd = addr = None
    if "tvd" not in f:
        r.err(node, f"{what}: missing key 'tvd'")
        ok = False
    else:
        tn = f["tvd"][1]
        tvd = r.nonempty_string(tn, f"{what}: tvd")
        if tvd is None:
            ok = False
        elif policy is not None and tvd not in policy.tvds and tvd not in policy.externals:
            known = ", ".join(sorted(policy.tvds)) or "none"
            exts = f"; externals: {', '.join(sorted(policy.externals))}" if policy.externals else ""
            r.err(tn, f"{what}: TVD {tvd!r} is not defined by the policy (TVDs: "
                               f"{known}{exts})")
            ok = False
    if "address" not in f:
        r.err(node, f"{what}: missing key 'address' (IPv4 with prefix, e.g. "
                             "192.168.50.11/24)")
        ok = False
    else:
        an = f["address"][1]
        s = r.nonempty_string(an, f"{what}: address")
        if s is None:
            ok = False
        else:
            try:
                if "/" not in s:
                    raise ValueError("a prefix length is required")
                iface = ipaddress.IPv4Interface(s)
                net = iface.network
                if iface.ip in (net.network_address, net.broadcast_address) and net.prefixlen < 31:
                    raise ValueError("that is the network or broadcast address of its subnet")
                if iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified:
                    raise ValueError("not a unicast host address")
                addr = str(iface)
            except ValueError as e:
                r.err(an, f"{what}: address {s!r} is not a usable IPv4 host address "
                                   f"with prefix: {e}")
                ok = False
            else:
                ip = str(iface.ip)
                t = policy.tvds.get(tvd) if policy is not None and tvd else None
                x = policy.externals.get(tvd) if policy is not None and tvd else None
                nets = [ipaddress.ip_network(n) for n in (t or x).subnets] if (t or x) else []
                if nets and not any(iface.ip in n for n in nets):
                    r.err(an, f"{what}: address {ip} is outside the subnets of "
                                       f"{'external' if x else 'TVD'} {tvd!r} "
                                       f"({', '.join(map(str, nets))}); its router and "
                                       "flow filter identify the TVD by address")
                    ok = False
                elif any(iface.ip == ipaddress.ip_interface(g).ip for g in (t.gateways if t else ())):
                    r.err(an, f"{what}: address {ip} is the gateway of TVD {tvd!r}")
                    ok = False
                elif t and (six := address6_for(addr, t.subnets)) and any(
                        ipaddress.ip_interface(six).ip == ipaddress.ip_interface(g).ip
                        for g in t.gateways):
                    r.err(an, f"{what}: address {ip} would give this NIC IPv6 address "
                              f"{ipaddress.ip_interface(six).ip}, the gateway of dual-stack "
                              f"TVD {tvd!r}; pick another host number")
                    ok = False
                elif ip in seen_addr:
                    r.err(an, f"{what}: address {ip} is already used at {seen_addr[ip]}")
                    ok = False
                else:
                    seen_addr[ip] = r.pos(an)
    if not ok:
        return None
    return NicSpec(devid, tvd, addr, r.pos(node))
