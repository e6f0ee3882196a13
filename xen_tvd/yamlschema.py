"""Small typed readers over positioned YAML nodes.

Every reader reports a problem at the offending node and returns None, so a whole file is
checked in one pass and every problem is reported once. Shared by the policy and lab loaders.
"""
from __future__ import annotations

import re
from typing import Callable, Iterator

import yaml

from xen_tvd.desired.patterns import NAME_RE
from xen_tvd.diagnostics import Collector, Pos
from xen_tvd.yamlsrc import kind_name, pos_of, scalar


def _short(text: str, limit: int = 40) -> str:
    """A value as quoted in a message: a 5000-digit number must not flood the terminal."""
    return text if len(text) <= limit else text[:limit] + "..."


class Reader:
    def __init__(self, file: str, diags: Collector) -> None:
        self.file = file
        self.diags = diags

    def pos(self, node) -> Pos | None:
        return pos_of(node, self.file)

    def err(self, node, msg: str, code: str = "schema") -> None:
        self.diags.error(self.pos(node), msg, code)

    def warn(self, node, msg: str, code: str = "schema") -> None:
        self.diags.warning(self.pos(node), msg, code)

    # -- containers -----------------------------------------------------------------------
    def mapping(self, node, what: str, keys: dict[str, bool] | None = None
                ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """Mapping as {key: (key_node, value_node)}; `keys` maps allowed key -> required."""
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what} must be a mapping, not {kind_name(node)}")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            try:
                key = scalar(knode) if isinstance(knode, yaml.ScalarNode) else None
            except yaml.YAMLError:  # `!foo x:`, `<<:`, `=:`, `2020-13-45:` ...
                self.err(knode, f"keys of {what} must be plain strings, not "
                                f"'{knode.tag}' '{_short(knode.value)}'")
                continue
            if not isinstance(key, str):
                self.err(knode, f"keys of {what} must be strings, not {kind_name(knode)}")
                continue
            if key in out:
                first = self.pos(out[key][0])
                self.err(knode, f"duplicate key '{key}' in {what} (first at line {first.line})")
                continue
            if keys is not None and key not in keys:
                allowed = ", ".join(sorted(keys))
                self.err(knode, f"unknown key '{key}' in {what} (allowed: {allowed})")
                continue
            out[key] = (knode, vnode)
        for key, required in (keys or {}).items():
            if required and key not in out:
                self.err(node, f"{what} lacks required key '{key}'")
        return out

    def sequence(self, node, what: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{what} must be a list, not {kind_name(node)}")
            return None
        return list(node.value)

    def items(self, node, what: str, keys=None) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        m = self.mapping(node, what, keys)
        for k, (kn, vn) in (m or {}).items():
            yield k, kn, vn

    # -- scalars --------------------------------------------------------------------------
    def value(self, node, what: str):
        """(the scalar's value, True), or (None, False) after reporting why not."""
        return self._scalar(node, what)

    def _scalar(self, node, what: str):
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, f"{what} must be a single value, not {kind_name(node)}")
            return None, False
        try:
            return scalar(node), True
        except yaml.YAMLError:
            self.err(node, f"{what}: unreadable value '{_short(node.value)}'")
            return None, False

    def integer(self, node, what: str, lo: int, hi: int) -> int | None:
        v, ok = self._scalar(node, what)
        if not ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(node, f"{what} must be an integer, not {kind_name(node)}")
            return None
        if not lo <= v <= hi:
            self.err(node, f"{what} {v} is out of range {lo}..{hi}")
            return None
        return v

    def boolean(self, node, what: str) -> bool | None:
        v, ok = self._scalar(node, what)
        if ok and not isinstance(v, bool):
            self.err(node, f"{what} must be true or false, not {kind_name(node)}")
            return None
        return v if ok else None

    def string(self, node, what: str, pattern: re.Pattern | None = None,
               hint: str = "") -> str | None:
        v, ok = self._scalar(node, what)
        if not ok:
            return None
        if not isinstance(v, str):
            self.err(node, f"{what} must be a string, not {kind_name(node)}")
            return None
        if pattern is not None and not pattern.match(v):
            self.err(node, f"{what} '{v}' is not valid{': ' + hint if hint else ''}")
            return None
        return v

    def nonempty_string(self, node, what: str) -> str | None:
        """The node's value if it is a non-empty string; else an error at the node."""
        if isinstance(node, yaml.ScalarNode):
            v, ok = self._scalar(node, what)
            if not ok:
                return None
            if isinstance(v, str) and v:
                return v
        self.err(node, f"{what} must be a non-empty string, got {kind_name(node)}")
        return None

    def name(self, node, what: str) -> str | None:
        return self.string(node, what, NAME_RE,
                           "use 1-32 of a-z 0-9 _ -, starting with a letter")

    def choice(self, node, what: str, choices) -> str | None:
        v = self.string(node, what)
        if v is not None and v not in choices:
            self.err(node, f"{what} '{v}' is not one of: {', '.join(choices)}")
            return None
        return v

    def string_list(self, node, what: str, each: Callable[[yaml.Node, str], str | None] | None = None
                    ) -> list[tuple[str, yaml.Node]]:
        out = []
        seen: set[str] = set()
        for item in self.sequence(node, what) or []:
            v = (each or self.string)(item, f"entry of {what}")
            if v is None:
                continue
            if v in seen:
                self.err(item, f"'{v}' is listed twice in {what}")
                continue
            seen.add(v)
            out.append((v, item))
        return out
