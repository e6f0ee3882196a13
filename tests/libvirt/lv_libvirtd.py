"""A real libvirtd from Debian (libvirt-daemon, 9.0 on bookworm), private to one test.

It runs as root under `unshare --mount --net`: its /etc/libvirt, /var/lib/libvirt,
/var/cache/libvirt, /var/log/libvirt and /run are directories of the test (bind mounts and a
tmpfs that only its mount namespace sees), and it has its own network namespace, so it neither
reads the host's libvirt configuration nor touches the host's networking (firewall, bridges).
Its API socket lives in the test's directory; connect with `uri`. /run/xen-tvd inside is the
test's `proxy_dir`, so hooks reach a proxy socket the test puts there through the default path
(libvirtd runs hooks with a cleaned environment: TVD_PROXY_SOCKET would not get through).

Debian's libvirtd resolves the qemu user before reading qemu.conf, so the namespace also gets a
private /etc/passwd and /etc/group with `libvirt-qemu` (libvirt-daemon-system would create it
on the host and start the system daemons; we want neither).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

SCRIPT = r"""
set -e
T="$1"
mount --make-rprivate /
for d in etc/libvirt var/lib/libvirt var/cache/libvirt var/log/libvirt; do
    mkdir -p "$T/$d"; mount --bind "$T/$d" "/$d"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt /run/xen-tvd
mount --bind "$T/proxy" /run/xen-tvd
cp /etc/passwd "$T/passwd"; cp /etc/group "$T/group"
grep -q '^libvirt-qemu:' "$T/passwd" || echo 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin' >> "$T/passwd"
grep -q '^libvirt-qemu:' "$T/group" || echo 'libvirt-qemu:x:64055:' >> "$T/group"
mount --bind "$T/passwd" /etc/passwd
mount --bind "$T/group" /etc/group
ip link set lo up
exec libvirtd -f "$T/libvirtd.conf"
"""


def missing() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a private libvirtd in its own mount and network namespace)"
    for tool, pkg in (("libvirtd", "libvirt-daemon"), ("unshare", "util-linux"), ("ip", "iproute2")):
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install {pkg})"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "needs libvirt-python (pip install libvirt-python; builds against libvirt-dev)"
    return None


class Libvirtd:
    def __init__(self, top: str) -> None:
        self.top = top
        self.etc = os.path.join(top, "etc/libvirt")
        self.proxy_dir = os.path.join(top, "proxy")
        self.sockdir = os.path.join(top, "sock")
        for d in (self.etc, self.proxy_dir, self.sockdir):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.proxy_dir, 0o700)
        with open(os.path.join(self.etc, "qemu.conf"), "w") as f:
            f.write('user = "root"\ngroup = "root"\nstdio_handler = "file"\n'
                    'security_driver = "none"\nremember_owner = 0\n')
        with open(os.path.join(top, "libvirtd.conf"), "w") as f:
            f.write(f'unix_sock_dir = "{self.sockdir}"\nunix_sock_rw_perms = "0700"\n'
                    f'auth_unix_rw = "none"\nauth_unix_ro = "none"\n')
        self.log = os.path.join(top, "libvirtd.log")
        self.proc = None

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.sockdir}/libvirt-sock"

    def start(self, timeout: float = 30.0) -> "Libvirtd":
        script = os.path.join(self.top, "start.sh")
        with open(script, "w") as f:
            f.write(SCRIPT)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private",
                                          "bash", script, self.top],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        import libvirt
        libvirt.registerErrorHandler(lambda *a: None, None)   # errors arrive as exceptions
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                libvirt.open(self.uri).close()
                return self
            except libvirt.libvirtError:
                time.sleep(0.2)
        raise RuntimeError(f"libvirtd did not answer within {timeout:g} s: {self.log_tail()}")

    def nsexec(self, *cmd: str) -> subprocess.CompletedProcess:
        """Run a command in libvirtd's network namespace (e.g. create a bridge there)."""
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-n", *cmd],
                              capture_output=True, text=True, check=True)

    def connect(self):
        import libvirt
        return libvirt.open(self.uri)

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
