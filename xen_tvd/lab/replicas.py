"""Master mode with replicas (`control: master`, `replicas: N`; docs/lab.md "Master mode").

Inside <name>-master, next to the single-master layout of master.py:

  etcd            N members on the namespace's loopback (client 127.0.0.1:23790+10i, peer
                  +1), data in STATE_DIR/<name>/etcd/mI: only the replicas reach them, no
                  host namespace has a route to etcd (as docs/master.md asks of a site).
  tvd-master      N replicas on the management bridge, 10.254.0.(1+i):8443; replica 0 is
                  master.py's directory (the CLI commands of master.py go through it), the
                  others are made with `init --ca-from` (same CA and signer, own TLS key).
  tvd-proxy       enrols with all N URLs and fails over between them.

`down` needs nothing more: it kills everything in <name>-master and removes STATE_DIR/<name>.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

from xen_tvd.lab import nsutil
from xen_tvd.lab.common import LabError, Log, agent_env, start_timeout
from xen_tvd.lab.processes import (MASTER_MODULE, cmdline_args, last_line, log_tail, spawn,
                                   stop, write_file)
from xen_tvd.lab.state import Paths


ETCD_PORT_BASE = 23790
ETCD = "/usr/bin/etcd"


def replica_ip(mgmt_net, i: int) -> str:
    return str(mgmt_net.network_address + 1 + i)


def urls(mgmt_net, port: int, n: int) -> list[str]:
    return [f"https://{replica_ip(mgmt_net, i)}:{port}" for i in range(n)]


def store_url(n: int) -> str:
    return ("etcd://" + ",".join(f"127.0.0.1:{ETCD_PORT_BASE + 10 * i}" for i in range(n))
            + "/tvd-master")


def replica_dir(name: str, i: int) -> str:
    return Paths(name).master if i == 0 else f"{Paths(name).master}-{i}"


def replica_pid(name: str, i: int) -> str:
    """Replica 0 keeps the single master's pid file and log (lab status shows it)."""
    p = Paths(name)
    return p.master_pid if i == 0 else os.path.join(p.root, f"master-{i}.pid")


def replica_log(name: str, i: int) -> str:
    p = Paths(name)
    return p.master_log if i == 0 else os.path.join(p.root, f"master-{i}.log")


def _pid_of(pid_file: str, *needles: str) -> int | None:
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    cl = cmdline_args(pid)
    return pid if cl and all(n in cl for n in needles) else None


def _cli(ns: str, directory: str, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", MASTER_MODULE,
                        "--dir", directory, *args],
                       capture_output=True, text=True, env=agent_env(), timeout=120)
    if r.returncode != 0:
        raise LabError(f"tvd-master {args[-1] if args else ''}: "
                       f"{last_line(r.stderr or r.stdout)}")
    return r.stdout


def _etcd_healthy(ns: str, port: int) -> bool:
    try:
        with nsutil.entered(ns):     # the socket is made (and stays) in the namespace
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


def start_etcd(name: str, ns: str, n: int, log: Log) -> None:
    if not os.path.exists(ETCD):
        raise LabError("replicas: needs etcd (Debian: apt-get install etcd-server; "
                       "scripts/bootstrap installs it)")
    root = os.path.join(Paths(name).root, "etcd")
    os.makedirs(root, mode=0o700, exist_ok=True)
    cluster = ",".join(f"m{i}=http://127.0.0.1:{ETCD_PORT_BASE + 10 * i + 1}" for i in range(n))
    for i in range(n):
        data = os.path.join(root, f"m{i}")
        pid_file = os.path.join(root, f"m{i}.pid")
        if _pid_of(pid_file, ETCD, data):
            continue
        client, peer = ETCD_PORT_BASE + 10 * i, ETCD_PORT_BASE + 10 * i + 1
        state = "existing" if os.path.isdir(os.path.join(data, "member")) else "new"
        spawn(["ip", "netns", "exec", ns, ETCD, "--name", f"m{i}", "--data-dir", data,
               "--listen-client-urls", f"http://127.0.0.1:{client}",
               "--advertise-client-urls", f"http://127.0.0.1:{client}",
               "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", cluster, "--initial-cluster-state", state,
               "--initial-cluster-token", f"tvd-lab-{name}",
               "--heartbeat-interval", "50", "--election-timeout", "500",
               "--log-level", "warn", "--logger", "zap"],
              os.path.join(root, f"m{i}.log"), pid_file)
    deadline = time.monotonic() + start_timeout()
    for i in range(n):
        while not _etcd_healthy(ns, ETCD_PORT_BASE + 10 * i):
            if time.monotonic() > deadline:
                raise LabError(f"etcd member m{i} not healthy within {start_timeout():g} s: "
                               f"{log_tail(os.path.join(root, f'm{i}.log'))}")
            time.sleep(0.2)
    log(f"etcd: {n} members in {ns}")


def start(name: str, ns: str, n: int, mgmt_net, bridge: str, port: int, log: Log) -> list[str]:
    """etcd, then N replicas serving; returns their URLs (replica 0 first)."""
    nsutil.ensure_addresses(ns, bridge, [f"{replica_ip(mgmt_net, i)}/{mgmt_net.prefixlen}"
                                         for i in range(n)])
    start_etcd(name, ns, n, log)
    us = urls(mgmt_net, port, n)
    store = store_url(n)
    _cli(ns, replica_dir(name, 0), "--store", store, "init", "--url", us[0])
    for i in range(1, n):
        _cli(ns, replica_dir(name, i), "--store", store, "init", "--url", us[i],
             "--ca-from", replica_dir(name, 0))
    root = Paths(name).root
    procs = {}
    for i in range(n):
        d = replica_dir(name, i)
        pid_file = replica_pid(name, i)
        if _pid_of(pid_file, MASTER_MODULE, d) and nsutil.tcp_listening(ns, replica_ip(mgmt_net, i), port):
            continue
        procs[i] = spawn(["ip", "netns", "exec", ns, sys.executable, "-m", MASTER_MODULE,
                          "--dir", d, "serve"], replica_log(name, i), pid_file)
    deadline = time.monotonic() + start_timeout()
    for i, p in procs.items():
        while not nsutil.tcp_listening(ns, replica_ip(mgmt_net, i), port):
            if p.poll() is not None or time.monotonic() > deadline:
                stop([q.pid for q in procs.values()])
                raise LabError(f"tvd-master replica {i} did not listen on {us[i]}: "
                               f"{log_tail(replica_log(name, i))}")
            time.sleep(0.1)
    log(f"tvd-master: {n} replicas on etcd in {ns} ({', '.join(us)})")
    write_file(os.path.join(root, "replicas.json"), json.dumps({"urls": us, "store": store}))
    return us
