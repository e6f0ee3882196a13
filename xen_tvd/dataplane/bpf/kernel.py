"""The bpf() system calls we use, through ctypes (no library wraps them for Python without
LLVM). Every failure is a DataplaneError saying what failed; a refused program carries the
verifier's last lines."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

from ..report import DataplaneError

_NR_BPF = {"x86_64": 321, "aarch64": 280}
MAP_CREATE, MAP_LOOKUP_ELEM, PROG_LOAD, PROG_TEST_RUN = 0, 1, 5, 10
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 13, 14, 15
MAP_ARRAY = 2
PROG_SCHED_CLS = 3
HELPER_MAP_LOOKUP, HELPER_KTIME_GET_NS, HELPER_SKB_PULL_DATA = 1, 5, 39
TC_ACT_OK, TC_ACT_SHOT = 0, 2
_ATTR = 128          # bytes of union bpf_attr we pass; the kernel wants the rest zero
NAME_LEN = 15        # BPF_OBJ_NAME_LEN - 1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _bpf(cmd: int, attr: bytes, what: str) -> tuple[int, bytes]:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise DataplaneError(f"{what}: bpf() on {platform.machine()} is not supported by xen-tvd")
    buf = ctypes.create_string_buffer(attr, _ATTR)
    ret = _libc.syscall(nr, cmd, buf, _ATTR)
    if ret < 0:
        err = ctypes.get_errno()
        raise DataplaneError(f"{what}: {os.strerror(err)} (errno {err})")
    return ret, buf.raw


def map_array(name: str, value_size: int, entries: int) -> int:
    """A new BPF_MAP_TYPE_ARRAY (u32 key) map's fd."""
    attr = struct.pack("<IIIIIII16s", MAP_ARRAY, 4, value_size, entries, 0, 0, 0, name.encode()[:NAME_LEN])
    return _bpf(MAP_CREATE, attr, f"creating BPF map {name}")[0]


def map_lookup(fd: int, key: int, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(struct.pack("<I", key), 4)
    v = ctypes.create_string_buffer(value_size)
    _bpf(MAP_LOOKUP_ELEM, struct.pack("<IIQQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0),
         f"reading BPF map entry {key}")
    return v.raw


def load_sched_cls(insns: bytes, name: str) -> int:
    """Load a tc classifier (direct action) program; its fd. Refused: the verifier's words
    (a second load with the log on: writing the log costs the verifier most of its time)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)

    def attr(level: int) -> bytes:
        return struct.pack("<IIQQIIQII16s", PROG_SCHED_CLS, len(insns) // 8, ctypes.addressof(code),
                           ctypes.addressof(lic), level, len(log) if level else 0,
                           ctypes.addressof(log) if level else 0, 0, 0, name.encode()[:NAME_LEN])
    try:
        return _bpf(PROG_LOAD, attr(0), f"loading BPF program {name}")[0]
    except DataplaneError as e:
        try:
            os.close(_bpf(PROG_LOAD, attr(1), f"loading BPF program {name}")[0])
        except DataplaneError:
            pass
        tail = " | ".join(log.value.decode(errors="replace").strip().splitlines()[-3:])
        raise DataplaneError(f"{e}; verifier: {tail or 'no log'}") from None


def test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> int:
    """Run the program on `frame` in the kernel (BPF_PROG_TEST_RUN); its verdict."""
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + 256)
    attr = struct.pack("<IIIIQQII", prog_fd, 0, len(frame), len(out), ctypes.addressof(data),
                       ctypes.addressof(out), repeat, 0)
    _, raw = _bpf(PROG_TEST_RUN, attr, "running a BPF program on a test frame")
    return struct.unpack_from("<I", raw, 4)[0]


def prog_info(prog_fd: int) -> tuple[int, str, list[int]]:
    """A loaded program's id, name and map ids (struct bpf_prog_info up to its name)."""
    ids = (ctypes.c_uint32 * 8)()
    info = ctypes.create_string_buffer(80)
    struct.pack_into("<IQ", info, 52, 8, ctypes.addressof(ids))     # nr_map_ids, map_ids
    _bpf(OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", prog_fd, len(info), ctypes.addressof(info)),
         "reading a BPF program's info")
    prog_id, n = struct.unpack_from("<I", info.raw, 4)[0], struct.unpack_from("<I", info.raw, 52)[0]
    return prog_id, info.raw[64:80].split(b"\0")[0].decode(), list(ids[:min(n, 8)])


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(PROG_GET_FD_BY_ID, struct.pack("<I", prog_id), f"opening BPF program {prog_id}")[0]


def map_name(map_fd: int) -> str:
    """A map's name (struct bpf_map_info up to its name)."""
    info = ctypes.create_string_buffer(40)
    _bpf(OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", map_fd, len(info), ctypes.addressof(info)),
         "reading a BPF map's info")
    return info.raw[24:40].split(b"\0")[0].decode()


def map_fd_by_id(map_id: int) -> int:
    return _bpf(MAP_GET_FD_BY_ID, struct.pack("<I", map_id), f"opening BPF map {map_id}")[0]
