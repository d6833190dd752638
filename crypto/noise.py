"""The Noise_IKpsk2 handshake as WireGuard uses it: create/consume initiation and response.

Pure functions over a per-peer :class:`Handshake` state. Message bytes here exclude nothing:
callers get whole 148/92-byte messages with mac1/mac2 zeroed, and add the MACs with
:mod:`crypto.cookie`. Randomness (ephemeral keys) and the timestamp are passed in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

from crypto.constants import (
    CONSTRUCTION,
    IDENTIFIER,
    INITIATION_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)
from crypto.primitives import (
    DecryptError,
    DHError,
    aead_decrypt,
    aead_encrypt,
    dh,
    dh_public,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)

INITIAL_CHAINING_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAINING_KEY, IDENTIFIER)
ZERO_KEY = bytes(32)

_INIT = struct.Struct("<II32s48s28s")  # type, sender, ephemeral, static(32+16), timestamp(12+16)
_RESP = struct.Struct("<III32s16s")  # type, sender, receiver, ephemeral, empty(0+16)


class HandshakeError(Exception):
    """A handshake message failed to authenticate or came in the wrong state."""


class HandshakeStatus(Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


@dataclass(slots=True)
class StaticIdentity:
    """Our static key pair and the keys derived from our public key for MACs and cookies."""

    private: bytes
    public: bytes
    mac1_key: bytes
    cookie_key: bytes

    @classmethod
    def from_private(cls, private: bytes) -> StaticIdentity:
        public = dh_public(private)
        return cls(private, public, hash_(LABEL_MAC1, public), hash_(LABEL_COOKIE, public))


@dataclass(slots=True)
class Handshake:
    """Per-peer handshake state. Owned by one peer; mutated only by the functions below."""

    remote_static: bytes
    preshared_key: bytes = ZERO_KEY
    status: HandshakeStatus = HandshakeStatus.ZEROED
    hash: bytes = b""
    chaining_key: bytes = b""
    local_ephemeral: bytes = b""
    remote_ephemeral: bytes = b""
    local_index: int = 0
    remote_index: int = 0
    # Replay protection for initiations: the greatest timestamp accepted so far.
    last_timestamp: bytes = bytes(12)
    mac1_key: bytes = field(default=b"")  # HASH(LABEL_MAC1 || remote static), for our sends
    cookie_key: bytes = field(default=b"")  # HASH(LABEL_COOKIE || remote static)

    def __post_init__(self) -> None:
        self.mac1_key = hash_(LABEL_MAC1, self.remote_static)
        self.cookie_key = hash_(LABEL_COOKIE, self.remote_static)

    def clear(self) -> None:
        """Forget the ephemeral state (keeps identity and the timestamp high-water mark)."""
        self.status = HandshakeStatus.ZEROED
        self.hash = b""
        self.chaining_key = b""
        self.local_ephemeral = b""
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """What an initiation revealed, before the engine decides to accept it."""

    remote_static: bytes
    sender_index: int
    remote_ephemeral: bytes
    timestamp: bytes
    hash: bytes
    chaining_key: bytes


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Transport keys derived at the end of a handshake, from our point of view."""

    send_key: bytes
    receive_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool


def create_initiation(
    local: StaticIdentity,
    hs: Handshake,
    sender_index: int,
    ephemeral_private: bytes,
    timestamp: bytes,
) -> bytearray:
    """Build a 148-byte initiation (mac1/mac2 zero) and move hs to INITIATION_CREATED."""
    h = hash_(INITIAL_HASH, hs.remote_static)
    ck = INITIAL_CHAINING_KEY
    e_pub = dh_public(ephemeral_private)
    ck = kdf1(ck, e_pub)
    h = hash_(h, e_pub)
    ck, key = kdf2(ck, dh(ephemeral_private, hs.remote_static))
    enc_static = aead_encrypt(key, 0, local.public, h)
    h = hash_(h, enc_static)
    ck, key = kdf2(ck, dh(local.private, hs.remote_static))
    enc_timestamp = aead_encrypt(key, 0, timestamp, h)
    h = hash_(h, enc_timestamp)
    msg = bytearray(INITIATION_SIZE)
    _INIT.pack_into(msg, 0, MESSAGE_INITIATION, sender_index, e_pub, enc_static, enc_timestamp)
    hs.hash, hs.chaining_key = h, ck
    hs.local_ephemeral = ephemeral_private
    hs.local_index = sender_index
    hs.status = HandshakeStatus.INITIATION_CREATED
    return msg


def consume_initiation(local: StaticIdentity, msg: bytes | bytearray | memoryview) -> ConsumedInitiation:
    """Decrypt an initiation addressed to us. Raises HandshakeError if it does not authenticate.

    The caller then finds the peer by ``remote_static``, checks the timestamp and the flood limit,
    and only then calls :func:`accept_initiation`.
    """
    if len(msg) != INITIATION_SIZE:
        raise HandshakeError("bad initiation size")
    _, sender, e_pub, enc_static, enc_timestamp = _INIT.unpack_from(msg, 0)
    h = hash_(INITIAL_HASH, local.public)
    ck = kdf1(INITIAL_CHAINING_KEY, e_pub)
    h = hash_(h, e_pub)
    try:
        ck, key = kdf2(ck, dh(local.private, e_pub))
        remote_static = aead_decrypt(key, 0, enc_static, h)
        h = hash_(h, enc_static)
        ck, key = kdf2(ck, dh(local.private, remote_static))
        timestamp = aead_decrypt(key, 0, enc_timestamp, h)
    except (DecryptError, DHError) as exc:
        raise HandshakeError(str(exc)) from None
    h = hash_(h, enc_timestamp)
    return ConsumedInitiation(remote_static, sender, e_pub, timestamp, h, ck)


def accept_initiation(hs: Handshake, consumed: ConsumedInitiation) -> None:
    """Commit a consumed initiation to the peer's state (INITIATION_CONSUMED)."""
    hs.hash, hs.chaining_key = consumed.hash, consumed.chaining_key
    hs.remote_ephemeral = consumed.remote_ephemeral
    hs.remote_index = consumed.sender_index
    hs.last_timestamp = consumed.timestamp
    hs.status = HandshakeStatus.INITIATION_CONSUMED


def create_response(hs: Handshake, sender_index: int, ephemeral_private: bytes) -> bytearray:
    """Build a 92-byte response (mac1/mac2 zero) to the consumed initiation."""
    if hs.status is not HandshakeStatus.INITIATION_CONSUMED:
        raise HandshakeError("no initiation to respond to")
    e_pub = dh_public(ephemeral_private)
    ck = kdf1(hs.chaining_key, e_pub)
    h = hash_(hs.hash, e_pub)
    try:
        ck = kdf1(ck, dh(ephemeral_private, hs.remote_ephemeral))
        ck = kdf1(ck, dh(ephemeral_private, hs.remote_static))
    except (DecryptError, DHError) as exc:
        raise HandshakeError(str(exc)) from None
    ck, tau, key = kdf3(ck, hs.preshared_key)
    h = hash_(h, tau)
    empty = aead_encrypt(key, 0, b"", h)
    h = hash_(h, empty)
    msg = bytearray(RESPONSE_SIZE)
    _RESP.pack_into(msg, 0, MESSAGE_RESPONSE, sender_index, hs.remote_index, e_pub, empty)
    hs.hash, hs.chaining_key = h, ck
    hs.local_ephemeral = ephemeral_private
    hs.local_index = sender_index
    hs.status = HandshakeStatus.RESPONSE_CREATED
    return msg


def response_receiver(msg: bytes | bytearray | memoryview) -> int:
    """The receiver index of a response (which of our handshakes it answers)."""
    return int(_RESP.unpack_from(msg, 0)[2])


def consume_response(local: StaticIdentity, hs: Handshake, msg: bytes | bytearray | memoryview) -> None:
    """Authenticate a response to our initiation; on success hs is RESPONSE_CONSUMED."""
    if len(msg) != RESPONSE_SIZE:
        raise HandshakeError("bad response size")
    if hs.status is not HandshakeStatus.INITIATION_CREATED:
        raise HandshakeError("no initiation outstanding")
    _, sender, receiver, e_pub, empty = _RESP.unpack_from(msg, 0)
    if receiver != hs.local_index:
        raise HandshakeError("response for another handshake")
    ck = kdf1(hs.chaining_key, e_pub)
    h = hash_(hs.hash, e_pub)
    try:
        ck = kdf1(ck, dh(hs.local_ephemeral, e_pub))
        ck = kdf1(ck, dh(local.private, e_pub))
        ck, tau, key = kdf3(ck, hs.preshared_key)
        h = hash_(h, tau)
        aead_decrypt(key, 0, empty, h)
    except (DecryptError, DHError) as exc:
        raise HandshakeError(str(exc)) from None
    h = hash_(h, empty)
    hs.hash, hs.chaining_key = h, ck
    hs.remote_ephemeral = e_pub
    hs.remote_index = sender
    hs.status = HandshakeStatus.RESPONSE_CONSUMED


def derive_keys(hs: Handshake) -> SessionKeys:
    """Split the chaining key into transport keys and wipe the handshake (both roles)."""
    if hs.status is HandshakeStatus.RESPONSE_CONSUMED:
        send, receive = kdf2(hs.chaining_key, b"")
        initiator = True
    elif hs.status is HandshakeStatus.RESPONSE_CREATED:
        receive, send = kdf2(hs.chaining_key, b"")
        initiator = False
    else:
        raise HandshakeError("no completed handshake to derive keys from")
    keys = SessionKeys(send, receive, hs.local_index, hs.remote_index, initiator)
    hs.clear()
    return keys
