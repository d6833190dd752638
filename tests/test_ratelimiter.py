"""Tests for tunnel.wireguard.ratelimiter, driven by a fake clock (time is always an explicit argument)."""

from __future__ import annotations

import ipaddress
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.wireguard.ratelimiter import HANDSHAKE_BURST, HANDSHAKE_RATE, HandshakeLoad, InitiationLimiter, RateLimiter


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def v4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


A = v4("192.0.2.1")
B = v4("192.0.2.2")


def drain(limiter: RateLimiter, source: bytes, now: float, attempts: int = 50) -> int:
    """How many of `attempts` messages at one instant get through."""
    return sum(limiter.allow(source, now) for _ in range(attempts))


def test_wireguard_defaults() -> None:
    assert (HANDSHAKE_RATE, HANDSHAKE_BURST) == (20.0, 5)
    limiter = RateLimiter()
    assert drain(limiter, A, 0.0) == 5


def test_burst_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter()
    assert drain(limiter, A, clock.now) == 5
    assert not limiter.allow(A, clock.advance(0.049))
    assert limiter.allow(A, clock.advance(0.001))  # 50 ms after the burst: one token
    assert not limiter.allow(A, clock.now)
    assert not limiter.allow(A, clock.advance(0.025))  # half a token is not enough...
    assert limiter.allow(A, clock.advance(0.025))  # ...but it was kept, not lost
    assert drain(limiter, A, clock.advance(0.1)) == 2
    assert drain(limiter, A, clock.advance(3600.0)) == 5  # never more than the burst


def test_sustained_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter()
    allowed = 0
    for _ in range(1000):  # 10 s of one attempt every 10 ms
        allowed += limiter.allow(A, clock.now)
        clock.advance(0.01)
    assert allowed == 5 + 20 * 10 - 1  # the burst, then 20/s (the last refill lands at 10.0 s)


def test_sources_are_independent() -> None:
    limiter = RateLimiter()
    assert drain(limiter, A, 0.0) == 5
    assert drain(limiter, B, 0.0) == 5
    assert drain(limiter, v6("2001:db8::1"), 0.0) == 5
    assert len(limiter) == 3


def test_ipv6_grouped_by_64() -> None:
    limiter = RateLimiter()
    assert drain(limiter, v6("2001:db8:1:2::1"), 0.0, attempts=3) == 3
    assert drain(limiter, v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), 0.0) == 2  # same /64
    assert drain(limiter, v6("2001:db8:1:3::1"), 0.0) == 5  # the next /64
    # An IPv4 address equal to the first four bytes of an IPv6 /64 is another source.
    assert drain(limiter, v6("2001:db8:1:2::1")[:4], 0.0) == 5
    assert len(limiter) == 3


def test_buffers_of_any_kind() -> None:
    limiter = RateLimiter(burst=1)
    assert limiter.allow(bytearray(A), 0.0)
    assert not limiter.allow(memoryview(A), 0.0)
    assert not limiter.allow(A, 0.0)


def test_garbage_collection() -> None:
    clock = FakeClock()
    limiter = RateLimiter()
    assert drain(limiter, A, clock.now) == 5
    start = clock.now
    limiter.allow(B, clock.advance(0.5))
    limiter.collect_garbage(start + 0.999)
    assert len(limiter) == 2
    limiter.collect_garbage(start + 1.0)  # A idle for exactly 1 s: gone
    assert len(limiter) == 1
    assert drain(limiter, A, start + 1.0) == 5  # and back with a full bucket, as it would be
    limiter.collect_garbage(start + 1.9)
    assert len(limiter) == 1  # B idle 1.4 s: gone; A was seen at start + 1.0
    assert drain(limiter, B, start + 1.9) == 5  # B starts over with a full bucket
    limiter.collect_garbage(start + 10.0)
    assert len(limiter) == 0


def test_clock_going_backwards_refills_nothing() -> None:
    limiter = RateLimiter()
    assert drain(limiter, A, 10.0) == 5
    assert drain(limiter, A, 5.0) == 0
    assert drain(limiter, A, 10.0) == 0
    assert limiter.allow(A, 10.05)


def test_source_table_is_bounded() -> None:
    limiter = RateLimiter(max_sources=2)
    assert limiter.allow(A, 0.0)
    assert limiter.allow(B, 0.0)
    assert not limiter.allow(v4("192.0.2.3"), 0.0)  # refused, not tracked
    assert len(limiter) == 2
    assert limiter.allow(A, 0.0)  # known sources still work
    limiter.collect_garbage(1.0)
    assert limiter.allow(v4("192.0.2.3"), 1.0)


def test_bad_arguments() -> None:
    limiter = RateLimiter()
    with pytest.raises(ValueError):
        limiter.allow(b"\x00" * 5, 0.0)
    with pytest.raises(ValueError):
        RateLimiter(rate=0)
    with pytest.raises(ValueError):
        RateLimiter(burst=0)


def test_clear() -> None:
    limiter = RateLimiter()
    drain(limiter, A, 0.0)
    limiter.clear()
    assert len(limiter) == 0
    assert drain(limiter, A, 0.0) == 5


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 2)), min_size=1, max_size=200),
    st.integers(1, 50),
    st.integers(1, 8),
)
def test_matches_exact_token_bucket(steps: list[tuple[int, int]], rate: int, burst: int) -> None:
    """Every decision equals an exact (rational) token bucket's; times advance in whole ms."""
    sources = [A, B, v6("2001:db8::1")]
    limiter = RateLimiter(rate=float(rate), burst=burst)
    tokens: dict[int, Fraction] = {}
    last: dict[int, Fraction] = {}
    now_ms = 0
    for step_ms, who in steps:
        now_ms += step_ms
        now = Fraction(now_ms, 1000)
        if who in tokens:
            tokens[who] = min(Fraction(burst), tokens[who] + (now - last[who]) * rate)
        else:
            tokens[who] = Fraction(burst)
        last[who] = now
        expected = tokens[who] >= 1
        if expected:
            tokens[who] -= 1
        assert limiter.allow(sources[who], now_ms / 1000) == expected


# --- the per-peer initiation limit ------------------------------------------------------------


def test_initiation_limiter_fifty_per_second() -> None:
    clock = FakeClock()
    limiter = InitiationLimiter()
    assert limiter.allow(clock.now)
    assert not limiter.allow(clock.now)
    assert not limiter.allow(clock.advance(0.019))
    assert limiter.allow(clock.advance(0.001))  # 20 ms after the last consumed one
    allowed = 1
    for _ in range(999):  # one second of attempts every millisecond
        allowed += limiter.allow(clock.advance(0.001))
    assert allowed == 50


def test_initiation_limiter_refusals_do_not_extend_the_wait() -> None:
    limiter = InitiationLimiter()
    assert limiter.allow(0.0)
    for ms in range(1, 20):
        assert not limiter.allow(ms / 1000)
    assert limiter.allow(0.02)


def test_initiation_limiter_check_then_record() -> None:
    limiter = InitiationLimiter()
    assert limiter.would_allow(5.0)
    assert limiter.would_allow(5.0)  # checking records nothing
    limiter.record(5.0)
    assert not limiter.would_allow(5.01)
    limiter.record(4.0)  # an older consumption never moves the mark back
    assert not limiter.would_allow(4.03)
    assert limiter.would_allow(5.02)


def test_initiation_limiters_are_per_peer() -> None:
    first, second = InitiationLimiter(), InitiationLimiter()
    assert first.allow(1.0)
    assert second.allow(1.0)
    assert not first.allow(1.001)


def test_handshake_load_starts_at_the_threshold_message_and_holds() -> None:
    """Under load from the message that reaches the threshold, for ``hold`` seconds after it."""
    load = HandshakeLoad(threshold=10, hold=1.0)
    assert load.new_second(5.0) and load.load_after(5.0) == 10
    load.counted(4, 5.0)
    assert not load.new_second(5.5) and load.load_after(5.5) == 6
    load.counted(6, 5.6)  # the 10th message of this second
    assert load.load_after(5.6) == 0 and load.until == 5.6 + 1.0
    assert load.new_second(6.0)  # a new second resets the count, not the load
    assert load.load_after(6.5) == 0
    assert load.load_after(6.6) == 10  # the hold is over and nothing was counted since
