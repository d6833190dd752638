"""The store behind the mesh: a small interface, and an in-memory implementation for tests.

The agent needs only these operations, so that another store (the Kubernetes API, with leases
as Lease objects and claims as create-only objects) could back it later:

* ``get``/``list``: values with their modification revision; ``list`` also returns the store
  revision the listing is consistent with, to start a watch right after it.
* ``create``: put-if-absent (a claim); ``replace``: compare-and-swap on the modification revision
  (renewing or reclaiming a claim); ``put``: unconditional, optionally attached to a lease (a
  node record); ``delete``.
* leases: ``grant(ttl)`` -> id, ``keepalive(id)`` -> remaining TTL (0: the lease is gone, its
  keys deleted), ``revoke(id)`` (deletes its keys).
* ``watch(prefix, start_revision)``: an async iterator of :class:`WatchBatch` in revision order.
  It raises :class:`Compacted` when ``start_revision`` is no longer available (the caller
  re-lists) and :class:`StoreUnavailable` when the stream is lost.

Every failure is a :class:`StoreError` whose ``kind`` names it for the counters:
``unavailable`` (cannot reach or lost the store), ``auth`` (refused credentials), ``compacted``,
``protocol`` (an answer we cannot read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol


class StoreError(Exception):
    kind = "error"


class StoreUnavailable(StoreError):
    kind = "unavailable"


class StoreAuthError(StoreError):
    kind = "auth"


class StoreProtocolError(StoreError):
    kind = "protocol"


class Compacted(StoreError):
    kind = "compacted"

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    key: str
    value: bytes  # empty for a delete
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    events: tuple[Event, ...]
    revision: int  # the store revision after these events


class Store(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...
    async def list(self, prefix: str) -> tuple[list[KeyValue], int]: ...
    async def put(self, key: str, value: bytes, lease: int = 0) -> int: ...
    async def create(self, key: str, value: bytes, lease: int = 0) -> bool: ...
    async def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool: ...
    async def delete(self, key: str) -> bool: ...
    async def grant(self, ttl: int) -> int: ...
    async def keepalive(self, lease: int) -> int: ...
    async def revoke(self, lease: int) -> None: ...
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]: ...
    async def compact(self, revision: int) -> None: ...
    async def close(self) -> None: ...


@dataclass(slots=True)
class _Lease:
    ttl: int
    expires: float
    keys: set[str]


class MemoryStore:
    """The :class:`Store` contract in memory, with a clock the test controls.

    Leases expire when an operation (or :meth:`expire`) notices their deadline passed on
    ``clock()``. ``available = False`` makes every operation raise :class:`StoreUnavailable` and
    ends every open watch the same way. History is kept from the last compaction on.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.revision = 1
        self.compacted = 0
        self.data: dict[str, KeyValue] = {}
        self.history: list[Event] = []
        self.leases: dict[int, _Lease] = {}
        self._next_lease = 1000
        self._watchers: list[tuple[str, asyncio.Queue[Event | None]]] = []
        self.available = True
        self.operations = 0

    def _check(self) -> None:
        self.operations += 1
        if not self.available:
            raise StoreUnavailable("store down (test)")
        self.expire()

    def set_available(self, up: bool) -> None:
        self.available = up
        if not up:
            for _, queue in self._watchers:
                queue.put_nowait(None)

    def expire(self) -> None:
        now = self.clock()
        for lease_id, lease in list(self.leases.items()):
            if lease.expires <= now:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is not None:
            for key in sorted(lease.keys):
                if key in self.data and self.data[key].lease == lease_id:
                    self._delete(key)

    def _emit(self, event: Event) -> None:
        self.history.append(event)
        for prefix, queue in self._watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)

    def _put(self, key: str, value: bytes, lease: int) -> int:
        if lease and lease not in self.leases:
            raise StoreError("lease not found")
        old = self.data.get(key)
        if old is not None and old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        self.revision += 1
        self.data[key] = KeyValue(key, value, self.revision, lease)
        if lease:
            self.leases[lease].keys.add(key)
        self._emit(Event("put", key, value, self.revision))
        return self.revision

    def _delete(self, key: str) -> None:
        self.revision += 1
        self.data.pop(key)
        self._emit(Event("delete", key, b"", self.revision))

    async def get(self, key: str) -> KeyValue | None:
        self._check()
        return self.data.get(key)

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check()
        return [kv for k, kv in sorted(self.data.items()) if k.startswith(prefix)], self.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self._check()
        return self._put(key, value, lease)

    async def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        self._check()
        if key in self.data:
            return False
        self._put(key, value, lease)
        return True

    async def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        self._check()
        current = self.data.get(key)
        if current is None or current.mod_revision != mod_revision:
            return False
        self._put(key, value, lease)
        return True

    async def delete(self, key: str) -> bool:
        self._check()
        if key not in self.data:
            return False
        self._delete(key)
        return True

    async def grant(self, ttl: int) -> int:
        self._check()
        self._next_lease += 1
        self.leases[self._next_lease] = _Lease(ttl, self.clock() + ttl, set())
        return self._next_lease

    async def keepalive(self, lease: int) -> int:
        self._check()
        entry = self.leases.get(lease)
        if entry is None:
            return 0
        entry.expires = self.clock() + entry.ttl
        return entry.ttl

    async def revoke(self, lease: int) -> None:
        self._check()
        self._drop_lease(lease)

    async def compact(self, revision: int) -> None:
        self._check()
        self.compacted = max(self.compacted, min(revision, self.revision))
        self.history = [e for e in self.history if e.mod_revision > self.compacted]

    async def close(self) -> None:
        for _, queue in self._watchers:
            queue.put_nowait(None)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self._check()
        if start_revision <= self.compacted:
            raise Compacted(self.compacted + 1)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        for event in self.history:
            if event.mod_revision >= start_revision and event.key.startswith(prefix):
                queue.put_nowait(event)
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            while True:
                first = await queue.get()
                if first is None:
                    raise StoreUnavailable("watch lost (test)")
                events = [first]
                while not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        queue.put_nowait(None)
                        break
                    events.append(item)
                yield WatchBatch(tuple(events), events[-1].mod_revision)
        finally:
            self._watchers.remove(entry)
