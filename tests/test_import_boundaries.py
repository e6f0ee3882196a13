"""The layers' import boundaries (README, "Layers"), read from the source with ast: nothing is
imported, so a module that cannot load on this machine is still checked.

    policy -> planner -> desired <- dataplane       (desired: the contract, stdlib only)
    master, proxy, lab, cli, libvirt use the dataplane only through xen_tvd.dataplane's API

Every import counts, also one inside a function: a deferred import is still a dependency (and
was how the cycles this test now forbids were hidden).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import xen_tvd

PKG = Path(xen_tvd.__file__).parent
LAYERS = ("policy", "planner", "desired", "dataplane", "proxy", "master", "lab", "cli", "libvirt")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ("xen_tvd",) + p.relative_to(PKG).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import in module `name`, absolute."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out += [(mod, a.name, node.lineno) for a in node.names]
    return out


def _target(mod: str, what: str | None) -> str | None:
    """The xen_tvd module an import loads: `from a import b` is a.b when that is a module."""
    if what is not None and f"{mod}.{what}" in MODULES:
        return f"{mod}.{what}"
    while mod and mod not in MODULES:
        mod = mod.rpartition(".")[0]
    return mod or None


GRAPH = {m: {t for mod, what, _ in _imports(m) if mod.split(".")[0] == "xen_tvd"
             for t in [_target(mod, what)] if t and t != m} for m in MODULES}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _uses(layer: str) -> dict[str, set[str]]:
    """importing module -> the xen_tvd modules outside `layer` it imports."""
    return {m: {t for t in GRAPH[m] if _layer(t) != layer}
            for m in MODULES if _layer(m) == layer}


def _violations(layer: str, allowed) -> list[str]:
    return [f"{m} imports {t}" for m, ts in sorted(_uses(layer).items())
            for t in sorted(ts) if not allowed(t)]


def _in(*layers):
    return lambda t: _layer(t) in layers


def _cycle_through(start: str, scc: set[str]) -> list[str]:
    """The shortest import cycle start -> ... -> start inside the strongly connected `scc`."""
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for m in frontier:
            for t in sorted(GRAPH[m] & scc):
                if t == start:
                    chain = [m]
                    while prev[chain[-1]] is not None:
                        chain.append(prev[chain[-1]])
                    return chain[::-1] + [start]
                if t not in prev:
                    prev[t] = m
                    nxt.append(t)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle in {sorted(scc)}")


def _strongly_connected() -> list[set[str]]:
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:   # Tarjan; the module graph is shallow enough to recurse
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def test_the_graph_is_read():
    # a guard for the checks below: they would pass vacuously on an empty graph
    assert {"xen_tvd.desired.model", "xen_tvd.planner", "xen_tvd.dataplane.reconcile"} <= set(GRAPH)
    assert "xen_tvd.desired.model" in GRAPH["xen_tvd.planner"]
    assert "xen_tvd.dataplane.reconcile" in GRAPH["xen_tvd.dataplane"]


def test_every_import_of_xen_tvd_names_a_module():
    # else the graph would silently take the package for a module that moved away
    bad = [f"{m}:{line} imports {mod}" for m in MODULES for mod, _, line in _imports(m)
           if mod.split(".")[0] == "xen_tvd" and mod not in MODULES]
    assert not bad


def test_no_import_cycles():
    cycles = [" -> ".join(_cycle_through(min(c), c)) for c in _strongly_connected()]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_desired_imports_only_the_standard_library():
    bad = [f"{m}:{line} imports {mod}" for m in MODULES if _layer(m) == "desired"
           for mod, _, line in _imports(m)
           if not (mod == "__future__" or mod.split(".")[0] in sys.stdlib_module_names
                   or _layer(mod) == "desired")]
    assert not bad


def test_policy_imports_no_later_layer():
    assert not _violations("policy", lambda t: _layer(t) in (None, "desired"))


def test_planner_imports_only_policy_and_desired():
    assert not _violations("planner", _in("policy", "desired"))


def test_dataplane_imports_only_desired():
    assert not _violations("dataplane", _in("desired"))


def test_master_imports_no_host_side_layer():
    # it decides from policy and plans; the proxy, lab and tools are its clients
    assert not _violations("master", lambda t: _layer(t) in (None, "policy", "planner", "desired"))


DATAPLANE_API = set(ast.literal_eval(next(
    n.value for n in ast.parse(MODULES["xen_tvd.dataplane"].read_text()).body
    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "__all__")))


@pytest.mark.parametrize("layer", [l for l in LAYERS if l != "dataplane"])
def test_only_the_dataplane_api_is_used_from_outside(layer):
    """master and proxy above all: the dataplane's modules are its own business."""
    bad = [f"{m}:{line} imports {mod}{'.' + what if what else ''}"
           for m in MODULES if _layer(m) == layer
           for mod, what, line in _imports(m)
           if _layer(mod) == "dataplane"
           and (mod != "xen_tvd.dataplane" or what not in DATAPLANE_API)]
    assert not bad


def test_planner_and_contract_load_without_pyroute2():
    # importing the planner once pulled in the whole dataplane (and so pyroute2)
    code = ("import sys, xen_tvd.planner, xen_tvd.desired.serial, xen_tvd.desired.patterns; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyroute2', 'xen_tvd'}), "
            "'xen_tvd.dataplane' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split("\n")[0] == "['xen_tvd'] False"


def test_the_lab_writes_no_host_network_itself():
    """Issue #14 point 4: in every control mode a lab host's network is written by its
    tvd-proxy alone (the single writer Xen uses); the lab never applies, plugs or unplugs.
    Of the dataplane it may use the readers (status, explain), nothing below its API."""
    writers = {"apply", "plug_vif", "unplug_vif"}
    bad = [f"{m}:{line} imports {mod}{'.' + what if what else ''}"
           for m in MODULES if _layer(m) == "lab"
           for mod, what, line in _imports(m)
           if _layer(mod) == "dataplane" and (mod != "xen_tvd.dataplane" or what in writers)]
    assert not bad
