"""Tier-3 scenario registry: how a scenario file adds scenarios to the nested-Xen harness.

A scenario file is a Python file (anywhere) that decorates functions with `@scenario`:

    from tvd_testing.xenscenario import scenario

    @scenario("my-reboot", checks=("rebooted", "still-on-tvd"), needs=("positive",))
    def my_reboot(d, sc):          # d: xentier.Dom0 (xl, xenstore, proxy, consoles), sc: the report
        rc, out = d.xl("reboot", "alpha1")
        sc.check("rebooted", rc == 0, out)
        ...

and is run with `tvdctl-xentest --scenario-file my.py --scenarios positive,my-reboot` (or
`xentier.run(..., scenario_files=[...])`). Each scenario must report every name in `checks`
(a missing one fails the run, like a failed one); `needs` names scenarios that must run
before it in the same boot (their domUs). Full guide: docs/test-tiers.md, "Tier 3: your own
scenarios". The built-in lifecycle scenarios (tvd_testing/xen_scenarios/) use the same way.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    run: Callable            # run(dom0: xentier.Dom0, sc: xentier.Scenario) -> None
    checks: tuple[str, ...]  # every one must be reported (ok or not)
    needs: tuple[str, ...] = ()
    source: str = "builtin"  # the file it came from


REGISTRY: dict[str, ScenarioSpec] = {}
_LOADED: dict[str, list[str]] = {}


class ScenarioError(ValueError):
    """A scenario file or name the harness refuses (message says why)."""


def register(spec: ScenarioSpec) -> None:
    if not spec.name or set(spec.name) - NAME_OK:
        raise ScenarioError(f"scenario name {spec.name!r}: use lower-case letters, digits and '-'")
    if not spec.checks:
        raise ScenarioError(f"scenario {spec.name!r} ({spec.source}) declares no checks")
    old = REGISTRY.get(spec.name)
    if old is not None and old.source != spec.source:
        raise ScenarioError(f"scenario {spec.name!r} of {spec.source} is already defined by {old.source}")
    REGISTRY[spec.name] = spec


def scenario(name: str, *, checks, needs=()):
    """Decorator for scenario files (module doc)."""
    def deco(fn):
        src = getattr(sys.modules.get(fn.__module__), "__file__", None) or fn.__module__
        register(ScenarioSpec(name, fn, tuple(checks), tuple(needs), str(src)))
        return fn
    return deco


def load_file(path: str | Path) -> list[str]:
    """Import a scenario file by path (once); return the scenario names it defined."""
    p = Path(path).resolve()
    key = str(p)
    if key in _LOADED:
        return _LOADED[key]
    if not p.is_file() or p.suffix != ".py":
        raise ScenarioError(f"scenario file {path}: not a readable .py file")
    before = set(REGISTRY)
    modname = "xentier_scenarios_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(modname, p)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except ScenarioError:
        raise
    except Exception as e:
        raise ScenarioError(f"scenario file {path} did not import: {type(e).__name__}: {e}") from None
    names = [n for n in REGISTRY if n not in before or REGISTRY[n].source == key]
    if not names:
        raise ScenarioError(f"scenario file {path} defines no @scenario")
    _LOADED[key] = names
    return names


def validate_order(names) -> None:
    """Every name known, no duplicates, each scenario's `needs` earlier in the list."""
    seen = []
    for n in names:
        if n not in REGISTRY:
            raise ScenarioError(f"unknown scenario {n!r}; known: {', '.join(REGISTRY)}")
        if n in seen:
            raise ScenarioError(f"scenario {n!r} listed twice")
        missing = [x for x in REGISTRY[n].needs if x not in seen]
        if missing:
            raise ScenarioError(f"scenario {n!r} needs {', '.join(missing)} earlier in the same boot")
        seen.append(n)
