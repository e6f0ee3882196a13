"""JSON from a peer, bounded in size and nesting before it is parsed.

The stdlib parser recurses once per nesting level and raises RecursionError around level
1,000 (a 2 kB body); code that walks the result recurses too. Every JSON a daemon reads from a
peer (the master's request bodies, the proxy's socket requests, the master's answers) goes
through `loads`, which refuses over-size or over-deep input with one line (JsonRefused, a
ValueError) and never lets RecursionError out. Our own messages nest at most 8 levels.
It also refuses what parses but breaks whoever stores or re-encodes it later: NaN and
infinities (not JSON), and strings with lone UTF-16 surrogates ("\\ud800", not encodable).
"""
from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 32

# strings (skipped whole: brackets inside them do not nest) or one bracket
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPEN = frozenset(b"[{")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JsonRefused(ValueError):
    """Not JSON, too large or too deep; the message says which, in one line."""


def depth(data: bytes) -> int:
    """The deepest bracket nesting of JSON text (exact for valid JSON; for invalid JSON a
    bound that the parser's own refusal follows anyway). Iterative: no recursion."""
    deepest = level = 0
    for m in _TOKEN.finditer(data):
        c = data[m.start()]
        if c in _OPEN:
            level += 1
            if level > deepest:
                deepest = level
        elif c != 0x22:    # a closing bracket ('"' starts a string)
            level -= 1
    return deepest


def loads(data: bytes | str, max_bytes: int, what: str = "JSON",
          max_depth: int = MAX_DEPTH):
    """The parsed value, or JsonRefused naming `what` ("request body", "request")."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise JsonRefused(f"{what} larger than {max_bytes} bytes")
    if depth(data) > max_depth:
        raise JsonRefused(f"{what} nested deeper than {max_depth} levels")
    try:
        obj = json.loads(data.decode("utf-8"), parse_float=_finite, parse_constant=_constant)
    except UnicodeDecodeError:
        raise JsonRefused(f"{what} is not UTF-8") from None
    except RecursionError:    # cannot happen after the depth check; never a traceback
        raise JsonRefused(f"{what} nested too deeply") from None
    except ValueError as e:
        raise JsonRefused(f"{what} is not JSON ({e})") from None
    if _SURROGATE_ESCAPE.search(data):     # rare: pay for the exact check only then
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonRefused(f"{what} has a string with a lone UTF-16 surrogate escape") \
                from None
    return obj


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:20]} is out of range")
    return v


def _constant(name: str):
    raise ValueError(f"{name} is not a JSON value")
