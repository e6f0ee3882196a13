"""Xen's own xl.cfg parser, libxlutil (libxlu) 4.17, driven through ctypes, and xen_tvd.xlcfg
read the same way, so a test can compare the two on any bytes.

A reading is (accepted, {key: (string, long, list)}), each getter's result as libxlu's API gives
it: (0, value) or (errno, None); ESRCH = unset, EINVAL = wrong kind or not a number, ERANGE =
out of range. Strings are bytes; a list is a tree of bytes and lists.
"""
from __future__ import annotations

import ctypes
import errno
import re

from xen_tvd import xlcfg

SONAME = "libxlutil.so.4.17"
SKIP_REASON = (f"needs {SONAME} (Debian package libxenmisc4.17, a dependency of xen-utils-4.17), "
               f"installed by scripts/bootstrap")
XLU_STRING = 0
# every key libxlu can store is an IDENT token, so it is among these runs (plus harmless extras)
KEY_CANDIDATE_RE = re.compile(rb"[a-z][._0-9a-z]*")

P, INT, LONG, CHARP = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p


def _load():
    try:
        lib = ctypes.CDLL(SONAME)
    except OSError:
        return None
    sigs = {
        "xlu_cfg_init": (P, [P, CHARP]),
        "xlu_cfg_readdata": (INT, [P, CHARP, INT]),
        "xlu_cfg_destroy": (None, [P]),
        "xlu_cfg_get_string": (INT, [P, CHARP, ctypes.POINTER(CHARP), INT]),
        "xlu_cfg_get_long": (INT, [P, CHARP, ctypes.POINTER(LONG), INT]),
        "xlu_cfg_get_list": (INT, [P, CHARP, ctypes.POINTER(P), ctypes.POINTER(INT), INT]),
        "xlu_cfg_get_listitem2": (P, [P, INT]),
        "xlu_cfg_value_type": (INT, [P]),
        "xlu_cfg_value_get_string": (INT, [P, P, ctypes.POINTER(CHARP), INT]),
        "xlu_cfg_value_get_list": (INT, [P, P, ctypes.POINTER(P), INT]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


LIB = _load()
_libc = ctypes.CDLL(None)
_libc.open_memstream.restype = P
_libc.open_memstream.argtypes = [ctypes.POINTER(CHARP), ctypes.POINTER(ctypes.c_size_t)]
_libc.fclose.argtypes = [P]
_libc.free.argtypes = [P]


def _tree(cfg, lst) -> list:
    out, i = [], 0
    while (v := LIB.xlu_cfg_get_listitem2(lst, i)) is not None:
        if LIB.xlu_cfg_value_type(v) == XLU_STRING:
            s = CHARP()
            LIB.xlu_cfg_value_get_string(cfg, v, ctypes.byref(s), 1)
            out.append(s.value)
        else:
            sub = P()
            LIB.xlu_cfg_value_get_list(cfg, v, ctypes.byref(sub), 1)
            out.append(_tree(cfg, sub))
        i += 1
    return out


def libxlu_read(data: bytes, keys) -> tuple[bool, dict, str]:
    """(accepted, values, libxlu's report). data must hold no NUL inside a string: libxlu
    asserts on that and would abort this process."""
    buf, size = CHARP(), ctypes.c_size_t()
    report = _libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    cfg = LIB.xlu_cfg_init(report, b"corpus.cfg")
    try:
        accepted = LIB.xlu_cfg_readdata(cfg, data, len(data)) == 0
        values = {}
        for k in keys if accepted else ():
            kb = k.encode()
            s, n, lst, cnt = CHARP(), LONG(), P(), INT()
            rs = LIB.xlu_cfg_get_string(cfg, kb, ctypes.byref(s), 1)
            rn = LIB.xlu_cfg_get_long(cfg, kb, ctypes.byref(n), 1)
            rl = LIB.xlu_cfg_get_list(cfg, kb, ctypes.byref(lst), ctypes.byref(cnt), 1)
            values[k] = ((rs, s.value if rs == 0 else None), (rn, n.value if rn == 0 else None),
                         (rl, _tree(cfg, lst) if rl == 0 else None))
    finally:
        LIB.xlu_cfg_destroy(cfg)
        _libc.fclose(report)
        text = ctypes.string_at(buf, size.value).decode(errors="replace") if buf else ""
        _libc.free(ctypes.cast(buf, P))
    return accepted, values, text


def _bytes(v):
    return [_bytes(x) for x in v] if isinstance(v, list) else v.encode("utf-8", "surrogateescape")


def _get(fn, key):
    try:
        v = fn(key)
    except xlcfg.XlCfgError as e:
        return e.code, None
    return (errno.ESRCH, None) if v is None else (0, _bytes(v) if not isinstance(v, int) else v)


def ours_read(data: bytes, keys) -> tuple[bool, dict, str]:
    """The same reading through xen_tvd.xlcfg."""
    try:
        cfg = xlcfg.loads(data.decode("utf-8", "surrogateescape"), "corpus.cfg")
    except xlcfg.XlCfgError as e:
        return False, {}, str(e)
    return True, {k: (_get(cfg.get_string, k), _get(cfg.get_long, k), _get(cfg.get_list, k))
                  for k in keys}, "\n".join(cfg.warnings)


def keys_of(data: bytes) -> list[str]:
    return sorted({m.decode() for m in KEY_CANDIDATE_RE.findall(data)})
