"""One queue for every peer's timers, with lazy re-arming (sans-I/O: deadlines are plain floats),
and the random jitter of the handshake timers.

A peer's five timers (retransmit handshake, send keepalive, new handshake, zero key material,
persistent keepalive) live as deadlines in :class:`tunnel.wireguard.peer.Timers`. This queue keeps a heap
of (deadline, peer, name) so the engine can tell the shell the earliest deadline without scanning
every peer (10,000 peers must not cost 10,000 steps per packet).

Re-arming to a *later* deadline is the common case on the data path (every packet pushes the
persistent keepalive back), so it does not push: the earlier heap entry stays, and when it comes
due the queue sees the timer's real deadline is later and pushes that instead. Only an *earlier*
deadline pushes at once. So the heap holds at most a few entries per peer and timer, however fast
packets flow. ``Timers.scheduled`` records, per timer name, the one heap entry that is live;
any other entry for that name is stale and skipped.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from tunnel.wireguard.constants import REKEY_TIMEOUT_JITTER_MAX

if TYPE_CHECKING:
    from tunnel.wireguard.peer import Peer

TIMER_NAMES = (
    "retransmit_handshake",
    "send_keepalive",
    "new_handshake",
    "zero_key_material",
    "persistent_keepalive",
)


class TimerQueue:
    """Deadlines of all peers. Single-threaded, like the engine that owns it."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Peer, str]] = []
        self._seq = itertools.count()

    def arm(self, peer: Peer, name: str, deadline: float) -> None:
        """Set peer's timer ``name`` to fire at ``deadline`` (replacing any earlier setting)."""
        setattr(peer.timers, name, deadline)
        scheduled = peer.timers.scheduled
        live = scheduled.get(name)
        if live is None or deadline < live:
            scheduled[name] = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), peer, name))

    def next_deadline(self) -> float | None:
        """A time at or before the earliest real deadline (an early wake-up is harmless)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> Iterator[tuple[Peer, str]]:
        """Yield (peer, timer name) for every timer due at ``now``; the caller fires them.

        The caller must clear or re-arm the timer it is given (set it to None or call arm).
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, peer, name = heapq.heappop(heap)
            scheduled = peer.timers.scheduled
            if scheduled.get(name) != deadline:
                continue  # superseded by an earlier push
            del scheduled[name]
            actual: float | None = getattr(peer.timers, name)
            if actual is None:
                continue  # cancelled
            if actual <= now:
                yield peer, name
            else:
                scheduled[name] = actual
                heapq.heappush(heap, (actual, next(self._seq), peer, name))

    def __len__(self) -> int:
        return len(self._heap)


JITTER_POOL = 1024  # bytes of system randomness read at once for timer jitter (256 draws)


class Jitter:
    """Random delays in [0, REKEY_TIMEOUT_JITTER_MAX), from 4 random bytes each.

    Jitter needs no secrecy. With the system's randomness (``os.urandom``, the default) the
    bytes come from a pool refilled JITTER_POOL bytes at a time, so a data packet that arms a
    timer costs no getrandom() system call; an injected ``random`` is asked for 4 bytes per
    draw (tests replay its sequence).
    """

    def __init__(self, random: Callable[[int], bytes] = os.urandom) -> None:
        self._random = random
        self._pool = b""
        self._used = 0

    def draw(self) -> float:
        if self._random is os.urandom:
            used = self._used
            if used >= len(self._pool):
                self._pool = os.urandom(JITTER_POOL)
                used = 0
            self._used = used + 4
            value = int.from_bytes(self._pool[used : used + 4], "little")
        else:
            value = int.from_bytes(self._random(4), "little")
        return (value % 1000) / 1000 * REKEY_TIMEOUT_JITTER_MAX
