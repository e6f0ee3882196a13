"""Stopping the daemons tests start (tvd-proxy, tvd-master, helpers) without hanging a run."""
from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> int:
    """SIGTERM, wait up to `timeout` s, then SIGKILL; returns the exit code. A process that
    has already exited is only reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def log_text(path: str) -> str:
    """A daemon's log file so far ("" before it exists), for failure messages and waits."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
