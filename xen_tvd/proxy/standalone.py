"""Standalone authority: the policy file decides, and the planner plans this host.

    plan(policy, {me: admitted ports}, extra={me: local TVDs,
                                              every other policy host: the TVDs it may carry
                                              of those this host needs})

where "needs" (routes.needed) is the local TVDs plus their routed components, whose router
legs and VM-less segments the planner adds; so each such TVD's VXLAN/VLAN uplink points at the
other hosts of the capability model (planner.carriers decides which may carry what).
"""
from __future__ import annotations

from xen_tvd.desired.model import HostState, VifPort
from xen_tvd.errors import Refused
from xen_tvd.planner import PlanError, carriers, plan
from xen_tvd.policy.model import Policy

from . import admission, routes
from .state import Registration


class StandaloneAuthority:
    link = bundle = revoked_msg = None   # no master

    def __init__(self, policy: Policy, host: str) -> None:
        self._check_host(policy, host)
        self.host = host
        self._policy = policy

    @staticmethod
    def _check_host(policy: Policy, host: str) -> None:
        if host not in policy.hosts:
            raise RuntimeError(f"host '{host}' is not in the policy's capability model "
                               f"(hosts: {', '.join(sorted(policy.hosts)) or 'none'})")

    @property
    def policy(self) -> Policy:
        return self._policy

    def load(self) -> Policy:
        return self._policy

    def install(self, policy: Policy) -> None:
        """SIGHUP: the new policy (the core re-admits every vif under it)."""
        self._policy = policy

    def desired(self, ports: list[VifPort], local: set[str], lingering: set[str]) -> HostState:
        local = set(local) | {t for t in lingering if t in self._policy.tvds}
        extra = {self.host: local}
        # the other hosts are segment peers for every TVD this host carries, VM-less routed
        # ones included: a beta VM elsewhere is reached over beta's segment even from a host
        # that only has alpha VMs (and peers that may carry beta but not alpha count too)
        need = routes.needed(self._policy, self.host, local)
        for h in self._policy.hosts:
            if h != self.host:
                extra[h] = {t for t in need if carriers.may_carry(self._policy, h, t)}
        try:
            states = plan(self._policy, {self.host: ports}, extra)
        except PlanError as e:
            raise Refused(str(e)) from None
        return states.get(self.host, HostState(host=self.host))

    def admit(self, what: str, tvd: str, uuid: str | None, reg: Registration | None,
              vm_tvds: set[str], new: bool) -> None:
        p = self._policy
        admission.check_tvd(p, tvd)
        admission.check_not_left(reg, tvd, what)
        admission.check_host(p, self.host, tvd)
        admission.check_routed(p, self.host, tvd)
        if uuid is not None:   # adopted vifs with no record: the VM was admitted before
            admission.check_vm(p, uuid, reg, {t for t in vm_tvds if t in p.tvds} | {tvd}, what)

    def check_registration(self, reg: Registration, what: str, new_tvds: list[str],
                           vm_tvds: set[str]) -> None:
        for tvd in new_tvds:
            admission.check_tvd(self._policy, tvd)
            admission.check_host(self._policy, self.host, tvd)
        if reg.tvds():
            admission.check_vm(self._policy, reg.uuid, reg, vm_tvds, what)

    def audit(self, event: str, **fields) -> None:
        pass   # standalone decisions are logged, not audited

    def status(self) -> dict:
        return {}
