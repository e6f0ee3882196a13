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

from xen_tvd.master import ca as camod
from xen_tvd.master.bundle import canonical, sign_bundle
from xen_tvd.master.decide import bundle_content, decide
from xen_tvd.master.store import Store
from xen_tvd.policy import PolicyInvalid, YamlUnreadable, check_file
from xen_tvd.proxy.log import log

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
    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.ca = camod.Ca.load(directory)
        with open(os.path.join(directory, "url")) as f:
            self.url = f.read().strip()
        with open(os.path.join(directory, "signer.pem")) as f:
            self.signer_pem = f.read()
        self.signer_key = camod.load_key(os.path.join(directory, "signer.key"))
        self.ca_pem = camod.pem(self.ca.cert)
        self.store = Store(os.path.join(directory, "master.db"))
        self.cond = threading.Condition()
        self.envelopes: dict[str, tuple[int, dict]] = {}   # host -> (generation, envelope)
        self.carriers: dict[str, list[str]] = {}           # tvd -> hosts carrying it
        self._policy: tuple[int, object] | None = None
        self._wanted = 1        # bumped by every local change; > _done means "recompute"
        self._done = 0
        self._stop = False
        self._worker: threading.Thread | None = None
        self._recompute_lock = threading.Lock()
        self._last_cost = 0.0

    # -- worker ----------------------------------------------------------------------------
    def start(self) -> None:
        self.recompute()
        self._worker = threading.Thread(target=self._run, name="recompute", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()

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
            now_epoch = self.store.epoch()
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
        policy = self.policy()
        decisions = decide(policy, self.store.reports(), self.store.enrolled_hosts())
        evidence = self.store.evidence()
        stored = self.store.bundle_states()
        changes, fresh = {}, {}
        policy_digest = hashlib.sha256(cur[1].encode()).hexdigest()
        for host, d in decisions.items():
            content = bundle_content(cur[1], self.url, host, d, evidence)
            # hash the policy once, not once per host: it is most of every payload's bytes
            digest = hashlib.sha256(canonical(dict(content, policy=policy_digest))).hexdigest()
            gen, old = stored.get(host, (0, ""))
            if digest != old:
                gen += 1
                changes[host] = (gen, digest)
            if digest != old or self.envelopes.get(host, (None,))[0] != gen:
                payload = dict(content, generation=gen, issued=time.time())
                fresh[host] = (gen, sign_bundle(payload, self.signer_key, self.signer_pem))
        carriers: dict[str, list[str]] = {t: [] for t in policy.tvds}
        for host, d in decisions.items():
            for s in d.state.segments:
                carriers.setdefault(s.tvd, []).append(host)
        if changes:
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
