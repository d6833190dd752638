"""Handshake rate limiting: a token bucket per source address, and the per-peer initiation limit.

``RateLimiter`` is consulted by the engine for handshake messages (initiations and responses)
only while the device is under load, and only after mac2 proved the source address (a valid
cookie), as WireGuard does: each source gets ``rate`` messages per second with bursts of
``burst`` (WireGuard: 20/s, burst 5). IPv4 sources are keyed by the whole address, IPv6 sources
by their /64, since one host commonly owns a whole /64.

``HandshakeLoad`` says when the device is under load: it counts the handshake messages with a
valid mac1 per second, and from the message that reaches the threshold on, the device is under
load for a hold time (wireguard-go: its handshake queue 1/8 full).

``InitiationLimiter`` is one per peer: a peer may have at most one initiation *consumed* per
1/50 s, whatever its source, so replaying fresh-looking initiations cannot make us churn
handshake state.

Time is explicit (``now``, seconds, from a monotonic clock the shell reads); it is converted to
integer nanoseconds so refill arithmetic is exact at the boundaries a fake clock hits. Nothing
here reads a clock or does I/O; the engine calls everything from its single thread, and calls
``RateLimiter.collect_garbage`` about once a second.
"""

from __future__ import annotations

from tunnel.wireguard.constants import (
    HANDSHAKE_INITIATION_RATE,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
    UNDER_LOAD_HOLD,
)

__all__ = [
    "HANDSHAKE_RATE",
    "HANDSHAKE_BURST",
    "GARBAGE_IDLE",
    "MAX_SOURCES",
    "RateLimiter",
    "InitiationLimiter",
    "HandshakeLoad",
]

HANDSHAKE_RATE = 20.0  # packets per second per source (the kernel and wireguard-go)
HANDSHAKE_BURST = 5
GARBAGE_IDLE = 1.0  # seconds without traffic before a source is forgotten (its bucket is full)
MAX_SOURCES = 1 << 16  # bound on tracked sources; new ones are refused beyond it (as the kernel)

_NS = 1_000_000_000


def _ns(now: float) -> int:
    return round(now * _NS)


class RateLimiter:
    """Token bucket per source: ``allow(source_ip, now)`` spends one token or refuses.

    A new source starts with a full bucket (``burst`` tokens); tokens refill continuously at
    ``rate`` per second up to ``burst``. A clock that steps backwards refills nothing.
    """

    __slots__ = ("_cost", "_capacity", "_max_sources", "_buckets")

    def __init__(
        self, rate: float = HANDSHAKE_RATE, burst: int = HANDSHAKE_BURST, *, max_sources: int = MAX_SOURCES
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self._cost = round(_NS / rate)  # nanoseconds of credit one message costs
        self._capacity = self._cost * burst
        self._max_sources = max_sources
        # source key -> [credit in ns, time of the last refill in ns]
        self._buckets: dict[bytes, list[int]] = {}

    @staticmethod
    def source_key(source_ip: bytes | bytearray | memoryview) -> bytes:
        """The bucket key: the IPv4 address, or the /64 of an IPv6 address (4 or 16 raw bytes)."""
        size = len(source_ip)
        if size == 4:
            return bytes(source_ip)
        if size == 16:
            return bytes(source_ip[:8])  # 8 bytes: never equal to a 4-byte IPv4 key
        raise ValueError(f"source address must be 4 or 16 bytes, got {size}")

    def allow(self, source_ip: bytes | bytearray | memoryview, now: float) -> bool:
        """Spend one token of ``source_ip``'s bucket; False if it is empty (drop the message)."""
        key = self.source_key(source_ip)
        now_ns = _ns(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_sources:
                return False
            self._buckets[key] = [self._capacity - self._cost, now_ns]
            return True
        credit, last = bucket
        if now_ns > last:
            credit = min(self._capacity, credit + now_ns - last)
            bucket[1] = now_ns
        if credit >= self._cost:
            bucket[0] = credit - self._cost
            return True
        bucket[0] = credit
        return False

    def collect_garbage(self, now: float) -> None:
        """Forget sources idle for ``GARBAGE_IDLE`` (1 s) or more: their bucket is full again,
        so forgetting them changes no decision."""
        horizon = _ns(now) - _ns(GARBAGE_IDLE)
        buckets = self._buckets
        for key in [key for key, (_, last) in buckets.items() if last <= horizon]:
            del buckets[key]

    def clear(self) -> None:
        """Forget every source (e.g. when the device goes down)."""
        self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)


class InitiationLimiter:
    """At most one consumed initiation per ``interval`` (1/50 s) for one peer.

    ``allow(now)`` checks and records in one step. An engine that, like WireGuard, wants to
    count only initiations that went on to pass every check (timestamp not replayed) calls
    ``would_allow(now)`` before the expensive work and ``record(now)`` once it consumed one.
    The first initiation is always allowed; another is allowed once ``interval`` has passed
    (exactly ``interval`` later counts as passed, as in the kernel).
    """

    __slots__ = ("_interval_ns", "_last_ns")

    def __init__(self, interval: float = HANDSHAKE_INITIATION_RATE) -> None:
        self._interval_ns = _ns(interval)
        self._last_ns: int | None = None

    def would_allow(self, now: float) -> bool:
        """True if an initiation consumed at ``now`` would respect the rate."""
        return self._last_ns is None or _ns(now) - self._last_ns >= self._interval_ns

    def record(self, now: float) -> None:
        """Note an initiation consumed at ``now`` (never moves the mark backwards)."""
        now_ns = _ns(now)
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns

    def allow(self, now: float) -> bool:
        """``would_allow`` then ``record``: True if this initiation may be consumed."""
        if not self.would_allow(now):
            return False
        self.record(now)
        return True


class HandshakeLoad:
    """The device's load state: valid-mac1 handshake messages counted per second.

    A batch asks :meth:`load_after` how many more messages it may take before the device is
    under load (0: it already is), lets the screen count the valid-mac1 messages it saw, and
    reports them with :meth:`counted`. Reaching ``threshold`` within a second puts the device
    under load for ``hold`` seconds from that message on. ``until`` is the end of the current
    load (a test may set it to force load).
    """

    __slots__ = ("threshold", "hold", "second", "count", "until")

    def __init__(self, threshold: int = UNDER_LOAD_HANDSHAKES_PER_SECOND, hold: float = UNDER_LOAD_HOLD) -> None:
        self.threshold = threshold
        self.hold = hold
        self.second = 0.0  # start of the second being counted
        self.count = 0
        self.until = -1.0

    def new_second(self, now: float) -> bool:
        """Start a new second of the count if one has passed since the last; True if it did."""
        if now - self.second >= 1.0:
            self.second = now
            self.count = 0
            return True
        return False

    def load_after(self, now: float) -> int:
        """Messages that may still pass before load starts (0: under load now)."""
        return 0 if now < self.until else self.threshold - self.count

    def counted(self, messages: int, now: float) -> None:
        """``messages`` valid-mac1 messages were seen at ``now``."""
        self.count += messages
        if self.count >= self.threshold:
            self.until = now + self.hold
