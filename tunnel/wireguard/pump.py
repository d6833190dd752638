"""Picks the shell's per-wake-up pump: ``tunnel.wireguard._pump`` (Cython) or ``tunnel.wireguard.pump_ref``.

``WGPY_PURE=1`` (or a missing build) selects the pure-Python reference, as for every native
module (see ``crypto.native``). Both modules expose :class:`Outbound`.
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.wireguard._pump", pure="tunnel.wireguard.pump_ref")
load = _PAIR.load
select = _PAIR.select
