"""WireGuard transport messages: batch seal/open in place (pure-Python reference).

``crypto/_transport.pyx`` implements the same API over OpenSSL with the GIL released; the tests
run against both, and ``crypto/backend.py`` picks one. This module re-exports the replay filter
so each of the two modules carries the whole API.

Wire format of a transport message (type 4)::

    0        4               8                       16                16+p        16+p+16
    | type=4 | receiver index | counter (u64 LE)      | ciphertext (p)  | tag (16) |
      u32 LE   u32 LE (the peer's index)

ChaCha20-Poly1305 with nonce = 4 zero bytes || counter (u64 LE), no associated data; the
plaintext is zero-padded to a multiple of 16 but never past the MTU.

Buffer contract (docs/design.md): the caller owns every buffer and list; nothing is kept after
a call returns. A buffer needs capacity HEADROOM + padded + TAG_SIZE to be sealed in place.

Threads (the WireGuard daemon's ``workers N``): several threads may seal and open with one
TransportCipher at once. A batch reserves its block of send counters under the cipher's lock
before sealing, so no counter is ever used twice; the replay window is checked under the same
lock, after the batch's tags verified; each call keeps its scratch in locals. ``zero()`` makes
new calls seal nothing / say EXPIRED at once (a batch already past its checks finishes).
"""

from __future__ import annotations

import struct
import threading
from operator import index
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.replay import REJECT_AFTER_MESSAGES, WINDOW_SIZE, ReplayFilter

__all__ = [
    "AUTH",
    "COUNTER_LIMIT",
    "EXPIRED",
    "HEADROOM",
    "KEY_SIZE",
    "OK",
    "REASONS",
    "REJECT_AFTER_MESSAGES",
    "REPLAY",
    "TAG_SIZE",
    "TOO_SHORT",
    "WINDOW_SIZE",
    "ReplayFilter",
    "TransportCipher",
    "aead_open",
    "aead_seal",
    "padded_length",
]

HEADROOM: Final = 16
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
MESSAGE_TRANSPORT: Final = 4

# Result codes of open_batch (identical values in _transport.pyx).
OK: Final = 0
TOO_SHORT: Final = 1
AUTH: Final = 2
REPLAY: Final = 3
COUNTER_LIMIT: Final = 4
EXPIRED: Final = 5
REASONS: Final = ("ok", "too_short", "auth", "replay", "counter_limit", "expired")

_HEADER = struct.Struct("<IIQ")
_COUNTER = struct.Struct("<Q")
_NONCE_PREFIX: Final = bytes(4)


def _require_lists(*values: object) -> None:
    """The batch arguments are lists (the Cython twin's signature says so)."""
    for value in values:
        if type(value) is not list:
            raise TypeError(f"expected list, got {type(value).__name__}")


def _aead_args(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    key, nonce, data, ad = (bytes(memoryview(v)) for v in (key, nonce, data, ad))  # bytes-like only
    if len(key) != KEY_SIZE:
        raise ValueError("key must be 32 bytes")
    if len(nonce) != 12:
        raise ValueError("nonce must be 12 bytes")
    return key, nonce, data, ad


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes = b"") -> bytes:
    """RFC 8439 ChaCha20-Poly1305 with any 96-bit ``nonce`` and additional data ``ad``: the
    ciphertext followed by the 16-byte tag. The one-shot form of the cipher the transport uses
    (in ``_transport.pyx``: the hand-written small-message code), exposed so that the RFC's
    vectors can be checked against both twins; not a data-path API. ValueError for a key that
    is not 32 bytes or a nonce that is not 12."""
    key, nonce, plaintext, ad = _aead_args(key, nonce, plaintext, ad)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def aead_open(key: bytes, nonce: bytes, sealed: bytes, ad: bytes = b"") -> bytes | None:
    """The plaintext of ``sealed`` (ciphertext || tag, see :func:`aead_seal`), or None if it is
    not authentic (a forged tag, ciphertext, nonce or ``ad``, or fewer than 16 bytes)."""
    key, nonce, sealed, ad = _aead_args(key, nonce, sealed, ad)
    if len(sealed) < TAG_SIZE:
        return None
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, sealed, ad)
    except InvalidTag:
        return None


_BATCH_NAMES: Final = ("auto", "evp", "avx512", "avx2")


def _set_batch_impl(name: str) -> str:
    """Testing hook shared with the Cython twin, which can seal/open a batch by OpenSSL per
    packet ("evp") or by its multi-buffer SIMD code ("avx512", "avx2"; "auto" picks). This
    reference has one path (``cryptography``, per packet): any known name is accepted and
    changes nothing; ValueError for an unknown name. Returns the name in use: "pure"."""
    if name not in _BATCH_NAMES:
        raise ValueError(f"unknown batch AEAD {name!r}: expected auto, evp, avx512 or avx2")
    return "pure"


def _batch_impl() -> str:
    """The batch AEAD in use: always "pure" here (see _set_batch_impl)."""
    return "pure"


def _aead_batch(key: bytes, items: list[tuple[bytes, bytes, bytes]], seal: bool) -> list[bytes | None]:
    """Testing hook shared with the Cython twin (which runs its batch code): RFC 8439 AEAD of
    several (nonce, ad, data) items under one key; seal -> ciphertext || tag per item, open ->
    the plaintext or None per item."""
    if seal:
        return [aead_seal(key, nonce, data, ad) for nonce, ad, data in items]
    return [aead_open(key, nonce, data, ad) for nonce, ad, data in items]


def padded_length(size: int, mtu: int) -> int:
    """Plaintext length after padding: a multiple of 16, never past max(mtu, size)."""
    size = index(size)  # integers only (TypeError for 1.5), as in the Cython twin
    mtu = index(mtu)
    if size > mtu:
        return size
    return min((size + 15) & ~15, mtu)


class TransportCipher:
    """Transport keys of one keypair (both directions) and its counters.

    May be used by several threads at once (see the module doc). ``send_counter`` (keyword
    only) starts the send counter elsewhere than 0; it exists for tests, never reuse a counter
    with the same key.
    """

    __slots__ = ("_send", "_receive", "_keys", "_remote_index", "_send_counter", "_replay", "_lock")

    def __init__(self, send_key: bytes, receive_key: bytes, remote_index: int, *, send_counter: int = 0) -> None:
        send_key = bytes(memoryview(send_key))  # bytes-like keys only (not an int, not a list)
        receive_key = bytes(memoryview(receive_key))
        remote_index = index(remote_index)
        send_counter = index(send_counter)
        if len(send_key) != KEY_SIZE or len(receive_key) != KEY_SIZE:
            raise ValueError("transport keys must be 32 bytes")
        if not 0 <= remote_index <= 0xFFFFFFFF:
            raise ValueError("remote_index must fit in 32 bits")
        if not 0 <= send_counter <= REJECT_AFTER_MESSAGES:
            raise ValueError("send_counter out of range")
        self._keys = bytearray(send_key) + bytearray(receive_key)
        self._send: ChaCha20Poly1305 | None = ChaCha20Poly1305(bytes(self._keys[:KEY_SIZE]))
        self._receive: ChaCha20Poly1305 | None = ChaCha20Poly1305(bytes(self._keys[KEY_SIZE:]))
        self._remote_index = remote_index
        self._send_counter = send_counter
        self._replay = ReplayFilter()
        self._lock = threading.Lock()  # the counter reservation and the replay window

    @property
    def send_counter(self) -> int:
        """The counter the next sealed packet will carry (the next one not yet reserved)."""
        return self._send_counter

    def _reserve(self, count: int) -> tuple[int, int]:
        """``(first, n)``: the batch's block of n <= count counters, never handed out again
        (n is 0 once the counter reached REJECT_AFTER_MESSAGES)."""
        with self._lock:
            first = self._send_counter
            count = min(count, REJECT_AFTER_MESSAGES - first)
            self._send_counter = first + count
        return first, count

    @property
    def remote_index(self) -> int:
        """The peer's receiver index written into every sealed header."""
        return self._remote_index

    @property
    def zeroed(self) -> bool:
        """True once zero() ran: the keys are gone and the cipher is inert."""
        return self._send is None

    def counter_of(self, buf: bytearray | bytes | memoryview) -> int:
        """The 64-bit counter in the header of the transport message in ``buf``."""
        if len(buf) < HEADROOM:
            raise ValueError("buffer shorter than a transport header")
        return int(_COUNTER.unpack_from(buf, 8)[0])

    def zero(self) -> None:
        """Erase the key material; afterwards seal_batch seals nothing, open_batch says EXPIRED.

        (The reference can only drop its references to the library's key objects; the Cython
        path cleanses its key arrays.)
        """
        self._keys[:] = bytes(len(self._keys))
        self._send = None
        self._receive = None
        self._replay.reset()

    def seal_batch(self, bufs: list[bytearray], lengths: list[int], mtu: int) -> int:
        """Seal a prefix of the batch in place.

        ``bufs[i][HEADROOM:HEADROOM+lengths[i]]`` holds a plaintext packet (0 bytes is a
        keepalive). Each is zero-padded (see padded_length), given the header at ``buf[0:16]``
        (type 4, remote index, counter), encrypted in place with the tag after the ciphertext;
        ``lengths[i]`` becomes ``16 + padded + 16``.

        Every packet that will be sealed is checked first: a bad length or a buffer too small
        raises ValueError before anything in the batch is modified or a counter is used.
        Returns how many packets (a prefix) were sealed: fewer than ``len(bufs)`` only when the
        send counter reaches REJECT_AFTER_MESSAGES (the rest are untouched); 0 after zero().
        """
        _require_lists(bufs, lengths)
        count = len(bufs)
        if len(lengths) < count:
            raise ValueError("lengths is shorter than bufs")
        if mtu < 0:
            raise ValueError("mtu must be non-negative")
        aead = self._send
        if aead is None or count == 0:
            return 0
        count = min(count, REJECT_AFTER_MESSAGES - self._send_counter)
        plan: list[tuple[memoryview, int, int]] = []
        try:
            for i in range(count):
                view = memoryview(bufs[i]).cast("B")
                plan.append((view, lengths[i], 0))
                if view.readonly:
                    raise BufferError("buffer is read-only")
                size = lengths[i]
                if size < 0 or HEADROOM + size > len(view):
                    raise ValueError(f"packet {i}: length {size} does not fit its buffer")
                padded = padded_length(size, mtu)
                if HEADROOM + padded + TAG_SIZE > len(view):
                    raise ValueError(
                        f"packet {i}: buffer of {len(view)} bytes cannot hold "
                        f"{HEADROOM + padded + TAG_SIZE} sealed bytes"
                    )
                plan[-1] = (view, size, padded)
            first, count = self._reserve(count)
            for i, (view, size, padded) in enumerate(plan[:count]):
                counter = first + i
                view[HEADROOM + size : HEADROOM + padded] = bytes(padded - size)
                _HEADER.pack_into(view, 0, MESSAGE_TRANSPORT, self._remote_index, counter)
                nonce = _NONCE_PREFIX + _COUNTER.pack(counter)
                sealed = aead.encrypt(nonce, bytes(view[HEADROOM : HEADROOM + padded]), None)
                view[HEADROOM : HEADROOM + padded + TAG_SIZE] = sealed
                lengths[i] = HEADROOM + padded + TAG_SIZE
        finally:
            for view, _, _ in plan:
                view.release()
        return count

    def open_batch(self, bufs: list[bytearray], lengths: list[int], results: list[int]) -> int:
        """Open the batch in place.

        ``bufs[i][0:lengths[i]]`` holds a type-4 message already routed to this keypair by its
        receiver index. On success the plaintext (padding included) is at
        ``bufs[i][16:16+lengths[i]]`` and ``results[i] = OK``; otherwise ``results[i]`` is a
        reason code, ``lengths[i]`` is unchanged and the buffer content is unspecified.
        Checks in order: TOO_SHORT (< 32 bytes), COUNTER_LIMIT, AUTH (tag), REPLAY (window,
        updated only by authenticated packets). After zero() every packet is EXPIRED.
        A length outside its buffer raises ValueError before anything is modified.
        Returns the number of OK packets.
        """
        _require_lists(bufs, lengths, results)
        count = len(bufs)
        if len(lengths) < count or len(results) < count:
            raise ValueError("lengths or results is shorter than bufs")
        aead = self._receive
        if aead is None:
            for i in range(count):
                results[i] = EXPIRED
            return 0
        views: list[memoryview] = []
        authentic: list[tuple[int, int, bytes]] = []  # (index, counter, plaintext)
        try:
            for i in range(count):
                view = memoryview(bufs[i]).cast("B")
                views.append(view)
                if view.readonly:
                    raise BufferError("buffer is read-only")
                if not 0 <= lengths[i] <= len(view):
                    raise ValueError(f"packet {i}: length {lengths[i]} does not fit its buffer")
            accepted = 0
            for i, view in enumerate(views):
                size = lengths[i]
                if size < HEADROOM + TAG_SIZE:
                    results[i] = TOO_SHORT
                    continue
                counter = int(_COUNTER.unpack_from(view, 8)[0])
                if counter >= REJECT_AFTER_MESSAGES:
                    results[i] = COUNTER_LIMIT
                    continue
                nonce = _NONCE_PREFIX + bytes(view[8:16])
                try:
                    plain = aead.decrypt(nonce, bytes(view[HEADROOM:size]), None)
                except InvalidTag:
                    results[i] = AUTH
                    continue
                authentic.append((i, counter, plain))
            # Only an authenticated counter may move the window; one lock per batch.
            with self._lock:
                fresh = [self._replay.validate(counter) for _, counter, _ in authentic]
            for (i, _, plain), ok in zip(authentic, fresh, strict=True):
                if not ok:
                    results[i] = REPLAY
                    continue
                view = views[i]
                view[HEADROOM : HEADROOM + len(plain)] = plain
                lengths[i] = len(plain)
                results[i] = OK
                accepted += 1
        finally:
            for view in views:
                view.release()
        return accepted
