"""Peers and keypairs: the per-peer state the engine keeps (keys, endpoint, timers, counters).

Plain data; the rules that change it live in :mod:`tunnel.wireguard.device` and :mod:`tunnel.wireguard.timers`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from crypto.backend import TransportCipher
from crypto.cookie import CookieGenerator
from crypto.noise import Handshake
from tunnel.io.endpoint import Endpoint


@dataclass(eq=False, slots=True)
class Keypair:
    """Transport keys of one completed handshake, with when and how they were made."""

    peer: Peer
    cipher: TransportCipher
    created: float
    is_initiator: bool
    local_index: int
    remote_index: int


@dataclass(eq=False, slots=True)
class Timers:
    """Deadlines (engine time) of a peer's timers; None means not pending."""

    retransmit_handshake: float | None = None
    send_keepalive: float | None = None
    new_handshake: float | None = None
    zero_key_material: float | None = None
    persistent_keepalive: float | None = None
    handshake_attempts: int = 0
    keepalive_needed: bool = False
    sent_last_minute_handshake: bool = False
    scheduled: dict[str, float] = field(default_factory=dict)  # see tunnel.wireguard.timers.TimerQueue


@dataclass(eq=False)
class Peer:
    """One configured peer. Identity is by object; the device maps public keys to peers."""

    public_key: bytes
    handshake: Handshake
    cookies: CookieGenerator
    endpoint: Endpoint | None = None
    persistent_keepalive: int = 0
    previous: Keypair | None = None
    current: Keypair | None = None
    next: Keypair | None = None
    timers: Timers = field(default_factory=Timers)
    # Packets waiting for a keypair: copies the engine owns (payload bytes without headroom).
    staged: deque[bytes] = field(default_factory=deque)
    last_initiation_sent: float | None = None
    last_initiation_consumed: float | None = None
    last_handshake_wall: float | None = None  # Unix time of the last completed handshake
    rx_bytes: int = 0
    tx_bytes: int = 0
    handshakes: int = 0  # sessions derived (completed handshakes, either role)
    initiations_sent: int = 0  # handshake initiations sent (first tries and retries)
    slot: int = -1  # index in the device's peer table (what the native route table returns)

    @property
    def preshared_key(self) -> bytes:
        return self.handshake.preshared_key

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]
