"""Picks the VXLAN data path's per-packet loops: ``tunnel.vxlan._fast`` (Cython) or
``tunnel.vxlan.fast_ref`` (pure Python, same API).

``WGPY_PURE=1`` (or a missing build) selects the reference, as ``tunnel.datapath`` does for the
WireGuard engine.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

_MODULES = {"cython": "tunnel.vxlan._fast", "pure": "tunnel.vxlan.fast_ref"}


def load(name: str) -> ModuleType:
    """The implementation called ``name`` ("cython" or "pure"); ImportError if not built."""
    return importlib.import_module(_MODULES[name])


def select() -> tuple[str, ModuleType]:
    """``("cython", module)`` unless WGPY_PURE=1 or the extension is not built."""
    if os.environ.get("WGPY_PURE") != "1":
        try:
            return "cython", load("cython")
        except ImportError:
            pass
    return "pure", load("pure")
