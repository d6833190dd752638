"""Type stub of the Cython extension ``tunnel.vxlan._pump`` (same API as ``pump_ref.py``)."""

from array import array
from collections.abc import Callable
from typing import Any

from tunnel.io._journal import JOURNAL_LIMIT as JOURNAL_LIMIT
from tunnel.io._journal import RECEIVED as RECEIVED
from tunnel.io._journal import SENT as SENT
from tunnel.io._journal import Journal as Journal
from tunnel.vxlan.pump_ref import Snapshot as Snapshot
from tunnel.vxlan.pump_ref import apply_record as apply_record
from tunnel.vxlan.pump_ref import compile_snapshot as compile_snapshot
from tunnel.vxlan.pump_ref import fdb_version as fdb_version

class Outbound:
    tap: Any
    batch: Any
    fast: Any
    journal: Journal
    after: Callable[[int, Exception | None], None]
    headroom: int
    snapshot: Snapshot | None
    tap_bufs: list[bytearray]
    tap_lengths: list[int]
    verdicts: bytearray
    sports: array[int]
    now: float
    lane: bool
    sent: int
    full: int
    errors: int
    macs: list[bytes]
    remotes: list[tuple[tuple[str, ...], int, int]]
    again: Callable[[Callable[[], None]], None] | None
    def __init__(self, tap: Any, batch: Any, fast: Any, journal: Journal,
                 after: Callable[[int, Exception | None], None], headroom: int) -> None: ...
    def on_readable(self) -> None: ...
    def settled(self, count: int) -> bool: ...
    def leftover(self, count: int) -> bool: ...
    def pending_record(self) -> tuple[Any, ...]: ...
    def record(self, count: int) -> None: ...
    def run(self, bufs: list[bytearray], lengths: list[int], headroom: int, now: float) -> int: ...

class Inbound:
    udp: Any
    tap: Any
    fast: Any
    outbound: Outbound
    after: Callable[[int, Exception | None], None]
    udp_bufs: list[bytearray]
    udp_lengths: list[int]
    udp_sources: list[Any]
    verdicts: bytearray
    now: float
    lane: bool
    accepted: int
    nbytes: int
    source: Any
    macs: list[bytes]
    written: int
    write_error: OSError | None
    answered: bool
    replied: int
    reply_error: Exception | None
    again: Callable[[Callable[[], None]], None] | None
    def __init__(self, udp: Any, tap: Any, fast: Any, outbound: Outbound,
                 after: Callable[[int, Exception | None], None]) -> None: ...
    def on_readable(self) -> None: ...
    def settled(self, count: int) -> bool: ...
    def leftover(self, count: int) -> bool: ...
    def pending_record(self) -> tuple[Any, ...]: ...
    def run(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> int: ...
