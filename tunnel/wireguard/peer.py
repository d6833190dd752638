"""Peers and keypairs: the per-peer state the engine keeps (keys, endpoint, timers, counters).

Plain data; the rules that change it live in :mod:`tunnel.wireguard.device` and :mod:`tunnel.wireguard.timers`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

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
    """One configured peer. Identity is by object; the device maps public keys to peers.

    ``endpoint``, ``current`` and ``next`` are read by the lane rules: setting one bumps
    :attr:`generation` (the device's ``tunnel.wireguard.lane.Generation``, set by
    ``Device.add_peer``; None for a peer outside a device), which tells the pumps' lane snapshots
    (tunnel/wireguard/lane_ref.py) that they are stale.
    """

    public_key: bytes
    handshake: Handshake
    cookies: CookieGenerator
    persistent_keepalive: int = 0
    previous: Keypair | None = None
    timers: Timers = field(default_factory=Timers)
    # Packets waiting for a keypair: copies the engine owns (payload bytes without headroom).
    # The engine bumps the generation when it changes them (an empty <-> non-empty lane rule).
    staged: deque[bytes] = field(default_factory=deque)
    last_initiation_sent: float | None = None
    last_initiation_consumed: float | None = None
    last_handshake_wall: float | None = None  # Unix time of the last completed handshake
    rx_bytes: int = 0
    tx_bytes: int = 0
    handshakes: int = 0  # sessions derived (completed handshakes, either role)
    initiations_sent: int = 0  # handshake initiations sent (first tries and retries)
    slot: int = -1  # index in the device's peer table (what the native route table returns)
    generation: Any = field(default=None, repr=False)
    _endpoint: Endpoint | None = field(default=None, init=False, repr=False)
    _current: Keypair | None = field(default=None, init=False, repr=False)
    _next: Keypair | None = field(default=None, init=False, repr=False)

    def _bump(self) -> None:
        generation = self.generation
        if generation is not None:
            generation.bump()

    @property
    def endpoint(self) -> Endpoint | None:
        """Where datagrams to this peer go (set by configuration, roamed by the engine)."""
        return self._endpoint

    @endpoint.setter
    def endpoint(self, value: Endpoint | None) -> None:
        old = self._endpoint
        self._endpoint = value
        if value is not old and value != old:  # an equal endpoint is the same remote: no change
            self._bump()

    @property
    def current(self) -> Keypair | None:
        """The keypair data is sealed with."""
        return self._current

    @current.setter
    def current(self, value: Keypair | None) -> None:
        old = self._current
        self._current = value
        if value is not old:
            self._bump()

    @property
    def next(self) -> Keypair | None:
        """The responder's keypair waiting for its confirmation (the initiator's first data)."""
        return self._next

    @next.setter
    def next(self, value: Keypair | None) -> None:
        old = self._next
        self._next = value
        if value is not old:
            self._bump()

    @property
    def preshared_key(self) -> bytes:
        return self.handshake.preshared_key

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]
