"""Picks the transport implementation: the Cython fast path, or the pure-Python reference.

``crypto._transport`` (Cython over OpenSSL) is used unless the environment says
``WGPY_PURE=1`` or the extension is not built, in which case ``crypto.transport`` is used and
``NAME`` says ``"pure"``. Both expose the same API (ReplayFilter, TransportCipher, the result
codes, HEADROOM, TAG_SIZE, ...) with identical behaviour; tests run against both via ``load``.

For type checking, the names below are those of the pure-Python reference (the stub of the
extension declares the same signatures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crypto.native import Implementations

_PAIR = Implementations(cython="crypto._transport", pure="crypto.transport")
load = _PAIR.load
_select = _PAIR.select


if TYPE_CHECKING:
    from crypto.transport import (
        AUTH,
        COUNTER_LIMIT,
        EXPIRED,
        HEADROOM,
        OK,
        REASONS,
        REJECT_AFTER_MESSAGES,
        REPLAY,
        TAG_SIZE,
        TOO_SHORT,
        WINDOW_SIZE,
        ReplayFilter,
        TransportCipher,
    )

    NAME: str
else:
    NAME, _impl = _select()
    ReplayFilter = _impl.ReplayFilter
    TransportCipher = _impl.TransportCipher
    HEADROOM = _impl.HEADROOM
    TAG_SIZE = _impl.TAG_SIZE
    REJECT_AFTER_MESSAGES = _impl.REJECT_AFTER_MESSAGES
    WINDOW_SIZE = _impl.WINDOW_SIZE
    OK = _impl.OK
    TOO_SHORT = _impl.TOO_SHORT
    AUTH = _impl.AUTH
    REPLAY = _impl.REPLAY
    COUNTER_LIMIT = _impl.COUNTER_LIMIT
    EXPIRED = _impl.EXPIRED
    REASONS = _impl.REASONS

__all__ = [
    "AUTH",
    "COUNTER_LIMIT",
    "EXPIRED",
    "HEADROOM",
    "NAME",
    "OK",
    "REASONS",
    "REJECT_AFTER_MESSAGES",
    "REPLAY",
    "TAG_SIZE",
    "TOO_SHORT",
    "WINDOW_SIZE",
    "ReplayFilter",
    "TransportCipher",
    "load",
]
