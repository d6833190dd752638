"""Choosing between a Cython extension and its pure-Python twin (one rule for every pair).

Every native module of wg-py has a pure-Python reference with the same API. The native one is
used unless ``WGPY_PURE=1`` is set or it is not built; tests load both by name.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

NAMES = ("cython", "pure")


class Implementations:
    """A named pair of modules: ``{"cython": dotted name, "pure": dotted name}``."""

    def __init__(self, cython: str, pure: str) -> None:
        self.modules = {"cython": cython, "pure": pure}

    def load(self, name: str) -> ModuleType:
        """The implementation called ``name``; ImportError if the extension is not built."""
        try:
            module = self.modules[name]
        except KeyError:
            raise ValueError(f"unknown implementation {name!r}; use one of {NAMES}") from None
        return importlib.import_module(module)

    def select(self) -> tuple[str, ModuleType]:
        """``("cython", module)`` unless WGPY_PURE=1 or the extension is missing."""
        if os.environ.get("WGPY_PURE") != "1":
            try:
                return "cython", self.load("cython")
            except ImportError:
                pass
        return "pure", self.load("pure")
