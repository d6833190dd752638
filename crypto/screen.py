"""Handshake screening for a whole batch, pure-Python reference (``crypto._screen`` is the Cython twin).

A responder must look at every handshake message it receives, and anyone who knows its public
key can make messages with a valid mac1. So the checks WireGuard does before any Diffie-Hellman
(whitepaper section 5.3 and 5.4.7; the order of wireguard-go's RoutineHandshake) run here over a
batch, without a Python frame per message in the native twin:

1. mac1 (keyed BLAKE2s-128 under HASH(LABEL_MAC1 || our public key)) over the message up to
   mac1; a message without a valid mac1 is dropped (``INVALID_MAC1``);
2. the load decision: the ``k``-th message of the batch with a valid mac1 (counting from 1) is
   handled "under load" iff ``k >= load_after`` (the engine keeps the per-second count and
   passes ``load_after``; 0 or less: the whole batch is under load);
3. under load, mac2 (keyed BLAKE2s-128 under the cookie MAC(secret, source address bytes)) over
   the message up to mac2; without it the message is answered with a cookie reply
   (``COOKIE``): type 3, the message's sender index, a 24-byte random nonce, and
   XChaCha20-Poly1305 under HASH(LABEL_COOKIE || our public key) of the cookie, with the
   message's mac1 as associated data. With it the message is ``PASSED_LOADED``: the engine still
   applies the per-source token bucket before the Noise handshake. An all-zero mac2 (what an
   initiator without a cookie sends) is taken as "no mac2" without computing it: a real MAC
   is all zeros with probability 2^-128, so the verdicts are WireGuard's.
4. not under load, a message with a valid mac1 is ``PASSED``.

Cookie replies (type 3) carry no MACs: they are ``PASSED`` as they are (not counted), so the
engine handles them in their place among the batch's handshake messages.

Contract of :func:`screen_batch` (identical in both twins, including errors):

- ``bufs[i][:lengths[i]]`` for ``i`` in ``indices`` are handshake messages (types 1 to 3 of
  their exact sizes, as the batch classifier sorts them out; ValueError for one shorter than
  40 bytes or longer than its buffer); ``sources[i]`` is where message ``i``
  came from: an object with ``ip`` (an IPv4 or IPv6 literal) and ``port`` (an int), as
  ``tunnel.io.endpoint.Endpoint``. Its cookie input is the packed address then the port in
  little-endian (wireguard-go's DstToBytes).
- ``mac1_key`` and ``cookie_key`` are 32 bytes (ValueError otherwise); ``secret`` is the cookie
  secret, 32 bytes, or empty when the caller knows the batch cannot come under load (ValueError
  if it does).
- ``verdicts[i]`` is set for each ``i`` in ``indices`` (the array must cover them); other slots
  are untouched. Cookie replies are appended to ``replies`` as ``(bytes of 64, source)`` in
  message order, ready for the batch send. ``random(n)`` is called once, and only when at least
  one reply is made, for ``24 * replies`` bytes of nonces (ValueError if it returns another
  size).
- Returns ``(passed, invalid_mac1, cookies, counted)``: the indices (in order) that go on to
  the engine's handshake processing, how many were dropped for mac1, how many got a cookie, and
  how many had a valid mac1 (what the engine adds to its per-second handshake count).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

# Verdicts (identical values in crypto/_screen.pyx).
PASSED = 0
PASSED_LOADED = 1
INVALID_MAC1 = 2
COOKIE = 3

MAC_SIZE = 16
KEY_SIZE = 32
NONCE_SIZE = 24
REPLY_SIZE = 64
_MESSAGE_COOKIE_REPLY = b"\x03\x00\x00\x00"
_COOKIE_REPLY_TYPE = 3
_NO_MAC = bytes(MAC_SIZE)  # what an initiator without a cookie sends as mac2

Buffer = bytes | bytearray | memoryview


def source_bytes(source: Any) -> bytes:
    """The cookie input for ``source``: packed address, then the port (2 bytes, little-endian)."""
    port = source.port
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"invalid source port {port!r}")
    try:
        packed = ipaddress.ip_address(source.ip).packed
    except ValueError:
        raise ValueError(f"invalid source address {source.ip!r}") from None
    return packed + port.to_bytes(2, "little")


def _mac(key: bytes, data: Buffer) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def _check_key(name: str, key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"{name} must be {KEY_SIZE} bytes, got {len(key)}")


def screen_batch(
    mac1_key: bytes,
    cookie_key: bytes,
    secret: bytes,
    bufs: Sequence[Buffer],
    lengths: Sequence[int],
    indices: Sequence[int],
    sources: Sequence[Any],
    load_after: int,
    random: Callable[[int], bytes],
    verdicts: bytearray,
    replies: list[tuple[bytes, Any]],
) -> tuple[list[int], int, int, int]:
    """Screen the handshake messages ``indices`` of a batch (see the module docstring)."""
    _check_key("mac1_key", mac1_key)
    _check_key("cookie_key", cookie_key)
    if secret and len(secret) != KEY_SIZE:
        raise ValueError(f"secret must be {KEY_SIZE} bytes or empty, got {len(secret)}")
    for i in indices:
        if not 0 <= i < len(verdicts) or i >= len(bufs) or i >= len(lengths) or i >= len(sources):
            raise ValueError(f"index {i} is outside the batch or the verdicts")
    passed: list[int] = []
    cookie_for: list[int] = []
    cookies: list[bytes] = []
    invalid = counted = 0
    for i in indices:
        size = lengths[i]
        if size < 2 * MAC_SIZE + 8 or size > len(bufs[i]):
            raise ValueError(f"message {i} is not a handshake message")
        msg = memoryview(bufs[i])[:size]
        if msg[0] == _COOKIE_REPLY_TYPE:
            verdicts[i] = PASSED
            passed.append(i)
            continue
        off1 = size - 2 * MAC_SIZE
        if not hmac.compare_digest(_mac(mac1_key, msg[:off1]), msg[off1 : off1 + MAC_SIZE]):
            verdicts[i] = INVALID_MAC1
            invalid += 1
            continue
        counted += 1
        if counted < load_after:
            verdicts[i] = PASSED
            passed.append(i)
            continue
        if not secret:
            raise ValueError("the batch came under load without a cookie secret")
        cookie = _mac(secret, source_bytes(sources[i]))
        off2 = size - MAC_SIZE
        mac2 = bytes(msg[off2:])
        if mac2 != _NO_MAC and hmac.compare_digest(_mac(cookie, msg[:off2]), mac2):
            verdicts[i] = PASSED_LOADED
            passed.append(i)
            continue
        verdicts[i] = COOKIE
        cookie_for.append(i)
        cookies.append(cookie)
    if cookie_for:
        nonces = random(NONCE_SIZE * len(cookie_for))
        if len(nonces) != NONCE_SIZE * len(cookie_for):
            raise ValueError(f"random returned {len(nonces)} bytes, wanted {NONCE_SIZE * len(cookie_for)}")
        for k, i in enumerate(cookie_for):
            msg = memoryview(bufs[i])[: lengths[i]]
            off1 = len(msg) - 2 * MAC_SIZE
            nonce = nonces[NONCE_SIZE * k : NONCE_SIZE * (k + 1)]
            sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
                cookies[k], bytes(msg[off1 : off1 + MAC_SIZE]), nonce, cookie_key
            )
            replies.append((_MESSAGE_COOKIE_REPLY + bytes(msg[4:8]) + nonce + sealed, sources[i]))
    return passed, invalid, len(cookie_for), counted
