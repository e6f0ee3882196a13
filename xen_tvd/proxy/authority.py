"""Who decides for the proxy core: the policy in force, admission, the desired state, audit.

core.py runs one control plane (the writer lock, the vif table, converge, segment GC, the
handlers) and asks its authority at every point where standalone and master mode differ:

    standalone.py          the policy file; the planner plans this host; no audit
    master_authority.py    the master's signed bundle; VM properties from evidence the
                           proxy checks; every decision audited through the link's spool

The core hands the authority what it knows (the VM's registration, every TVD the VM would be
in, the ports to plan); the authority raises admission.Denied, or planner refusals as
errors.Refused, and never touches the core's tables itself.
"""
from __future__ import annotations

from typing import Protocol

from xen_tvd.desired.model import HostState, VifPort
from xen_tvd.policy.model import Policy

from .state import Registration


class Authority(Protocol):
    host: str
    link: object | None          # master mode: the MasterLink (status, metrics); else None
    bundle: object | None        # master mode: the Bundle in force; else None
    revoked_msg: str | None      # master mode: why this host is revoked; else None

    @property
    def policy(self) -> Policy | None:
        """The policy in force; None: none (master mode without a bundle: fail closed)."""

    def load(self):
        """Outside the core's lock: read what install() takes (master: the stored bundle,
        verified again, which can take seconds for a big policy)."""

    def install(self, loaded) -> None:
        """Under the core's lock: put what load() read (or a reloaded policy) in force."""

    def desired(self, ports: list[VifPort], local: set[str], lingering: set[str]) -> HostState:
        """This host's desired state: `local` TVDs (vifs, libvirt ports, about to be), the
        `lingering` ones kept until the GC, the admitted `ports`. Refused if it cannot be
        planned."""

    def admit(self, what: str, tvd: str, uuid: str | None, reg: Registration | None,
              vm_tvds: set[str], new: bool) -> None:
        """May the VM be in `tvd` now, with all of `vm_tvds`? `uuid` None: an adopted vif with
        no record. `new`: a new attachment, not a re-check. Denied if not."""

    def check_registration(self, reg: Registration, what: str, new_tvds: list[str],
                           vm_tvds: set[str]) -> None:
        """A register (new_tvds: all its TVDs) or join (the joined one). Denied if not."""

    def audit(self, event: str, **fields) -> None:
        """Record a decision (master mode: the master's audit log)."""

    def status(self) -> dict:
        """Extra `status` answer fields of this mode."""
