"""A real tvd-master next to the tier-1 lab (tests/hotplug/tvd_harness.py) for master-mode tests.

The master runs as `python -m xen_tvd.master serve` inside the lab's fabric namespace on the
management address 10.77.1.1 (the Dom0 namespaces reach it over their eth0, like a real
management LAN); admin commands (`token`, `policy push`, `vm-cert`, `revoke`, `audit`) are the
real CLI on the master's directory. Proxies run `tvd-proxy run --master` in their Dom0
namespace after a real `tvd-proxy enroll`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.hotplug import tvd_harness
from tests.hotplug.tvd_harness import REPO, ip
from tests.common.processes import log_text, stop_process
from tests.common.waiting import wait_for

MASTER_IP = "10.77.1.1"
URL = f"https://{MASTER_IP}:8443"

POLICY = """\
version: 1
properties:
  tpm-measured-boot: {dominates: [signed-kernel]}
  signed-kernel: {}
tvds:
  alpha: {vlan: 100, vni: 10100, membership: [signed-kernel], session-seconds: %(session)d}
  beta:  {vlan: 200, vni: 10200}
networks:
  lan: {subnet: 10.77.1.0/24, multicast: true, mtu: 1500}
hosts:
  dom0-a:
    address: 10.77.1.11
    capabilities: [ethernet, ip]
    properties: {tpm-measured-boot: immutable-log}
    nics: [{network: lan, nic: eth0, address: 10.77.1.11}]
  dom0-b:
    address: 10.77.1.12
    capabilities: [ethernet, ip]
    properties: {tpm-measured-boot: immutable-log}
    nics: [{network: lan, nic: eth0, address: 10.77.1.12}]
"""

# Routed inter-TVD flows (tests/proxy/test_routed_proxy.py, test_master_pieces.py): alpha -> beta
# %(alpha_beta)s, alpha -> gamma controlled with different halves, beta - gamma closed.
ROUTED_POLICY = """\
version: 1
properties:
  tpm-measured-boot: {dominates: [signed-kernel]}
  signed-kernel: {}
tvds:
  alpha: {vlan: 100, vni: 10100, subnets: [10.71.1.0/24], gateway: 10.71.1.1}
  beta:  {vlan: 200, vni: 10200, subnets: [10.71.2.0/24], gateway: 10.71.2.1}
  gamma: {vlan: 300, vni: 10300, subnets: [10.71.3.0/24], gateway: 10.71.3.1}
flows:
  - {from: alpha, to: beta, policy: %(alpha_beta)s}
  - from: alpha
    to: gamma
    policy: controlled
    sender:   {allow: [{proto: tcp, port: 80}, {proto: tcp, port: 8080}]}
    receiver: {allow: [{proto: tcp, port: 80}, {proto: tcp, port: 22}]}
  - {from: beta, to: gamma, policy: closed}
""" + POLICY[POLICY.index("networks:"):]   # the same LAN and hosts

CAPS = {"nics": [{"network": "lan", "nic": "eth0", "address": "10.77.1.11"}],
        "security": [{"property": "tpm-measured-boot", "assurance": "immutable-log",
                      "evidence": "tpm event log (test)"}]}


def _env():
    return dict(os.environ, PYTHONPATH=REPO)


class Master:
    def __init__(self, lab: tvd_harness.Lab) -> None:
        self.lab = lab
        self.dir = os.path.join(lab.tmp, "master")
        self.log_path = os.path.join(lab.tmp, "master.log")
        self.proc: subprocess.Popen | None = None
        ip("addr", "add", f"{MASTER_IP}/24", "dev", "fab0", ns=lab.fabric)
        self.cli("init", "--url", URL)

    def cli(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "xen_tvd.master", "--dir", self.dir, *args],
                           capture_output=True, text=True, env=_env(), timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"tvd-master {' '.join(args)}: {r.stderr.strip()}")
        return r

    def start(self) -> None:
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.fabric, sys.executable, "-m", "xen_tvd.master",
             "--dir", self.dir, "serve"], stdin=subprocess.DEVNULL, stdout=self.logf,
            stderr=self.logf, env=_env())
        deadline = time.monotonic() + 20
        start_lines = self.log().count("event=listening")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tvd-master exited {self.proc.returncode}: {self.log()}")
            if self.log().count("event=listening") > start_lines - (1 if start_lines else 0) \
                    and self._listening():
                return
            time.sleep(0.05)
        raise AssertionError(f"tvd-master did not come up: {self.log()}")

    def _listening(self) -> bool:
        r = subprocess.run(["ip", "netns", "exec", self.lab.fabric, "ss", "-Htln", "sport = :8443"],
                           capture_output=True, text=True)
        return ":8443" in r.stdout

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash or power loss."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.logf.close()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.logf.close()
            self.proc = None

    def log(self) -> str:
        return log_text(self.log_path)

    def push(self, text: str, name: str = "policy.yaml") -> None:
        path = os.path.join(self.lab.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        self.cli("policy", "push", path)

    def token(self, host: str) -> str:
        return self.cli("token", host).stdout.strip()

    def vm_cert(self, name: str, uuid: str, *props: str, days: float | None = None) -> tuple[str, int]:
        """(PEM path, serial)."""
        out = os.path.join(self.lab.tmp, f"vm-{name}")
        args = ["vm-cert", name, "--uuid", uuid, "--out", out]
        for p in props:
            args += ["--property", p]
        if days is not None:
            args += ["--days", str(days)]
        r = self.cli(*args)
        serial = int(r.stdout.rsplit("serial ", 1)[1].rstrip(")\n"))
        return out + ".pem", serial

    def audit(self) -> list[dict]:
        r = self.cli("audit", "--json")
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def vm_events(self, vm_uuid: str) -> list[tuple[str, str]]:
        """(event, tvd) of every proxy audit event about this VM, in order."""
        return [(e["event"], e["detail"].get("tvd")) for e in self.audit()
                if e["actor"].startswith("host:") and e["detail"].get("vm") == vm_uuid]


class MasterProxy(tvd_harness.Proxy):
    """tvd-proxy in master mode: enrolled with a token, then `run --master`."""

    def __init__(self, lab, host, master: Master, args=()) -> None:
        super().__init__(lab, host, policy=None, args=args)
        self.master = master
        self.caps = os.path.join(lab.tmp, f"{host}-caps.json")
        caps = dict(CAPS, nics=[dict(CAPS["nics"][0], address=tvd_harness.HOSTS[host])])
        with open(self.caps, "w") as f:
            json.dump(caps, f)

    def enroll(self, token: str | None = None) -> subprocess.CompletedProcess:
        token = token or self.master.token(self.host)
        self.last_token = token
        self.enroll_out = subprocess.run(
            ["ip", "netns", "exec", self.lab.host_ns[self.host], sys.executable, "-m",
             "xen_tvd.proxy.main", "enroll", URL, token, "--host", self.host, "--state-dir",
             self.state_dir], capture_output=True, text=True, env=_env(), timeout=60)
        return self.enroll_out

    def start(self, wait: bool = True, bundle: bool = True) -> None:
        self.logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xen_tvd.proxy.main", "run", "--master", "--host", self.host,
             "--socket", self.socket, "--state-dir", self.state_dir, "--capabilities", self.caps,
             "--netns", self.lab.host_ns[self.host], "--segment-grace", "0",
             *tvd_harness.VETH_VIFS, *self.args],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=_env())
        if not wait:
            return
        self.wait_for(lambda: self.client.ping().get("ok"), "ping")
        if bundle:
            self.wait_for(lambda: (self.client.status().get("master") or {})
                          .get("generation") is not None, "a bundle")

    def wait_for(self, cond, what: str, timeout: float = 20):
        """wait_for, failing at once when this proxy exits; an unreachable socket is "not yet"."""
        def alive():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tvd-proxy exited {self.proc.returncode}: {self.log()}")
        return wait_for(cond, f"tvd-proxy: {what}", timeout, 0.05, check=alive,
                        ignore=(tvd_harness.protocol.ProxyUnreachable,),
                        detail=lambda: self.log()[-3000:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.logf.close()
        self.proc = None

    def status(self) -> dict:
        return self.client.status()

    def generation(self):
        return (self.status().get("master") or {}).get("generation")

    def register(self, vm, tvd: str, cert: str | None = None, images=()) -> dict:
        req = {"op": "register", "uuid": vm.uuid, "name": vm.name,
               "nics": [{"devid": 0, "tvd": tvd}], "images": list(images)}
        if cert:
            with open(cert) as f:
                req["cert"] = f.read()
        return self.request(req)


def add_proxy(lab, host: str, start: bool = True, args=()):
    p = MasterProxy(lab, host, lab.master, args)
    lab.proxies[host] = p
    r = p.enroll()
    assert r.returncode == 0, r.stderr
    if start:
        p.start()
    return p


def setup(lab, session: int = 3, host: str = "dom0-a", start: bool = True, args=()):
    """A master with the test policy pushed and one enrolled proxy: (master, proxy)."""
    m = Master(lab)
    m.start()
    m.push(POLICY % {"session": session})
    p = MasterProxy(lab, host, m, args)
    lab.proxies[host] = p
    lab.master = m
    r = p.enroll()
    assert r.returncode == 0, r.stderr
    if start:
        p.start()
    return m, p


def close(lab) -> None:
    m = getattr(lab, "master", None)
    if m is not None:
        m.stop()
