"""The tvd-proxy v1 requests, one typed class per op (docs/proxy-protocol.md, "Operations").

Both directions live here, so the wire form is written once: `to_wire()` is what the typed
client (client.py) sends, `parse(obj)` is what the proxy acts on (a ProtocolError names the
first bad field). vif-tvd keeps its own standard-library copy of the `vif-online` and
`vif-offline` forms (it cannot import xen_tvd); tests/proxy/test_requests.py checks that
copy against these classes.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from xen_tvd.desired.patterns import IFNAME_RE, MAC_RE, NAME_RE, UUID_RE

from .protocol import ProtocolError

MAX_IMAGES = 16
MAX_CHECK_TVDS = 64


def _int(req: dict, key: str, required: bool = True) -> int | None:
    v = req.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProtocolError(f"'{key}' must be a non-negative integer, got {v!r}")
    return v


def _str(req: dict, key: str, pattern=None, required: bool = True) -> str | None:
    v = req.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
        raise ProtocolError(f"'{key}' is missing or malformed: {v!r}")
    return v


def _mac(value) -> str | None:
    """The backend `mac` key, lower-cased; None when libxl wrote none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not MAC_RE.match(value.lower()):
        raise ProtocolError(f"'mac' must be a MAC address like 00:16:3e:00:00:01, got {value!r}")
    return value.lower()


def _addresses(value) -> tuple[str, ...] | None:
    """The backend `ip` key (xl.cfg ip=): space-separated addresses; None when not declared."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"'ip' must be a string of space-separated addresses, got {value!r}")
    out = []
    for item in value.split():
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ProtocolError(f"backend ip key {value!r}: {item!r} is not an IP address; fix "
                                "ip= in the VM's vif config") from None
    return tuple(out) or None


def _wire(op: str, **fields) -> dict:
    """The request object; optional fields that are None are left out."""
    return {"op": op, **{k: v for k, v in fields.items() if v is not None}}


@dataclass(frozen=True)
class Ping:
    OP = "ping"

    @classmethod
    def parse(cls, req: dict) -> "Ping":
        return cls()

    def to_wire(self) -> dict:
        return _wire(self.OP)


@dataclass(frozen=True)
class Status:
    OP = "status"

    @classmethod
    def parse(cls, req: dict) -> "Status":
        return cls()

    def to_wire(self) -> dict:
        return _wire(self.OP)


@dataclass(frozen=True)
class Nic:
    """One `nics` entry of a registration: devid None = every vif of the VM."""
    tvd: str
    devid: int | None = None


@dataclass(frozen=True)
class Register:
    OP = "register"
    uuid: str
    name: str = ""
    nics: tuple[Nic, ...] = ()
    properties: dict[str, str | None] = field(default_factory=dict)
    cert: str | None = None           # VM certificate, PEM text (master mode evidence)
    images: tuple[str, ...] = ()      # absolute paths the proxy hashes (master mode evidence)
    # false: tx checksum offload off on every vif of the VM, whatever its TVDs say (xl.cfg
    # tvd_tx_checksum_offload = 0); true (the default): as its TVDs say. Never turns it on.
    tx_checksum_offload: bool = True

    @classmethod
    def parse(cls, req: dict) -> "Register":
        uuid = _str(req, "uuid", UUID_RE)
        name = req.get("name") or ""
        if not isinstance(name, str):
            raise ProtocolError("'name' must be a string")
        nics = req.get("nics") or []
        props = req.get("properties") or {}
        if not isinstance(nics, list) or not isinstance(props, dict):
            raise ProtocolError("'nics' must be a list and 'properties' an object")
        parsed = []
        for n in nics:
            if not isinstance(n, dict):
                raise ProtocolError("each nic must be an object {devid, tvd}")
            parsed.append(Nic(tvd=_str(n, "tvd", NAME_RE), devid=_int(n, "devid", required=False)))
        for p, a in props.items():
            if not isinstance(p, str) or not (a is None or isinstance(a, str)):
                raise ProtocolError("'properties' maps property names to an assurance kind or null")
        cert = req.get("cert")
        if cert is not None and (not isinstance(cert, str) or "BEGIN CERTIFICATE" not in cert):
            raise ProtocolError("'cert' must be the VM certificate as PEM text (xl.cfg tvd_cert "
                                "names its file)")
        images = req.get("images") or []
        if not isinstance(images, list) or len(images) > MAX_IMAGES or not all(
                isinstance(p, str) and p.startswith("/") for p in images):
            raise ProtocolError(f"'images' must be a list of at most {MAX_IMAGES} absolute paths "
                                "(kernel, ramdisk, disks)")
        csum = req.get("tx_checksum_offload", True)
        if not isinstance(csum, bool):
            raise ProtocolError(f"'tx_checksum_offload' must be true or false (false: off on "
                                f"every vif of the VM), got {csum!r}")
        return cls(uuid=uuid, name=name, nics=tuple(parsed), properties=dict(props),
                   cert=cert or None, images=tuple(images), tx_checksum_offload=csum)

    def to_wire(self) -> dict:
        return _wire(self.OP, uuid=self.uuid, name=self.name,
                     nics=[{"devid": n.devid, "tvd": n.tvd} for n in self.nics],
                     properties=dict(self.properties), cert=self.cert,
                     images=list(self.images) or None,
                     tx_checksum_offload=None if self.tx_checksum_offload else False)


@dataclass(frozen=True)
class Unregister:
    OP = "unregister"
    uuid: str

    @classmethod
    def parse(cls, req: dict) -> "Unregister":
        return cls(_str(req, "uuid", UUID_RE))

    def to_wire(self) -> dict:
        return _wire(self.OP, uuid=self.uuid)


@dataclass(frozen=True)
class Join:
    OP = "join"
    uuid: str
    tvd: str
    devid: int | None = None

    @classmethod
    def parse(cls, req: dict) -> "Join":
        return cls(_str(req, "uuid", UUID_RE), _str(req, "tvd", NAME_RE),
                   _int(req, "devid", required=False))

    def to_wire(self) -> dict:
        return _wire(self.OP, uuid=self.uuid, tvd=self.tvd, devid=self.devid)


@dataclass(frozen=True)
class Leave:
    OP = "leave"
    uuid: str
    tvd: str

    @classmethod
    def parse(cls, req: dict) -> "Leave":
        return cls(_str(req, "uuid", UUID_RE), _str(req, "tvd", NAME_RE))

    def to_wire(self) -> dict:
        return _wire(self.OP, uuid=self.uuid, tvd=self.tvd)


VIF_TYPES = ("vif", "tap")


@dataclass(frozen=True)
class VifOnline:
    """What vif-tvd reads from xenstore for a backend vif (or the emulated NIC's tap)."""
    OP = "vif-online"
    ifname: str
    uuid: str
    domid: int
    devid: int
    bridge: str | None = None                 # the backend `bridge` key, e.g. tvd:alpha
    type: str = "vif"                         # vif (netback) or tap (the emulated NIC)
    mac: str | None = None                    # the backend `mac` key, lower-case
    addresses: tuple[str, ...] | None = None  # the backend `ip` key; None: not declared
    mtu: int | None = None                    # the backend `mtu` key (xl vif mtu=)
    name: str | None = None                   # the domain's name, for logs only

    @classmethod
    def parse(cls, req: dict) -> "VifOnline":
        ifname = _str(req, "ifname", IFNAME_RE)
        uuid = _str(req, "uuid", UUID_RE)
        domid = _int(req, "domid")
        devid = _int(req, "devid")
        bridge = req.get("bridge")
        if bridge is not None and not isinstance(bridge, str):
            raise ProtocolError("'bridge' must be a string")
        vtype = req.get("type") or "vif"
        if vtype not in VIF_TYPES:
            raise ProtocolError(f"'type' must be vif or tap, got {vtype!r}")
        mac = _mac(req.get("mac"))
        addresses = _addresses(req.get("ip"))
        mtu = _int(req, "mtu", required=False)
        if mtu is not None and not 68 <= mtu <= 65535:
            raise ProtocolError(f"'mtu' must be 68..65535, got {mtu}")
        name = req.get("name")
        return cls(ifname=ifname, uuid=uuid, domid=domid, devid=devid, bridge=bridge, type=vtype,
                   mac=mac, addresses=addresses, mtu=mtu,
                   name=name if isinstance(name, str) else None)

    def to_wire(self) -> dict:
        ip = None if self.addresses is None else " ".join(self.addresses)
        return _wire(self.OP, ifname=self.ifname, uuid=self.uuid, domid=self.domid,
                     devid=self.devid, bridge=self.bridge, type=self.type, mac=self.mac, ip=ip,
                     mtu=self.mtu, name=self.name)


@dataclass(frozen=True)
class VifOffline:
    OP = "vif-offline"
    ifname: str

    @classmethod
    def parse(cls, req: dict) -> "VifOffline":
        return cls(_str(req, "ifname", IFNAME_RE))

    def to_wire(self) -> dict:
        return _wire(self.OP, ifname=self.ifname)


@dataclass(frozen=True)
class PortOnline:
    """The libvirt network hook's port-created; tvd None: the network is in no TVD."""
    OP = "port-online"
    port: str
    uuid: str
    tvd: str | None = None
    name: str = ""
    mac: str | None = None
    network: str | None = None
    bridge: str | None = None

    @classmethod
    def parse(cls, req: dict) -> "PortOnline":
        return cls(port=_str(req, "port", UUID_RE), uuid=_str(req, "uuid", UUID_RE),
                   tvd=_str(req, "tvd", NAME_RE, required=False) or None,
                   name=_str(req, "name", required=False) or "", mac=_mac(req.get("mac")),
                   network=_str(req, "network", required=False),
                   bridge=_str(req, "bridge", required=False))

    def to_wire(self) -> dict:
        # every key, nulls too (tvd null is meaningful: a network outside every TVD)
        return {"op": self.OP, "port": self.port, "uuid": self.uuid, "name": self.name,
                "tvd": self.tvd, "mac": self.mac, "network": self.network, "bridge": self.bridge}


@dataclass(frozen=True)
class PortOffline:
    OP = "port-offline"
    port: str

    @classmethod
    def parse(cls, req: dict) -> "PortOffline":
        return cls(_str(req, "port", UUID_RE))

    def to_wire(self) -> dict:
        return _wire(self.OP, port=self.port)


@dataclass(frozen=True)
class Check:
    """The libvirt domain hook's reconnect: would the running VM be admitted into `tvds`?"""
    OP = "check"
    uuid: str
    tvds: tuple[str, ...]
    name: str = ""

    @classmethod
    def parse(cls, req: dict) -> "Check":
        tvds = req.get("tvds")
        if not isinstance(tvds, list) or not 0 < len(tvds) <= MAX_CHECK_TVDS or not all(
                isinstance(t, str) and NAME_RE.match(t) for t in tvds):
            raise ProtocolError(f"'tvds' must be a list of 1-{MAX_CHECK_TVDS} TVD names, "
                                f"got {tvds!r}")
        return cls(uuid=_str(req, "uuid", UUID_RE), tvds=tuple(tvds),
                   name=_str(req, "name", required=False) or "")

    def to_wire(self) -> dict:
        return _wire(self.OP, uuid=self.uuid, name=self.name, tvds=list(self.tvds))


def _names(req: dict, key: str, pattern, most: int, least: int = 0) -> tuple[str, ...]:
    v = req.get(key) or []
    if not isinstance(v, list) or not least <= len(v) <= most or not all(
            isinstance(x, str) and pattern.match(x) for x in v):
        raise ProtocolError(f"'{key}' must be a list of {least}-{most} names, got {v!r}")
    return tuple(v)


@dataclass(frozen=True)
class Inspect:
    """tvdctl explain's live-kernel step: what this host's kernel does for one exchange.
    Read-only; the answer is bounded (two TVDs, two vifs, one MAC)."""
    OP = "inspect"
    tvds: tuple[str, ...]             # 1-2 TVD names: the source's, the destination's
    vifs: tuple[str, ...] = ()        # 0-2 ifnames: the endpoints' vifs here
    mac: str | None = None            # the destination's MAC: its FDB entry on these vSwitches

    @classmethod
    def parse(cls, req: dict) -> "Inspect":
        return cls(tvds=_names(req, "tvds", NAME_RE, 2, 1), vifs=_names(req, "vifs", IFNAME_RE, 2),
                   mac=_mac(req.get("mac")))

    def to_wire(self) -> dict:
        return _wire(self.OP, tvds=list(self.tvds), vifs=list(self.vifs), mac=self.mac)


PROBE_PHASES = ("arm", "collect")
PROBE_PROTOCOLS = ("icmp", "tcp", "udp")
MAX_PROBE_TIMEOUT = 10.0
PROBE_ID_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Probe:
    """tvdctl explain --probe --yes: one real packet, traced. `arm` on every host involved
    (with `inject`: this host sends it from that vif right away), then `collect` on each."""
    OP = "probe"
    id: str                               # 16 hex digits, chosen by the client
    phase: str = "arm"
    src: str | None = None                # arm: IPv4 addresses of the exchange
    dst: str | None = None
    proto: str = "icmp"
    port: int | None = None
    ip_id: int | None = None              # 1..65535: marks the packet
    inject: str | None = None             # a vif of this proxy: send from it
    dst_mac: str | None = None            # the destination's MAC (same TVD); routed: the leg's
    watch: tuple[str, ...] = ()           # vifs of this proxy: arrival and answers
    timeout: float = 1.5                  # seconds the probe waits for its outcome

    @classmethod
    def parse(cls, req: dict) -> "Probe":
        pid = _str(req, "id", PROBE_ID_RE)
        phase = req.get("phase")
        if phase not in PROBE_PHASES:
            raise ProtocolError(f"'phase' must be one of {', '.join(PROBE_PHASES)}, got {phase!r}")
        if phase == "collect":
            return cls(id=pid, phase=phase)
        addrs = []
        for k in ("src", "dst"):
            v = req.get(k)
            try:
                addrs.append(str(ipaddress.IPv4Address(v)))
            except (ValueError, TypeError):
                raise ProtocolError(f"'{k}' must be an IPv4 address (a probe is IPv4 only), "
                                    f"got {v!r}") from None
        proto = req.get("proto") or "icmp"
        if proto not in PROBE_PROTOCOLS:
            raise ProtocolError(f"'proto' must be one of {', '.join(PROBE_PROTOCOLS)}")
        port = _int(req, "port", required=proto != "icmp")
        if port is not None and not 1 <= port <= 65535:
            raise ProtocolError(f"'port' must be 1..65535, got {port}")
        ip_id = _int(req, "ip_id")
        if not 1 <= ip_id <= 65535:
            raise ProtocolError(f"'ip_id' must be 1..65535, got {ip_id}")
        timeout = req.get("timeout", 1.5)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0.1 <= timeout <= MAX_PROBE_TIMEOUT:
            raise ProtocolError(f"'timeout' must be 0.1..{MAX_PROBE_TIMEOUT:g} seconds")
        return cls(id=pid, phase=phase, src=addrs[0], dst=addrs[1], proto=proto,
                   port=port if proto != "icmp" else None, ip_id=ip_id,
                   inject=_str(req, "inject", IFNAME_RE, required=False),
                   dst_mac=_mac(req.get("dst_mac")), watch=_names(req, "watch", IFNAME_RE, 2),
                   timeout=float(timeout))

    def to_wire(self) -> dict:
        if self.phase == "collect":
            return _wire(self.OP, id=self.id, phase=self.phase)
        return _wire(self.OP, id=self.id, phase=self.phase, src=self.src, dst=self.dst,
                     proto=self.proto, port=self.port, ip_id=self.ip_id, inject=self.inject,
                     dst_mac=self.dst_mac, watch=list(self.watch), timeout=self.timeout)


Request = (Ping | Status | Register | Unregister | Join | Leave | VifOnline | VifOffline
           | PortOnline | PortOffline | Check | Inspect | Probe)

BY_OP: dict[str, type] = {c.OP: c for c in (Ping, Status, Register, Unregister, Join, Leave,
                                             VifOnline, VifOffline, PortOnline, PortOffline,
                                             Check, Inspect, Probe)}


def parse(obj: dict) -> "Request":
    """The typed request of an envelope protocol.decode_request() accepted."""
    return BY_OP[obj["op"]].parse(obj)
