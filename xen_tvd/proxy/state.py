"""What the proxy remembers: registrations (persistent), the vif table and the libvirt network
ports (this boot only).

One JSON file, <state-dir>/state.json, mode 0600, replaced atomically (write a temporary file,
fsync, rename, fsync the directory) after every change, under the proxy's writer lock.
vif and port records carry the kernel boot id: after a reboot vif names are reused by other
domains and libvirt's ports (kept under /run) are gone, so records from an earlier boot are
dropped on load.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from xen_tvd.desired.model import VifPort

STATE_VERSION = 1
STATE_FILE = "state.json"


@dataclass
class Registration:
    uuid: str
    name: str = ""
    nics: dict[int, str] = field(default_factory=dict)        # devid -> TVD (passive, xl.cfg)
    any_tvd: str | None = None                                 # tvd = "alpha" for every vif
    properties: dict[str, str | None] = field(default_factory=dict)
    joined: dict[str, int | None] = field(default_factory=dict)  # active: TVD -> devid or None
    left: list[str] = field(default_factory=list)              # TVDs the VM left (sticky)
    # master mode: evidence the proxy checks itself (docs/master-protocol.md, steps 5-6)
    cert: str | None = None                                    # VM certificate, PEM
    images: list[str] = field(default_factory=list)            # kernel/disk paths to hash
    # False: the VM opts out of vif tx checksum offload (xl.cfg tvd_tx_checksum_offload = 0):
    # off on each of its vifs at vif-online, even in a TVD that has it on
    tx_checksum_offload: bool = True

    def tvds(self) -> set[str]:
        out = set(self.nics.values()) | set(self.joined)
        if self.any_tvd:
            out.add(self.any_tvd)
        return out - set(self.left)

    def tvd_for(self, devid: int) -> str | None:
        for tvd, d in self.joined.items():
            if d == devid and tvd not in self.left:
                return tvd
        tvd = self.nics.get(devid)
        if tvd and tvd not in self.left:
            return tvd
        if self.any_tvd and self.any_tvd not in self.left:
            return self.any_tvd
        for tvd, d in self.joined.items():
            if d is None and tvd not in self.left:
                return tvd
        return None

    def to_json(self) -> dict:
        d = asdict(self)
        d["nics"] = {str(k): v for k, v in self.nics.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Registration":
        return cls(uuid=d["uuid"], name=d.get("name", ""),
                   nics={int(k): v for k, v in d.get("nics", {}).items()},
                   any_tvd=d.get("any_tvd"), properties=dict(d.get("properties", {})),
                   joined=dict(d.get("joined", {})), left=list(d.get("left", [])),
                   cert=d.get("cert"), images=list(d.get("images", [])),
                   tx_checksum_offload=d.get("tx_checksum_offload", True) is not False)


@dataclass
class VifRecord:
    ifname: str
    tvd: str
    uuid: str | None = None      # None: adopted from the kernel with no record
    domid: int | None = None
    devid: int | None = None
    type: str = "vif"
    mac: str | None = None
    addresses: list[str] | None = None   # backend `ip` key; None: not declared
    mtu: int | None = None               # backend `mtu` key (xl vif mtu=); None: the segment's
    tx_checksum_offload: bool = True     # False: its VM's registration opted out (at vif-online)

    def port(self) -> VifPort:
        """The vif as the dataplane sees it (port security, MTU, tx checksum offload)."""
        return VifPort(self.ifname, self.tvd, mac=self.mac,
                       addresses=None if self.addresses is None else tuple(self.addresses),
                       mtu=self.mtu, tx_csum_offload=self.tx_checksum_offload)


@dataclass
class PortRecord:
    """A libvirt network port the proxy admitted (network hook, port-created): the NIC is a
    tap/vif libvirt (qemu, or libxl's vif-bridge) attached to the TVD's vSwitch itself, so the
    proxy knows it by libvirt's port UUID, not by an interface name."""
    port: str                    # libvirt's networkport UUID
    uuid: str                    # the VM's UUID (the port's owner)
    tvd: str
    name: str = ""               # the VM's name, for logs
    mac: str | None = None
    network: str | None = None   # the libvirt network's name, for logs


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class StateStore:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.path = os.path.join(directory, STATE_FILE)

    def load(self) -> tuple[dict[str, Registration], dict[str, VifRecord],
                            dict[str, PortRecord], list[str]]:
        """(registrations, vifs, ports, notes). A missing file is an empty state; a corrupt one is
        an error (the administrator must look: silently starting empty would forget memberships)."""
        notes: list[str] = []
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return {}, {}, {}, notes
        except (OSError, ValueError) as e:
            raise RuntimeError(f"state file {self.path} is unreadable ({e}); move it away to start "
                               f"with no registrations") from None
        if not isinstance(raw, dict) or raw.get("v") != STATE_VERSION:
            raise RuntimeError(f"state file {self.path} has an unknown format (want v{STATE_VERSION})")
        regs = {}
        for d in raw.get("registrations", []):
            r = Registration.from_json(d)
            regs[r.uuid] = r
        vifs, ports = {}, {}
        if raw.get("boot_id") == boot_id():
            for d in raw.get("vifs", []):
                v = VifRecord(**d)
                vifs[v.ifname] = v
            for d in raw.get("ports", []):   # absent in files written before libvirt ports
                p = PortRecord(**d)
                ports[p.port] = p
        else:
            for key, what in (("vifs", "vif"), ("ports", "libvirt port")):
                if raw.get(key):
                    notes.append(f"dropped {len(raw[key])} {what} record(s) from an earlier boot")
        return regs, vifs, ports, notes

    def save(self, regs: dict[str, Registration], vifs: dict[str, VifRecord],
             ports: dict[str, PortRecord]) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        data = {"v": STATE_VERSION, "boot_id": boot_id(),
                "registrations": [regs[k].to_json() for k in sorted(regs)],
                "vifs": [asdict(vifs[k]) for k in sorted(vifs)],
                "ports": [asdict(ports[k]) for k in sorted(ports)]}
        tmp = f"{self.path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            buf = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
            while buf:
                buf = buf[os.write(fd, buf):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
