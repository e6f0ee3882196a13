"""An eBPF assembler for the instructions our programs use (kernel Documentation/bpf/standard/
instruction-set.rst). Jump targets are labels; `assemble()` resolves them to offsets."""
from __future__ import annotations

import struct

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}          # B, H, W, DW; ldx/st/stx = class | 0x60 (MEM) | size
_ALU = {"add": 0x00, "sub": 0x10, "or": 0x40, "and": 0x50, "lsh": 0x60, "rsh": 0x70, "mov": 0xB0}
_JMP = {"eq": 0x10, "gt": 0x20, "ge": 0x30, "set": 0x40, "ne": 0x50, "lt": 0xA0, "le": 0xB0}
PSEUDO_MAP_FD = 1


def _imm32(value: int) -> int:
    if not -(1 << 31) <= value < (1 << 32):
        raise ValueError(f"immediate {value} does not fit 32 bits")
    return value - (1 << 32) if value >= 1 << 31 else value


class Asm:
    def __init__(self) -> None:
        self._ins: list[list] = []        # [code, dst, src, off or label, imm]
        self._labels: dict[str, int] = {}

    def _emit(self, code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0) -> None:
        self._ins.append([code, dst, src, off, _imm32(imm)])

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name} defined twice")
        self._labels[name] = len(self._ins)

    # 64-bit ALU; `value` is a register (reg=True) or an immediate
    def alu(self, op: str, dst: int, value: int, reg: bool = False) -> None:
        self._emit(0x07 | _ALU[op] | (0x08 if reg else 0), dst, value if reg else 0, 0, 0 if reg else value)

    def mov(self, dst: int, src: int) -> None:
        self.alu("mov", dst, src, reg=True)

    def movi(self, dst: int, imm: int) -> None:
        self.alu("mov", dst, imm)

    def ld64(self, dst: int, value: int, src: int = 0) -> None:
        """dst = a 64-bit immediate (two instruction slots); src=PSEUDO_MAP_FD: a map's fd."""
        value &= (1 << 64) - 1
        self._emit(0x18, dst, src, 0, value & 0xFFFFFFFF)
        self._emit(0, 0, 0, 0, value >> 32)

    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        self._emit(0x01 | 0x60 | SIZES[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        self._emit(0x03 | 0x60 | SIZES[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        self._emit(0x02 | 0x60 | SIZES[size], dst, 0, off, imm)

    def atomic_add64(self, dst: int, off: int, src: int) -> None:
        self._emit(0x03 | 0xC0 | 0x18, dst, src, off, 0)     # STX | ATOMIC | DW, imm 0 = add

    def jmp(self, op: str, dst: int, value: int, target: str, reg: bool = False, w32: bool = False) -> None:
        code = _JMP[op] | (0x06 if w32 else 0x05) | (0x08 if reg else 0)
        self._emit(code, dst, value if reg else 0, target, 0 if reg else value)

    def ja(self, target: str) -> None:
        self._emit(0x05, 0, 0, target)

    def call(self, helper: int) -> None:
        self._emit(0x85, 0, 0, 0, helper)

    def exit(self) -> None:
        self._emit(0x95)

    def assemble(self) -> bytes:
        out = []
        for i, (code, dst, src, off, imm) in enumerate(self._ins):
            if isinstance(off, str):
                if off not in self._labels:
                    raise ValueError(f"jump to undefined label {off}")
                off = self._labels[off] - i - 1
                if not -(1 << 15) <= off < (1 << 15):
                    raise ValueError("jump too far")
            out.append(struct.pack("<BBhi", code, (src << 4) | dst, off, imm))
        return b"".join(out)

    def __len__(self) -> int:
        return len(self._ins)
