"""The routed scene of tests/proxy (test_routed_proxy, test_explain_live): alpha, beta and gamma
VMs on two Dom0 namespaces with routes via their TVD's gateway and TCP listeners; the `scene`
fixture (conftest.py) closes what the lab does not."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.hotplug import tvd_harness
from tests.hotplug.tvd_harness import ip

A1, B2, G2 = "10.71.1.11", "10.71.2.12", "10.71.3.12"
PORTS = (80, 8080, 22)

LISTEN = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


class Scene:
    """Router namespaces named after the lab's host namespaces (tvd-proxy --netns), VM routes
    via their TVD's gateway, listeners; close() removes what the lab does not."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.listeners: list[subprocess.Popen] = []

    def rtr(self, host: str) -> str:
        return f"{self.lab.host_ns[host]}-rtr"

    def vms(self) -> dict:
        lab = self.lab
        vms = {"a1": lab.vm("a1", 11, nics={0: ("tvd:alpha", A1)}),
               "b2": lab.vm("b2", 12, host="dom0-b", nics={0: ("tvd:beta", B2)}),
               "g2": lab.vm("g2", 13, host="dom0-b", nics={0: ("tvd:gamma", G2)})}
        for vm in vms.values():
            gw = vm.nics[0].rsplit(".", 1)[0] + ".1"
            ip("route", "add", "default", "via", gw, ns=vm.ns)
            p = subprocess.Popen(["ip", "netns", "exec", vm.ns, sys.executable, "-c", LISTEN,
                                  *map(str, PORTS)], stdout=subprocess.PIPE, text=True)
            self.listeners.append(p)
            assert p.stdout.readline().strip() == "ready"
        return vms

    def legs(self, host: str) -> list[str]:
        """TVDs with a leg (tvr-<vlan>) on the host, from the kernel."""
        by_vlan = {"100": "alpha", "200": "beta", "300": "gamma"}
        names = tvd_harness.all_links(self.lab.host_ns[host])
        return sorted(by_vlan[n[4:]] for n in names if n.startswith("tvr-"))

    def rtr_exists(self, host: str) -> bool:
        return os.path.exists(f"/run/netns/{self.rtr(host)}")

    def close(self) -> None:
        for p in self.listeners:
            p.kill()
            p.wait()
        for h in self.lab.host_ns:
            if self.rtr_exists(h):
                ip("netns", "del", self.rtr(h))


def hotplug_all(lab, vms) -> None:
    for vm in vms.values():
        r = lab.hotplug(vm)
        assert r.returncode == 0, r.stderr
