"""Picks the fused lane steps: ``tunnel.wireguard._fused`` (Cython) or ``tunnel.wireguard.fused_ref``.

``WGPY_PURE=1`` (or a missing build) selects the pure-Python reference, as for every native
module (see ``crypto.native``). Both modules expose :class:`Fused`.
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.wireguard._fused", pure="tunnel.wireguard.fused_ref")
load = _PAIR.load
select = _PAIR.select
