"""The adversarial corpus (corpus.yaml beside this file), shared by the attack tests.

An attack test takes its parameters from its entry (`attack(id)`) and ends with
`assert_count(id, counted)`, so the corpus and the tests cannot drift apart;
tests/adversarial/test_adversarial_corpus.py checks that every entry names a test that does so.
"""
from __future__ import annotations

import os

import yaml

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.yaml")
FIELDS = ("id", "issue", "target", "attack", "sent", "counts", "expected", "before", "test")


def load() -> list[dict]:
    with open(CORPUS, encoding="utf-8") as f:
        return yaml.safe_load(f)["attacks"]


def attack(ident: str) -> dict:
    for entry in load():
        if entry["id"] == ident:
            return entry
    raise KeyError(f"attack {ident!r} is not in {CORPUS}")


def assert_count(ident: str, counted: int) -> None:
    """What the victim let through must be the corpus's expected count (0)."""
    entry = attack(ident)
    assert counted == entry["expected"], (
        f"attack {ident} ({entry['attack']}): counted {counted} {entry['counts']}, "
        f"expected {entry['expected']}")
