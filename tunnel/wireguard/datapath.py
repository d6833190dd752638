"""Picks the engine's per-packet loops: ``tunnel.wireguard._datapath`` (Cython) or ``tunnel.wireguard.datapath_ref``.

``WGPY_PURE=1`` (or a missing build) selects the pure-Python reference, as ``crypto.backend``
does for the transport cipher. Both modules expose the same names.
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.wireguard._datapath", pure="tunnel.wireguard.datapath_ref")
load = _PAIR.load
select = _PAIR.select
