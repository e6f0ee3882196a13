"""Tier-1 harness for the proxy and vif-tvd: real namespaces, bridges, VXLAN, a real tvd-proxy
process per Dom0 and the real xen_tvd/data/hotplug/vif-tvd script.

Stand-ins, and what they stand in for:
- xenstore: tests/hotplug/xenstore-stubs/ (xenstore-read/-write/-rm/-exists over a JSON file)
  stand in for the real xenstore tools and xenstored, which cannot run without Xen. The
  nested-Xen tier uses the real ones.
- netback: a "vif" is a veth whose Dom0 end is named vif<domid>.<devid> inside a host
  namespace; its other end is eth0 of a VM namespace (the guest's netfront). Proxies run
  with `--vif-driver veth` (VETH_VIFS) to accept them; a Dom0's accepts netback and taps only.
- the physical LAN: a fabric namespace with a bridge, one veth "wire" per Dom0 (eth0).
- libxl: the test runs vif-tvd with libxl's arguments and environment (vif, XENBUS_PATH, ...).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from xen_tvd.proxy import protocol
from xen_tvd.proxy.client import ProxyClient

from tests.common.paths import REPO
from tests.common.processes import log_text, stop_process

VIF_TVD = os.path.join(REPO, "xen_tvd", "data", "hotplug", "vif-tvd")
STUBS = os.path.join(REPO, "tests", "hotplug", "xenstore-stubs")
POLICY = os.path.join(REPO, "xl-configs", "tvd-hosts-policy.yaml")
NS_PREFIX = "tvdh-"
HOSTS = {"dom0-a": "10.77.1.11", "dom0-b": "10.77.1.12"}   # as in tvd-hosts-policy.yaml
# the "vifs" here are veths (netback's stand-in): proxies must be told to accept them
VETH_VIFS = ("--vif-driver", "veth")
CREATED: set[str] = set()   # every namespace this process made (concurrent runs are not ours)


def sh(*argv, check=True, ns=None, **kw):
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


def ip(*args, ns=None, check=True):
    return sh("ip", *(["-n", ns] if ns else []), *args, check=check)


def link_info(ns: str, dev: str) -> dict | None:
    """The kernel's view (ip -j -d link), read independently of the code under test."""
    r = ip("-j", "-d", "link", "show", "dev", dev, ns=ns, check=False)
    if r.returncode != 0:
        return None
    d = json.loads(r.stdout)[0]
    return {"master": d.get("master"), "up": "UP" in d.get("flags", []), "mtu": d.get("mtu"),
            "operstate": d.get("operstate")}


def all_links(ns: str) -> list[str]:
    return [d["ifname"] for d in json.loads(ip("-j", "link", "show", ns=ns).stdout)]


class Xenstore:
    """The JSON file the xenstore stand-ins use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.write_all({})

    def read_all(self) -> dict:
        with open(self.path) as f:
            return json.load(f)

    def write_all(self, db: dict) -> None:
        tmp = self.path + ".t"
        with open(tmp, "w") as f:
            json.dump(db, f)
        os.rename(tmp, self.path)

    def update(self, **entries) -> None:
        db = self.read_all()
        db.update(entries)
        self.write_all(db)

    def set(self, path: str, value: str | None) -> None:
        db = self.read_all()
        if value is None:
            db.pop(path, None)
        else:
            db[path] = value
        self.write_all(db)

    def get(self, path: str) -> str | None:
        return self.read_all().get(path)


@dataclass
class Vm:
    name: str
    uuid: str
    domid: int
    host: str            # Dom0 name
    ns: str              # the VM's namespace
    nics: dict[int, str] = field(default_factory=dict)   # devid -> VM-side IP

    def vif(self, devid: int = 0) -> str:
        return f"vif{self.domid}.{devid}"

    def backend(self, devid: int = 0) -> str:
        return f"/local/domain/0/backend/vif/{self.domid}/{devid}"

    def frontend(self, devid: int = 0) -> str:
        return f"/local/domain/{self.domid}/device/vif/{devid}"


class Proxy:
    """`tvd-proxy run` for one Dom0: this checkout's by default; `command` (+ `env`) runs an
    installed one instead (tests/packaging: the wheel's console script, the .deb's)."""

    def __init__(self, lab: "Lab", host: str, policy: str, args=(), command=None,
                 env: dict | None = None, vif_args=VETH_VIFS) -> None:
        self.lab, self.host, self.policy, self.args = lab, host, policy, list(args)
        self.vif_args = list(vif_args)   # () : a Dom0's proxy, netback and taps only
        self.command = list(command or [sys.executable, "-m", "xen_tvd.proxy.main"])
        self.env = env if env is not None else dict(os.environ, PYTHONPATH=REPO)
        self.socket = os.path.join(lab.tmp, f"{host}.sock")
        self.client = ProxyClient(self.socket, 15)   # the product's typed client
        self.state_dir = os.path.join(lab.tmp, f"{host}-state")
        self.log_path = os.path.join(lab.tmp, f"{host}-proxy.log")
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> None:
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [*self.command, "run", "--policy", self.policy,
             "--host", self.host, "--socket", self.socket, "--state-dir", self.state_dir,
             "--netns", self.lab.host_ns[self.host], *self.vif_args, *self.args],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=self.env)
        if wait:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"tvd-proxy exited {self.proc.returncode}: {self.log()}")
                try:
                    if self.client.ping().get("ok"):
                        return
                except protocol.ProxyUnreachable:
                    pass
                time.sleep(0.05)
            raise AssertionError(f"tvd-proxy did not come up: {self.log()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = stop_process(self.proc)
        self.logf.close()
        self.proc = None
        return rc

    def log(self) -> str:
        return log_text(self.log_path)

    def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            assert time.monotonic() < deadline, f"{needle!r} not in the proxy log:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def request(self, obj: dict, timeout: float = 15) -> dict:
        """One request as a dict, ok or not (refusals the tests read); typed: self.client."""
        return protocol.request(obj, self.socket, timeout)

    def raw(self, data: bytes, timeout: float = 10) -> dict:
        """Bytes as they are (malformed requests, attacks): the proxy's one-line answer."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.socket)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        finally:
            s.close()
        return json.loads(buf)


class Lab:
    """Fabric + one namespace per Dom0 of the policy; VMs added on demand. close() removes all."""

    def __init__(self, tmp: str, hosts=("dom0-a",)) -> None:
        self.tmp = tmp
        self.run = uuidlib.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.proxies: dict[str, Proxy] = {}
        self.vms: list[Vm] = []
        self.xs = Xenstore(os.path.join(tmp, "xenstore.json"))
        self.fabric = self._ns("fab")
        ip("link", "add", "name", "fab0", "type", "bridge", ns=self.fabric)
        ip("link", "set", "fab0", "up", ns=self.fabric)
        self.host_ns: dict[str, str] = {}
        for h in hosts:
            ns = self._ns(h)
            self.host_ns[h] = ns
            peer = f"w-{h[-1]}"
            ip("link", "add", "eth0", "type", "veth", "peer", "name", peer, ns=ns)
            ip("link", "set", peer, "netns", self.fabric, ns=ns)
            ip("link", "set", peer, "master", "fab0", "up", ns=self.fabric)
            ip("addr", "add", f"{HOSTS[h]}/24", "dev", "eth0", ns=ns)
            ip("link", "set", "eth0", "up", ns=ns)

    def _ns(self, tag: str) -> str:
        name = f"{NS_PREFIX}{self.run}-{tag}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        CREATED.add(name)
        ip("link", "set", "lo", "up", ns=name)
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
           ns=name)
        return name

    def proxy(self, host: str = "dom0-a", policy: str = POLICY, start: bool = True, args=(),
              command=None, env: dict | None = None, vif_args=VETH_VIFS) -> Proxy:
        p = Proxy(self, host, policy, args, command, env, vif_args)
        self.proxies[host] = p
        if start:
            p.start()
        return p

    def vm(self, name: str, domid: int, host: str = "dom0-a", nics: dict[int, tuple[str, str]] | None = None,
           uuid: str | None = None, tap: bool = False) -> Vm:
        """A VM with one NIC per devid: {devid: (bridge key, VM IP)}. The vif is created down."""
        vm = Vm(name, uuid or str(uuidlib.uuid4()), domid, host, self._ns(f"vm{domid}"))
        hns = self.host_ns[host]
        entries = {f"/local/domain/{domid}/vm": f"/vm/{vm.uuid}",
                   f"/local/domain/{domid}/name": name,
                   f"/vm/{vm.uuid}/uuid": vm.uuid}
        for devid, (bridge, addr) in (nics or {0: ("tvd:alpha", "10.99.0.1")}).items():
            dev = f"vif{domid}.{devid}" + ("-emu" if tap else "")
            guest, tmpname = f"eth{devid}", f"g{domid}-{devid}"
            ip("link", "add", dev, "type", "veth", "peer", "name", tmpname, ns=hns)
            ip("link", "set", tmpname, "netns", vm.ns, ns=hns)
            ip("link", "set", tmpname, "name", guest, ns=vm.ns)
            # netfront takes its MAC from the backend `mac` key; port security pins it
            mac = f"00:16:3e:{domid >> 8 & 255:02x}:{domid & 255:02x}:{devid:02x}"
            ip("link", "set", guest, "address", mac, ns=vm.ns)
            ip("addr", "add", f"{addr}/24", "dev", guest, ns=vm.ns)
            ip("link", "set", guest, "up", ns=vm.ns)
            vm.nics[devid] = addr
            be, fe = vm.backend(devid), vm.frontend(devid)
            entries.update({f"{be}/frontend": fe, f"{be}/frontend-id": str(domid),
                            f"{be}/mac": mac, f"{be}/handle": str(devid), f"{be}/type": "vif",
                            f"{be}/script": "/etc/xen/scripts/vif-tvd", f"{be}/online": "1",
                            f"{fe}/backend": be, f"{fe}/backend-id": "0", f"{fe}/mac": mac,
                            f"{fe}/handle": str(devid)})
            if bridge is not None:
                entries[f"{be}/bridge"] = bridge
        self.xs.update(**entries)
        self.vms.append(vm)
        return vm

    def env(self, proxy_host: str = "dom0-a", **extra) -> dict:
        env = {"PATH": STUBS + ":/usr/sbin:/usr/bin:/sbin:/bin",
               "XENSTORE_STUB_FILE": self.xs.path,
               "TVD_PROXY_SOCKET": os.path.join(self.tmp, f"{proxy_host}.sock")}
        env.update(extra)
        return env

    def hotplug(self, vm: Vm, cmd: str = "online", devid: int = 0, type_if: str = "vif",
                env: dict | None = None, script: str = VIF_TVD, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the hotplug script as libxl does (Linux: libxl_linux.c), inside the Dom0 ns."""
        e = self.env(vm.host)
        if type_if == "vif":
            e.update({"vif": vm.vif(devid), "XENBUS_PATH": f"backend/vif/{vm.domid}/{devid}",
                      "XENBUS_TYPE": "vif", "XENBUS_BASE_PATH": "backend",
                      "script": script, "netdev": ""})
        else:
            e.update({"INTERFACE": f"{vm.vif(devid)}-emu", "vif": vm.vif(devid),
                      "XENBUS_PATH": f"backend/vif/{vm.domid}/{devid}", "script": script})
        if env:
            e.update(env)
        return subprocess.run(["ip", "netns", "exec", self.host_ns[vm.host], script, cmd,
                               f"type_if={type_if}"], env=e, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def ping(self, src: Vm, dst_ip: str, count: int = 1, size: int | None = None) -> bool:
        args = ["ping", "-c", str(count), "-W", "1", "-i", "0.2"]
        if size is not None:
            args += ["-M", "do", "-s", str(size)]
        return sh(*args, dst_ip, ns=src.ns, check=False).returncode == 0

    def close(self) -> None:
        errors = []
        for p in self.proxies.values():
            p.stop()
        for ns in reversed(self.namespaces):
            r = ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                errors.append(f"{ns}: {r.stderr.strip()}")
        assert not errors, errors


def register(proxy: "Proxy", vm: Vm, props: dict) -> None:
    """The VM's registration (its name and the properties it states), as `tvdctl xl create`
    sends it to a standalone proxy."""
    from xen_tvd.proxy import requests as rq
    r = proxy.client.send(rq.Register(vm.uuid, vm.name, properties=props))
    assert r["ok"], r


def leftover_namespaces() -> list[str]:
    """Namespaces this process created and did not remove."""
    out = ip("netns", "list").stdout
    return sorted(n for n in (line.split()[0] for line in out.splitlines()) if n in CREATED)
