"""tvd-master's Prometheus metrics (docs/metrics.md): hosts, bundles, policy, admissions, audit
events, request latency and recompute errors, collected from the store and the running Master.
`tvd-master serve --metrics-textfile PATH` writes them for node-exporter's textfile collector."""
from __future__ import annotations

import time

from xen_tvd.metrics import Family
from xen_tvd.reasons import reason_class

AUDIT_PAGE = 10_000      # audit records read per store call when catching up
# the hosts' admission events (server.AUDIT_EVENTS), counted by their reason's class too
ADMISSION_EVENTS = ("admitted", "denied", "detached", "session-expired", "revoked")


class MasterMetrics:
    """collect() -> families; keeps a cursor into the audit log so each record is counted once
    (the first collect reads the whole log, in pages)."""

    def __init__(self, master) -> None:
        self.m = master
        self._audit_seq = 0
        self._audit_counts: dict[str, int] = {}
        # (event, reason class) of the hosts' admission events: bounded by ADMISSION_EVENTS x
        # reasons.VOCABULARY whatever text a host posts as its reason
        self._admission_counts: dict[tuple[str, str], int] = {}

    def _count_audit(self) -> None:
        while True:
            page = self.m.store.audit_events(self._audit_seq, AUDIT_PAGE)
            for e in page:
                self._audit_counts[e["event"]] = self._audit_counts.get(e["event"], 0) + 1
                if e["event"] in ADMISSION_EVENTS and str(e.get("actor")).startswith("host:"):
                    k = (e["event"], reason_class((e.get("detail") or {}).get("reason")))
                    self._admission_counts[k] = self._admission_counts.get(k, 0) + 1
                self._audit_seq = e["seq"]
            if len(page) < AUDIT_PAGE:
                return

    def collect(self) -> list[Family]:
        m, store = self.m, self.m.store
        try:
            return self._collect(m, store)
        finally:
            store.release()     # the writer thread's pooled reader goes back

    def _collect(self, m, store) -> list[Family]:
        now = time.time()
        hosts = store.hosts()
        states = {"enrolled": 0, "revoked": 0}
        for h in hosts:
            states[h["state"]] = states.get(h["state"], 0) + 1
        fam = [Family("tvd_master_hosts", "gauge", "Hosts on record, by state.")]
        for s, n in sorted(states.items()):
            fam[-1].add(n, state=s)

        with m.cond:
            envelopes = {h: g for h, (g, _) in m.envelopes.items()}
        issued = dict(m.issued)
        gen = Family("tvd_master_bundle_generation", "gauge",
                     "Generation of the signed bundle each enrolled host is served.")
        age = Family("tvd_master_bundle_age_seconds", "gauge",
                     "Seconds since each host's served bundle was signed.")
        for h in sorted(envelopes):
            gen.add(envelopes[h], host=h)
            if h in issued:
                age.add(round(now - issued[h], 3), host=h)
        contact = Family("tvd_master_host_last_contact_timestamp_seconds", "gauge",
                         "When each host last made a successful request (since this master "
                         "started).")
        for h, ts in sorted(m.seen.contacts().items()):
            contact.add(round(ts, 3), host=h)
        fam += [gen, age, contact]

        cur = store.policy()
        fam.append(Family("tvd_master_policy_version", "gauge",
                          "Version of the policy in force (0: none pushed).")
                   .add(cur[0] if cur else 0))
        adm: dict[tuple[str, str], int] = {}
        for a in store.admissions():
            k = (a["tvd"], a["state"])
            adm[k] = adm.get(k, 0) + 1
        f = Family("tvd_master_vm_nics", "gauge",
                   "VM NICs by TVD and their last reported state (admitted, denied, detached, "
                   "session-expired, revoked).")
        for (tvd, state), n in sorted(adm.items()):
            f.add(n, tvd=tvd, state=state)
        fam.append(f)

        self._count_audit()
        f = Family("tvd_master_audit_events_total", "counter",
                   "Audit records by event (the hosts' admissions, denials, session expiries "
                   "and revocations, and the master's own).")
        for ev, n in sorted(self._audit_counts.items()):
            f.add(n, event=ev)
        fam.append(f)
        f = Family("tvd_master_admission_events_total", "counter",
                   "The hosts' admission decisions and removals (admitted, denied, detached, "
                   "session-expired, revoked) by the class of their reason (empty for an "
                   "admission); the whole reason is in the audit.")
        for (ev, reason), n in sorted(self._admission_counts.items()):
            f.add(n, event=ev, reason=reason)
        fam.append(f)
        fam.append(Family("tvd_master_recompute_errors_total", "counter",
                          "Bundle recomputations that failed (the last good bundles stay "
                          "served).").add(m.seen.recompute_errors))
        fam.append(m.seen.latency.family())
        return fam
