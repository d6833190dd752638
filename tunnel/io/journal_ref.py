"""The pumps' journal, shared by the WireGuard and the VXLAN pumps (pure-Python reference).

``tunnel.io._journal`` is the Cython twin with the same API (a ``cdef class`` whose ``.pxd``
the native pumps ``cimport``, so they call :meth:`Journal.add` and :meth:`Journal.open` from
C); ``tunnel.io.journal.select()`` picks one. The pump modules re-export :class:`Journal`,
:data:`SENT`, :data:`RECEIVED` and :data:`JOURNAL_LIMIT` (the pure pumps this module's, the
native pumps the native ones), so a pump and its journal are always twins of one kind.

**What it is for.** A pump (``tunnel/wireguard/pump_ref.py``, ``tunnel/vxlan/pump_ref.py``)
sends or delivers a *settled* batch at once and leaves what the engine must still do for it
(counters, timers, FDB times) as a record: a tuple whose first item is :data:`SENT` or
:data:`RECEIVED` (each protocol defines the rest of its records' shape). The shell applies the
records in order, at most ``delay`` seconds later (one ``loop.call_later`` armed by the first
record) or before any other work on the engine, whichever comes first (docs/design.md, "The
pumps").

Contract: ``loop`` is None until the shell starts (then nothing may be journaled:
:meth:`Journal.open` is False) and afterwards anything with ``call_later(delay, callback)``
(the event loop, or a worker's timer); ``flush()`` is the shell's callback, which takes the
records (:meth:`Journal.take`) and applies them. ``delay`` is a real number (TypeError
otherwise, None included); a record is a tuple or None (TypeError otherwise). Single-threaded:
one journal per thread that owns an engine.

The helpers :func:`exact`, :func:`real` and :func:`headroom` are the pure pumps' argument
checks, which give the errors the native pumps' typed arguments give; the native pumps share
their C twins (``check_headroom``, ``monotonic``) through ``tunnel/io/_journal.pxd``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

SENT = 0  # a record of a batch the pump sent (what follows is the protocol's)
RECEIVED = 1  # a record of a batch the pump received and delivered
JOURNAL_LIMIT = 64  # records; a full journal makes the next batch go to the shell's ``after``
JOURNAL_DELAY = 0.002  # seconds a settled batch's record may wait (when the shell is idle)

Record = tuple[Any, ...]


def exact(value: Any, kind: type, name: str, none_ok: bool = False) -> None:
    """TypeError unless ``value`` is exactly a ``kind`` (or None with ``none_ok``), as a Cython
    typed argument (``Kind name not None``, or ``Kind name`` with ``none_ok``) says."""
    if type(value) is not kind and not (none_ok and value is None):
        raise TypeError(f"Argument '{name}' has incorrect type (expected {kind.__name__}, "
                        f"got {type(value).__name__})")


def real(value: Any) -> float:
    """``value`` as a float; TypeError if it is not a real number (as a C double argument)."""
    kind = type(value)
    if not (hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"must be real number, not {kind.__name__}")
    return float(value)


def headroom(value: Any) -> int:
    """A headroom: an int >= 0 (TypeError if not an int, ValueError if negative)."""
    value = operator.index(value)
    if value < 0:
        raise ValueError("headroom must be >= 0")
    return int(value)


class Journal:
    """Records of settled batches, applied by ``flush`` (the shell) in order; see the module
    docstring. :attr:`armed` is True while a timer is pending for the records so far."""

    def __init__(self, delay: float, flush: Callable[[], None]) -> None:
        self.loop: Any = None
        self.delay = real(delay)
        self.flush = flush
        self.records: list[Record] = []
        self.armed = False

    def add(self, record: Record | None) -> None:
        """Append ``record``; the first record since the last timer arms one (``delay``)."""
        exact(record, tuple, "record", none_ok=True)
        self.records.append(record)  # type: ignore[arg-type]  # None is accepted, as natively
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.delay, self._due)

    def _due(self) -> None:
        self.armed = False
        self.flush()

    def take(self) -> list[Record]:
        """The records so far, oldest first (the journal is empty after)."""
        records, self.records = self.records, []
        return records

    def open(self) -> bool:
        """Whether a settled batch may be journaled now (a loop is set and there is room)."""
        return self.loop is not None and len(self.records) < JOURNAL_LIMIT


__all__ = ["JOURNAL_DELAY", "JOURNAL_LIMIT", "RECEIVED", "SENT", "Journal", "Record", "exact", "headroom", "real"]
