"""The timers' own pieces: the random jitter of the handshake timers (the queue is exercised
through the engine in tests/test_device.py)."""

from __future__ import annotations

import os

from tunnel.wireguard.constants import REKEY_TIMEOUT_JITTER_MAX
from tunnel.wireguard.timers import JITTER_POOL, Jitter


def test_jitter_from_system_randomness_is_pooled_and_in_range() -> None:
    """With os.urandom the jitter comes from a pool (more draws than one pool holds are all in
    range and not all equal); an injected source is asked for 4 bytes per draw."""
    jitter = Jitter()
    draws = [jitter.draw() for _ in range(JITTER_POOL // 4 * 2 + 5)]
    assert all(0.0 <= d < REKEY_TIMEOUT_JITTER_MAX for d in draws)
    assert len(set(draws)) > 10
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        return (999).to_bytes(4, "little") if n == 4 else os.urandom(n)

    assert Jitter(source).draw() == 999 / 1000 * REKEY_TIMEOUT_JITTER_MAX
    assert asked == [4]
