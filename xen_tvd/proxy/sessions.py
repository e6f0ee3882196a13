"""Continual membership (paper 4.5; docs/master-protocol.md): admission is not a one-off.

A vif of a TVD with `session-seconds: N` is admitted again, evidence and all (certificate
validity and revocation, image re-hashed, M(t), the master's plan), at least every N seconds,
and every vif is admitted again at once when a new bundle arrives. What no longer passes is
detached (fail closed) and audited: `revoked` when the master revoked the VM or its
certificate, `session-expired` when a periodic re-check failed, `detached` when a policy change
no longer admits it. Both entry points run under the core's writer lock and change it only
through its public methods (readmit, detach).
"""
from __future__ import annotations

import threading
import time

from xen_tvd.log import log

from .admission import Denied
from .evidence import EvidenceError

TICK = 1.0   # how often the session thread looks for due vifs; part of the bound (N - TICK)


def recheck(core, ifnames, why: str) -> list[str]:
    """Admit each named vif again; detach and audit those that fail. Caller holds core.lock.
    Returns the detached ifnames."""
    detached = []
    for name in ifnames:
        rec = core.vifs.get(name)
        if rec is None:
            continue
        try:
            core.readmit(name)
        except Denied as e:
            msg = str(e)
            event = "revoked" if "revoked" in msg else \
                "session-expired" if why == "session" else "detached"
            core.detach(name, event, msg)
            log("warning", event, ifname=name, tvd=rec.tvd, uuid=rec.uuid, why=why, error=msg)
            detached.append(name)
    if detached:
        core.release_segments()
        core.save()
    return detached


def due(core, now: float) -> list[str]:
    """vifs whose TVD has a session bound that will have passed by the next tick."""
    out = []
    if core.policy is None:
        return out
    for name, rec in core.vifs.items():
        t = core.policy.tvds.get(rec.tvd)
        if t is not None and t.session_seconds and \
                now - core.checked.get(name, 0.0) >= t.session_seconds - TICK:
            out.append(name)
    return sorted(out)


class SessionWatch:
    def __init__(self, core, digests) -> None:
        self.core = core
        self.digests = digests     # the master authority's image digest cache
        self.stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="sessions", daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(TICK):
            try:
                self.tick()
            except Exception as e:   # a bug here must not end continual membership silently
                log("error", "session-check-failed", error=f"{type(e).__name__}: {e}")

    def tick(self) -> None:
        core = self.core
        with core.lock:
            names = due(core, time.monotonic())
            images = sorted({p for n in names for p in _images_of(core, n)})
        if not names:
            return
        # re-hash outside the writer lock (a disk image can take seconds); the re-check
        # under the lock then finds these fresh digests unless the file changed meanwhile
        for path in images:
            try:
                self.digests.refresh(path)
            except EvidenceError:
                pass   # unreadable: the re-check under the lock reports it and detaches
        with core.lock:
            recheck(core, [n for n in names if n in core.vifs], "session")


def _images_of(core, ifname: str) -> list[str]:
    rec = core.vifs.get(ifname)
    reg = core.regs.get(rec.uuid) if rec is not None and rec.uuid else None
    return list(reg.images) if reg is not None else []
