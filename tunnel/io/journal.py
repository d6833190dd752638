"""Picks the pumps' journal: ``tunnel.io._journal`` (Cython) or ``tunnel.io.journal_ref``.

``WGPY_PURE=1`` (or a missing build) selects the pure-Python reference, as for every native
module (see ``crypto.native``). The pumps do not use this selector: each pump twin takes the
journal twin of its own kind (the native pumps ``cimport`` theirs) and re-exports it.
"""

from __future__ import annotations

from crypto.native import Implementations

_PAIR = Implementations(cython="tunnel.io._journal", pure="tunnel.io.journal_ref")
load = _PAIR.load
select = _PAIR.select
