"""Fixtures shared by the whole wg-py suite. Keep this file small and generic.

``backend``: the transport implementation under test, once as the Cython fast path
(``crypto._transport``) and once as the pure-Python reference (``crypto.transport``); both
modules expose the same API. The Cython case is skipped only when WGPY_PURE=1 is set; a
missing build is an error (``make build`` or ``make test`` builds it).
``io``: the same for the batch I/O (``tunnel.io._io`` / ``tunnel.io.io_ref``). ``device_pair``: a
socketpair standing in for a TUN/TAP fd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from types import ModuleType

import pytest

from crypto.backend import load
from tunnel.io.offload import load_io

BACKENDS = ("cython", "pure")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    name: str = request.param
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    return load(name)


@pytest.fixture(params=BACKENDS)
def io(request: pytest.FixtureRequest) -> ModuleType:
    """The batch I/O implementation under test: ``tunnel.io._io`` (Cython) or ``tunnel.io.io_ref``."""
    name: str = request.param
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    return load_io(name)


@pytest.fixture
def device_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(kernel side, our side) of a non-blocking datagram socketpair standing in for a TUN/TAP fd."""
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (kernel, ours):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setblocking(False)
    yield kernel, ours
    kernel.close()
    ours.close()
