"""The engine's drop reasons: stable names, counted per reason in ``Device.drops``.

Datagrams are classified by type and exact size in the batch loops of :mod:`tunnel.wireguard.datapath_ref`
(and its Cython twin); the handshake codecs live in :mod:`crypto.noise` and :mod:`crypto.cookie`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from crypto.backend import OK, REASONS


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


def count_opened(drops: Counter[str], peer: Any, wire_lengths: Sequence[int], results: Sequence[int],
                 opened: int) -> int:
    """Received bytes (``peer.rx_bytes``) and drops by the cipher's result codes of an opened
    batch; the index of its last good datagram, or -1 if none opened."""
    if opened == 0:
        for code in results:
            drops[REASONS[code]] += 1
        return -1
    if opened == len(results):
        peer.rx_bytes += sum(wire_lengths)
        return len(results) - 1
    last_ok = 0
    for j, code in enumerate(results):
        if code == OK:
            last_ok = j
            peer.rx_bytes += wire_lengths[j]
        else:
            drops[REASONS[code]] += 1
    return last_ok
