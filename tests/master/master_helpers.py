"""Shared helpers for tvd-master tests: a policy, a master on a free loopback port (in a
thread or as a real `tvd-master serve` process), enrolment and admin clients."""
from __future__ import annotations

import os
import contextlib
import io
import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

from xen_tvd.master import ca as camod
from xen_tvd.master import client as mc
from xen_tvd.master import server
from xen_tvd.master.cli import main as master_main
from xen_tvd.master import stores
from xen_tvd.master.store import Store

from tests.common.paths import REPO as ROOT
from tests.common.processes import stop_process

POLICY = """\
version: 1
properties:
  hv-integrity: {}
  web-server: {}
tvds:
  alpha: {vlan: 100, vni: 10100}
  beta:
    vlan: 200
    vni: 10200
    membership: [{property: hv-integrity, assurance: [immutable-log]}]
  gamma: {vlan: 300, vni: 10300, protection: [isolation, confidentiality]}
networks:
  lan: {subnet: 10.0.0.0/24, multicast: true}
hosts:
  h1:
    address: 10.0.0.1
    capabilities: [ethernet, ip]
    properties: {hv-integrity: immutable-log}
    nics: [{network: lan, nic: eth0, address: 10.0.0.1}]
  h2:
    address: 10.0.0.2
    capabilities: [ethernet, ip]
    properties: {hv-integrity: immutable-log}
    nics: [{network: lan, nic: eth0, address: 10.0.0.2}]
  h3:
    address: 10.0.0.3
    capabilities: [ethernet, ip]
    nics: [{network: lan, nic: eth0, address: 10.0.0.3}]
"""

REPORT = {"functional": ["bridge", "vxlan", "nftables"],
          "nics": [{"network": "lan", "nic": "eth0", "address": "10.0.0.1"}],
          "security": [{"property": "hv-integrity", "assurance": "immutable-log",
                        "evidence": "pcr-log-base64"}]}



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_dir(path: str) -> str:
    url = f"https://127.0.0.1:{free_port()}"
    camod.init_ca(path, url)
    Store(os.path.join(path, "master.db"))
    return url


def token(directory: str, host: str, ttl: float = 3600) -> str:
    """A one-time token for host, from the directory's store (SQLite or etcd)."""
    import secrets
    store = stores.open_store(directory)
    tid, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    store.add_token(tid, secret, host, ttl, "test")
    return f"tvd1.{tid}.{secret}.{camod.ca_pin(camod.Ca.load(directory).cert)}"


class Enrolled:
    def __init__(self, directory: str, url: str, host: str, state: str) -> None:
        os.makedirs(state, exist_ok=True)
        self.key = os.path.join(state, "host.key")
        self.cert = os.path.join(state, "host.pem")
        res = mc.enroll(url, token(directory, host), host, self.key)
        with open(self.cert, "w") as f:
            f.write(res.certificate)
        self.ca = res.ca
        self.host = host
        self.client = mc.MasterClient(url, res.ca, self.cert, self.key)


def admin_client(directory: str, url: str, tmp: str, name: str = "alice") -> mc.MasterClient:
    from xen_tvd.master.cli import main
    prefix = os.path.join(tmp, name)
    assert main(["--dir", directory, "admin-cert", name, "--out", prefix]) == 0
    with open(os.path.join(directory, "ca.pem")) as f:
        return mc.MasterClient(url, f.read(), prefix + ".pem", prefix + ".key")


class MasterProcess:
    """A real `python -m xen_tvd.master serve` subprocess; stderr collected to a file."""

    def __init__(self, directory: str, url: str, log_path: str, serve_args=(),
                 env: dict | None = None) -> None:
        self.directory, self.url, self.log_path = directory, url, log_path
        self.serve_args = list(serve_args)     # more `serve` options (metrics, page)
        self.env = dict(os.environ, **(env or {}))
        self.start()

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xen_tvd.master", "--dir", self.directory, "serve",
             "--listen", f"127.0.0.1:{port}", *self.serve_args], stdout=subprocess.DEVNULL,
            stderr=self.log, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tvd-master exited: {self.logs()[-2000:]}")
            if re.search(rf"event=listening addr=127.0.0.1:{port}\b", self.logs()):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", int(port))) == 0:
                        return
            time.sleep(0.05)
        raise RuntimeError("tvd-master did not start listening")

    def logs(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def raw_request(url: str, ctx, method: str, path: str, body: bytes = b"",
                headers: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """One HTTPS request with bytes as they are (a client's json.dumps could not even
    produce some of the bodies attacks send); (status, body)."""
    import http.client
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def start_master(tmp_path, limits=None, store_url=None):
    """A master serving on a free loopback port, in this process, with POLICY pushed; stop
    it with server.stop(ns.srv, ns.m). store_url: an etcd store instead of SQLite."""
    d = str(tmp_path / "m")
    url = init_dir(d)
    if store_url:
        stores.open_store(d, store_url, create=True,
                          meta={"url": url, "ca_pin": camod.ca_pin(camod.Ca.load(d).cert)})
        camod.write_public(os.path.join(d, stores.STORE_FILE), store_url + "\n")
    stores.open_store(d).add_policy(POLICY, "p.yaml", "test")
    m, srv, _ = server.start_in_thread(d, "127.0.0.1", int(url.rsplit(":", 1)[1]),
                                       **({"limits": limits} if limits else {}))
    ns = SimpleNamespace(dir=d, url=url, tmp=str(tmp_path), m=m, store=m.store, srv=srv,
                         port=int(url.rsplit(":", 1)[1]))
    ns.enroll = lambda host: Enrolled(d, url, host, str(tmp_path / host))
    ns.admin = lambda: admin_client(d, url, str(tmp_path))
    return ns


def cli(d, *args, check=True):
    """tvd-master's CLI in this process (a subprocess per call is slow on a busy machine;
    `serve` itself always runs as a real process here)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = master_main(["--dir", d, *args])
    r = SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
    if check:
        assert r.returncode == 0, r.stderr
    return r
