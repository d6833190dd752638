"""Replay window for transport counters (pure-Python reference of the one in _transport.pyx).

The window is a ring of RING_BLOCKS bitmaps of BLOCK_BITS bits each (8192 bits). One block is
always slack, being recycled as the window moves forward, so WINDOW_SIZE = 127 * 64 = 8128
counters behind the highest one accepted are tracked (the kernel and wireguard-go agree on 8128).

Contract: ``validate`` is called only after the packet's AEAD tag verified, so a forged packet
can never move the window. The filter belongs to one keypair; a new keypair starts a new filter.
"""

from __future__ import annotations

from operator import index
from typing import Final

REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1

BLOCK_BITS: Final = 64
RING_BLOCKS: Final = 128
WINDOW_SIZE: Final = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128

_BLOCK_SHIFT: Final = 6  # log2(BLOCK_BITS)
_BIT_MASK: Final = BLOCK_BITS - 1
_RING_MASK: Final = RING_BLOCKS - 1


class ReplayFilter:
    """Accept each counter at most once, and only within WINDOW_SIZE of the highest accepted."""

    __slots__ = ("_last", "_blocks")

    def __init__(self) -> None:
        self._last = 0
        self._blocks = [0] * RING_BLOCKS

    def reset(self) -> None:
        """Forget every counter seen."""
        self._last = 0
        self._blocks = [0] * RING_BLOCKS

    def validate(self, counter: int) -> bool:
        """Accept-and-record ``counter``.

        False if it was already accepted, is more than WINDOW_SIZE behind the highest counter
        accepted so far, or is >= REJECT_AFTER_MESSAGES. Call ONLY after the AEAD tag verified.
        """
        counter = index(counter)  # integers only, as in the Cython twin
        if counter < 0:
            raise ValueError("counter must be non-negative")
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        block = counter >> _BLOCK_SHIFT
        if counter > self._last:
            # Blocks entering the window held counters from a lap ago: clear them.
            current = self._last >> _BLOCK_SHIFT
            ahead = min(block - current, RING_BLOCKS)
            for step in range(1, ahead + 1):
                self._blocks[(current + step) & _RING_MASK] = 0
            self._last = counter
        elif self._last - counter > WINDOW_SIZE:
            return False
        bit = 1 << (counter & _BIT_MASK)
        slot = block & _RING_MASK
        if self._blocks[slot] & bit:
            return False
        self._blocks[slot] |= bit
        return True
