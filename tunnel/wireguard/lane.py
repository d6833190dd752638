"""Picks the lanes' snapshots and generation counter: ``tunnel.wireguard._lane`` (Cython) or
``tunnel.wireguard.lane_ref``.

``WGPY_PURE=1`` (or a missing build) selects the pure-Python reference, as for every native
module (see ``crypto.native``). Both modules expose :class:`Generation`, :class:`SendLane` and
:class:`ReceiveLane`.
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.wireguard._lane", pure="tunnel.wireguard.lane_ref")
load = _PAIR.load
select = _PAIR.select
