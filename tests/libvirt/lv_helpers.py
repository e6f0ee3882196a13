"""Helpers for the libvirt tests (paths, small XML builders, the real tvd-proxy)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

from tests.common.paths import REPO

HOOK = os.path.join(REPO, "xen_tvd", "data", "hotplug", "libvirt-hook")
NETWORK_HOOK = os.path.join(REPO, "xen_tvd", "data", "hotplug", "libvirt-network-hook")
EXAMPLE = os.path.join(REPO, "xl-configs", "libvirt-domain.xml")
POLICY = os.path.join(REPO, "xl-configs", "paper-figure1.yaml")
HOSTS_POLICY = os.path.join(REPO, "xl-configs", "tvd-hosts-policy.yaml")  # the example domain's
# what lv_fakeproxy asks of a VM per TVD: a toy echo of HOSTS_POLICY's M(t), no dominance
FAKE_TVDS = {"alpha": set(), "beta": set(), "gamma": {"tpm-measured-boot"}}
NS = "https://xen-tvd.org/xmlns/libvirt/1"
QEMU = shutil.which("qemu-system-x86_64")


def domain_xml(interfaces: str = "", metadata: str = "", name: str = "vm1",
               uuid: str = "11111111-2222-4333-8444-555555555555") -> str:
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    return (f"<domain type='xen'><name>{name}</name><uuid>{uuid}</uuid>{meta}"
            f"<memory>524288</memory><os><type>linux</type></os>"
            f"<devices>{interfaces}</devices></domain>")


def membership(body: str = "", **attrs) -> str:
    a = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return f"<tvd:membership xmlns:tvd='{NS}'{a}>{body}</tvd:membership>"


def nic(kind: str, source: str | None, mac: str) -> str:
    src = f"<source {kind}='{source}'/>" if source else ""
    return f"<interface type='{kind}'><mac address='{mac}'/>{src}</interface>"




def hook_data(network: str = "tvd-alpha", meta_tvd: str | None = "alpha", bridge: str | None = None,
              owner: str = "11111111-2222-4333-8444-555555555555", owner_name: str = "vm1",
              mac: str = "52:54:00:00:00:01", port: str = "2bb7f7c1-08ed-4cd7-a771-62b912fa4251") -> str:
    """What libvirtd 9.0 gives the network hook on stdin for port-created/port-deleted (its
    shape as recorded from the real daemon; test_libvirtd_ports.py runs the hook under it)."""
    bridge = bridge or network
    meta = (f"<metadata><tvd:tvd xmlns:tvd='{NS}' name='{meta_tvd}'/></metadata>"
            if meta_tvd else "")
    return (f"<hookData><network connections='1'><name>{network}</name>"
            f"<uuid>3d5506f5-beb0-48d3-beb3-9de0a7f8021c</uuid>{meta}<forward mode='bridge'/>"
            f"<bridge name='{bridge}'/></network><networkport><uuid>{port}</uuid>"
            f"<owner><name>{owner_name}</name><uuid>{owner}</uuid></owner>"
            f"<mac address='{mac}'/><plug type='bridge' bridge='{bridge}'/></networkport></hookData>")


@contextlib.contextmanager
def real_proxy(sock: str, state_dir: str, netns: str, log_path: str, *args: str,
               policy: str = HOSTS_POLICY, host: str = "dom0-a"):
    """The real `tvd-proxy run` (xen_tvd.proxy.main) managing network namespace `netns`, up
    and answering on `sock`; yields the Popen. Stopped (SIGTERM) on exit."""
    from xen_tvd.proxy.client import ProxyClient, ProxyUnreachable
    with open(log_path, "a+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "xen_tvd.proxy.main", "run", "--policy", policy,
                                 "--host", host, "--socket", sock, "--state-dir", state_dir,
                                 "--netns", netns, *args],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=dict(os.environ, PYTHONPATH=REPO))
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"tvd-proxy did not come up: {log.read()}")
                try:
                    if ProxyClient(sock, 15).ping().get("ok"):
                        break
                except ProxyUnreachable:
                    time.sleep(0.05)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def qemu_domain(interfaces: str, metadata: str = "", name: str = "web-frontend",
                uuid: str = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                kernel: tuple[str, str] | None = None) -> str:
    """A tiny guest for libvirt's qemu driver (TCG: no KVM needed, no disk). With `kernel`
    (vmlinuz, initrd from idle_initramfs) it boots Linux and idles: a running kernel, which is
    what acknowledges an ACPI hot-unplug; without one, qemu waits for the guest forever and no
    NIC is ever detached."""
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    boot = (f"<kernel>{kernel[0]}</kernel><initrd>{kernel[1]}</initrd>"
            f"<cmdline>console=ttyS0 quiet</cmdline>") if kernel else ""
    return f"""<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>{meta}
  <memory unit='MiB'>{256 if kernel else 64}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type>{boot}</os><features><acpi/></features>
  <devices>
    <emulator>{QEMU}</emulator>
    {interfaces}
    <serial type='pty'/>
  </devices>
</domain>"""


IDLE_INIT = b"#!/bin/busybox sh\nwhile true; do /bin/busybox sleep 3600; done\n"


def idle_initramfs(path: str, busybox: str = "/bin/busybox") -> str:
    """An initramfs whose init only sleeps (static busybox, a few hundred KiB). Not the host's
    own initrd: that one is whatever update-initramfs last made (31 MB of zstd here, which a
    small guest cannot even unpack: "Initramfs unpacking failed: write error", then a panic)."""
    import gzip
    from virtme.cpiowriter import CpioWriter   # virtme-ng, in the test extra for tier 2
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        cw = CpioWriter(f)
        for d in (b"bin", b"dev", b"proc"):
            cw.mkdir(d, 0o755)
        cw.mkchardev(b"dev/console", (5, 1), mode=0o600)
        with open(busybox, "rb") as b:
            cw.write_file(b"bin/busybox", b.read(), mode=0o755)
        cw.write_file(b"init", IDLE_INIT, mode=0o755)
        cw.write_trailer()
    return path
