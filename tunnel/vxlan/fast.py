"""Picks the VXLAN data path's per-packet loops: ``tunnel.vxlan._fast`` (Cython) or
``tunnel.vxlan.fast_ref`` (pure Python, same API).

``WGPY_PURE=1`` (or a missing build) selects the reference, as ``tunnel.wireguard.datapath`` does for the
WireGuard engine.
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.vxlan._fast", pure="tunnel.vxlan.fast_ref")
load = _PAIR.load
select = _PAIR.select
