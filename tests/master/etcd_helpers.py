"""etcd members as processes on loopback (Debian's etcd-server), for the master's etcd tests.

Data directories live on tmpfs (/dev/shm) when there is one: the tests are about who agrees
on what, not about the disk, and fsyncs on a shared CI disk would make them slow. Short
heartbeat and election timeouts keep failover within a second or two.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

from tests.master.master_helpers import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
SKIP_REASON = ("etcd-server is not installed (scripts/bootstrap installs it; tier 1 runs "
               "these tests)")


def available() -> bool:
    if not os.path.exists(ETCD):
        return False
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        return False
    return True


class Member:
    def __init__(self, name: str, base: str) -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data = os.path.join(base, name)
        self.log = os.path.join(base, name + ".log")
        self.proc: subprocess.Popen | None = None

    @property
    def client(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


def make_tls(directory: str) -> dict[str, str]:
    """A CA for the etcd cluster, a certificate for its members (127.0.0.1; server and
    client use: etcd's gateway calls its own gRPC side with it) and a client certificate for
    the masters, as PEM files in directory."""
    import datetime as dt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca=False, eku=(), san=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        # what strict verification (urllib3 sets VERIFY_X509_STRICT) wants to see
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                              False, False), critical=True)
        else:
            b = b.add_extension(x509.KeyUsage(True, False, True, False, False, False, False,
                                              False, False), critical=True)
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(fname, data):
        path = os.path.join(directory, fname)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    os.makedirs(directory, exist_ok=True)
    ca_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("etcd test CA", ca_key, "etcd test CA", ca_key, ca=True)
    srv = cert("etcd", srv_key, "etcd test CA", ca_key,
               eku=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
               san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli = cert("tvd-master", cli_key, "etcd test CA", ca_key,
               eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    pem = serialization.Encoding.PEM
    return {"ca": write("etcd-ca.pem", ca.public_bytes(pem)),
            "server": write("server.pem", srv.public_bytes(pem)),
            "server_key": write("server.key", key_pem(srv_key)),
            "client": write("etcd-client.pem", cli.public_bytes(pem)),
            "client_key": write("etcd-client.key", key_pem(cli_key))}


class EtcdCluster:
    def __init__(self, size: int = 1, base: str | None = None, tls: bool = False) -> None:
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.base = base or tempfile.mkdtemp(prefix="tvd-etcd-", dir=root)
        self.members = [Member(f"m{i}", self.base) for i in range(size)]
        self.token = os.path.basename(self.base)
        # tls: clients must show a certificate of the cluster's CA (client-cert-auth)
        self.tls = make_tls(os.path.join(self.base, "tls")) if tls else None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, prefix: str = "tvd-master") -> str:
        return (("etcds://" if self.tls else "etcd://") + ",".join(m.client for m in self.members)
                + "/" + prefix)

    def start(self, which: list[int] | None = None, wait: bool = True) -> "EtcdCluster":
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for i in which if which is not None else range(len(self.members)):
            m = self.members[i]
            if m.proc is not None and m.proc.poll() is None:
                continue
            state = "existing" if os.path.isdir(os.path.join(m.data, "member")) else "new"
            args = [ETCD, "--name", m.name, "--data-dir", m.data,
                    "--listen-client-urls", f"{self.scheme}://{m.client}",
                    "--advertise-client-urls", f"{self.scheme}://{m.client}",
                    "--listen-peer-urls", m.peer_url,
                    "--initial-advertise-peer-urls", m.peer_url,
                    "--initial-cluster", cluster, "--initial-cluster-state", state,
                    "--initial-cluster-token", self.token,
                    "--heartbeat-interval", "50", "--election-timeout", "500",
                    "--log-level", "warn", "--logger", "zap"]
            if self.tls:
                args += ["--cert-file", self.tls["server"], "--key-file", self.tls["server_key"],
                         "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
            m.proc = subprocess.Popen(args, stdout=open(m.log, "ab"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
        if wait:
            self.wait_healthy(which)
        return self

    def wait_healthy(self, which: list[int] | None = None, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        ctx = None
        if self.tls:
            import ssl
            ctx = ssl.create_default_context(cafile=self.tls["ca"])
            ctx.load_cert_chain(self.tls["client"], self.tls["client_key"])
        for i in which if which is not None else range(len(self.members)):
            m = self.members[i]
            while True:
                try:
                    with urllib.request.urlopen(f"{self.scheme}://{m.client}/health", timeout=1,
                                                context=ctx) as r:
                        if json.loads(r.read()).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                if m.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {m.name} did not become healthy; "
                                       f"log: {open(m.log).read()[-2000:]}")
                time.sleep(0.1)

    def kill(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait()

    def stop(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.terminate()
            m.proc.wait(10)

    def close(self) -> None:
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.base, ignore_errors=True)
