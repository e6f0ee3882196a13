"""xl.cfg reader/writer (the grammar of Xen's libxlu_cfg_l.l / libxlu_cfg_y.y), with the TVD keys.

    settings := (setting (NEWLINE | ';'))*          comments run from '#' to end of line
    setting  := IDENT ('=' | '+=') value
    value    := STRING | NUMBER | '[' [value (',' value)* [',']] ']'   (a list may span lines)
    STRING   := "..." or '...' with C escapes (\\n \\t \\\\ \\" \\' \\xHH \\OOO)
    NUMBER   := decimal, 0x hex or 0 octal integer (a float is kept as written)

Errors are `FILE:LINE:COL: error: message` (XlCfgError). Values: str, int, or list of them.

TVD keys (xl ignores unknown top-level keys; tvdctl reads them, docs/xl.md):
    tvd = "alpha"               every vif in TVD alpha
    tvd = ["alpha", "gamma"]    one TVD per vif, in vif order
    vswitch = "tvd-alpha"       optional; must be the TVD's vSwitch (one per TVD and host)
    tvd_properties = ["signed-kernel:trust", ...]   the VM's properties[:assurance] for M(t)
    vif = ['bridge=tvd:alpha']  per-vif choice in a key xl keeps (the migration-safe encoding)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER_RE = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
TVD_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SCRIPT = "vif-tvd"


class XlCfgError(Exception):
    def __init__(self, path: str, line: int, col: int, msg: str) -> None:
        self.path, self.line, self.col, self.msg = path, line, col, msg
        super().__init__(f"{path}:{line}:{col}: error: {msg}")


@dataclass
class Setting:
    key: str
    value: object
    line: int
    col: int
    append: bool = False


@dataclass
class XlConfig:
    path: str
    settings: list[Setting] = field(default_factory=list)

    def get(self, key: str, default=None):
        """The effective value (last assignment wins; `+=` extends a list)."""
        val, found = default, False
        for s in self.settings:
            if s.key != key:
                continue
            if s.append and found and isinstance(val, list):
                val = val + (s.value if isinstance(s.value, list) else [s.value])
            else:
                val, found = s.value, True
        return val

    def setting(self, key: str) -> Setting | None:
        hits = [s for s in self.settings if s.key == key]
        return hits[-1] if hits else None

    def set(self, key: str, value) -> None:
        self.settings = [s for s in self.settings if s.key != key]
        self.settings.append(Setting(key, value, 0, 0))

    def dumps(self) -> str:
        return "".join(f"{s.key} {'+=' if s.append else '='} {format_value(s.value)}\n"
                       for s in self.settings)


class _Lexer:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.text, self.i, self.line, self.col = path, text, 0, 1, 1

    def err(self, msg: str, line: int | None = None, col: int | None = None):
        raise XlCfgError(self.path, line or self.line, col or self.col, msg)

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def advance(self, n: int = 1) -> str:
        s = self.text[self.i:self.i + n]
        for c in s:
            if c == "\n":
                self.line, self.col = self.line + 1, 1
            else:
                self.col += 1
        self.i += n
        return s

    def skip(self, newlines: bool) -> None:
        while True:
            c = self.peek()
            if c in (" ", "\t", "\r") or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                while self.peek() not in ("", "\n"):
                    self.advance()
            else:
                return

    def string(self) -> str:
        quote = self.advance()
        line, col = self.line, self.col - 1
        out = []
        while True:
            c = self.peek()
            if c == "":
                self.err("unterminated string", line, col)
            if c == "\n":
                self.err("newline inside a string (close the quote on the same line)", line, col)
            self.advance()
            if c == quote:
                return "".join(out)
            if c != "\\":
                out.append(c)
                continue
            eline, ecol = self.line, self.col - 1
            e = self.advance()
            simple = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
                      "\\": "\\", '"': '"', "'": "'"}
            if e in simple:
                out.append(simple[e])
            elif e == "x":
                h = ""
                while len(h) < 2 and self.peek() and self.peek() in "0123456789abcdefABCDEF":
                    h += self.advance()
                if not h:
                    self.err("\\x must be followed by hex digits")
                out.append(chr(int(h, 16)))
            elif e in "01234567":
                o = e
                while len(o) < 3 and self.peek() and self.peek() in "01234567":
                    o += self.advance()
                out.append(chr(int(o, 8)))
            elif e == "":
                self.err("unterminated string", line, col)
            else:
                self.err(f"unknown escape \\{e} in string", eline, ecol)


def loads(text: str, path: str = "<string>") -> XlConfig:
    lx = _Lexer(path, text)
    cfg = XlConfig(path)

    def value(depth: int):
        lx.skip(newlines=depth > 0)
        c = lx.peek()
        line, col = lx.line, lx.col
        if c in ('"', "'"):
            return lx.string()
        if c == "[":
            if depth >= 8:
                lx.err("lists nested too deeply")
            lx.advance()
            items = []
            while True:
                lx.skip(newlines=True)
                if lx.peek() == "]":
                    lx.advance()
                    return items
                if lx.peek() == "":
                    lx.err("unterminated list: expected ']'", line, col)
                items.append(value(depth + 1))
                lx.skip(newlines=True)
                c = lx.peek()
                if c == ",":
                    lx.advance()
                elif c == "]":
                    lx.advance()
                    return items
                elif c == "":
                    lx.err("unterminated list: expected ']'", line, col)
                else:
                    lx.err(f"expected ',' or ']' in list, found {c!r}")
        m = NUMBER_RE.match(lx.text, lx.i)
        if m and c.isdigit():
            tok = lx.advance(len(m.group()))
            if tok.lower().startswith("0x"):
                return int(tok, 16)
            if re.fullmatch(r"0[0-7]+", tok):
                return int(tok, 8)
            return int(tok) if tok.isdigit() else tok
        if c in ("", "\n", ";"):
            lx.err("missing value after '='")
        lx.err(f"expected a string, number or list, found {c!r} (strings need quotes)")

    while True:
        lx.skip(newlines=True)
        if lx.peek() == ";":
            lx.advance()
            continue
        if lx.peek() == "":
            return cfg
        line, col = lx.line, lx.col
        m = IDENT_RE.match(lx.text, lx.i)
        if not m:
            lx.err(f"expected a setting name, found {lx.peek()!r}")
        key = lx.advance(len(m.group()))
        lx.skip(newlines=False)
        append = False
        if lx.text.startswith("+=", lx.i):
            append = True
            lx.advance(2)
        elif lx.peek() == "=":
            lx.advance()
        else:
            lx.err(f"expected '=' after {key}")
        val = value(0)
        cfg.settings.append(Setting(key, val, line, col, append))
        lx.skip(newlines=False)
        c = lx.peek()
        if c in ("\n", ";"):
            lx.advance()
        elif c != "":
            lx.err(f"unexpected {c!r} after the value of {key} (one setting per line)")


def load(path: str) -> XlConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise XlCfgError(path, 1, 1, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise XlCfgError(path, 1, 1, f"cannot read: {e.strerror}") from None
    return loads(text, path)


def format_value(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    s = str(v)
    out = []
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ---- vif specs and TVD membership ----------------------------------------------------------

def parse_vif(spec: str) -> list[tuple[str, str]]:
    """'mac=..., bridge=x' -> [(key, value)] in order (xl splits on ',' and the first '=')."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((k.strip(), v.strip()))
    return out


def format_vif(items: list[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in items)


@dataclass
class Membership:
    name: str
    uuid: str | None
    nics: list[tuple[int, str]]                  # (devid, TVD)
    properties: dict[str, str | None]
    vswitch: str | None = None
    # master mode evidence (docs/master-protocol.md): tvd_cert = VM certificate file; images =
    # kernel, ramdisk and tvd_images files the proxy hashes (disks only when listed: hashing a
    # multi-GB disk at every session re-check is the admin's explicit choice)
    cert: str | None = None
    images: list[str] = field(default_factory=list)


def _err(cfg: XlConfig, key: str, msg: str):
    s = cfg.setting(key)
    raise XlCfgError(cfg.path, s.line if s else 1, s.col if s else 1, msg)


def membership(cfg: XlConfig) -> Membership:
    """Which TVD each vif joins. Per-vif bridge=tvd:<name> wins; else top-level tvd=."""
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        _err(cfg, "name", "the domain needs name = \"...\"")
    uuid = cfg.get("uuid")
    if uuid is not None and (not isinstance(uuid, str) or not re.fullmatch(
            r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}", uuid)):
        _err(cfg, "uuid", f"uuid {uuid!r} is not a UUID")
    if isinstance(uuid, str):
        u = uuid.replace("-", "").lower()
        uuid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    vifs = cfg.get("vif", [])
    if isinstance(vifs, str):
        vifs = [vifs]
    if not isinstance(vifs, list) or not all(isinstance(v, str) for v in vifs):
        _err(cfg, "vif", "vif must be a list of strings")
    tvd = cfg.get("tvd")
    if tvd is not None:
        tvds = [tvd] * max(len(vifs), 1) if isinstance(tvd, str) else tvd
        if not isinstance(tvds, list) or not all(isinstance(t, str) for t in tvds):
            _err(cfg, "tvd", "tvd must be a string or a list of strings (one per vif)")
        if isinstance(tvd, list) and len(tvd) != len(vifs):
            _err(cfg, "tvd", f"tvd lists {len(tvd)} TVD(s) but the domain has {len(vifs)} vif(s); "
                             f"give one per vif, or one string for all")
        for t in tvds:
            if not TVD_NAME_RE.match(t):
                _err(cfg, "tvd", f"{t!r} is not a TVD name (1-32 of a-z 0-9 _ -, starting with a letter)")
    nics = []
    for devid, spec in enumerate(vifs):
        items = dict(parse_vif(spec))
        bridge = items.get("bridge", "")
        mine = bridge[4:] if bridge.startswith("tvd:") else None
        if mine is not None and not TVD_NAME_RE.match(mine):
            _err(cfg, "vif", f"vif {devid}: bridge={bridge} is not tvd:<name> with a valid TVD name")
        want = tvd if isinstance(tvd, str) else (tvd[devid] if isinstance(tvd, list) else None)
        if mine and want and mine != want:
            _err(cfg, "tvd", f"vif {devid} says bridge=tvd:{mine} but tvd= puts it in {want}")
        chosen = mine or want
        if chosen is None:
            _err(cfg, "vif", f"vif {devid} has no TVD: add bridge=tvd:<name> to it or a top-level "
                             f"tvd = \"<name>\"")
        nics.append((devid, chosen))
    props: dict[str, str | None] = {}
    raw = cfg.get("tvd_properties", [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        _err(cfg, "tvd_properties", "tvd_properties must be a list of \"property[:assurance]\" strings")
    for p in raw:
        prop, _, assurance = p.partition(":")
        props[prop.strip()] = assurance.strip() or None
    vswitch = cfg.get("vswitch")
    if vswitch is not None and not isinstance(vswitch, str):
        _err(cfg, "vswitch", "vswitch must be a string")
    cert = cfg.get("tvd_cert")
    if cert is not None and (not isinstance(cert, str) or not cert):
        _err(cfg, "tvd_cert", "tvd_cert must be the path of the VM certificate (tvd-master vm-cert)")
    images = [cfg.get(k) for k in ("kernel", "ramdisk") if isinstance(cfg.get(k), str)]
    extra = cfg.get("tvd_images", [])
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, list) or not all(isinstance(p, str) and p for p in extra):
        _err(cfg, "tvd_images", "tvd_images must be a list of image file paths")
    images = list(dict.fromkeys(os.path.abspath(p) for p in images + extra))
    return Membership(name, uuid, nics, props, vswitch,
                      os.path.abspath(cert) if cert else None, images)


def for_xl(cfg: XlConfig, m: Membership, uuid: str) -> XlConfig:
    """A copy for `xl create`: uuid pinned, every vif script=vif-tvd and bridge=tvd:<its TVD>.
    Our top-level keys stay in the copy (xl ignores unknown top-level keys)."""
    out = XlConfig(cfg.path, list(cfg.settings))
    out.set("uuid", uuid)
    vifs = cfg.get("vif", [])
    if isinstance(vifs, str):
        vifs = [vifs]
    new = []
    for (devid, tvd), spec in zip(m.nics, vifs):
        items = [(k, v) for k, v in parse_vif(spec) if k not in ("script", "bridge")]
        items += [("bridge", f"tvd:{tvd}"), ("script", SCRIPT)]
        new.append(format_vif(items))
    if vifs:
        out.set("vif", new)
    return out
