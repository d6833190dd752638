"""Picks the L2 overlay's per-packet loops: ``tunnel.overlay._l2`` (Cython) or
``tunnel.overlay.l2_ref`` (pure Python, same API); ``WGPY_PURE=1`` selects the reference."""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.overlay._l2", pure="tunnel.overlay.l2_ref")
load = _PAIR.load
select = _PAIR.select
