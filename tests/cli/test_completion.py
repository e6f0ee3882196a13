"""Bash completion for tvdctl (xen_tvd/cli/completion.py), run by a real bash: every
sub-command path of the parser completes its sub-commands and options; option values fall back
to file names."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess

import pytest

from xen_tvd.cli import completion
from xen_tvd.cli.tvdctl import build_parser

from tests.cli.cli_helpers import tvdctl

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="no bash")

# COMP_WORDS/COMP_CWORD as bash sets them for `tvdctl WORDS...<Tab>`, one reply per line
DRIVER = r'''
source "$1"
while IFS= read -r line; do
    eval "COMP_WORDS=($line)"
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _tvdctl
    printf '%s\n' "${COMPREPLY[*]}"
done
'''


def completer(script):
    def run(*lines: list[str]) -> list[set[str]]:
        stdin = "".join(" ".join(json.dumps(w) for w in words) + "\n" for words in lines)
        r = subprocess.run(["bash", "--norc", "-c", DRIVER, "bash", str(script)], input=stdin,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr, r.stderr
        return [set(out.split()) for out in r.stdout.splitlines()]
    return run


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """Completion by the script `tvdctl completion bash` prints (what tvdctl install writes)."""
    script = tmp_path_factory.mktemp("completion") / "tvdctl"
    p = tvdctl("completion", "bash")
    assert p.returncode == 0, p.stderr
    script.write_text(p.stdout)
    return completer(script)


def test_every_command_path_completes_its_commands_and_options(complete):
    paths = list(completion.walk(build_parser()))
    assert len(paths) > 20
    queries = []
    for path, commands, positional, options, _, _ in paths:
        words = path.split()
        queries += [words + [""], words + ["-"]]
    replies = complete(*queries)
    for i, (path, commands, positional, options, _, _) in enumerate(paths):
        assert replies[2 * i] == set(commands) | set(positional), path
        assert replies[2 * i + 1] == {o for o in options if o.startswith("-")}, path


def test_prefixes_option_values_and_positionals(complete):
    got = complete(["tvdctl", "li"],
                   ["tvdctl", "libvirt", "install-hook", "--hooks-dir", "/x", "--p"],
                   ["tvdctl", "admit", "--policy", ""],          # a file: bash's default
                   ["tvdctl", "admit", "--policy", "p.yaml", "--t"],
                   ["tvdctl", "show", "--json", ""],              # FILE: bash's default
                   ["tvdctl", "--version", "sh"],
                   ["tvdctl", "completion", ""])
    assert got == [{"libvirt"}, {"--python"}, set(), {"--tvd"}, set(), {"show"}, {"bash"}]


def test_option_choices(tmp_path):
    # tvdctl has no option with choices today; a parser that has one, as a future one would
    p = argparse.ArgumentParser(prog="tvdctl")
    sub = p.add_subparsers()
    r = sub.add_parser("render")
    r.add_argument("--format", choices=["svg", "png"])
    r.add_argument("--out")
    script = tmp_path / "tvdctl"
    script.write_text(completion.bash_script(p))
    got = completer(script)(["tvdctl", "render", "--format", ""], ["tvdctl", "render", "--format", "p"],
                            ["tvdctl", "render", "--format", "svg", "--o"])
    assert got == [{"svg", "png"}, {"png"}, {"--out"}]


def test_words_that_need_quoting_are_refused():
    with pytest.raises(ValueError, match="not plain words"):
        completion._words(["ok", "two words"])
