"""Frames and bytes per remote VTEP (outer IP address), counted by the engine, sans-I/O.

The table is bounded: hostile senders could make up any number of outer source addresses, so
after ``limit`` distinct addresses every new one is counted under :data:`OTHER`. Bytes are
inner Ethernet frame bytes, as the engine's ``rx_bytes``/``tx_bytes`` count them (transmit:
once per remote a frame went to; receive: frames delivered to the TAP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_REMOTES = 1024
OTHER = "other"
TX_FRAMES, TX_BYTES, RX_FRAMES, RX_BYTES = range(4)


class RemoteCounters:
    """``table[ip] = [tx_frames, tx_bytes, rx_frames, rx_bytes]`` (see module doc)."""

    __slots__ = ("limit", "table")

    def __init__(self, limit: int = MAX_REMOTES) -> None:
        self.limit = limit
        self.table: dict[str, list[int]] = {}

    def _row(self, ip: str) -> list[int]:
        row = self.table.get(ip)
        if row is None:
            if len(self.table) >= self.limit:
                ip = OTHER
                row = self.table.get(ip)
            if row is None:
                row = self.table[ip] = [0, 0, 0, 0]
        return row

    def sent(self, ip: str, frames: int, nbytes: int) -> None:
        row = self._row(ip)
        row[TX_FRAMES] += frames
        row[TX_BYTES] += nbytes

    def received(self, ip: str, frames: int, nbytes: int) -> None:
        row = self._row(ip)
        row[RX_FRAMES] += frames
        row[RX_BYTES] += nbytes

    def received_bufs(self, lengths: Sequence[int], sources: Sequence[Any], verdicts: bytearray,
                      count: int, accepted: int, nbytes: int, header: int) -> None:
        """Count a received batch: datagram ``i`` was delivered when ``verdicts[i] == 0``, its
        inner frame is ``lengths[i] - header`` bytes; ``accepted``/``nbytes`` are the totals.
        One row update when the whole batch came from one source (the usual case)."""
        if not accepted:
            return
        first = sources[0]
        if count == 1 or list(sources[:count]).count(first) == count:
            self.received(str(first), accepted, nbytes)
            return
        for i in range(count):
            if verdicts[i] == 0:
                self.received(str(sources[i]), 1, lengths[i] - header)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """JSON-ready: ``{ip: {"tx_frames", "tx_bytes", "rx_frames", "rx_bytes"}}``."""
        return {ip: {"tx_frames": r[TX_FRAMES], "tx_bytes": r[TX_BYTES], "rx_frames": r[RX_FRAMES],
                     "rx_bytes": r[RX_BYTES]} for ip, r in sorted(self.table.items())}
