"""The proxy's side of the master protocol (docs/master-protocol.md): enrolment, the capability
report, one long-poll watch for the signed bundle, the audit spool sender, contact tracking.

Credentials live in STATE_DIR/master/: host.key (0600, never logged), host.pem, ca.pem (the
pinned CA), url (the master URL its bundles name), urls (the replicas to talk to, one a line,
tried in turn: a replica that is down or cut off from its store answers nothing or 503), host. The HTTP client, enrolment and the signature check are the master
package's (xen_tvd.master.client / .bundle), so both ends share one implementation.

Threads: `watch` (report capabilities, then GET bundle?after=GEN&wait=W forever) and `audit`
(flush the spool in order). Both only call back into the daemon (`on_bundle`, `on_revoked`),
which takes its own writer lock; this module holds no daemon state.
"""
from __future__ import annotations

import os
import threading
import time

from cryptography import x509

from xen_tvd.log import log
from xen_tvd.master.bundle import BundleRejected, verify_bundle
from xen_tvd.master.client import MasterError, MasterPool, enroll

from . import bundle_store
from .audit_spool import AuditSpool
from .capabilities import CapabilityError
from .bundle_store import Bundle, BundleInvalid, write_private

MASTER_DIR = "master"
CONTACT_FILE = "contact"     # its mtime is the last successful contact (kept across restarts)
MAX_WAIT = 55                # the master holds a watch at most 60 s
PROBE_TIMEOUT = 2.0
PROBE_BACKOFF = 5.0


class LinkError(Exception):
    """Master mode cannot start; one line saying what to fix."""


def master_dir(state_dir: str) -> str:
    return os.path.join(state_dir, MASTER_DIR)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def enroll_host(url: str, token: str, host: str, state_dir: str) -> str:
    """`tvd-proxy enroll`: the master package does the pinned-CA fetch, key and CSR; we keep
    what it returns. url: one URL or replicas' URLs separated by commas. Returns the
    directory written."""
    d = master_dir(state_dir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
    res = enroll(urls, token, host, os.path.join(d, "host.key"))
    write_private(os.path.join(d, "host.pem"), res.certificate.encode())
    write_private(os.path.join(d, "ca.pem"), res.ca.encode())
    write_private(os.path.join(d, "url"), (res.master or urls[0]).encode() + b"\n")
    write_private(os.path.join(d, "urls"), "".join(u + "\n" for u in urls).encode())
    write_private(os.path.join(d, "host"), host.encode() + b"\n")
    # a bundle of an earlier enrolment (maybe of another master, maybe revoked) is not ours,
    # and a new master may count generations from 1 again
    bundle_store.remove(d)
    try:
        os.unlink(os.path.join(d, bundle_store.GENERATION_FILE))
    except FileNotFoundError:
        pass
    return d


class MasterLink:
    def __init__(self, state_dir: str, host: str, capability_report, offline_grace: float = 0.0) -> None:
        self.dir = master_dir(state_dir)
        self.host = host
        self.capability_report = capability_report   # () -> dict, run on the watch thread
        self.offline_grace = offline_grace
        self._load_credentials()
        self.spool = AuditSpool(self.dir)
        self.generation = 0
        self.revoked = False
        self.unreachable_since: float | None = None
        self.last_error = ""
        try:
            self.last_contact: float | None = os.stat(os.path.join(self.dir, CONTACT_FILE)).st_mtime
        except OSError:
            self.last_contact = None
        self.stop = threading.Event()
        self.report_again = threading.Event()   # SIGHUP: the admin may have edited the claims
        self.probe_failed = -PROBE_BACKOFF       # monotonic time of the last failed probe
        self.daemon = None
        self.bounds = [MAX_WAIT]      # session bounds of the bundle in force (sets the watch wait)

    def _load_credentials(self) -> None:
        hint = f"run 'tvd-proxy enroll URL TOKEN --host {self.host} --state-dir {os.path.dirname(self.dir)}'"
        try:
            self.url = _read(os.path.join(self.dir, "url")).strip()
            enrolled_as = _read(os.path.join(self.dir, "host")).strip()
            ca_pem = _read(os.path.join(self.dir, "ca.pem"))
            os.stat(os.path.join(self.dir, "host.key"))
            os.stat(os.path.join(self.dir, "host.pem"))
        except OSError as e:
            raise LinkError(f"not enrolled with a master ({e.filename}: {e.strerror}); {hint}") from None
        if enrolled_as != self.host:
            raise LinkError(f"{self.dir} holds the enrolment of host '{enrolled_as}', not "
                            f"'{self.host}'; {hint}")
        try:
            self.ca = x509.load_pem_x509_certificate(ca_pem.encode())
        except ValueError:
            raise LinkError(f"{self.dir}/ca.pem is not a PEM certificate; {hint}") from None
        self.ca_pem = ca_pem
        self.cert_mtime = os.stat(os.path.join(self.dir, "host.pem")).st_mtime_ns
        try:
            urls = _read(os.path.join(self.dir, "urls")).split()
        except FileNotFoundError:       # enrolled before replicas existed
            urls = [self.url]
        try:
            self.client = MasterPool(urls, ca_pem, os.path.join(self.dir, "host.pem"),
                                     os.path.join(self.dir, "host.key"), timeout=10)
        except MasterError as e:
            raise LinkError(f"{e.message}; {hint}") from None

    # ---- bundles -------------------------------------------------------------------------

    def accept(self, envelope: dict, min_generation: int) -> Bundle:
        """Verified and parsed, or BundleRejected/BundleInvalid (one line)."""
        payload = verify_bundle(envelope, self.ca, self.host, self.url, min_generation)
        return bundle_store.parse_payload(payload, self.host, self.url)

    def load_stored(self) -> Bundle | None:
        """The stored bundle, verified again (fail closed: a tampered file is no bundle)."""
        try:
            env = bundle_store.read_envelope(self.dir)
            if env is None:
                return None
            b = self.accept(env, bundle_store.read_high_water(self.dir))
        except (BundleRejected, BundleInvalid) as e:
            log("error", "stored-bundle-refused", path=os.path.join(self.dir, bundle_store.BUNDLE_FILE),
                error=str(e), detail="no bundle in force: every vif is detached and every "
                "admission refused until the master sends a valid one")
            return None
        self.generation = b.generation
        return b

    # ---- contact -------------------------------------------------------------------------

    def _contact(self) -> None:
        now = time.time()
        if self.unreachable_since is not None:
            log("info", "master-reachable", url=self.url,
                after_s=now - self.unreachable_since)
        self.last_contact, self.unreachable_since, self.last_error = now, None, ""
        self.probe_failed = -PROBE_BACKOFF
        path = os.path.join(self.dir, CONTACT_FILE)
        try:
            os.utime(path)
        except FileNotFoundError:
            write_private(path, b"")
        except OSError:
            pass

    def _unreachable(self, err: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            log("warning", "master-unreachable", url=self.url, error=err)
        self.last_error = err

    def contact_age(self) -> float | None:
        return None if self.last_contact is None else time.time() - self.last_contact

    def probe(self) -> bool:
        """A quick, synchronous 'is the master there and do we still count': used by an
        admission when the watch's last contact is older than the TVD's bound. It runs under
        the daemon's writer lock, so after a failure the next PROBE_BACKOFF seconds refuse
        without asking again (a partitioned master must not cost every hotplug of a boot
        storm PROBE_TIMEOUT seconds, one after the other)."""
        now = time.monotonic()
        if now - self.probe_failed < PROBE_BACKOFF:
            return False
        try:
            status, _ = self.client.request(
                "GET", f"/v1/hosts/{self.host}/bundle?after={self.generation}&wait=0",
                timeout=PROBE_TIMEOUT)
        except MasterError as e:
            self.probe_failed = time.monotonic()
            self._unreachable(e.message)
            return False
        if status in (200, 204):
            self._contact()
            return True
        if status == 403:
            threading.Thread(target=self._revoked, args=("master answered 403",), daemon=True).start()
        return False

    def offline_message(self, tvd: str, bound: float, session: bool) -> str:
        since = self.unreachable_since or self.last_contact
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "start-up"
        what = "its session bound" if session else "--offline-admission-grace"
        return (f"master {self.url} unreachable since {when}; new admissions into {tvd} are refused "
                f"after {what} ({bound:g} s); restore the master or its network")

    # ---- threads -------------------------------------------------------------------------

    def start(self, daemon) -> None:
        self.daemon = daemon
        for name, fn in (("watch", self._watch), ("audit", self._flush)):
            threading.Thread(target=fn, name=f"master-{name}", daemon=True).start()

    def audit(self, event: str, **fields) -> None:
        try:
            self.spool.append(event, **fields)
        except OSError as e:
            log("error", "audit-spool-failed", path=self.spool.path, error=e.strerror or str(e))

    def _wait(self) -> float:
        """Half the shortest bound the offline rule judges contact age against, so that a
        master that is fine answers often enough for admissions not to have to ask it."""
        bounds = self.bounds + ([self.offline_grace] if self.offline_grace > 0 else [])
        return max(1.0, min(MAX_WAIT, min(bounds) / 2))

    def _watch(self) -> None:
        backoff, reported = 1.0, False
        while not self.stop.is_set():
            if self.revoked:
                self._await_reenrolment()
                reported = False
                continue
            if self.report_again.is_set():
                self.report_again.clear()
                reported = False
            try:
                if not reported:
                    reported = self._report()
                env = self.client.bundle(self.host, self.generation, self._wait())
            except MasterError as e:
                if e.status == 403:
                    self._revoked(e.message)
                    continue
                if e.status in (0, 503):     # 503: no replica reaches its store
                    self._unreachable(e.message)
                    reported = False         # report again when it is back (it may be new)
                else:
                    log("error", "master-error", url=self.url, error=str(e))
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception as e:   # capability probes or a bug: never let the watch die
                log("error", "watch-error", error=f"{type(e).__name__}: {e}")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 1.0
            self._contact()
            if env is not None:
                self._receive(env)

    def _report(self) -> bool:
        """PUT the capability report. A 403 here means 'not in the policy's hosts' (revocation
        is judged by the bundle watch, which the master refuses with 403 too): logged with the
        fix, and the watch goes on (the admin may add the host and push)."""
        try:
            report = self.capability_report()
        except CapabilityError as e:
            # a broken claims file must not stop policy updates: keep the last report
            log("error", "capabilities-unreadable", error=str(e))
            return True
        try:
            body = self.client.put_capabilities(self.host, report)
        except MasterError as e:
            if e.status in (0, 503):
                raise
            log("error", "capabilities-refused", url=self.url, error=str(e),
                detail="add this host to the policy's hosts: and push it")
            return True
        log("info", "capabilities-reported", url=self.url,
            capabilities=",".join((body or {}).get("capabilities", [])),
            warnings=len((body or {}).get("warnings", [])))
        return True

    def _receive(self, env: dict) -> None:
        try:
            b = self.accept(env, self.generation)
        except (BundleRejected, BundleInvalid) as e:
            log("error", "bundle-refused", url=self.url, error=str(e),
                detail=f"generation {self.generation} stays in force")
            self.stop.wait(5)   # the master would hand us the same bundle at once
            return
        if b.generation == self.generation and self.daemon.bundle is not None:
            return
        bundle_store.store(self.dir, env)   # first on disk: a crash mid-apply resumes from it
        bundle_store.write_high_water(self.dir, b.generation)
        self.generation = b.generation
        self.bounds = [t.session_seconds for t in b.policy.tvds.values() if t.session_seconds] \
            + [MAX_WAIT]
        self.daemon.on_bundle(b)

    def _revoked(self, why: str) -> None:
        if self.revoked:
            return
        self.revoked = True
        log("error", "host-revoked", url=self.url, error=why,
            detail="bundle deleted, every vif detached, everything refused until re-enrolled")
        bundle_store.remove(self.dir)
        self.generation = 0
        self.daemon.on_revoked(f"host '{self.host}' is revoked by master {self.url}; re-enrol with "
                               f"'tvd-proxy enroll URL TOKEN --host {self.host}' and a new token")

    def _await_reenrolment(self) -> None:
        """Revoked: wait until `tvd-proxy enroll` wrote a new certificate, then start over."""
        self.stop.wait(2)
        try:
            if os.stat(os.path.join(self.dir, "host.pem")).st_mtime_ns == self.cert_mtime:
                return
            self._load_credentials()
        except (OSError, LinkError) as e:
            log("warning", "reenrolment-incomplete", error=str(e))
            return
        self.revoked = False
        log("info", "reenrolled", url=self.url)

    def _flush(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            self.spool.pending.wait(30)
            self.spool.pending.clear()
            while not self.stop.is_set():
                events, used = self.spool.head()
                if not used:
                    break
                try:
                    if events:
                        self.client.post_audit(events)
                except MasterError as e:
                    if e.status in (0, 503):
                        self._unreachable(e.message)
                    else:
                        log("warning", "audit-refused", error=str(e), spooled=self.spool.size())
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff = 1.0
                self._contact()
                self.spool.drop(used)
