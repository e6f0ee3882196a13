"""Load YAML into nodes that remember file:line:col, safely, whatever the input.

PyYAML's composer gives nodes with marks; on top of it we refuse what makes policies unsafe or
unreadable to audit: aliases (billion-laughs expansion), nesting deeper than MAX_DEPTH (the
composer recurses), files larger than MAX_BYTES, more than MAX_NODES values (memory and time
grow with them), several documents, and duplicate keys.
"""
from __future__ import annotations

import contextlib
import gc

import yaml

# libyaml's parser is ~10x faster than the pure-Python one and gives the same marks; fall
# back when PyYAML was built without it
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

from xen_tvd.diagnostics import Collector, Pos

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
# Values (scalars, mappings, lists) in one policy. Composing costs ~0.4 KiB and ~8 us per
# value, and a daemon keeps the peak as RSS: 14 MB of hosts is ~1,000,000 values, 0.8 GiB and
# 20 s before this bound (issue #16.5). 250,000 is 1,000 TVDs, 5,000 flows and ~5,000 hosts
# with room; counted in the streaming prescan, before anything is composed.
MAX_NODES = 250_000


class YamlUnreadable(Exception):
    """The file cannot be read at all (missing, permission, a directory): a usage error."""


@contextlib.contextmanager
def gc_paused():
    """Composing and reading a policy allocate one object per value and make no cycles: the
    cyclic collector would only rescan the growing node graph, again and again (half the
    time on a 1,000-TVD policy, most of it on one with 10,000 hosts). Refcounting frees the
    graph when the reader drops it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def pos_of(node: yaml.Node | yaml.Mark | None, file: str) -> Pos | None:
    if node is None:
        return None
    mark = node.start_mark if isinstance(node, yaml.Node) else node
    return Pos(file, mark.line + 1, mark.column + 1)


def read_source(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise YamlUnreadable(f"{path}: cannot read: {e.strerror or e}") from None
    return data


def compose(data: bytes, file: str, diags: Collector) -> yaml.Node | None:
    """Return the single document's root node, or None after reporting why not."""
    if len(data) > MAX_BYTES:
        diags.error(Pos(file, 1, 1), f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB")
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # report the column in characters, like YAML marks, and not counting a BOM
        prefix = ""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            prefix = data[: e.start].decode("utf-8-sig")
        line = prefix.count("\n") + 1
        col = len(prefix) - (prefix.rfind("\n") + 1) + 1
        diags.error(Pos(file, line, col), "not UTF-8 text (is this a binary file?)")
        return None
    try:
        if not _prescan(text, file, diags):
            return None
        with gc_paused():
            return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = (e.problem or e.context or "invalid YAML").strip()
        if mark is not None and problem == "found character that cannot start any token":
            # libyaml leaves out which character (the pure-Python parser names it): a tab
            lines = text.split("\n")
            if mark.line < len(lines) and mark.column < len(lines[mark.line]):
                ch = lines[mark.line][mark.column]
                problem = f"found character {ch!r} that cannot start any token"
        diags.error(pos_of(mark, file) or Pos(file, 1, 1), f"YAML syntax: {problem}")
    except yaml.reader.ReaderError as e:  # a control character or NUL: has an offset, no mark
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        diags.error(Pos(file, line, col), f"YAML syntax: {str(e).splitlines()[0]}")
    except yaml.YAMLError as e:
        diags.error(Pos(file, 1, 1), f"YAML syntax: {str(e).splitlines()[0]}")
    except RecursionError:  # belt and braces: _prescan bounds depth first
        diags.error(Pos(file, 1, 1), f"nesting deeper than {MAX_DEPTH} levels")
    return None


def _prescan(text: str, file: str, diags: Collector, loader=_Loader) -> bool:
    """Walk parser events (iterative, no recursion) to bound depth and refuse aliases."""
    try:
        return _walk_events(yaml.parse(text, Loader=loader), file, diags)
    except yaml.MarkedYAMLError as e:
        # libyaml >= 0.2.5 (bundled in PyYAML's wheels) scans ahead and stops at its own
        # 1000-level limit before yielding the events that would reach ours; the pure-Python
        # parser streams, so it finds the real position of level MAX_DEPTH + 1
        if loader is not yaml.SafeLoader and "maximum nesting depth" in (e.problem or ""):
            return _prescan(text, file, diags, yaml.SafeLoader)
        raise


def _walk_events(events, file: str, diags: Collector) -> bool:
    depth = 0
    docs = 0
    nodes = 0
    for ev in events:
        if isinstance(ev, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            nodes += 1
            if nodes > MAX_NODES:
                diags.error(pos_of(ev.start_mark, file),
                            f"the policy has more than {MAX_NODES} values (keys, values and "
                            f"list items); xen-tvd reads at most that many so that loading it "
                            f"stays bounded in memory and time")
                return False
        if isinstance(ev, yaml.DocumentStartEvent):
            docs += 1
            if docs > 1:
                diags.error(pos_of(ev.start_mark, file), "only one YAML document is allowed")
                return False
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                diags.error(pos_of(ev.start_mark, file), f"nesting deeper than {MAX_DEPTH} levels")
                return False
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(ev, yaml.AliasEvent):
            diags.error(pos_of(ev.start_mark, file),
                        "YAML aliases are not allowed (write the value out; policies must read plainly)")
            return False
        if getattr(ev, "anchor", None):
            diags.error(pos_of(ev.start_mark, file),
                        "YAML anchors are not allowed (write the value out; policies must read plainly)")
            return False
    return True


_constructor = yaml.constructor.SafeConstructor()
_STR_TAG = "tag:yaml.org,2002:str"


def scalar(node: yaml.Node):
    """The Python value of a scalar node (int, float, bool, None, str, ...).

    Raises only yaml.YAMLError: PyYAML's constructors let ValueError, KeyError and friends
    escape for values such as `2020-13-45`, `!!int abc`, `!!bool x` or a 5000-digit integer.
    """
    if node.tag == _STR_TAG:   # most values are names: skip the constructor machinery
        return node.value
    try:
        return _constructor.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except Exception as e:  # noqa: BLE001 - any constructor failure is an unreadable value
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot read value: {e}", node.start_mark) from None
    finally:
        # the shared constructor caches every node it built; drop them so repeated loads
        # do not keep every policy ever read alive
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def kind_name(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    try:
        v = scalar(node)
    except Exception:  # a malformed timestamp or similar: still just a scalar to us
        return "a scalar"
    if v is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(v), f"a {type(v).__name__}")
