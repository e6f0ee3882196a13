"""xl.cfg exactly as Xen 4.17's libxlu reads it (tools/libs/util/libxlu_cfg_l.l, libxlu_cfg_y.y,
libxlu_cfg.c), plus the file handed to xl. tests/xlcfg holds it against the real libxlutil.

    file     := { [setting] (NEWLINE | ';') } [setting]        the last setting may end the file
    setting  := IDENT ('=' | '+=') value                      the value starts on the same line
    value    := ATOM | '[' NL* [value NL* {',' NL* value NL*} [',' NL*]] ']'
    IDENT    := [a-z][a-z0-9._]*         lower case only; dots are part of it (vif.default.script)
    ATOM     := NUMBER | STRING          both are text to libxlu; a getter interprets it
    NUMBER   := [0-9][0-9a-fx]*          kept as written: 2f, 0x200, 1e5 (no '.', no 'X')
    STRING   := "..." or '...' on one line, escapes \\" \\' \\\\ \\a \\b \\f \\n \\r \\t \\v; \\x is an
                error in 4.17; a digit escape is dropped with the two characters after it
    NEWLINE  := '\\n' | '#' ... '\\n'       a comment needs its newline; blanks are space and tab
                                         only, so a CRLF line end is an error outside a comment

libxlu's lexer ends quietly when the very last byte of the file starts no token (`x = 1\\r`,
a lone `#`): such a byte is ignored here too, with a warning. `key += value` appends to the key's
previous value (string to string, list to list). Errors: XlCfgError, `FILE:LINE:COL: error: msg`.
Limits (libxlu has none): MAX_BYTES of text, lists nested MAX_DEPTH deep, no NUL byte (libxlu
asserts on one inside a string).

The TVD keys and the config handed to xl: xen_tvd/xlmembership.py.
"""
from __future__ import annotations

import bisect
import errno
import re
from dataclasses import dataclass, field

MAX_BYTES = 1 << 20
MAX_DEPTH = 64
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyz")
IDENT_CHARS = IDENT_START | frozenset("0123456789._")
DIGITS = frozenset("0123456789")
NUMBER_CHARS = DIGITS | frozenset("abcdefx")
C_SPACE = " \t\n\v\f\r"                    # isspace() in the C locale (strtol, strtoul)
ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
           "t": "\t", "v": "\v"}


class XlCfgError(Exception):
    """`code` is the errno libxlu's getters return for the same problem (EINVAL, ERANGE)."""

    def __init__(self, path: str, line: int, col: int, msg: str, code: int = errno.EINVAL) -> None:
        self.path, self.line, self.col, self.msg, self.code = path, line, col, msg, code
        super().__init__(f"{path}:{line}:{col}: error: {msg}")


@dataclass
class Setting:
    key: str
    value: object          # str, or a list of values; after `+=`, the joined value
    line: int
    col: int
    append: bool = False


@dataclass
class XlConfig:
    path: str
    settings: list[Setting] = field(default_factory=list)
    text: str = ""                       # as read (bytes that are not UTF-8: surrogateescape)
    dropped_last: bool = False           # the last character was ignored (see module doc)
    warnings: list[str] = field(default_factory=list)

    def setting(self, key: str) -> Setting | None:
        for s in reversed(self.settings):
            if s.key == key:
                return s
        return None

    def get(self, key: str, default=None):
        """The value xl sees (the last assignment, `+=` applied): a str or a list."""
        s = self.setting(key)
        return default if s is None else s.value

    def get_string(self, key: str) -> str | None:
        """xlu_cfg_get_string: None when unset; a list is an error."""
        s = self.setting(key)
        if s is not None and not isinstance(s.value, str):
            raise self.error(s, f"{key} must be a single value, not a list")
        return None if s is None else s.value

    def get_long(self, key: str) -> int | None:
        """xlu_cfg_get_long: strtol(value, base 0) must take the whole value; not after `+=`."""
        text = self.get_string(key)
        if text is None:
            return None
        s = self.setting(key)
        if s.append:
            raise self.error(s, f"{key}: xl does not take a number set with +=")
        value, used = strtol(text)
        if used and (value < LONG_MIN or value > LONG_MAX):
            raise self.error(s, f"{key} = {text!r} is out of range", errno.ERANGE)
        if not used or used != len(text):
            raise self.error(s, f"{key} = {text!r} is not a number")
        return value

    def get_list(self, key: str) -> list | None:
        """xlu_cfg_get_list: None when unset; a single value is an error."""
        s = self.setting(key)
        if s is not None and not isinstance(s.value, list):
            raise self.error(s, f"{key} must be a list [...], not a single value")
        return None if s is None else s.value

    def error(self, s: Setting, msg: str, code: int = errno.EINVAL) -> XlCfgError:
        return XlCfgError(self.path, s.line, s.col, msg, code)

    def dumps(self) -> str:
        """The settings re-serialised (one per line). Not what xl gets: see with_overrides."""
        return "".join(f"{s.key} = {format_value(s.value)}\n" for s in self.settings)

    def with_overrides(self, overrides: dict[str, object], note: str = "") -> str:
        """The text xl reads: the file as written, then assignments that win over it (libxlu
        keeps the last assignment), so the user's text is never re-serialised."""
        text = self.text[:-1] if self.dropped_last else self.text
        if text and not text.endswith("\n"):
            text += "\n"
        if note:
            text += "".join(f"# {line}\n" for line in note.splitlines())
        return text + "".join(f"{k} = {format_value(v)}\n" for k, v in overrides.items())


def strtol(text: str, base: int = 0) -> tuple[int, int]:
    """C strtol/strtoul digits (C locale): (value, characters used); used == 0: no number."""
    i, n = 0, len(text)
    while i < n and text[i] in C_SPACE:
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    if base == 0:
        if text[i:i + 2] in ("0x", "0X") and text[i + 2:i + 3] and text[i + 2] in "0123456789abcdefABCDEF":
            base, i = 16, i + 2
        else:
            base = 8 if text[i:i + 1] == "0" else 10
    start = i
    digits = "0123456789abcdefABCDEF" if base == 16 else "0123456789"[:base]
    while i < n and text[i] in digits:
        i += 1
    if i == start:
        return 0, 0
    return sign * int(text[start:i], base), i


class _Source:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.text = path, text
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def pos(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset)
        return line, offset - self.starts[line - 1] + 1

    def error(self, offset: int, msg: str) -> XlCfgError:
        return XlCfgError(self.path, *self.pos(offset), msg)

    def warn(self, offset: int, msg: str) -> str:
        line, col = self.pos(offset)
        return f"{self.path}:{line}:{col}: warning: {msg}"


@dataclass
class _Tok:
    kind: str          # IDENT NUMBER STRING NEWLINE EOF, or the punctuation itself
    at: int
    text: str = ""


def _bad_char(c: str, after: _Tok | None, at: int) -> str:
    if c == "\r":
        return "carriage return (a CRLF line end?): xl takes only \\n line ends, except in a comment"
    if c == "\ufeff":
        return "byte-order mark: save the file without one"
    if c == ".":
        return "unexpected '.': xl has no decimal numbers; write an integer or a quoted string"
    if c in "\"'":
        return "unterminated string"
    if c == "#":
        return "a comment on the last line needs a newline at its end"
    glued = after is not None and after.at + len(after.text) == at
    if glued and after.kind == "NUMBER":
        return f"unexpected {c!r} in a number (xl's numbers are [0-9][0-9a-fx]*: lower-case hex)"
    if (c.isupper() or c == "_") and (after is None or after.kind in ("NEWLINE", ";")
                                      or (glued and after.kind == "IDENT")):
        return f"unexpected {c!r}: setting names are lower case, [a-z][a-z0-9._]*"
    return f"unexpected {c!r} (xl.cfg has \"strings\", numbers and [lists]; quote text)"


def _lex(src: _Source, warnings: list[str]) -> tuple[list[_Tok], bool]:
    text, n, i, toks = src.text, len(src.text), 0, []
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        j = i + 1
        if c in IDENT_START or c in DIGITS:
            chars = IDENT_CHARS if c in IDENT_START else NUMBER_CHARS
            while j < n and text[j] in chars:
                j += 1
            toks.append(_Tok("IDENT" if c in IDENT_START else "NUMBER", i, text[i:j]))
        elif c == "+" and text.startswith("+=", i):
            toks.append(_Tok("+=", i))
            j = i + 2
        elif c in ",[]=;\n":
            toks.append(_Tok("NEWLINE" if c == "\n" else c, i))
        elif c == "#" and text.find("\n", i) >= 0:
            j = text.find("\n", i) + 1
            toks.append(_Tok("NEWLINE", i))
        elif c in "\"'" and (j := _string_end(src, i)) > 0:
            toks.append(_Tok("STRING", i, _dequote(src, i, text[i:j], warnings)))
        elif i == n - 1 and len(c.encode("utf-8", "surrogateescape")) == 1:
            # libxlu's lexer reaches the end of input before reporting the last byte
            warnings.append(src.warn(i, f"xl ignores the last character of the file, {c!r}"))
            return toks + [_Tok("EOF", i)], True
        else:
            raise src.error(i, _bad_char(c, toks[-1] if toks else None, i))
        i = j
    return toks + [_Tok("EOF", n)], False


def _string_end(src: _Source, i: int) -> int:
    """Offset after the closing quote; 0 if the opening quote is the file's last character."""
    text, quote, n, j = src.text, src.text[i], len(src.text), i + 1
    while j < n:
        c = text[j]
        if c == quote:
            return j + 1
        if c == "\n" or (c == "\\" and (j + 1 == n or text[j + 1] == "\n")):
            break
        j += 2 if c == "\\" else 1
    if i == n - 1:
        return 0
    if j + 1 < n and text[j] == "\\":
        raise src.error(j, "a backslash cannot continue a string on the next line")
    if j < n and text[j] == "\n":
        raise src.error(i, "newline inside a string (close the quote on the same line; "
                           "write \\n for a newline)")
    raise src.error(i, "unterminated string")


def _dequote(src: _Source, at: int, raw: str, warnings: list[str]) -> str:
    out, p, end = [], 1, len(raw) - 1
    while p < end:
        c = raw[p]
        p += 1
        if c != "\\":
            out.append(c)
            continue
        nc = raw[p]
        p += 1
        if nc in ESCAPES:
            out.append(ESCAPES[nc])
        elif nc == "x":
            raise src.error(at + p - 2, "\\x escapes are an error in xl 4.17; write the character "
                                        "itself (or \\n, \\t, \\r ...)")
        elif "0" <= nc <= "7":
            # 4.17 reads the next (up to) 3 characters as a decimal number, needs 2 of them
            # used, and writes nothing: the escape disappears from the value
            _, used = strtol(raw[p:p + 3], 10)
            if used < 2:
                raise src.error(at + p - 2, f"escape \\{nc}{raw[p:p + 1]}... is an error in xl 4.17 "
                                            f"(digit escapes are not supported)")
            warnings.append(src.warn(at + p - 2, f"xl 4.17 drops the escape \\{nc}{raw[p:p + used]} "
                                                 f"from the string (digit escapes are not decoded)"))
            p += used
        else:
            raise src.error(at + p - 2, f"unknown escape \\{nc} in string (xl knows \\\" \\' \\\\ "
                                        f"\\a \\b \\f \\n \\r \\t \\v)")
    return "".join(out)


class _Parser:
    def __init__(self, src: _Source, toks: list[_Tok]) -> None:
        self.src, self.toks, self.k = src, toks, 0

    def peek(self) -> _Tok:
        return self.toks[self.k]

    def take(self) -> _Tok:
        self.k += 1
        return self.toks[self.k - 1]

    def newlines(self) -> None:
        while self.peek().kind == "NEWLINE":
            self.k += 1

    def describe(self, t: _Tok) -> str:
        return {"EOF": "the end of the file", "NEWLINE": "the end of the line",
                "STRING": f"string {t.text!r}", "NUMBER": f"number {t.text}",
                "IDENT": repr(t.text)}.get(t.kind, repr(t.kind))

    def value(self, depth: int):
        t = self.take()
        if t.kind in ("STRING", "NUMBER"):
            return t.text
        if t.kind == "[":
            if depth >= MAX_DEPTH:
                raise self.src.error(t.at, f"lists nested deeper than {MAX_DEPTH}")
            items = []
            self.newlines()
            while self.peek().kind != "]":
                if self.peek().kind == "EOF":
                    raise self.src.error(t.at, "unterminated list: expected ']'")
                items.append(self.value(depth + 1))
                self.newlines()
                if self.peek().kind == ",":
                    self.take()
                    self.newlines()
                elif self.peek().kind not in ("]", "EOF"):
                    raise self.src.error(self.peek().at, f"expected ',' or ']' in list, found "
                                                         f"{self.describe(self.peek())}")
            self.take()
            return items
        if t.kind in ("NEWLINE", "EOF", ";"):
            raise self.src.error(t.at, "missing value after '=' (it must start on the same line)")
        hint = " (strings need quotes)" if t.kind == "IDENT" else ""
        raise self.src.error(t.at, f"expected a string, number or list, found "
                                   f"{self.describe(t)}{hint}")

    def settings(self, cfg: XlConfig) -> None:
        while True:
            t = self.take()
            if t.kind == "EOF":
                return
            if t.kind in ("NEWLINE", ";"):
                continue
            if t.kind != "IDENT":
                raise self.src.error(t.at, f"expected a setting name, found {self.describe(t)}")
            op = self.take()
            if op.kind not in ("=", "+="):
                raise self.src.error(op.at, f"expected '=' after {t.text} (or '+=')")
            at = self.peek().at
            value = self.value(0)
            s = Setting(t.text, value, *self.src.pos(t.at), append=op.kind == "+=")
            prev = cfg.setting(t.text) if s.append else None
            if prev is not None:
                if isinstance(prev.value, list) != isinstance(value, list):
                    kinds = ("a list", "a single value")
                    raise self.src.error(at, f"cannot add {kinds[isinstance(prev.value, list)]} to "
                                             f"{t.text}, which is {kinds[not isinstance(prev.value, list)]}"
                                             f" (+= adds a list to a list or text to text)")
                s.value = prev.value + value
            cfg.settings.append(s)
            end = self.take()
            if end.kind not in ("NEWLINE", ";", "EOF"):
                raise self.src.error(end.at, f"unexpected {self.describe(end)} after the value of "
                                             f"{t.text} (one setting per line, or separate them with ';')")
            if end.kind == "EOF":
                return


def loads(text: str, path: str = "<string>") -> XlConfig:
    if len(text) > MAX_BYTES:
        raise XlCfgError(path, 1, 1, f"file is larger than {MAX_BYTES} bytes")
    src = _Source(path, text)
    if "\0" in text:
        raise src.error(text.index("\0"), "NUL byte in the file")
    cfg = XlConfig(path, text=text)
    toks, cfg.dropped_last = _lex(src, cfg.warnings)
    _Parser(src, toks).settings(cfg)
    return cfg


def load(path: str) -> XlConfig:
    """Bytes as xl reads them: text that is not UTF-8 is kept (surrogateescape)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise XlCfgError(path, 1, 1, f"cannot read: {e.strerror}") from None
    return loads(data.decode("utf-8", "surrogateescape"), path)


def format_value(v) -> str:
    """A value as libxlu reads it back: a double-quoted string, or a list of them."""
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    v = str(v)
    if "\0" in v:
        raise ValueError("xl.cfg strings cannot hold a NUL byte")
    special = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(special.get(c, c) for c in v) + '"'


# ---- vif specs, as xl's parse_nic_config reads them -----------------------------------------

def parse_vif(spec: str) -> list[tuple[str, str | None]]:
    """[(key, value)] in order: xl splits at ',' (skipping empty parts), drops leading spaces
    (not tabs, not trailing blanks) and takes the key up to the first '='. A part without '='
    is (part, None): xl knows `trusted`/`untrusted` and ignores anything else. Later keys win."""
    out = []
    for part in spec.split(","):
        part = part.lstrip(" ")
        if part:
            k, eq, v = part.partition("=")
            out.append((k, v) if eq else (part, None))
    return out


def format_vif(items: list[tuple[str, str | None]]) -> str:
    return ",".join(k if v is None else f"{k}={v}" for k, v in items)

