"""The lab's tvd-proxies, one per host, and what the Xen toolstack and vif-tvd send them:
`register` per VM and `vif-online` per NIC over the proxy's socket (docs/proxy-protocol.md).
The proxy admits and attaches, or refuses and leaves the vif detached; the lab sets the
answer's MTU on the VM's NIC (what netfront does). State: STATE_DIR/<name>/ (state.Paths).
Every request goes through the typed client (xen_tvd.proxy.client), as tvdctl's do."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import uuid as uuidlib

from xen_tvd.desired.names import BACKEND_BRIDGE_PREFIX
from xen_tvd.lab import nsutil
from xen_tvd.lab.common import LabError, Log, start_timeout
from xen_tvd.lab.processes import (PROXY_MODULE, cmdline_args, log_tail, running, spawn, stop,
                                   strays, write_file)
from xen_tvd.lab.state import Paths
from xen_tvd.lab.topology import Topology
from xen_tvd.policy.model import Policy
from xen_tvd.proxy.client import ProxyClient, ProxyRefused, ProxyUnreachable
from xen_tvd.proxy.requests import Nic

SOCKET_MAX = 107                  # sun_path
_netlink_lock = threading.Lock()


def vm_uuid(lab: str, vm: str) -> str:
    """Stable per lab and VM, so a rerun of `up` registers the same VM again."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"xen-tvd-lab:{lab}/{vm}"))


def write_capabilities(name: str, policy: Policy, host: str) -> str:
    path = Paths(name).caps(host)
    write_file(path, json.dumps(capabilities(policy, host, name), indent=1) + "\n")
    return path


def capabilities(policy: Policy, host: str, lab: str) -> dict:
    """The administrator's capability file (nics, security claims) for this host: the lab
    claims what the policy's capability model says; the master still narrows it to what the
    proxy's functional probes confirm."""
    h = policy.hosts[host]
    return {"nics": [{"network": n.network, "nic": n.nic, "address": n.address} for n in h.nics],
            "security": [{"property": p, "assurance": a,
                          "evidence": f"xen-tvd lab {lab}: claimed by the lab's capability model"}
                         for p, a in sorted(h.properties.items())]}


def enrolled(paths: Paths, host: str) -> bool:
    """Enrolled with THIS master: a host certificate and the same CA (a master directory
    re-created after a crash has a new CA, and the old enrolment is worthless)."""
    d = os.path.join(paths.proxy_dir(host), "master")
    try:
        with open(os.path.join(d, "ca.pem"), "rb") as a, \
                open(os.path.join(paths.master, "ca.pem"), "rb") as b:
            same = a.read() == b.read()
        return same and os.path.exists(os.path.join(d, "host.pem"))
    except OSError:
        return False


def client(name: str, host: str, timeout: float | None = None) -> ProxyClient:
    path = Paths(name).socket(host)
    return ProxyClient(path) if timeout is None else ProxyClient(path, timeout)


def proxy_status(paths: Paths, host: str, timeout: float = 10) -> dict:
    try:
        return ProxyClient(paths.socket(host), timeout).status()
    except ProxyRefused as e:
        raise LabError(f"tvd-proxy on {host}: status refused: {e.error}") from None


def status_by(paths: Paths, host: str, deadline: float) -> dict:
    """status, its answer awaited until `deadline` (time.monotonic()). A poller that gives
    up after a short fixed timeout and asks again queues one more request behind each the
    proxy still works on: on a slow machine it would never see an answer."""
    return proxy_status(paths, host, max(deadline - time.monotonic(), 0.5))


def start(name: str, topo: Topology, host: str, run_args: list[str], log: Log, *,
          keep=lambda: True, prepare=None, ready=lambda status: True,
          awaited: str = "an answer") -> None:
    """Make sure the tvd-proxy of `host` runs (`tvd-proxy run RUN_ARGS` in the host's
    namespace) and is ready. A running one is kept if keep(); else it is stopped, prepare()
    runs, and a new one is started and waited for until ready(its status)."""
    paths = Paths(name)
    ns = topo.hosts[host].ns
    sock, pdir = paths.socket(host), paths.proxy_dir(host)
    if len(sock) > SOCKET_MAX:
        raise LabError(f"host {host}: socket path {sock} is longer than {SOCKET_MAX} bytes; "
                       "use a shorter lab or host name (or XEN_TVD_LAB_STATE_DIR)")
    pid = running(paths.proxy_pid(host), PROXY_MODULE, pdir)
    if pid and keep():
        return
    stop([p for p in strays(name) if pdir in cmdline_args(p)])
    if prepare is not None:
        prepare()
    p = spawn([sys.executable, "-m", PROXY_MODULE, "run", *run_args, "--host", host,
               "--socket", sock, "--state-dir", pdir, "--netns", ns, "--segment-grace", "0",
               # the lab's vifs are veth pairs standing in for netback (devices.py)
               "--vif-driver", "veth"],
              paths.proxy_log(host), paths.proxy_pid(host))
    # a proxy's first answer follows its capability probes
    limit = start_timeout()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise LabError(f"tvd-proxy on {host} exited {p.returncode}: "
                           f"{log_tail(paths.proxy_log(host))}")
        try:
            if ready(status_by(paths, host, deadline)):
                log(f"tvd-proxy {host} running (pid {p.pid})")
                return
        except ProxyUnreachable:
            pass
        time.sleep(0.05)
    last = log_tail(paths.proxy_log(host))    # what it did last, before stopping says "stopped"
    stop([p.pid])
    raise LabError(f"tvd-proxy on {host}: {awaited} within {limit:g} s "
                   f"(XEN_TVD_LAB_START_TIMEOUT raises it on a slow machine): {last}")


# ---- VMs --------------------------------------------------------------------------------------

def attach_vm(name: str, topo: Topology, vm: str, cert: str | None = None,
              properties: dict | None = None) -> tuple[bool, list[str]]:
    """register (with the VM certificate, or self-asserted properties, if any) + vif-online
    per NIC, as the toolstack hook and vif-tvd do. (all admitted, refusal reasons)."""
    lv = topo.vms[vm]
    vifs = [n for n in lv.nics if n.vif.startswith("vif")]
    if not vifs:
        return True, []    # a machine on an external network: no vif, nothing to admit
    proxy = client(name, lv.host)
    uuid = vm_uuid(name, vm)
    refused = []
    try:
        proxy.register(uuid, vm, nics=[Nic(tvd=n.tvd, devid=n.devid) for n in vifs],
                       properties=properties, cert=cert)
    except ProxyRefused as e:
        refused.append(f"register: {e.error}")
        # an older registration (earlier evidence) must not admit what this one could not
        proxy.unregister(uuid)
    for nic in vifs:
        try:
            r = proxy.vif_online(nic.vif, uuid, lv.domid, nic.devid,
                                 bridge=BACKEND_BRIDGE_PREFIX + nic.tvd, type="vif", mac=nic.mac,
                                 addresses=(nic.ip,) + ((nic.ip6,) if nic.ip6 else ()),
                                 name=vm)
        except ProxyRefused as e:
            refused.append(f"{nic.vif}: {e.error}")
            continue
        with _netlink_lock:   # hosts attach in parallel; nsutil's handle cache is shared
            nsutil.set_link(lv.ns, nic.eth, mtu=int(r["mtu"]))   # netfront and `mtu`
    return not refused, refused


def forget_removed(name: str, topo: Topology) -> None:
    """vif records and registrations of VMs the spec no longer has: `vif-offline` (the
    hotplug script's offline call; the lab removes the devices after it) and `unregister`."""
    paths = Paths(name)
    for hname in topo.hosts:
        want_vifs = {(n.vif, vm_uuid(name, v.name)) for v in topo.vms.values()
                     if v.host == hname for n in v.nics}
        want_uuids = {u for _, u in want_vifs}
        st = proxy_status(paths, hname)
        proxy = client(name, hname)
        for rec in st.get("vifs", []):
            if (rec["ifname"], rec["uuid"]) not in want_vifs:
                with contextlib.suppress(ProxyRefused):   # already detached: nothing to undo
                    proxy.vif_offline(rec["ifname"])
        for reg in st.get("registrations", []):
            if reg["uuid"] not in want_uuids:
                proxy.unregister(reg["uuid"])


def stop_removed_hosts(name: str, topo: Topology) -> None:
    paths = Paths(name)
    for f in os.listdir(paths.root):
        if f.startswith("proxy-") and f.endswith(".pid"):
            host = f[len("proxy-"):-len(".pid")]
            if host not in topo.hosts:
                pdir = paths.proxy_dir(host)
                stop([p for p in strays(name) if pdir in cmdline_args(p)])
                shutil.rmtree(pdir, ignore_errors=True)
                for leftover in (paths.proxy_pid(host), paths.socket(host), paths.caps(host)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)


