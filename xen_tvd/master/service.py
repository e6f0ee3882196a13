"""The running master: state on disk + bundle computation + watch wake-ups.

One Master per process. Bundle inputs change through Store methods that bump the store's
epoch in the same transaction; a worker thread notices (a change made here wakes it at once,
one made by the CLI in another process within POLL_SECONDS), recomputes every host's decision
in one pass (coalescing bursts such as 200 hosts reporting at once), bumps the generation of
exactly the hosts whose bundle content changed, signs their new bundles and wakes watches.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time

from xen_tvd.log import log
from xen_tvd.master import ca as camod
from xen_tvd.master.bundle import canonical, sign_bundle
from xen_tvd.master.decide import bundle_content, decide
from xen_tvd.master import stores
from xen_tvd.master.observe import Observations
from xen_tvd.master.store import LostLeadership, StoreUnavailable
from xen_tvd.policy import PolicyInvalid, YamlUnreadable, check_file

POLL_SECONDS = 0.25
# After a change, wait this long for more before recomputing: a burst (hosts reporting at
# start-up) then costs one pass instead of one per host, and a watch still wakes well < 1 s.
DEBOUNCE_SECONDS = 0.05
MAX_DELAY = 1.0


def verify_policy_text(text: str, name: str):
    """(Policy or None, diagnostics) for YAML text, checked by the product's own verifier.
    The text is written to a private temporary file named like the original, so diagnostics
    read NAME:LINE:COL."""
    base = os.path.basename(name) or "policy.yaml"
    with tempfile.TemporaryDirectory(prefix="tvd-policy-") as d:
        path = os.path.join(d, base)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            policy, diags = check_file(path)
        except YamlUnreadable as e:
            return None, [str(e).replace(d + os.sep, "")]
        return policy, [str(x).replace(d + os.sep, "") for x in diags]


class Master:
    def __init__(self, directory: str, store=None) -> None:
        self.dir = directory
        self.ca = camod.Ca.load(directory)
        with open(os.path.join(directory, "url")) as f:
            self.url_here = f.read().strip()
        with open(os.path.join(directory, "signer.pem")) as f:
            self.signer_pem = f.read()
        self.signer_key = camod.load_key(os.path.join(directory, "signer.key"))
        self.ca_pem = camod.pem(self.ca.cert)
        self.store = store if store is not None else stores.open_store(directory)
        # the URL bundles name (proxies check it): one for all replicas, the first one's
        self.url = self.store.meta()["url"] if self.store.shared else self.url_here
        self.replica = None
        if self.store.shared:          # etcd (and its client library) only when used
            from xen_tvd.master.replicas import Replica
            self.replica = Replica(self)
        self.cond = threading.Condition()
        self.envelopes: dict[str, tuple[int, dict]] = {}   # host -> (generation, envelope)
        self.issued: dict[str, float] = {}                 # host -> when its envelope was signed
        self.seen = Observations()                         # latency, last contact (metrics, page)
        self.carriers: dict[str, list[str]] | None = {}    # tvd -> hosts; None: ask tvd_carriers
        self._policy: tuple[int, object] | None = None
        self._wanted = 1        # bumped by every local change; > _done means "recompute"
        self._done = 0
        self._stop = False
        self._worker: threading.Thread | None = None
        self._recompute_lock = threading.Lock()
        self._last_cost = 0.0

    # -- worker ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.replica is not None:
            self.replica.start()
            self.replica.ready.wait(10)
        try:
            self.recompute()
        except StoreUnavailable as e:     # serve what can be served; the worker retries
            log("error", "recompute-failed", error=str(e)[:300])
        self._worker = threading.Thread(target=self._run, name="recompute", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        if self.replica is not None:
            self.replica.stop()

    def changed(self) -> None:
        """A bundle input changed in this process: recompute now."""
        with self.cond:
            self._wanted += 1
            self.cond.notify_all()

    def _run(self) -> None:
        epoch = self.store.epoch()
        while True:
            with self.cond:
                if self._stop:
                    return
                if self._done >= self._wanted:
                    self.cond.wait(POLL_SECONDS)
                if self._stop:
                    return
                target = self._wanted
            try:
                now_epoch = self.store.epoch()
            except StoreUnavailable:
                now_epoch = None          # unknown: recompute when it answers again
            if now_epoch == epoch and self._done >= target:
                continue
            epoch = now_epoch
            # During a burst (200 hosts reporting) back-to-back recomputes would hold the GIL
            # most of the time and slow the very requests that end the burst: keep the
            # recompute duty cycle at most about half, but never delay a wake-up over 1 s.
            time.sleep(min(MAX_DELAY, max(DEBOUNCE_SECONDS, self._last_cost)))
            with self.cond:
                target = self._wanted
            try:
                self.recompute()
            except Exception as e:   # keep serving the last good bundles; say why
                self.seen.recompute_errors += 1
                log("error", "recompute-failed", error=f"{type(e).__name__}: {e}"[:300])
            with self.cond:
                self._done = max(self._done, target)
                self.cond.notify_all()

    def settled(self, timeout: float) -> None:
        """Wait until changes made so far are reflected in the bundles (bounded)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            target = self._wanted
            while self._done < target and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)

    # -- decisions ---------------------------------------------------------------------------
    def policy(self):
        cur = self.store.policy()
        if cur is None:
            return None
        version, text, name = cur
        if self._policy is None or self._policy[0] != version:
            policy, diags = verify_policy_text(text, name)
            if policy is None:
                raise PolicyInvalid([])  # stored text no longer verifies: keep old bundles
            self._policy = (version, policy)
        return self._policy[1]

    def tvd_carriers(self) -> dict[str, list[str]]:
        """TVD -> hosts carrying it; a follower works it out when asked (GET /v1/tvds, the
        page), as the leader does on every recompute."""
        with self.cond:
            carriers = self.carriers
        if carriers is not None:
            return carriers
        try:
            policy = self.policy()
        except PolicyInvalid:
            return {}
        if policy is None:
            return {}
        return _carriers(policy, decide(policy, self.store.reports(),
                                        self.store.enrolled_hosts()))

    def recompute(self) -> None:
        with self._recompute_lock:
            t0 = time.monotonic()
            try:
                self._recompute()
            finally:
                self._last_cost = time.monotonic() - t0

    def _recompute(self) -> None:
        t0 = time.monotonic()
        cur = self.store.policy()
        if cur is None:
            return
        shared = self.replica is not None
        if shared and not self.replica.is_leader():
            # a follower serves the leader's bundles (replicas.py) and decides nothing: on
            # shared cores three replicas each planning every host would triple the cost
            with self.cond:
                self.carriers = None
            return
        policy = self.policy()
        decisions = decide(policy, self.store.reports(), self.store.enrolled_hosts())
        carriers = _carriers(policy, decisions)
        evidence = self.store.evidence()
        stored = self.replica.bundle_states() if shared else self.store.bundle_states()
        changes, fresh = {}, {}
        policy_digest = hashlib.sha256(cur[1].encode()).hexdigest()
        for host, d in decisions.items():
            content = bundle_content(cur[1], self.url, host, d, evidence)
            # hash the policy once, not once per host: it is most of every payload's bytes
            digest = hashlib.sha256(canonical(dict(content, policy=policy_digest))).hexdigest()
            gen, old = stored.get(host, (0, ""))
            served = self.envelopes.get(host, (None,))[0]
            # shared: a generation is published once; one whose envelope is missing (a
            # migrated store, say) gets the next number rather than a second envelope
            if digest != old or (shared and served != gen):
                gen += 1
                changes[host] = (gen, digest)
            if digest != old or served != gen or host in changes:
                payload = dict(content, generation=gen, issued=time.time())
                fresh[host] = (gen, sign_bundle(payload, self.signer_key, self.signer_pem))
                self.issued[host] = payload["issued"]
        if shared:
            try:
                self.replica.publish(changes, fresh, set(self.envelopes) - set(decisions))
            except LostLeadership as e:
                log("warning", "bundles-not-published", reason=str(e) or "lost leadership")
                return
        elif changes:
            self.store.set_bundle_states(changes)
        with self.cond:
            self.envelopes.update(fresh)
            for gone in set(self.envelopes) - set(decisions):
                del self.envelopes[gone]      # revoked: nothing more to serve
            self.carriers = carriers
            self.cond.notify_all()
        if changes:
            log("info", "bundles", changed=len(changes), hosts=len(decisions),
                ms=(time.monotonic() - t0) * 1000)


def _carriers(policy, decisions) -> dict[str, list[str]]:
    carriers: dict[str, list[str]] = {t: [] for t in policy.tvds}
    for host, d in decisions.items():
        for s in d.state.segments:
            carriers.setdefault(s.tvd, []).append(host)
    return carriers
