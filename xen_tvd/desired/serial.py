"""The desired-state model (HostState and its parts, xen_tvd.desired.model) as plain JSON.

Used for the master's signed bundle (docs/master-protocol.md, `plan.segments`): the master
encodes, the proxy decodes. The code is generic over the dataclasses' fields and their type
annotations, so a field added to xen_tvd.desired.model travels without an edit here:

- a dataclass becomes a JSON object of its fields;
- where a field's annotation is a union of several dataclasses (a Segment's uplink), the
  object carries `"type": "<class name>"` so the decoder knows which one it is;
- tuples and frozensets become lists and come back as tuples / frozensets;
- dicts keep string keys; None stays null.

Decoding is strict (fail closed): an unknown field, a missing field without a default, a
wrong JSON type or an unknown `type` tag raises SerialError with one line naming the path,
e.g. `segments[2].uplink.vni: expected int, got str`.

Public API (stable; the proxy imports it):
    to_json(obj) -> plain JSON value          (any model dataclass)
    from_json(cls, data) -> instance of cls   (raises SerialError)
    segments_to_json(segments) / segments_from_json(data)
"""
from __future__ import annotations

import dataclasses
import types
import typing
from functools import lru_cache

from xen_tvd.desired.model import Segment

TYPE_TAG = "type"


class SerialError(ValueError):
    """The JSON does not describe a valid model object; the message is one line."""


@lru_cache(maxsize=None)
def _hints(cls) -> dict:
    # the model uses `from __future__ import annotations`: annotations are strings until
    # resolved against the module's globals
    return typing.get_type_hints(cls)


def _union_members(hint) -> tuple | None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(hint)
    return None


def _needs_tag(hint) -> bool:
    members = _union_members(hint)
    return bool(members) and sum(dataclasses.is_dataclass(m) for m in members) > 1


def to_json(obj, hint=None):
    """Plain JSON value for a model object (dataclass, tuple, dict, scalar)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        if hint is not None and _needs_tag(hint):
            out[TYPE_TAG] = type(obj).__name__
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            out[f.name] = to_json(getattr(obj, f.name), hints.get(f.name))
        return out
    if isinstance(obj, (tuple, list)):
        inner = _element_hint(hint)
        return [to_json(v, inner) for v in obj]
    if isinstance(obj, (set, frozenset)):
        inner = _element_hint(hint)
        return [to_json(v, inner) for v in sorted(obj)]
    if isinstance(obj, dict):
        vhint = _value_hint(hint)
        return {str(k): to_json(v, vhint) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise SerialError(f"cannot encode {type(obj).__name__} as JSON")


def _element_hint(hint):
    args = typing.get_args(hint) if hint is not None else ()
    return args[0] if args else None


def _value_hint(hint):
    args = typing.get_args(hint) if hint is not None else ()
    return args[1] if len(args) == 2 else None


def from_json(cls, data, path: str = ""):
    """An instance of dataclass `cls` from plain JSON, checked field by field."""
    return _decode(cls, data, path or cls.__name__)


def _decode(hint, data, path: str):
    if hint is typing.Any:
        return data
    members = _union_members(hint)
    if members is not None:
        return _decode_union(members, data, path)
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, data, path)
    origin = typing.get_origin(hint)
    if origin in (tuple, frozenset, set, list):
        if not isinstance(data, list):
            raise SerialError(f"{path}: expected a list, got {_jtype(data)}")
        args = typing.get_args(hint)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(args) != len(data):          # fixed-length tuple[int, int]
                raise SerialError(f"{path}: expected {len(args)} items, got {len(data)}")
            return tuple(_decode(a, v, f"{path}[{i}]") for i, (a, v) in
                         enumerate(zip(args, data)))
        inner = args[0] if args else typing.Any
        items = [_decode(inner, v, f"{path}[{i}]") for i, v in enumerate(data)]
        return origin(items) if origin is not tuple else tuple(items)
    if origin is dict:
        if not isinstance(data, dict):
            raise SerialError(f"{path}: expected an object, got {_jtype(data)}")
        khint, vhint = typing.get_args(hint) or (str, typing.Any)
        return {_decode(khint, k, path): _decode(vhint, v, f"{path}.{k}")
                for k, v in data.items()}
    if hint is type(None):
        if data is not None:
            raise SerialError(f"{path}: expected null, got {_jtype(data)}")
        return None
    if hint in (int, float, str, bool):
        # bool is an int in Python; JSON true must not pass as a VNI, nor 1 as a flag
        ok = isinstance(data, hint) and not (hint is int and isinstance(data, bool))
        if hint is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        if not ok:
            raise SerialError(f"{path}: expected {hint.__name__}, got {_jtype(data)}")
        return data
    raise SerialError(f"{path}: cannot decode type {hint!r}")


def _decode_union(members, data, path: str):
    if data is None:
        if type(None) in members:
            return None
        raise SerialError(f"{path}: must not be null")
    classes = [m for m in members if dataclasses.is_dataclass(m)]
    if len(classes) > 1:
        if not isinstance(data, dict) or TYPE_TAG not in data:
            raise SerialError(f"{path}: expected an object with '{TYPE_TAG}' "
                              f"({' or '.join(c.__name__ for c in classes)})")
        tag = data[TYPE_TAG]
        for c in classes:
            if c.__name__ == tag:
                body = {k: v for k, v in data.items() if k != TYPE_TAG}
                return _decode_dataclass(c, body, path)
        raise SerialError(f"{path}: unknown {TYPE_TAG} {tag!r} "
                          f"(one of: {', '.join(c.__name__ for c in classes)})")
    errors = []
    for m in members:
        if m is type(None):
            continue
        try:
            return _decode(m, data, path)
        except SerialError as e:
            errors.append(str(e))
    raise SerialError(errors[0] if errors else f"{path}: no type fits")


def _decode_dataclass(cls, data, path: str):
    if not isinstance(data, dict):
        raise SerialError(f"{path}: expected an object ({cls.__name__}), got {_jtype(data)}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SerialError(f"{path}: unknown field '{unknown[0]}' for {cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SerialError(f"{path}: missing field '{f.name}'")
            continue
        kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{path}.{f.name}")
    return cls(**kwargs)


def _jtype(v) -> str:
    return {dict: "object", list: "list", str: "str", bool: "bool", int: "int",
            float: "float", type(None): "null"}.get(type(v), type(v).__name__)


def segments_to_json(segments) -> list:
    return [to_json(s) for s in segments]


def segments_from_json(data) -> tuple[Segment, ...]:
    if not isinstance(data, list):
        raise SerialError(f"segments: expected a list, got {_jtype(data)}")
    return tuple(from_json(Segment, s, f"segments[{i}]") for i, s in enumerate(data))
