"""Master authority (docs/master-protocol.md): the master's signed bundle decides.

Policy, segments, underlay peers, router legs and flow pairs come from the bundle (the master
decided the mechanisms; the proxy keeps what its local TVDs need by the same routes.needed
rule as standalone); VM properties come from evidence the proxy checks itself (evidence.py);
every decision is audited through the link's spool; sessions.py re-checks members. No bundle
in force = no segments and every admission refused (fail closed).

The link (master_link.py) calls on_bundle / on_revoked from its own thread; both take the
core's lock and change the core only through its public methods.
"""
from __future__ import annotations

from xen_tvd.desired.model import HostState, VifPort
from xen_tvd.desired.transports.wireguard import rotating_keys
from xen_tvd.log import log

from . import admission, routes, sessions
from .admission import Denied
from .evidence import DigestCache, EvidenceError, vm_properties
from .state import Registration


class MasterAuthority:
    def __init__(self, link, host: str) -> None:
        self.link = link
        self.host = host
        self.bundle = None                 # the verified Bundle in force
        self.revoked_msg: str | None = None
        self.digests = DigestCache()       # image digests (sessions.py re-hashes them)
        self.core = None                   # bind(): the core this authority decides for
        self.reported_accepts: frozenset[str] | None = None   # in the last capability report

    def bind(self, core) -> None:
        self.core = core

    @property
    def policy(self):
        return self.bundle.policy if self.bundle else None

    def load(self):
        # the stored bundle is verified again: a tampered one is none at all (fail closed)
        return self.link.load_stored() if not self.revoked_msg else None

    def install(self, stored) -> None:
        self.bundle = None if self.revoked_msg else stored

    # ---- desired state -----------------------------------------------------------------------

    def desired(self, ports: list[VifPort], local: set[str], lingering: set[str]) -> HostState:
        """The master's segments for the TVDs with a local vif (plus lingering / about to be),
        the admitted ports, the master's underlay peers; NIC settings only for NICs a local
        segment uses, as the planner does in standalone mode."""
        b = self.bundle
        if b is None:
            return HostState(host=self.host, underlay_peers=())
        local = set(local) | set(lingering)
        # the master planned every TVD this host may carry; keep what the local ones need,
        # by the same rule the planner applies in standalone mode
        segs = tuple(b.segments[t] for t in sorted(routes.needed(b.policy, self.host, local))
                     if t in b.segments)
        router, flows = routes.narrow(b.router, b.flows, {s.tvd for s in segs})
        nics = {s.uplink.nic for s in segs if s.uplink is not None}
        return HostState(host=self.host, segments=segs,
                         ports=tuple(sorted((p for p in ports if p.tvd in b.segments),
                                            key=lambda p: p.ifname)),
                         vlan_offload_off=tuple(n for n in b.vlan_offload_off if n in nics),
                         underlay_mtu={n: m for n, m in b.underlay_mtu.items() if n in nics},
                         underlay_peers=b.underlay_peers, router=router, flows=flows)

    # ---- admission ---------------------------------------------------------------------------

    def _bundle_or_refuse(self):
        if self.bundle is None:
            if self.revoked_msg:
                raise Denied(self.revoked_msg)
            err = f" (last error: {self.link.last_error})" if self.link.last_error else ""
            raise Denied(f"no valid policy bundle from master {self.link.url} yet{err}; check the "
                         "master and 'journalctl -u tvd-proxy' (event=bundle-refused)")
        return self.bundle

    def vm_evidence(self, uuid: str, reg: Registration | None) -> tuple[dict, list[str]]:
        """The VM's properties from the evidence it presented (certificate, image digests)."""
        b = self._bundle_or_refuse()
        try:
            return vm_properties(uuid, reg.cert if reg else None, reg.images if reg else [],
                                 self.link.ca, b.evidence, self.digests)
        except EvidenceError as e:
            raise Denied(f"VM {(reg.name if reg else '') or uuid}: {e}") from None

    def admit(self, what: str, tvd: str, uuid: str | None, reg: Registration | None,
              vm_tvds: set[str], new: bool) -> None:
        b = self._bundle_or_refuse()
        admission.check_tvd(b.policy, tvd)
        admission.check_not_left(reg, tvd, what)
        admission.check_plan(b, self.host, tvd, self.link.url)
        t = b.policy.tvds[tvd]
        if uuid is None:
            if t.membership:   # adopted, no record: nothing to check its evidence against
                raise Denied(f"{what}: no record of the VM behind it, so its evidence for "
                             f"TVD '{tvd}' cannot be checked")
        else:
            props, notes = self.vm_evidence(uuid, reg)
            trial = Registration.from_json(reg.to_json()) if reg else Registration(uuid=uuid)
            trial.properties = dict(props)
            tvds = {x for x in vm_tvds if x in b.policy.tvds} | {tvd}
            try:
                admission.check_vm(b.policy, uuid, trial if reg else None, tvds, what)
            except Denied as e:
                raise Denied(f"{e}{'; ' + '; '.join(notes) if notes else ''}") from None
        if new:
            self._check_master_contact(tvd, t)

    def _check_master_contact(self, tvd: str, t) -> None:
        """The offline rule: new admissions only while the master was heard from within the
        TVD's session bound (or --offline-admission-grace); else ask it now, briefly."""
        bound = t.session_seconds or self.link.offline_grace
        age = self.link.contact_age()
        if age is not None and age <= bound:
            return
        if self.link.probe():
            return
        raise Denied(self.link.offline_message(tvd, bound, bool(t.session_seconds)))

    def check_registration(self, reg: Registration, what: str, new_tvds: list[str],
                           vm_tvds: set[str]) -> None:
        """Self-asserted properties are ignored (kept for standalone only); the evidence must
        hold now and give M(t) of every TVD the VM names."""
        b = self._bundle_or_refuse()
        if reg.properties:
            log("info", "register-properties-ignored", uuid=reg.uuid,
                detail="master mode: properties come from the VM certificate and image digests")
        try:
            for tvd in sorted(reg.tvds()):
                admission.check_tvd(b.policy, tvd)
                admission.check_plan(b, self.host, tvd, self.link.url)
            props, notes = self.vm_evidence(reg.uuid, reg)
            if reg.tvds():
                trial = Registration.from_json(reg.to_json())
                trial.properties = props
                try:
                    admission.check_vm(b.policy, reg.uuid, trial, vm_tvds, what)
                except Denied as e:
                    raise Denied(f"{e}{'; ' + '; '.join(notes) if notes else ''}") from None
        except Denied as e:
            self.link.audit("denied", vm=reg.uuid, name=reg.name or None, reason=str(e))
            raise

    def audit(self, event: str, **fields) -> None:
        self.link.audit(event, **fields)

    def wireguard_accepts(self) -> frozenset[str]:
        """The keys of rotating peers (two keys for one address) the bundle in force makes this
        host accept: the capability report tells the master, which then lets those peers
        switch. Only after the bundle was applied (on_bundle reports it then)."""
        b = self.bundle
        accepts = rotating_keys(s.uplink for s in b.segments.values()) if b else frozenset()
        self.reported_accepts = accepts
        return accepts

    def status(self) -> dict:
        return {"master": {"url": self.link.url,
                           "generation": self.bundle.generation if self.bundle else None,
                           "contact_age": self.link.contact_age(),
                           "unreachable_since": self.link.unreachable_since,
                           "revoked": self.revoked_msg is not None,
                           "audit_spooled": self.link.spool.size()}}

    # ---- the link's callbacks ----------------------------------------------------------------

    def on_bundle(self, bundle) -> None:
        """A new verified bundle (already stored): re-check every vif against it, detach what
        fails, reconcile. apply() compares before writing, so segments and vifs of TVDs the
        bundle did not change are not touched."""
        core = self.core
        with core.lock:
            old = self.bundle.generation if self.bundle else None
            self.bundle, self.revoked_msg = bundle, None
            sessions.recheck(core, sorted(core.vifs), "policy-change")
            core.recheck_ports()
            core.keep_lingering(set(bundle.segments))
            core.reconcile()
            core.save()
        log("info", "bundle-applied", generation=bundle.generation, previous=old,
            tvds=",".join(sorted(bundle.segments)), vifs=len(core.vifs))
        # applied: tell the master which rotating peers' new keys this host now accepts
        if rotating_keys(s.uplink for s in bundle.segments.values()) != self.reported_accepts:
            self.link.report_again.set()

    def on_revoked(self, msg: str) -> None:
        """Host revoked: no bundle, no vif, no segment; everything refused until re-enrolled."""
        core = self.core
        with core.lock:
            self.bundle, self.revoked_msg = None, msg
            core.detach_all("revoked", "host revoked by the master")
            core.reconcile(force=True)
            core.save()
