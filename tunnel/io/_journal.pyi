"""Type stub of the Cython extension ``tunnel.io._journal`` (same API as ``journal_ref.py``)."""

from collections.abc import Callable
from typing import Any

SENT: int
RECEIVED: int
JOURNAL_LIMIT: int
JOURNAL_DELAY: float

class Journal:
    loop: Any
    delay: float
    flush: Callable[[], None]
    records: list[tuple[Any, ...]]
    armed: bool
    def __init__(self, delay: float, flush: Callable[[], None]) -> None: ...
    def add(self, record: tuple[Any, ...] | None) -> None: ...
    def take(self) -> list[tuple[Any, ...]]: ...
    def open(self) -> bool: ...
