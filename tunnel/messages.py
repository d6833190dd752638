"""Wire codec for WireGuard's four message types and the engine's drop reasons.

Every datagram is classified by :func:`classify` into a message type or a drop reason; nothing
here raises on peer input.
"""

from __future__ import annotations

from tunnel.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)

_EXACT_SIZES = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


class Drop:
    """Stable names of the reasons the engine drops a datagram or packet (counted per reason)."""

    INVALID_TYPE = "invalid_type"
    INVALID_SIZE = "invalid_size"
    INVALID_MAC1 = "invalid_mac1"
    COOKIE_SENT = "under_load_cookie_sent"
    RATE_LIMITED = "rate_limited"
    HANDSHAKE_AUTH = "handshake_auth_failed"
    UNKNOWN_PEER = "unknown_peer"
    REPLAYED_INITIATION = "replayed_initiation"
    INITIATION_FLOOD = "initiation_flood"
    UNKNOWN_RECEIVER = "unknown_receiver"
    UNEXPECTED_RESPONSE = "unexpected_response"
    INVALID_COOKIE_REPLY = "invalid_cookie_reply"
    NO_PRIVATE_KEY = "no_private_key"
    KEYPAIR_EXPIRED = "keypair_expired"
    INVALID_INNER_PACKET = "invalid_inner_packet"
    DISALLOWED_SOURCE = "disallowed_source"
    # outbound
    NO_ROUTE = "no_route"
    TOO_BIG = "too_big"
    NO_ENDPOINT = "no_endpoint"
    STAGED_OVERFLOW = "staged_overflow"


def message_type(datagram: bytes | bytearray | memoryview) -> int:
    """The message type if the 4-byte header is well formed (type byte, three zero bytes), else 0."""
    if len(datagram) < 4 or datagram[1] or datagram[2] or datagram[3]:
        return 0
    return int(datagram[0])


def classify(datagram: bytes | bytearray | memoryview) -> int | str:
    """A message type 1..4 whose size is right, or the Drop reason."""
    kind = message_type(datagram)
    if kind == MESSAGE_TRANSPORT:
        return kind if len(datagram) >= TRANSPORT_MIN_SIZE else Drop.INVALID_SIZE
    size = _EXACT_SIZES.get(kind)
    if size is None:
        return Drop.INVALID_TYPE
    return kind if len(datagram) == size else Drop.INVALID_SIZE


def receiver_index(datagram: bytes | bytearray | memoryview) -> int:
    """The receiver index of a transport message or cookie reply (bytes 4..8, little-endian)."""
    return int.from_bytes(datagram[4:8], "little")


def inner_packet_length(buf: bytes | bytearray | memoryview, offset: int, size: int) -> int:
    """Length of the IP packet at buf[offset:offset+size] from its own header, or -1.

    Strips the transport padding: the IPv4 total length or IPv6 payload length + 40 must fit.
    """
    if size < 1:
        return -1
    version = buf[offset] >> 4
    if version == 4:
        if size < 20:
            return -1
        total = (buf[offset + 2] << 8) | buf[offset + 3]
        return total if 20 <= total <= size else -1
    if version == 6:
        if size < 40:
            return -1
        total = 40 + ((buf[offset + 4] << 8) | buf[offset + 5])
        return total if total <= size else -1
    return -1
