"""The engine's drop reasons: stable names, counted per reason in ``Device.drops``.

Datagrams are classified by type and exact size in the batch loops of :mod:`tunnel.wireguard.datapath_ref`
(and its Cython twin); the handshake codecs live in :mod:`crypto.noise` and :mod:`crypto.cookie`.
"""

from __future__ import annotations


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
