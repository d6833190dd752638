"""TAI64N timestamps as WireGuard sends them in handshake initiations.

The caller passes wall-clock time (Unix seconds); nothing here reads a clock.
"""

from __future__ import annotations

TAI64_BASE = 0x400000000000000A
TIMESTAMP_SIZE = 12
# wireguard-go rounds nanoseconds down to a multiple of 2^24 (~16.8 ms) so a timestamp does not
# leak fine-grained clock readings; we do the same.
WHITENER_MASK = 0x1000000 - 1


def encode(unix_time: float) -> bytes:
    """The 12-byte big-endian TAI64N label for a Unix time."""
    seconds = int(unix_time)
    nanos = int((unix_time - seconds) * 1e9) & ~WHITENER_MASK
    return (TAI64_BASE + seconds).to_bytes(8, "big") + nanos.to_bytes(4, "big")


def after(a: bytes, b: bytes) -> bool:
    """True when timestamp a is strictly later than b (both 12-byte big-endian labels)."""
    return a > b
