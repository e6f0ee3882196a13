"""Run tvdctl as the administrator does: a separate process, so a traceback would show."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.common import paths

REPO = Path(paths.REPO)
FIGURE1 = REPO / "xl-configs" / "paper-figure1.yaml"
SUMMARY = re.compile(r"^\d+ file\(s\): \d+ error\(s\), \d+ warning\(s\)$")


def tvdctl(*args, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("NO_COLOR", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "xen_tvd.cli.tvdctl", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=e, timeout=timeout,
                          errors="replace")


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stdout and "Traceback" not in p.stderr, p.stderr


def diag_lines(p: subprocess.CompletedProcess, file: str) -> list[str]:
    """Every stdout line must be a diagnostic of `file`; stderr only the summary."""
    pat = re.compile(rf"^{re.escape(file)}:\d+:\d+: (error|warning): ")
    lines = p.stdout.splitlines()
    bad = [ln for ln in lines if not pat.match(ln)]
    assert not bad, f"lines not in FILE:LINE:COL form: {bad}"
    err = p.stderr.splitlines()
    assert len(err) == 1 and SUMMARY.match(err[0]), p.stderr
    return lines
