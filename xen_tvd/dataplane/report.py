"""What apply() did, and the one exception type the dataplane lets escape."""
from __future__ import annotations

from dataclasses import dataclass, field


class DataplaneError(Exception):
    """A kernel operation failed or the desired state cannot be applied.

    The message is one line saying what failed and what to fix; callers print it as is.
    When raised by apply(), `.report` holds the changes made before the failure.
    """

    report: "ApplyReport | None" = None


@dataclass
class ApplyReport:
    changes: list[str] = field(default_factory=list)        # e.g. "created bridge tvd-alpha"
    missing_ports: list[str] = field(default_factory=list)  # VifPorts whose interface is absent
    warnings: list[str] = field(default_factory=list)       # applied, but something is degraded

    # Deliberately no __bool__: "report is falsy" would be ambiguous (no changes? no warnings?).
    @property
    def changed(self) -> bool:
        return bool(self.changes)
