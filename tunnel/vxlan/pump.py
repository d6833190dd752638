"""Picks the VXLAN shell's per-wake-up pumps: ``tunnel.vxlan._pump`` (Cython) or
``tunnel.vxlan.pump_ref`` (pure Python, same API).

``WGPY_PURE=1`` (or a missing build) selects the reference, as for every native module (see
``crypto.native``).
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.vxlan._pump", pure="tunnel.vxlan.pump_ref")
load = _PAIR.load
select = _PAIR.select
