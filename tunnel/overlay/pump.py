"""Picks the L2 overlay's per-wake-up pump: ``tunnel.overlay._pump`` (Cython) or
``tunnel.overlay.pump_ref`` (pure Python, same API); ``WGPY_PURE=1`` selects the reference."""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.overlay._pump", pure="tunnel.overlay.pump_ref")
load = _PAIR.load
select = _PAIR.select
