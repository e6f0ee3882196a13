"""Daemon log lines reach journald with their syslog priority (xen_tvd/log.py, used by
tvd-proxy and tvd-master).

A real systemd-journald, private to this test: it runs in its own mount namespace over tmpfs
/run and /var/log, so the host's journal (if any) is untouched. systemd-cat connects each
program's stderr to it as systemd connects a service's (a stream with level prefixes parsed);
JOURNAL_STREAM is set to that stream's device:inode as systemd sets it (systemd-cat does not).
journalctl then reads PRIORITY and MESSAGE back.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.hotplug.tvd_harness import REPO

JOURNALD = "/lib/systemd/systemd-journald"
LEVELS = "from xen_tvd.log import log, say; " + "; ".join(
    f"log({lv!r}, 'event-{lv}', detail='a b')" for lv in ("debug", "info", "warning", "error")) + \
    "; say('error', 'free text line')"
BROKEN_POLICY = "version: 1\ntvds:\n  a: {vlan: 0}\n"
# sh -c SCRIPT IDENT [env VAR=VALUE...] ARGV...: the private journald, each program under it
SCRIPT = r'''
set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/log
JOURNALD </dev/null >/dev/null 2>&1 &
jd=$!
trap 'kill $jd 2>/dev/null || true' EXIT
for i in $(seq 200); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
stream='export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec "$@"'
systemd-cat -t with-stream sh -c "$stream" sh "$@" || true     # the program's exit code is
systemd-cat -t without-stream "$@" || true                     # not what is tested here
for i in $(seq 200); do
    n=$(journalctl -D /run/log/journal -o cat -t with-stream -t without-stream | wc -l)
    [ "$n" -ge "$WANT" ] && break
    sleep 0.05
done
journalctl -D /run/log/journal -o json --no-pager -t with-stream -t without-stream
'''.replace("JOURNALD", JOURNALD)


def journal(argv: list[str], want: int, env: dict) -> dict[str, list[tuple[int, str]]]:
    """Run argv twice under a private journald: with JOURNAL_STREAM set (as under systemd) and
    without; {identifier: [(PRIORITY, MESSAGE)]}."""
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", SCRIPT,
                        "sh", *argv], env=dict(env, WANT=str(2 * want)), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out: dict[str, list[tuple[int, str]]] = {}
    for line in r.stdout.splitlines():
        e = json.loads(line)
        out.setdefault(e["SYSLOG_IDENTIFIER"], []).append((int(e["PRIORITY"]), e["MESSAGE"]))
    return out


def without_ts(line: str) -> str:
    """A log line with its leading ts=... field cut off (a line without one is unchanged)."""
    return line.split(" ", 1)[1] if line.startswith("ts=") else line


@pytest.fixture(scope="module")
def env():
    if not (os.access(JOURNALD, os.X_OK) and shutil.which("systemd-cat") and shutil.which("unshare")):
        pytest.skip("systemd-journald/systemd-cat/unshare missing: scripts/bootstrap installs "
                    "systemd (tier 1 in CI)")
    return dict(os.environ, PYTHONPATH=REPO)


def test_levels_become_journal_priorities(env):
    got = journal([sys.executable, "-c", LEVELS], 5, env)
    prio = [p for p, _ in got["with-stream"]]
    assert prio == [7, 6, 4, 3, 3]
    msgs = [m for _, m in got["with-stream"]]
    assert msgs[1].split(" ", 1)[1] == 'level=info event=event-info detail="a b"'  # after ts=
    assert msgs[4] == "free text line"
    # without JOURNAL_STREAM nothing is prefixed: every line lands at journald's default
    assert [p for p, _ in got["without-stream"]] == [6] * 5
    # the two runs may straddle a second: compare the lines without their timestamps
    assert [without_ts(m) for _, m in got["without-stream"]] == [without_ts(m) for m in msgs]


def test_a_daemon_that_refuses_to_start_logs_errors(env, tmp_path):
    policy = tmp_path / "broken.yaml"
    policy.write_text(BROKEN_POLICY)
    argv = [sys.executable, "-m", "xen_tvd.proxy.main", "run", "--policy", str(policy),
            "--host", "h1", "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path / "st")]
    got = journal(argv, 2, env)
    assert got["with-stream"] == [
        (3, f"{policy}:3:13: error: vlan of TVD 'a' 0 is out of range 1..4094"),
        (3, f"tvd-proxy: policy {policy} has errors; run 'tvdctl check {policy}'")]


def test_no_prefix_when_stderr_is_not_the_journal_stream(tmp_path):
    """JOURNAL_STREAM inherited, but stderr redirected (e.g. to a file): plain lines."""
    log = tmp_path / "err.log"
    with open(log, "w") as f:
        st = os.fstat(f.fileno())
        other = f"{st.st_dev}:{st.st_ino + 1}"
        subprocess.run([sys.executable, "-c", LEVELS], stderr=f, check=True,
                       env=dict(os.environ, PYTHONPATH=REPO, JOURNAL_STREAM=other))
    lines = log.read_text().splitlines()
    assert len(lines) == 5 and not any(ln.startswith("<") for ln in lines)
