"""What tvd-proxy counts about itself and reads from the kernel, for `status` (drops) and its
Prometheus metrics (docs/metrics.md): admission events by TVD and reason class, apply
durations and errors, and the dataplane's drop counters (flow filter per TVD pair and reason,
port security per vif and reason, the Dom0 guard) read with the dataplane's own readers.

Reasons are a small fixed set of classes (xen_tvd/reasons.py, shared with tvd-master) so a
metric's label values stay bounded whatever a message says; the whole message stays in the log
and the audit.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from xen_tvd.dataplane import DataplaneError
from xen_tvd.desired import transports
from xen_tvd.metrics import Family, Histogram
from xen_tvd.reasons import reason_class

APPLY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Counters:
    """Events since the proxy started; fed by Proxy.audit and Proxy.converge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: dict[tuple[str, str, str], int] = {}
        self.apply = Histogram("tvd_proxy_apply_duration_seconds",
                               "Time one reconcile (apply) of the host's desired state took.", (),
                               APPLY_BUCKETS)
        self.apply_errors = 0
        self.admitted_at: dict[str, float] = {}   # ifname -> when this proxy admitted it

    def event(self, event: str, tvd: str | None, reason: str | None,
              ifname: str | None = None) -> None:
        k = (event, tvd or "", reason_class(reason))
        with self._lock:
            self.events[k] = self.events.get(k, 0) + 1
            if ifname:
                if event == "admitted":
                    self.admitted_at[ifname] = time.time()
                else:
                    self.admitted_at.pop(ifname, None)

    def applied(self, seconds: float, ok: bool) -> None:
        self.apply.observe((), seconds)
        if not ok:
            with self._lock:
                self.apply_errors += 1

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self.events)


def drops(dataplane, state, vifs: dict) -> dict:
    """Packets the kernel dropped, by the readers of the dataplane (this process's network
    namespace): flow filter by (reason, from TVD, to TVD), port security by (vif, reason), the
    Dom0 guard. Counters restart when their table is replaced (a plan change)."""
    names = {}
    if state is not None and state.flows is not None:
        names = {t.tvd_id: t.tvd for t in state.flows.tvds}
    out = {"flows": [], "ports": [], "dom0_guard": 0}
    try:
        c = dataplane.drop_counters()
    except DataplaneError as e:
        return dict(out, error=str(e))
    for (reason, src, dst), n in sorted(c["flows"].items()):
        out["flows"].append({"reason": reason, "from": names.get(src, str(src)),
                             "to": names.get(dst, str(dst)), "packets": n})
    for ifname, per in sorted(c["ports"].items()):
        rec = vifs.get(ifname)
        for reason, n in sorted(per.items()):
            out["ports"].append({"ifname": ifname, "tvd": rec.tvd if rec else "",
                                 "reason": reason, "packets": n})
    out["dom0_guard"] = c["dom0_guard"]
    return out


def segment_view(seg, problems: list[str] = ()) -> dict:
    """A Segment as status shows it (tvdctl status, tvdctl explain): transport and its peers."""
    up = seg.uplink
    d = {"tvd": seg.tvd, "bridge": seg.bridge, "mtu": seg.mtu,
         "uplink": None if up is None else type(up).__name__,
         "transport": "local" if up is None else transports.of_uplink(up).name,
         "problems": list(problems)}
    if up is not None:
        # VXLAN: vni, local_ip, underlay_dev, group (multicast) or remotes (head-end
        # replication); VLAN: vlan_id, phys_dev
        d.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(up).items()})
    return d


@dataclasses.dataclass(frozen=True)
class StatusView:
    """What `status` reads of the proxy, copied under its lock (view()). The kernel is read
    after the lock is released: a status poll (a monitor, a lab's readiness loop) must never
    hold up an admission or a reconcile, nor wait behind one to read counters."""
    applied: object            # HostState or None
    vifs: dict                 # ifname -> VifRecord
    regs: dict                 # uuid -> Registration
    policy: object
    checked: dict              # ifname -> monotonic time of its last membership check
    admitted_at: dict          # ifname -> wall time
    bundle: object             # master mode: the bundle in force (None: none or standalone)
    wants_bundle: bool         # master mode
    log_drops: int


def view(proxy) -> StatusView:
    """Under proxy.lock: shallow copies (a record in the tables is replaced, not changed)."""
    return StatusView(applied=proxy.applied, vifs=dict(proxy.vifs), regs=dict(proxy.regs),
                      policy=proxy.policy, checked=dict(proxy.checked),
                      admitted_at=dict(proxy.counters.admitted_at), bundle=proxy.bundle,
                      wants_bundle=proxy.link is not None, log_drops=proxy.log_drops)


def status(dataplane, v: StatusView) -> dict:
    """What `status` adds to the proxy's own answer, without its lock: segments with
    transport, peers and kernel health, vifs with VM, admission and session times, drop
    counters, and `degraded` (one line per problem; tvdctl status exits non-zero on any)."""
    applied = v.applied
    now, mono = time.time(), time.monotonic()
    try:
        # vifs plugged since the last apply are not in applied.ports: check the records
        kernel = dataplane.health(dataclasses.replace(applied, ports=tuple(
            r.port() for r in v.vifs.values()))) if applied is not None \
            else {"segments": {}, "ports": {}}
    except DataplaneError as e:
        kernel = {"segments": {}, "ports": {}, "error": str(e)}
    segs = [segment_view(s, kernel["segments"].get(s.tvd, [])) for s in
            (applied.segments if applied else ())]
    degraded = [f"segment {s['tvd']}: {p}" for s in segs for p in s["problems"]]
    if "error" in kernel:
        degraded.append(f"kernel not readable: {kernel['error']}")
    vifs = []
    for name in sorted(v.vifs):
        rec = v.vifs[name]
        reg = v.regs.get(rec.uuid) if rec.uuid else None
        t = v.policy.tvds.get(rec.tvd) if v.policy is not None else None
        checked = v.checked.get(name)
        checked_at = None if checked is None else round(now - (mono - checked), 3)
        k = kernel["ports"].get(name) or {}
        d = dict(vars(rec), vm=reg.name if reg else None,
                 admitted_at=v.admitted_at.get(name), checked_at=checked_at,
                 session_expires=(checked_at + t.session_seconds
                                  if t is not None and t.session_seconds and checked_at else None),
                 attached_to=k.get("bridge"))
        seg = applied.segment(rec.tvd) if applied is not None else None
        # what the proxy made the vif's tx checksum offload: its TVD's, off where the VM opts out
        d["tx_csum_on"] = None if seg is None else rec.port().tx_csum_on(seg)
        if k.get("problem"):
            degraded.append(f"vif {k['problem']}")
        vifs.append(d)
    if v.wants_bundle and v.bundle is None:
        degraded.append("no policy bundle from the master in force: every admission is refused")
    out = {"segments": segs, "vifs": vifs, "drops": drops(dataplane, applied, v.vifs),
           "log_drops": v.log_drops, "degraded": degraded}
    if v.bundle is not None:
        out["bundle"] = {"generation": v.bundle.generation, "issued": v.bundle.issued,
                         "age": round(now - v.bundle.issued, 3)}
    return out


def collect(proxy, wait: float = 2.0) -> list[Family]:
    """The proxy's metrics. Its state is copied under its lock (waiting at most `wait`: a long
    apply holds it; then the vif gauges of this round are left out, the rest still written)."""
    fam = []
    snap = None
    if proxy.lock.acquire(timeout=wait):
        try:
            snap = (dict(proxy.vifs), dict(proxy.ports), proxy.applied, proxy.bundle)
        finally:
            proxy.lock.release()
    if snap is not None:
        vifs, ports, applied, bundle = snap
        per: dict[str, int] = {}
        for v in vifs.values():
            per[v.tvd] = per.get(v.tvd, 0) + 1
        f = Family("tvd_proxy_vifs", "gauge", "Admitted vifs attached here, by TVD.")
        for t in sorted(set(per) | {s.tvd for s in (applied.segments if applied else ())}):
            f.add(per.get(t, 0), tvd=t)
        fam.append(f)
        per = {}
        for p in ports.values():
            per[p.tvd] = per.get(p.tvd, 0) + 1
        f = Family("tvd_proxy_libvirt_ports", "gauge",
                   "Admitted libvirt network ports, by TVD.")
        for t, n in sorted(per.items()):
            f.add(n, tvd=t)
        fam.append(f)
        f = Family("tvd_proxy_segments", "gauge", "TVD segments on this host, by transport.")
        kinds: dict[str, int] = {}
        for s in (applied.segments if applied else ()):
            k = type(s.uplink).__name__.replace("Uplink", "").lower() if s.uplink else "local"
            kinds[k] = kinds.get(k, 0) + 1
        for k, n in sorted(kinds.items()):
            f.add(n, transport=k)
        fam.append(f)
        d = drops(proxy.dataplane, applied, vifs)
        f = Family("tvd_proxy_flow_drops_total", "counter",
                   "Packets the inter-TVD flow filter dropped, by reason (closed, reply, sender, "
                   "receiver, forged) and TVD pair; restarts when the plan changes.")
        for x in d["flows"]:
            f.add(x["packets"], reason=x["reason"], src_tvd=x["from"], dst_tvd=x["to"])
        fam.append(f)
        f = Family("tvd_proxy_port_drops_total", "counter",
                   "Frames port security dropped, by vif, its TVD and reason.")
        for x in d["ports"]:
            f.add(x["packets"], vif=x["ifname"], tvd=x["tvd"], reason=x["reason"])
        fam.append(f)
        fam.append(Family("tvd_proxy_dom0_guard_drops_total", "counter",
                          "Frames from VMs to Dom0's own stack the Dom0 guard dropped.")
                   .add(d["dom0_guard"]))
        if proxy.link is not None:
            fam.append(Family("tvd_proxy_bundle_generation", "gauge",
                              "Generation of the master's bundle in force (0: none).")
                       .add(bundle.generation if bundle else 0))
            if bundle is not None:
                fam.append(Family("tvd_proxy_bundle_age_seconds", "gauge",
                                  "Seconds since the master signed the bundle in force.")
                           .add(round(time.time() - bundle.issued, 3)))
    c = proxy.counters
    f = Family("tvd_proxy_admission_events_total", "counter",
               "Admission decisions and removals since start: event (admitted, denied, "
               "detached, session-expired, revoked), TVD and reason class.")
    for (event, tvd, reason), n in sorted(c.snapshot().items()):
        f.add(n, event=event, tvd=tvd, reason=reason)
    fam.append(f)
    fam.append(c.apply.family())
    fam.append(Family("tvd_proxy_apply_errors_total", "counter",
                      "Reconciles (apply) the kernel refused; the host fails closed.")
               .add(c.apply_errors))
    if proxy.link is not None:
        age = proxy.link.contact_age()
        if age is not None:
            fam.append(Family("tvd_proxy_master_contact_age_seconds", "gauge",
                              "Seconds since the master was last heard from.").add(round(age, 3)))
        fam.append(Family("tvd_proxy_audit_spooled", "gauge",
                          "Audit events waiting to reach the master.")
                   .add(proxy.link.spool.size()))
        fam.append(Family("tvd_proxy_revoked", "gauge",
                          "1 when the master revoked this host.")
                   .add(int(proxy.revoked_msg is not None)))
    return fam
