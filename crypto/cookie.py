"""Cookies: mac1/mac2 on handshake messages and the cookie reply (whitepaper section 5.4.7).

Two roles, as in wireguard-go:
- :class:`CookieChecker` (ours, one per device): verifies mac1/mac2 on incoming handshake messages
  and creates cookie replies from a secret that rotates every two minutes.
- :class:`CookieGenerator` (one per peer): adds mac1/mac2 to our outgoing handshake messages and
  consumes the peer's cookie replies.
Time comes in as ``now``; randomness from the ``random`` callable given at construction.

The engine screens handshake messages a batch at a time with :data:`SCREENS`: ``crypto._screen``
(Cython over OpenSSL and libsodium) or its pure twin ``crypto.screen``, which check mac1 and
mac2 and make the cookie replies with the keys and secret of a :class:`CookieChecker`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from crypto.constants import (
    COOKIE_REFRESH_TIME,
    COOKIE_REPLY_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    MESSAGE_COOKIE_REPLY,
)
from crypto.native import Implementations
from crypto.primitives import MAC_SIZE, DecryptError, hash_, mac, xaead_decrypt, xaead_encrypt

SCREENS = Implementations(cython="crypto._screen", pure="crypto.screen")
_REPLY = struct.Struct("<II24s32s")  # type, receiver, nonce, encrypted cookie (16 + tag 16)


def mac1_offset(msg: bytes | bytearray | memoryview) -> int:
    return len(msg) - 2 * MAC_SIZE


def mac2_offset(msg: bytes | bytearray | memoryview) -> int:
    return len(msg) - MAC_SIZE


class CookieChecker:
    """Verifies MACs addressed to our static public key and issues cookie replies."""

    def __init__(self, random: Callable[[int], bytes] = os.urandom) -> None:
        self._random = random
        self.mac1_key = b""
        self.cookie_key = b""
        self._secret = b""
        self._secret_set: float | None = None

    def set_public_key(self, public: bytes | None) -> None:
        if public is None:
            self.mac1_key = self.cookie_key = b""
        else:
            self.mac1_key = hash_(LABEL_MAC1, public)
            self.cookie_key = hash_(LABEL_COOKIE, public)

    def check_mac1(self, msg: bytes | bytearray | memoryview) -> bool:
        if not self.mac1_key:
            return False
        off = mac1_offset(msg)
        return mac(self.mac1_key, bytes(msg[:off])) == bytes(msg[off : off + MAC_SIZE])

    def secret_for(self, now: float) -> bytes:
        """The cookie secret at ``now``: a fresh random one when the last is older than two
        minutes (or there is none yet). The batch screen (:data:`SCREENS`) takes it."""
        if self._secret_set is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            self._secret = self._random(32)
            self._secret_set = now
        return self._secret

    def _cookie(self, source: bytes, now: float) -> bytes:
        return mac(self.secret_for(now), source)

    def check_mac2(self, msg: bytes | bytearray | memoryview, source: bytes, now: float) -> bool:
        """mac2 valid for a cookie of ``source`` (the sender's address and port bytes)."""
        if self._secret_set is None or now - self._secret_set > COOKIE_REFRESH_TIME:
            return False
        off = mac2_offset(msg)
        cookie = mac(self._secret, source)
        return mac(cookie, bytes(msg[:off])) == bytes(msg[off:])

    def create_reply(
        self, msg: bytes | bytearray | memoryview, receiver_index: int, source: bytes, now: float
    ) -> bytes:
        """A 64-byte cookie reply to the handshake message ``msg`` (already mac1-checked)."""
        off = mac1_offset(msg)
        mac1 = bytes(msg[off : off + MAC_SIZE])
        nonce = self._random(24)
        sealed = xaead_encrypt(self.cookie_key, nonce, self._cookie(source, now), mac1)
        return _REPLY.pack(MESSAGE_COOKIE_REPLY, receiver_index, nonce, sealed)


class CookieGenerator:
    """Adds MACs to our handshake messages for one peer and remembers its cookie."""

    def __init__(self, remote_static: bytes) -> None:
        self.mac1_key = hash_(LABEL_MAC1, remote_static)
        self.cookie_key = hash_(LABEL_COOKIE, remote_static)
        self.cookie: bytes | None = None
        self.cookie_set = 0.0
        self.last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray, now: float) -> None:
        """Write mac1 and (with a fresh cookie) mac2 into the last 32 bytes of msg, in place."""
        off1 = mac1_offset(msg)
        mac1 = mac(self.mac1_key, bytes(msg[:off1]))
        msg[off1 : off1 + MAC_SIZE] = mac1
        self.last_mac1 = mac1
        off2 = off1 + MAC_SIZE
        if self.cookie is not None and now - self.cookie_set < COOKIE_REFRESH_TIME:
            msg[off2:] = mac(self.cookie, bytes(msg[:off2]))
        else:
            msg[off2:] = bytes(MAC_SIZE)

    def consume_reply(self, msg: bytes | bytearray | memoryview, now: float) -> bool:
        """Take the cookie from a reply to our last message; False if it does not verify."""
        if len(msg) != COOKIE_REPLY_SIZE or self.last_mac1 is None:
            return False
        _, _, nonce, sealed = _REPLY.unpack_from(msg, 0)
        try:
            cookie = xaead_decrypt(self.cookie_key, nonce, sealed, self.last_mac1)
        except DecryptError:
            return False
        self.cookie = cookie
        self.cookie_set = now
        self.last_mac1 = None  # one reply per message, like wireguard-go
        return True


def reply_receiver(msg: bytes | bytearray | memoryview) -> int:
    return int(_REPLY.unpack_from(msg, 0)[1])
