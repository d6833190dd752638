"""Fixtures shared by the whole wg-py suite. Keep this file small and generic.

``backend``: the transport implementation under test, once as the Cython fast path
(``crypto._transport``) and once as the pure-Python reference (``crypto.transport``); both
modules expose the same API. The Cython case is skipped only when WGPY_PURE=1 is set; a
missing build is an error (``make build`` or ``make test`` builds it).
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from crypto.backend import load

BACKENDS = ("cython", "pure")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    name: str = request.param
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    return load(name)
