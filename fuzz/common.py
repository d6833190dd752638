"""Helpers shared by the fuzz targets: a length-prefixed record framing for multi-part inputs."""

from __future__ import annotations

import struct


def split_records(data: bytes, limit: int = 64) -> list[bytes]:
    """``data`` as records of ``<u16 little-endian length><bytes>``; a short last record takes
    what is left. At most ``limit`` records."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data) and len(out) < limit:
        if pos + 2 > len(data):
            out.append(data[pos:])
            break
        (n,) = struct.unpack_from("<H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def join_records(records: list[bytes]) -> bytes:
    """The inverse of :func:`split_records` (for building seeds)."""
    return b"".join(struct.pack("<H", len(r)) + r for r in records)
