"""Packet building shared by the test agents and the dishonest-VM frames (stdlib only: the
agents run inside VM namespaces)."""
from __future__ import annotations

import struct


def inet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum (IPv4 header, ICMP, and TCP/UDP over a pseudo-header)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
