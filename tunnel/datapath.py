"""Picks the engine's per-packet loops: ``tunnel._datapath`` (Cython) or ``tunnel.datapath_ref``.

``WGPY_PURE=1`` (or a missing build) selects the pure-Python reference, as ``crypto.backend``
does for the transport cipher. Both modules expose the same names.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_MODULES = {"cython": "tunnel._datapath", "pure": "tunnel.datapath_ref"}


def load(name: str) -> ModuleType:
    """The implementation called ``name`` ("cython" or "pure"); ImportError if not built."""
    return importlib.import_module(_MODULES[name])


def select() -> tuple[str, ModuleType]:
    if os.environ.get("WGPY_PURE") != "1":
        try:
            return "cython", load("cython")
        except ImportError:
            pass
    return "pure", load("pure")
