"""A real libvirtd from Debian (libvirt-daemon, 9.0 on bookworm), private to one test.

It runs as root under `unshare --mount --net`: its /etc/libvirt, /var/lib/libvirt,
/var/cache/libvirt, /var/log/libvirt and /run are directories of the test (bind mounts and a
tmpfs that only its mount namespace sees, on overlays of /etc and /var there, so the host needs
none of those directories and gets none), and it has its own network namespace, so it neither
reads the host's libvirt configuration nor touches the host's networking (firewall, bridges).
Its API socket lives in the test's directory; connect with `uri`. /run/xen-tvd inside is the
test's `proxy_dir`, so hooks reach a proxy socket the test puts there through the default path
(libvirtd runs hooks with a cleaned environment: TVD_PROXY_SOCKET would not get through).

Debian's libvirtd resolves the qemu user before reading qemu.conf, so the namespace also gets a
private /etc/passwd and /etc/group with `libvirt-qemu` (libvirt-daemon-system would create it
on the host and start the system daemons; we want neither).

The namespaces belong to a holder process (`sleep infinity`), and libvirtd is started into them
with nsenter, so `restart()` can stop libvirtd and start a new one while its guests keep
running (qemu outlives libvirtd), which is what libvirt's `reconnect` is about.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

SCRIPT = r"""
set -e
T="$1"
mount --make-rprivate /
# A fresh machine has no /etc/libvirt or /var/lib/libvirt (libvirt-daemon ships neither; only
# libvirt-daemon-system would make them): overlay /etc and /var inside this mount namespace so
# the mount points can be made without writing anything to the host's directories.
for top in etc var; do
    mkdir -p "$T/overlay/$top/upper" "$T/overlay/$top/work"
    mount -t overlay overlay -o "lowerdir=/$top,upperdir=$T/overlay/$top/upper,workdir=$T/overlay/$top/work" "/$top"
done
for d in etc/libvirt var/lib/libvirt var/cache/libvirt var/log/libvirt; do
    mkdir -p "$T/$d" "/$d"; mount --bind "$T/$d" "/$d"
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
touch "$T/ready"
exec sleep infinity
"""


# Appends each call (the driver, argv, stdin) to /var/log/libvirt/hook-record.log, which is the
# test's <top>/var/log/libvirt/hook-record.log. Installed as 99-record it runs after ours.
RECORDER = r"""#!/bin/sh
{ echo "==> $(basename "$(dirname "$0")") $*"; cat; echo; echo "<=="; } >> /var/log/libvirt/hook-record.log
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
        self.holder = None   # owns the mount and network namespaces
        self.proc = None     # libvirtd
        self.netns_names: list[str] = []

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.sockdir}/libvirt-sock"

    def record_hooks(self, drivers=("qemu", "network")) -> None:
        """Install a recorder of hook calls (RECORDER) into hooks/<driver>.d/99-record."""
        for drv in drivers:
            d = os.path.join(self.etc, "hooks", f"{drv}.d")
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, "99-record")
            with open(path, "w") as f:
                f.write(RECORDER)
            os.chmod(path, 0o755)

    def hook_calls(self) -> list[tuple[str, list[str], str]]:
        """What the recorder saw: (driver directory, argv, stdin) per call, in order."""
        try:
            with open(os.path.join(self.top, "var/log/libvirt/hook-record.log")) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        out = []
        for block in text.split("==> ")[1:]:
            head, _, rest = block.partition("\n")
            drv, *argv = head.split()
            out.append((drv, argv, rest.rsplit("\n<==", 1)[0].strip()))
        return out

    def _start_holder(self, timeout: float) -> None:
        script = os.path.join(self.top, "start.sh")
        with open(script, "w") as f:
            f.write(SCRIPT)
        ready = os.path.join(self.top, "ready")
        with open(self.log, "ab") as log:
            self.holder = subprocess.Popen(["unshare", "--mount", "--net", "--propagation",
                                            "private", "bash", script, self.top],
                                           stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"namespace setup failed ({self.holder.poll()}): {self.log_tail()}")
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> "Libvirtd":
        """Start libvirtd (and, the first time, its namespaces); returns when its API answers."""
        if self.holder is None:
            self._start_holder(timeout)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "-m", "-n",
                                          "libvirtd", "-f", os.path.join(self.top, "libvirtd.conf")],
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

    def stop_daemon(self) -> None:
        """Stop libvirtd only: its guests keep running, as on a host whose libvirtd restarts."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> "Libvirtd":
        self.stop_daemon()
        return self.start()

    def nsexec(self, *cmd: str) -> subprocess.CompletedProcess:
        """Run a command in libvirtd's network namespace (e.g. create a bridge there)."""
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-n", *cmd],
                              capture_output=True, text=True, check=True)

    def name_netns(self, name: str) -> str:
        """Give libvirtd's network namespace a name in /run/netns (for `tvd-proxy --netns`)."""
        subprocess.run(["ip", "netns", "attach", name, str(self.holder.pid)], check=True)
        self.netns_names.append(name)
        return name

    def connect(self):
        import libvirt
        return libvirt.open(self.uri)

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _namespace_processes(self) -> list[int]:
        """Processes left in our mount namespace (guests libvirtd started), holder excluded."""
        try:
            mine = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        except OSError:
            return []
        out = []
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != self.holder.pid:
                try:
                    if os.readlink(f"/proc/{pid}/ns/mnt") == mine:
                        out.append(int(pid))
                except OSError:
                    pass
        return out

    def stop(self) -> None:
        self.stop_daemon()
        for name in self.netns_names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        if self.holder is None:
            return
        for pid in self._namespace_processes():   # a guest a failed test left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.holder.poll() is None:
            self.holder.terminate()
            self.holder.wait()
