"""The adversarial corpus cannot drift from the tests: every entry is complete, expects 0 and
names a test that exists and both takes its parameters from the entry and checks its count;
every attack a test names is in the corpus."""
from __future__ import annotations

import ast
import os
import re

from tests.adversarial.adversarial_helpers import FIELDS, load
from tests.common.paths import REPO as ROOT

TESTS = os.path.join(ROOT, "tests")



def functions(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return {n.name: ast.get_source_segment(text, n) for n in ast.walk(ast.parse(text))
            if isinstance(n, ast.FunctionDef)}


def test_every_entry_is_complete_and_expects_nothing_through():
    entries = load()
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "duplicate attack ids"
    for e in entries:
        assert all(k in e for k in FIELDS), (e["id"], [k for k in FIELDS if k not in e])
        assert e["expected"] == 0, e["id"]
        assert isinstance(e["sent"], int) and e["sent"] > 0, e["id"]


def test_every_entry_names_a_test_that_runs_it():
    for e in load():
        path, _, name = e["test"].partition("::")
        funcs = functions(os.path.join(ROOT, path))
        assert name in funcs, f"{e['id']}: no test {e['test']}"
        src = funcs[name]
        assert f'attack("{e["id"]}")' in src, f"{e['test']} does not read attack {e['id']}"
        assert f'assert_count("{e["id"]}"' in src, f"{e['test']} does not count {e['id']}"


def test_every_attack_a_test_names_is_in_the_corpus():
    known = {e["id"] for e in load()}
    named = set()
    for d, _, files in os.walk(TESTS):
        for f in files:
            if f.endswith(".py") and f.startswith("test_") and f != "test_adversarial_corpus.py":
                with open(os.path.join(d, f), encoding="utf-8") as fh:
                    named |= set(re.findall(r'(?:attack|assert_count)\("([^"]+)"', fh.read()))
    assert named <= known, sorted(named - known)
    assert known <= named, sorted(known - named)
