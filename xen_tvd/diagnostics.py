"""Diagnostics: one problem, one line, `FILE:LINE:COL: severity: message`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pos:
    """Where a value came from: file, 1-based line and column.

    Defined here, not in xen_tvd.policy.model (which re-exports it): diagnostics, yamlsrc and
    yamlschema must be importable first without pulling in the xen_tvd.policy package, whose
    __init__ imports them back.
    """
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    severity: str            # "error" | "warning"
    message: str
    pos: Pos | None = None
    code: str = ""           # stable machine-readable kind, e.g. "indirect-flow"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f"{self.pos}: " if self.pos else ""
        return f"{where}{self.severity}: {self.message}"

    def as_dict(self) -> dict:
        d = {"severity": self.severity, "code": self.code, "message": self.message}
        if self.pos:
            d.update(file=self.pos.file, line=self.pos.line, column=self.pos.col)
        return d


class Collector:
    """Accumulates diagnostics so one run reports every problem."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def error(self, pos: Pos | None, message: str, code: str = "") -> None:
        self.items.append(Diagnostic("error", message, pos, code))

    def warning(self, pos: Pos | None, message: str, code: str = "") -> None:
        self.items.append(Diagnostic("warning", message, pos, code))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.is_error]
