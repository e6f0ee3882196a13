"""Master mode of the lab (`control: master`): the product decides, the lab only wires.

On top of what direct mode builds (namespaces, fabric, VM veths, listeners) `up` runs:

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
                  the proxy's socket, the requests the Xen toolstack hook and hotplug/vif-tvd
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
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib

from xen_tvd.lab import nsutil
from xen_tvd.lab.lab import STATE_DIR, LabError, Log, agent_env
from xen_tvd.lab.lab import _cmdline as lab_cmdline
from xen_tvd.lab.spec import LabSpec
from xen_tvd.lab.topology import Topology
from xen_tvd.policy.model import Policy
from xen_tvd.proxy import protocol

MGMT_NET = ipaddress.ip_network("10.254.0.0/24")
MASTER_IP = "10.254.0.1"
MASTER_PORT = 8443
URL = f"https://{MASTER_IP}:{MASTER_PORT}"
MGMT_BRIDGE = "mgmt"
MGMT_IF = "mgmt0"
HOST_IP_BASE = 10                 # host i gets 10.254.0.(10+i)
MASTER_MODULE = "xen_tvd.master"
PROXY_MODULE = "xen_tvd.proxy.main"
START_TIMEOUT = 30.0              # a proxy's first bundle follows its capability probes
AUDIT_TIMEOUT = 20.0              # the proxies flush their audit spool every watch turn
SOCKET_MAX = 107                  # sun_path
_netlink_lock = threading.Lock()


# ---- names and paths --------------------------------------------------------------------------

def master_ns(name: str) -> str:
    return f"{name}-master"


def run_dir(name: str) -> str:
    return os.path.join(STATE_DIR, name)


class Paths:
    def __init__(self, name: str) -> None:
        self.root = run_dir(name)
        self.master = os.path.join(self.root, "master")
        self.master_pid = os.path.join(self.root, "master.pid")
        self.master_log = os.path.join(self.root, "master.log")

    def proxy_dir(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}")

    def proxy_pid(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}.pid")

    def proxy_log(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}.log")

    def socket(self, host: str) -> str:
        return os.path.join(self.root, f"proxy-{host}.sock")

    def caps(self, host: str) -> str:
        return os.path.join(self.root, f"caps-{host}.json")

    def vm_cert(self, vm: str) -> str:
        """Prefix: tvd-master vm-cert writes PREFIX.pem and PREFIX.key."""
        return os.path.join(self.root, f"vm-{vm}")


def vm_uuid(lab: str, vm: str) -> str:
    """Stable per lab and VM, so a rerun of `up` registers the same VM again."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"xen-tvd-lab:{lab}/{vm}"))


def denied_vms(spec: LabSpec) -> set[str]:
    return {v for v, vm in spec.vms.items() if vm.expect == "denied"}


def host_addresses(topo: Topology) -> dict[str, str]:
    return {h: str(MGMT_NET.network_address + HOST_IP_BASE + i)
            for i, h in enumerate(sorted(topo.hosts))}


# ---- processes --------------------------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in lab_cmdline(pid).split(b"\0") if a]


def _is_daemon(pid: int, module: str, path: str) -> bool:
    """The pid is `python -m MODULE ... PATH ...` (pids are reused: never trust the file alone)."""
    cl = _cmdline(pid)
    return module in cl and path in cl


def _running(pid_file: str, module: str, path: str) -> int | None:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_daemon(pid, module, path) else None


def strays(name: str) -> list[int]:
    """Masters and proxies of this lab wherever they are, pid file or not (crash leftovers)."""
    prefix = run_dir(name) + os.sep
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        cl = _cmdline(int(p))
        if (MASTER_MODULE in cl or PROXY_MODULE in cl) and any(a.startswith(prefix) for a in cl):
            out.append(int(p))
    return out


def _spawn(cmd: list[str], log_path: str, pid_file: str) -> subprocess.Popen:
    with open(log_path, "a") as logf:
        # own session: the daemon outlives `tvdctl lab up` and its terminal's signals
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             env=agent_env(), start_new_session=True)
    _write(pid_file, f"{p.pid}\n")
    return p


def _stop(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM (the daemons stop cleanly), SIGKILL whatever is still there after `timeout`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if not _cmdline(pid):
                left.remove(pid)
        time.sleep(0.05)
    nsutil.kill_pids(left)


def _last_line(text: str, default: str = "no output") -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else default


def _log_tail(path: str) -> str:
    try:
        with open(path) as f:
            return _last_line(f.read()[-4000:])
    except OSError:
        return "no log"


def _write(path: str, text: str, mode: int = 0o600) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ---- the master -------------------------------------------------------------------------------

def master_cli(name: str, *args: str, stdin: str | None = None) -> str:
    """Run the real `tvd-master --dir DIR ARGS`; stdout, or LabError with its last stderr line."""
    d = Paths(name).master
    r = subprocess.run([sys.executable, "-m", MASTER_MODULE, "--dir", d, *args],
                       input=stdin, capture_output=True, text=True, env=agent_env(), timeout=120)
    if r.returncode != 0:
        raise LabError(f"tvd-master {args[0]}: {_last_line(r.stderr or r.stdout)}")
    return r.stdout


def _master_listening(ns: str) -> bool:
    with nsutil.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        return s.connect_ex((MASTER_IP, MASTER_PORT)) == 0
    finally:
        s.close()


def _start_master(name: str, log: Log) -> None:
    paths, ns = Paths(name), master_ns(name)
    if _running(paths.master_pid, MASTER_MODULE, paths.master) and _master_listening(ns):
        return
    _stop([p for p in strays(name) if paths.master in _cmdline(p)])
    master_cli(name, "init", "--url", URL)    # idempotent: "already initialised"
    p = _spawn(["ip", "netns", "exec", ns, sys.executable, "-m", MASTER_MODULE, "--dir",
                paths.master, "serve"], paths.master_log, paths.master_pid)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise LabError(f"tvd-master exited {p.returncode}: {_log_tail(paths.master_log)}")
        if _master_listening(ns):
            log(f"tvd-master serving {URL} in {ns} (pid {p.pid})")
            return
        time.sleep(0.1)
    _stop([p.pid])
    raise LabError(f"tvd-master did not listen on {URL} within {START_TIMEOUT:g} s: "
                   f"{_log_tail(paths.master_log)}")


# ---- the management network -------------------------------------------------------------------

def _mgmt_network(topo: Topology, policy: Policy) -> None:
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

def _capabilities(policy: Policy, host: str, lab: str) -> dict:
    """The administrator's capability file (nics, security claims) for this host: the lab
    claims what the policy's capability model says; the master still narrows it to what the
    proxy's functional probes confirm."""
    h = policy.hosts[host]
    return {"nics": [{"network": n.network, "nic": n.nic, "address": n.address} for n in h.nics],
            "security": [{"property": p, "assurance": a,
                          "evidence": f"xen-tvd lab {lab}: claimed by the lab's capability model"}
                         for p, a in sorted(h.properties.items())]}


def _enrolled(paths: Paths, host: str) -> bool:
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


def _proxy_status(paths: Paths, host: str, timeout: float = 10) -> dict:
    r = protocol.request({"op": "status"}, paths.socket(host), timeout)
    if not r.get("ok"):
        raise LabError(f"tvd-proxy on {host}: status refused: {r.get('error')}")
    return r


def _start_proxy(name: str, policy: Policy, topo: Topology, host: str, log: Log) -> None:
    paths = Paths(name)
    ns = topo.hosts[host].ns
    sock, pdir = paths.socket(host), paths.proxy_dir(host)
    if len(sock) > SOCKET_MAX:
        raise LabError(f"host {host}: socket path {sock} is longer than {SOCKET_MAX} bytes; "
                       "use a shorter lab or host name (or XEN_TVD_LAB_STATE_DIR)")
    _write(paths.caps(host), json.dumps(_capabilities(policy, host, name), indent=1) + "\n")
    pid = _running(paths.proxy_pid(host), PROXY_MODULE, pdir)
    if pid and _enrolled(paths, host):
        return
    _stop([p for p in strays(name) if pdir in _cmdline(p)])
    if not _enrolled(paths, host):
        token = master_cli(name, "token", host).split("\n", 1)[0].strip()
        # the token goes on stdin: a command line is readable by every local user
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", PROXY_MODULE,
                            "enroll", URL, "-", "--host", host, "--state-dir", pdir],
                           input=token + "\n", capture_output=True, text=True, env=agent_env(),
                           timeout=120)
        if r.returncode != 0:
            raise LabError(f"host {host}: {_last_line(r.stderr or r.stdout)}")
    p = _spawn([sys.executable, "-m", PROXY_MODULE, "run", "--master", "--host", host,
                "--socket", sock, "--state-dir", pdir, "--capabilities", paths.caps(host),
                "--netns", ns, "--segment-grace", "0"],
               paths.proxy_log(host), paths.proxy_pid(host))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise LabError(f"tvd-proxy on {host} exited {p.returncode}: "
                           f"{_log_tail(paths.proxy_log(host))}")
        try:
            if (_proxy_status(paths, host, 2).get("master") or {}).get("generation") is not None:
                log(f"tvd-proxy {host} running, bundle received (pid {p.pid})")
                return
        except protocol.ProxyUnreachable:
            pass
        time.sleep(0.1)
    _stop([p.pid])
    raise LabError(f"tvd-proxy on {host}: no bundle from the master within {START_TIMEOUT:g} s: "
                   f"{_log_tail(paths.proxy_log(host))}")


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
    _write(prefix + ".json", json.dumps(meta))
    with open(prefix + ".pem") as c:
        return c.read()


def _attach_vm(name: str, spec: LabSpec, topo: Topology, vm: str) -> tuple[bool, list[str]]:
    """register + vif-online per NIC, as the toolstack hook and hotplug/vif-tvd do.
    (all admitted, refusal reasons)."""
    lv, sv = topo.vms[vm], spec.vms[vm]
    sock = Paths(name).socket(lv.host)
    uuid = vm_uuid(name, vm)
    req = {"op": "register", "uuid": uuid, "name": vm,
           "nics": [{"devid": n.devid, "tvd": n.tvd} for n in lv.nics]}
    cert = _vm_cert(name, vm, uuid, sv.properties)
    if cert:
        req["cert"] = cert
    refused = []
    r = protocol.request(req, sock)
    if not r["ok"]:
        refused.append(f"register: {r['error']}")
        # an older registration (earlier evidence) must not admit what this one could not
        protocol.request({"op": "unregister", "uuid": uuid}, sock)
    for nic in lv.nics:
        r = protocol.request({"op": "vif-online", "uuid": uuid, "domid": lv.domid,
                              "devid": nic.devid, "ifname": nic.vif, "bridge": f"tvd:{nic.tvd}",
                              "mac": nic.mac, "type": "vif", "name": vm, "ip": nic.ip}, sock)
        if r["ok"]:
            with _netlink_lock:   # hosts attach in parallel; nsutil's handle cache is shared
                nsutil.set_link(lv.ns, nic.eth, mtu=int(r["mtu"]))   # netfront and `mtu`
        else:
            refused.append(f"{nic.vif}: {r['error']}")
    return not refused, refused


def _forget_removed(name: str, topo: Topology) -> None:
    """vif records and registrations of VMs the spec no longer has (their veths are gone)."""
    paths = Paths(name)
    for hname in topo.hosts:
        want_vifs = {(n.vif, vm_uuid(name, v.name)) for v in topo.vms.values()
                     if v.host == hname for n in v.nics}
        want_uuids = {u for _, u in want_vifs}
        st = _proxy_status(paths, hname)
        for rec in st.get("vifs", []):
            if (rec["ifname"], rec["uuid"]) not in want_vifs:
                protocol.request({"op": "vif-offline", "ifname": rec["ifname"]}, paths.socket(hname))
        for reg in st.get("registrations", []):
            if reg["uuid"] not in want_uuids:
                protocol.request({"op": "unregister", "uuid": reg["uuid"]}, paths.socket(hname))


# ---- up / down --------------------------------------------------------------------------------

def up(spec: LabSpec, policy: Policy, topo: Topology, errors: list[str], log: Log) -> dict:
    """Bring up master, proxies and admissions; returns the state's `control` entry."""
    paths = Paths(spec.name)
    os.makedirs(paths.root, mode=0o700, exist_ok=True)
    _stop_removed_hosts(spec.name, topo)
    _mgmt_network(topo, policy)
    _start_master(spec.name, log)
    before = _master_generations(spec.name)
    out = master_cli(spec.name, "policy", "push", spec.policy_path)
    log(f"tvd-master: {_last_line(out)}")
    pushed = _last_line(out).endswith(" pushed")
    failures: dict[str, str] = {}

    def start(h: str) -> None:
        try:
            _start_proxy(spec.name, policy, topo, h, log)
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
                results[vm] = _attach_vm(spec.name, spec, topo, vm)
            except (protocol.ProxyUnreachable, LabError, OSError) as e:
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
        with contextlib.suppress(protocol.ProxyUnreachable, LabError):
            _forget_removed(spec.name, topo)
    return {"mode": "master", "url": URL, "namespace": master_ns(spec.name),
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
    deadline = time.monotonic() + START_TIMEOUT
    gens = _master_generations(name)
    while any(gens.get(h, 0) <= g for h, g in before.items() if h in topo.hosts):
        if time.monotonic() > deadline:
            failures["master"] = (f"tvd-master made no bundles for the pushed policy within "
                                  f"{START_TIMEOUT:g} s: {_log_tail(paths.master_log)}")
            return
        time.sleep(0.1)
        gens = _master_generations(name)
    for h in sorted(topo.hosts):
        if h in failures:
            continue
        have = None
        while time.monotonic() < deadline:
            try:
                have = (_proxy_status(paths, h, 2).get("master") or {}).get("generation")
            except protocol.ProxyUnreachable:
                have = None
            if have is not None and have >= gens.get(h, 0):
                break
            time.sleep(0.1)
        else:
            failures[h] = (f"tvd-proxy {h}: holds bundle generation {have}, the master made "
                           f"{gens.get(h)}; not current after {START_TIMEOUT:g} s: "
                           f"{_log_tail(paths.proxy_log(h))}")


def _stop_removed_hosts(name: str, topo: Topology) -> None:
    paths = Paths(name)
    for f in os.listdir(paths.root):
        if f.startswith("proxy-") and f.endswith(".pid"):
            host = f[len("proxy-"):-len(".pid")]
            if host not in topo.hosts:
                pdir = paths.proxy_dir(host)
                _stop([p for p in strays(name) if pdir in _cmdline(p)])
                shutil.rmtree(pdir, ignore_errors=True)
                for leftover in (paths.proxy_pid(host), paths.socket(host), paths.caps(host)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)


def down(name: str, log: Log = lambda s: None) -> bool:
    """Stop the master and proxies, remove <name>-master and STATE_DIR/<name>/. Idempotent;
    works from the pid files, the /proc scan and the namespace mark (no state needed).
    Returns whether there was anything to remove."""
    paths = Paths(name)
    pids = set(strays(name))
    pid = _running(paths.master_pid, MASTER_MODULE, paths.master)
    if pid:
        pids.add(pid)
    ns = master_ns(name)
    found = bool(pids) or os.path.isdir(paths.root)
    _stop(sorted(pids))
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


# ---- status / verify --------------------------------------------------------------------------

def status(name: str, topo: Topology) -> dict:
    paths = Paths(name)
    out: dict = {"mode": "master", "url": URL, "namespace": master_ns(name),
                 "namespace_present": nsutil.ns_exists(master_ns(name)),
                 "master": {"pid": _running(paths.master_pid, MASTER_MODULE, paths.master),
                            "log": paths.master_log},
                 "proxies": {}}
    for h in sorted(topo.hosts):
        e: dict = {"pid": _running(paths.proxy_pid(h), PROXY_MODULE, paths.proxy_dir(h)),
                   "socket": paths.socket(h), "log": paths.proxy_log(h)}
        try:
            st = _proxy_status(paths, h, 5)
            e.update(generation=(st.get("master") or {}).get("generation"),
                     contact_age=(st.get("master") or {}).get("contact_age"),
                     vifs={v["ifname"]: v["tvd"] for v in st.get("vifs", [])},
                     segments=[s["tvd"] for s in st.get("segments", [])])
        except (protocol.ProxyUnreachable, LabError) as ex:
            e["error"] = str(ex)
        out["proxies"][h] = e
    return out


def render_status(c: dict) -> list[str]:
    m = c["master"]
    lines = [f"tvd-master {c['url']} in {c['namespace']}: "
             + (f"pid {m['pid']}" if m["pid"] else "NOT RUNNING")]
    for h, p in c["proxies"].items():
        if "error" in p:
            lines.append(f"  tvd-proxy {h}: DOWN ({p['error']})")
            continue
        vifs = ", ".join(f"{k}->{v}" for k, v in sorted(p["vifs"].items())) or "none"
        lines.append(f"  tvd-proxy {h}: pid {p['pid']}, bundle generation {p['generation']}, "
                     f"segments {','.join(p['segments']) or 'none'}; vifs {vifs}")
    return lines


def _kernel_masters(ns: str) -> dict[str, str | None]:
    """vif name -> the bridge it is enslaved to, read from the kernel."""
    links = nsutil.links(ns)
    by_idx = {l["index"]: l.get_attr("IFLA_IFNAME") for l in links}
    return {l.get_attr("IFLA_IFNAME"): by_idx.get(l.get_attr("IFLA_MASTER"))
            for l in links if (l.get_attr("IFLA_IFNAME") or "").startswith("vif")}


def verify(spec: LabSpec, topo: Topology) -> tuple[list[str], list[str]]:
    """(report lines, problems): every VM vif admitted by its proxy, enslaved to its TVD's
    vSwitch in the kernel, and audited `admitted` at the master; every VM the spec expects to
    be denied has no vif attached anywhere and a `denied` event in the master's audit."""
    paths = Paths(spec.name)
    problems: list[str] = []
    denied = denied_vms(spec)
    records: dict[str, dict[str, dict]] = {}
    bridges: dict[str, dict[str, str]] = {}
    kernel: dict[str, dict[str, str | None]] = {}
    with nsutil.handles():
        for h, host in topo.hosts.items():
            try:
                st = _proxy_status(paths, h)
            except (protocol.ProxyUnreachable, LabError) as e:
                problems.append(f"tvd-proxy {h}: {e}")
                st = {}
            records[h] = {v["ifname"]: v for v in st.get("vifs", [])}
            bridges[h] = {s["tvd"]: s["bridge"] for s in st.get("segments", [])}
            kernel[h] = _kernel_masters(host.ns)
    want_admitted: set[tuple[str, str, str]] = set()     # (host, vm uuid, ifname)
    for vm, lv in sorted(topo.vms.items()):
        uuid = vm_uuid(spec.name, vm)
        for nic in lv.nics:
            rec = records.get(lv.host, {}).get(nic.vif)
            br = kernel.get(lv.host, {}).get(nic.vif)
            if vm in denied:
                if rec is not None or br is not None:
                    problems.append(f"VM {vm} {nic.vif}: must be denied, but is "
                                    f"{'admitted by the proxy' if rec else 'attached'}"
                                    f"{f' to {br}' if br else ''}")
                continue
            want_admitted.add((lv.host, uuid, nic.vif))
            if rec is None or rec.get("uuid") != uuid or rec.get("tvd") != nic.tvd:
                problems.append(f"VM {vm} {nic.vif}: not admitted into {nic.tvd} in the status "
                                f"of tvd-proxy {lv.host}")
            elif br is None or br != bridges[lv.host].get(nic.tvd):
                problems.append(f"VM {vm} {nic.vif}: admitted, but attached to {br or 'nothing'} "
                                f"instead of {bridges[lv.host].get(nic.tvd)}")
        if vm in denied:
            elsewhere = [f"{h}:{r['ifname']}" for h, rs in records.items() for r in rs.values()
                         if r.get("uuid") == uuid]
            if elsewhere:
                problems.append(f"VM {vm}: must be denied, but proxies hold its vifs {elsewhere}")
    want_denied = {vm_uuid(spec.name, v): v for v in denied}
    missing_adm, missing_den = set(want_admitted), set(want_denied)
    deadline = time.monotonic() + AUDIT_TIMEOUT
    audit_error = None
    while missing_adm or missing_den:   # the proxies' audit spools reach the master in turns
        try:
            events = [json.loads(l) for l in master_cli(spec.name, "audit", "--json").splitlines()
                      if l.strip()]
            audit_error = None
        except LabError as e:
            events, audit_error = [], str(e)
        for e in events:
            d, actor = e.get("detail") or {}, e.get("actor", "")
            if e.get("event") == "admitted":
                missing_adm.discard((actor.removeprefix("host:"), d.get("vm"), d.get("ifname")))
            elif e.get("event") == "denied":
                missing_den.discard(d.get("vm"))
        if not (missing_adm or missing_den) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if audit_error:
        problems.append(audit_error)
    for h, _, ifname in sorted(missing_adm):
        problems.append(f"audit: no `admitted` event from host {h} for {ifname}")
    for u in sorted(missing_den):
        problems.append(f"audit: no `denied` event for VM {want_denied[u]} ({u})")
    lines = [f"master mode: {len(want_admitted) - len(missing_adm)}/{len(want_admitted)} vifs "
             f"admitted by their tvd-proxy and audited `admitted` at the master; "
             f"{len(denied)} VM(s) denied as expected"
             + (f" ({', '.join(sorted(denied))}: no vif attached, denial audited)" if denied else "")]
    return lines, problems
