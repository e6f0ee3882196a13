"""Master mode of the lab (`control: master`): the product decides, the lab only wires.

On top of what every lab has (world.py: namespaces, fabric, VM veths; listeners) `up` runs:

  <name>-master   the master's namespace. It is also the management LAN: a bridge `mgmt`
                  (10.254.0.0/24, the master on .1) with one veth `mgmt0` into every host
                  namespace (10.254.0.10, .11, ... in host-name order). A dedicated
                  management network, as in a real deployment: control traffic never shares
                  the underlay the TVDs' VXLAN runs on, and it does not depend on the WAN
                  router (hosts behind it reach the master directly).
  tvd-master      `init`, `serve` (inside <name>-master), `policy push` of the spec's policy,
                  one `token` per host, a `vm-cert` per VM that has `properties:`.
  tvd-proxy       per host: `enroll` (inside the host namespace, token on stdin) and
                  `run --master --netns <host ns>` with the host's capability file.
  vifs            per VM: `register` (with its certificate) and one `vif-online` per NIC over
                  the proxy's socket, the requests the Xen toolstack hook and vif-tvd
                  send. The proxy admits or refuses; the lab never plugs a vif itself.

Everything of the control plane lives in STATE_DIR/<name>/ (master directory, proxy state
directories, sockets, pid files, logs); `down` stops the daemons (pid file, cross-checked
against /proc/PID/cmdline, plus a /proc scan for strays), removes <name>-master and that
directory.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from xen_tvd.lab import nsutil, proxies
from xen_tvd.lab import replicas as lab_replicas
from xen_tvd.lab.common import LabError, Log, agent_env, start_timeout
from xen_tvd.lab.processes import (MASTER_MODULE, PROXY_MODULE, cmdline_args, last_line,
                                   log_tail, running, spawn, stop, strays, write_file)
from xen_tvd.lab.proxies import vm_uuid
from xen_tvd.lab.spec import LabSpec
from xen_tvd.lab.state import Paths
from xen_tvd.lab.topology import Topology
from xen_tvd.policy.model import Policy
from xen_tvd.proxy.client import ProxyUnreachable

MGMT_NET = ipaddress.ip_network("10.254.0.0/24")
MASTER_IP = "10.254.0.1"
MASTER_PORT = 8443
URL = f"https://{MASTER_IP}:{MASTER_PORT}"
MGMT_BRIDGE = "mgmt"
MGMT_IF = "mgmt0"
HOST_IP_BASE = 10                 # host i gets 10.254.0.(10+i)


def master_ns(name: str) -> str:
    return f"{name}-master"


def denied_vms(spec: LabSpec) -> set[str]:
    return {v for v, vm in spec.vms.items() if vm.expect == "denied"}


def host_addresses(topo: Topology) -> dict[str, str]:
    return {h: str(MGMT_NET.network_address + HOST_IP_BASE + i)
            for i, h in enumerate(sorted(topo.hosts))}


# ---- the master -------------------------------------------------------------------------------

def master_cli(name: str, *args: str, stdin: str | None = None) -> str:
    """Run the real `tvd-master --dir DIR ARGS`; stdout, or LabError with its last stderr line."""
    d = Paths(name).master
    cmd = [sys.executable, "-m", MASTER_MODULE, "--dir", d, *args]
    if os.path.exists(os.path.join(d, "store")):   # replicas: etcd answers only in there
        cmd = ["ip", "netns", "exec", master_ns(name), *cmd]
    r = subprocess.run(cmd,
                       input=stdin, capture_output=True, text=True, env=agent_env(), timeout=120)
    if r.returncode != 0:
        raise LabError(f"tvd-master {args[0]}: {last_line(r.stderr or r.stdout)}")
    return r.stdout


def start_masters(name: str, replicas: int, log: Log) -> list[str]:
    """The master(s) serving; their URLs (`replicas: N` > 1: N replicas on etcd, replicas.py)."""
    if replicas > 1:
        return lab_replicas.start(name, master_ns(name), replicas, MGMT_NET, MGMT_BRIDGE,
                                  MASTER_PORT, log)
    start_master(name, log)
    return [URL]


def start_master(name: str, log: Log) -> None:
    paths, ns = Paths(name), master_ns(name)
    if running(paths.master_pid, MASTER_MODULE, paths.master) and nsutil.tcp_listening(ns, MASTER_IP, MASTER_PORT):
        return
    stop([p for p in strays(name) if paths.master in cmdline_args(p)])
    master_cli(name, "init", "--url", URL)    # idempotent: "already initialised"
    p = spawn(["ip", "netns", "exec", ns, sys.executable, "-m", MASTER_MODULE, "--dir",
                paths.master, "serve"], paths.master_log, paths.master_pid)
    deadline = time.monotonic() + start_timeout()
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise LabError(f"tvd-master exited {p.returncode}: {log_tail(paths.master_log)}")
        if nsutil.tcp_listening(ns, MASTER_IP, MASTER_PORT):
            log(f"tvd-master serving {URL} in {ns} (pid {p.pid})")
            return
        time.sleep(0.1)
    stop([p.pid])
    raise LabError(f"tvd-master did not listen on {URL} within {start_timeout():g} s: "
                   f"{log_tail(paths.master_log)}")


# ---- the management network -------------------------------------------------------------------

def mgmt_network(topo: Topology, policy: Policy) -> None:
    for net_name, net in policy.networks.items():
        if ipaddress.ip_network(net.subnet, strict=False).overlaps(MGMT_NET):
            raise LabError(f"network {net_name} ({net.subnet}) overlaps the lab's management "
                           f"network {MGMT_NET} (control: master); use another subnet")
    if len(topo.hosts) > MGMT_NET.num_addresses - HOST_IP_BASE - 1:
        raise LabError(f"control: master supports at most "
                       f"{MGMT_NET.num_addresses - HOST_IP_BASE - 1} hosts")
    ns = master_ns(topo.name)
    nsutil.ensure_ns(ns, topo.name)
    nsutil.ensure_bridge(ns, MGMT_BRIDGE)
    nsutil.ensure_addresses(ns, MGMT_BRIDGE, [f"{MASTER_IP}/{MGMT_NET.prefixlen}"])
    addrs = host_addresses(topo)
    for i, (hname, host) in enumerate(sorted(topo.hosts.items())):
        if any(w.ifname == MGMT_IF for w in host.wires):
            raise LabError(f"host {hname}: its policy NIC {MGMT_IF} is the name the lab gives "
                           "the management NIC (control: master); rename it in the policy")
        port = f"m-{hname}" if len(f"m-{hname}") <= 15 else f"m{i}"
        nsutil.ensure_veth(host.ns, MGMT_IF, ns, port)
        nsutil.set_link(ns, port, master=MGMT_BRIDGE, up=True)
        nsutil.set_link(host.ns, MGMT_IF, up=True)
        nsutil.ensure_addresses(host.ns, MGMT_IF, [f"{addrs[hname]}/{MGMT_NET.prefixlen}"])


# ---- proxies ----------------------------------------------------------------------------------

def start_proxy(name: str, policy: Policy, topo: Topology, host: str, log: Log,
                urls: list[str] = (URL,)) -> None:
    """`tvd-proxy run --master`, enrolled first (again, if the master was re-created), and
    holding a bundle from the master."""
    paths = Paths(name)
    ns, pdir = topo.hosts[host].ns, paths.proxy_dir(host)
    caps = proxies.write_capabilities(name, policy, host)

    def enrol() -> None:
        if proxies.enrolled(paths, host):
            return
        token = master_cli(name, "token", host).split("\n", 1)[0].strip()
        # the token goes on stdin: a command line is readable by every local user
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", PROXY_MODULE,
                            "enroll", ",".join(urls), "-", "--host", host, "--state-dir", pdir],
                           input=token + "\n", capture_output=True, text=True, env=agent_env(),
                           timeout=120)
        if r.returncode != 0:
            raise LabError(f"host {host}: {last_line(r.stderr or r.stdout)}")
    proxies.start(name, topo, host, ["--master", "--capabilities", caps], log,
                  keep=lambda: proxies.enrolled(paths, host), prepare=enrol,
                  ready=lambda st: (st.get("master") or {}).get("generation") is not None,
                  awaited="no bundle from the master")


# ---- VMs --------------------------------------------------------------------------------------

def _vm_cert(name: str, vm: str, uuid: str, props: dict[str, str]) -> str | None:
    """PEM text of the VM's master-issued certificate; re-issued when its properties changed."""
    if not props:
        return None
    prefix = Paths(name).vm_cert(vm)
    meta = {"uuid": uuid, "properties": props}
    try:
        with open(prefix + ".json") as f:
            if json.load(f) == meta:
                with open(prefix + ".pem") as c:
                    return c.read()
    except (OSError, ValueError):
        pass
    for ext in (".pem", ".key", ".json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(prefix + ext)
    args = ["vm-cert", vm, "--uuid", uuid, "--out", prefix]
    for p, a in sorted(props.items()):
        args += ["--property", f"{p}={a}"]
    master_cli(name, *args)
    write_file(prefix + ".json", json.dumps(meta))
    with open(prefix + ".pem") as c:
        return c.read()


# ---- up / down --------------------------------------------------------------------------------

def up(spec: LabSpec, policy: Policy, topo: Topology, errors: list[str], log: Log) -> dict:
    """Bring up master, proxies and admissions; returns the state's `control` entry."""
    paths = Paths(spec.name)
    os.makedirs(paths.root, mode=0o700, exist_ok=True)
    proxies.stop_removed_hosts(spec.name, topo)
    mgmt_network(topo, policy)
    urls = start_masters(spec.name, spec.replicas, log)
    before = _master_generations(spec.name)
    out = master_cli(spec.name, "policy", "push", spec.policy_path)
    log(f"tvd-master: {last_line(out)}")
    pushed = last_line(out).endswith(" pushed")
    failures: dict[str, str] = {}

    def start(h: str) -> None:
        try:
            start_proxy(spec.name, policy, topo, h, log, urls)
        except (LabError, OSError, subprocess.TimeoutExpired) as e:
            failures[h] = str(e)
    threads = [threading.Thread(target=start, args=(h,)) for h in sorted(topo.hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors.extend(failures[h] for h in sorted(failures))
    _sync_bundles(spec.name, topo, before if pushed else {}, failures)
    errors.extend(failures[h] for h in sorted(failures) if failures[h] not in errors)
    outcomes: dict[str, dict] = {}
    results: dict[str, tuple[bool, list[str]] | str] = {}

    def attach(host: str) -> None:   # one proxy serialises its requests; hosts in parallel
        for vm in sorted(v for v in topo.vms if topo.vms[v].host == host):
            try:
                cert = _vm_cert(spec.name, vm, vm_uuid(spec.name, vm), spec.vms[vm].properties)
                results[vm] = proxies.attach_vm(spec.name, topo, vm, cert)
            except (ProxyUnreachable, LabError, OSError) as e:
                results[vm] = str(e)
    threads = [threading.Thread(target=attach, args=(h,)) for h in sorted(topo.hosts)
               if h not in failures]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for vm in sorted(topo.vms):
        host = topo.vms[vm].host
        if host in failures:
            errors.append(f"VM {vm}: not attached, the tvd-proxy of {host} is not running")
            continue
        res = results.get(vm, "not attached")
        if isinstance(res, str):
            errors.append(f"VM {vm}: {res}")
            continue
        ok, reasons = res
        want = spec.vms[vm].expect
        outcomes[vm] = {"uuid": vm_uuid(spec.name, vm), "admitted": ok, "expect": want,
                        "reasons": reasons}
        if ok and want == "denied":
            errors.append(f"VM {vm}: admitted, but the spec expects its admission to be denied")
        elif not ok and want == "admitted":
            errors.append(f"VM {vm}: admission refused: {'; '.join(reasons)}")
        elif not ok:
            log(f"VM {vm}: denied, as the spec expects ({reasons[0]})")
    if not failures:
        with contextlib.suppress(ProxyUnreachable, LabError):
            proxies.forget_removed(spec.name, topo)
    return {"mode": "master", "url": urls[0], "urls": urls, "namespace": master_ns(spec.name),
            "dir": paths.root, "vms": outcomes}


def _master_generations(name: str) -> dict[str, int]:
    """host -> generation of the newest bundle the master made for it (enrolled hosts)."""
    try:
        hosts = json.loads(master_cli(name, "hosts", "--json"))
    except ValueError:
        raise LabError("tvd-master hosts --json: not JSON") from None
    return {h["host"]: h["generation"] for h in hosts if h["state"] == "enrolled"}


def _sync_bundles(name: str, topo: Topology, before: dict[str, int],
                  failures: dict[str, str]) -> None:
    """Admissions must be judged by the policy just pushed, not by a proxy's older bundle
    (a restarted proxy starts from its stored one; a push reaches running proxies on their
    next watch turn). `before`: the master's generations before a push that changed the
    policy; every host the master had then gets a newer one, as the policy is in every
    bundle. Then each proxy must hold at least the master's generation for it."""
    paths = Paths(name)
    deadline = time.monotonic() + start_timeout()
    gens = _master_generations(name)
    while any(gens.get(h, 0) <= g for h, g in before.items() if h in topo.hosts):
        if time.monotonic() > deadline:
            failures["master"] = (f"tvd-master made no bundles for the pushed policy within "
                                  f"{start_timeout():g} s: {log_tail(paths.master_log)}")
            return
        time.sleep(0.1)
        gens = _master_generations(name)
    for h in sorted(topo.hosts):
        if h in failures:
            continue
        have = None
        while time.monotonic() < deadline:
            try:
                have = (proxies.status_by(paths, h, deadline).get("master") or {}).get("generation")
            except ProxyUnreachable:
                have = None
            if have is not None and have >= gens.get(h, 0):
                break
            time.sleep(0.1)
        else:
            failures[h] = (f"tvd-proxy {h}: holds bundle generation {have}, the master made "
                           f"{gens.get(h)}; not current after {start_timeout():g} s: "
                           f"{log_tail(paths.proxy_log(h))}")


def down(name: str, log: Log = lambda s: None) -> bool:
    """Stop the master and proxies, remove <name>-master and STATE_DIR/<name>/. Idempotent;
    works from the pid files, the /proc scan and the namespace mark (no state needed).
    Returns whether there was anything to remove."""
    paths = Paths(name)
    pids = set(strays(name))
    pid = running(paths.master_pid, MASTER_MODULE, paths.master)
    if pid:
        pids.add(pid)
    ns = master_ns(name)
    found = bool(pids) or os.path.isdir(paths.root)
    stop(sorted(pids))
    # marked by this lab, or unmarked (a crash between creating and marking it), as lab.py
    if nsutil.ns_exists(ns) and nsutil.ns_mark(ns) in (name, ""):
        nsutil.kill_pids(nsutil.pids_in_ns([ns]))
        nsutil.remove_ns(ns)
        log(f"removed {ns}")
        found = True
    if nsutil.ns_exists(ns) and nsutil.ns_mark(ns) in (name, ""):
        raise LabError(f"lab {name}: namespace {ns} still present after down")
    shutil.rmtree(paths.root, ignore_errors=True)
    if os.path.exists(paths.root):
        raise LabError(f"lab {name}: cannot remove {paths.root}")
    if pids:
        log(f"stopped tvd-master/tvd-proxy: {len(pids)} process(es)")
    return found


