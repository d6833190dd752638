"""The steady-state lanes kept between wake-ups, behind a generation counter (pure-Python reference).

``tunnel.wireguard._lane`` is the Cython twin with the same API; ``tunnel.wireguard.lane.select()``
picks one.

Why: ``datapath.lane`` and ``datapath.receive_lane`` decide each wake-up's lane by walking the
engine's Python objects (device, route table, peer, keypair, cipher, endpoint). After the CPU
idled, every distinct object touched costs cache and TLB misses (docs/benchmarks.md, "Why
wg-py's ping is above upstream's"). Here a pump keeps the last granted lane as a *snapshot* in
plain fields and, while nothing the lane rules read has changed, checks a new batch against it
without touching those objects:

- :class:`Generation` is a counter the engine (:class:`tunnel.wireguard.device.Device`) bumps on
  every change any lane rule reads: peers added or removed, the private key, the MTU, allowed
  IPs, a peer's endpoint (set or roamed), its staged packets, its current or next keypair
  (installed, rotated, confirmed, expired, zeroed), a receiver index added or removed.
- :class:`SendLane` (outbound) holds (generation, peer slot, compiled route table, MTU, the
  ``(peer, keypair)`` lane, the cipher, the endpoint). :meth:`SendLane.check` grants a batch when
  the generation still holds, the keypair is younger than its deadline (REKEY_AFTER_TIME if we
  initiated it, else REJECT_AFTER_TIME: time is not a generation), every packet fits the MTU and
  routes to the slot, and the cipher's own counter has room for the batch; anything else is a
  miss, and :meth:`SendLane.decide` then asks ``datapath.lane`` exactly as before and keeps its
  answer as the new snapshot. So ``decide`` always says what ``datapath.lane`` says on the live
  objects (the model test ``tests/test_lane_model.py`` checks that over random engine histories).
- :class:`ReceiveLane` (inbound) likewise: (generation, receiver index, keypair, cipher, the
  peer's endpoint object, slot, table); a batch of transport messages all for that index, from
  that endpoint, while the keypair is younger than REJECT_AFTER_TIME.

The snapshot is one entry (the last lane granted): the steady state of one busy peer. Another
peer's batch is a miss that replaces it. Reading the generation before asking ``datapath`` makes
a change that races the refresh (a worker thread's, ``workers N``) a miss next time, never a
stale grant. Arguments and errors are ``datapath.lane``/``receive_lane``'s (a hit validates each
buffer as they do).
"""

from __future__ import annotations

from typing import Any

from tunnel.io.journal_ref import real as _real
from tunnel.wireguard.constants import REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME
from tunnel.wireguard.datapath_ref import _check_batch, _check_buffer, _require_list, all_from, transport_receiver

#: the outbound deadline of a keypair's lane, by role: the initiator stops at REKEY_AFTER_TIME
#: (datapath.lane's ``age >= REJECT_AFTER_TIME or (is_initiator and age >= REKEY_AFTER_TIME)``)
INITIATOR_LIMIT = min(REJECT_AFTER_TIME, REKEY_AFTER_TIME)
RESPONDER_LIMIT = REJECT_AFTER_TIME

NONE = -1  # no snapshot


class Generation:
    """A counter of the engine's lane-relevant state changes. :meth:`bump` after every change a
    lane rule reads; :attr:`value` only grows (the native twin's is a C field)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        """Record a change: every snapshot taken before it is stale."""
        self.value += 1


def _find(table: Any, buf: bytearray, offset: int, size: int, source: bool) -> int:
    """The route table's slot for the packet (either twin's table)."""
    finder = getattr(table, "_find_packet", None)
    if finder is not None:
        return int(finder(buf, offset, size, source))
    return int(table.lookup_packet(buf, offset, size, source))


def generation_holds(valid_for: int, generation: Any) -> bool:
    """Whether a snapshot taken at ``valid_for`` (NONE: none kept) is still ``generation``'s
    current value (native twin: ``generation_holds`` in ``_lane.pxd``)."""
    return valid_for != NONE and generation is not None and valid_for == generation.value


class SendLane:
    """The outbound lane snapshot of one pump. ``generation`` is the engine's
    :class:`Generation` (either twin's; None: no snapshot is ever kept)."""

    def __init__(self, generation: Any) -> None:
        self.generation = generation
        self.valid_for = NONE  # the generation value the snapshot was taken at
        self.lane: tuple[Any, Any] | None = None  # (peer, keypair), as datapath.lane returns
        self.cipher: Any = None
        self.endpoint: Any = None
        self.v6 = False  # the endpoint's family (the pump's socket choice)
        self.slot = NONE
        self.table: Any = None
        self.mtu = 0
        self.created = 0.0
        self.limit = 0.0
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget the snapshot (the next batch asks ``datapath.lane``)."""
        self.valid_for = NONE
        self.lane = None
        self.cipher = self.endpoint = self.table = None

    def holds(self) -> bool:
        """Whether the snapshot is still the engine's state (time and counter not looked at)."""
        return generation_holds(self.valid_for, self.generation)

    def check(self, bufs: list[bytearray], lengths: list[int], headroom: int, now: float) -> tuple[Any, Any] | None:
        """The snapshot's lane for the batch ``bufs[i][headroom:headroom+lengths[i]]`` at ``now``,
        or None (a miss: ask ``datapath.lane``). Changes nothing but the buffers' validation."""
        _check_batch(bufs, lengths, headroom)
        now = _real(now)
        if not bufs or not self.holds():
            return None
        n = len(bufs)
        if now - self.created >= self.limit:
            return None
        if self.cipher.send_counter + n >= REKEY_AFTER_MESSAGES:
            return None
        mtu, table, slot = self.mtu, self.table, self.slot
        for i in range(n):
            size = lengths[i]
            buf = _check_buffer(bufs[i], headroom + size)
            if size > mtu or _find(table, buf, headroom, size, False) != slot:
                return None
        return self.lane

    def fill(self, device: Any, lane: tuple[Any, Any], valid_for: int) -> None:
        """Keep ``lane`` (``datapath.lane``'s grant on ``device``, asked when the generation was
        ``valid_for``) as the snapshot."""
        peer, keypair = lane
        self.lane = lane
        self.cipher = keypair.cipher
        self.endpoint = endpoint = peer.endpoint
        self.v6 = ":" in endpoint.ip
        self.slot = peer.slot
        self.table = device.routes()
        self.mtu = device.mtu
        self.created = float(keypair.created)
        self.limit = INITIATOR_LIMIT if keypair.is_initiator else RESPONDER_LIMIT
        self.valid_for = valid_for

    def decide(self, device: Any, bufs: list[bytearray], lengths: list[int], headroom: int,
               now: float) -> tuple[Any, Any] | None:
        """``datapath.lane(device, ...)``'s answer: from the snapshot when it holds (a hit), else
        asked (a miss) and kept."""
        lane = self.check(bufs, lengths, headroom, now)
        if lane is not None:
            self.hits += 1
            return lane
        self.misses += 1
        generation = self.generation
        valid_for = NONE if generation is None else generation.value
        lane = device.datapath.lane(device, bufs, lengths, headroom, now)
        if lane is not None and valid_for != NONE:
            self.fill(device, lane, valid_for)
        return lane  # type: ignore[no-any-return]


class ReceiveLane:
    """The inbound lane snapshot of one pump; see the module docstring."""

    def __init__(self, generation: Any) -> None:
        self.generation = generation
        self.valid_for = NONE
        self.receiver = NONE  # our index the datagrams name
        self.keypair: Any = None
        self.cipher: Any = None
        self.endpoint: Any = None
        self.slot = NONE
        self.table: Any = None
        self.created = 0.0
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget the snapshot."""
        self.valid_for = NONE
        self.keypair = self.cipher = self.endpoint = self.table = None

    def holds(self) -> bool:
        """Whether the snapshot is still the engine's state (time not looked at)."""
        return generation_holds(self.valid_for, self.generation)

    def check(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> Any:
        """The snapshot's keypair for the batch of datagrams ``bufs[i][:lengths[i]]`` from
        ``sources[i]`` at ``now``, or None (a miss: ask ``datapath.receive_lane``)."""
        _require_list("sources", sources)
        _check_batch(bufs, lengths, 0)
        if len(sources) < len(bufs):
            raise ValueError("sources is shorter than bufs")
        now = _real(now)
        if not bufs or not self.holds():
            return None
        n = len(bufs)
        if transport_receiver(bufs, lengths, n) != self.receiver:
            return None
        if now - self.created >= REJECT_AFTER_TIME:
            return None
        return self.keypair if all_from(sources, n, self.endpoint) else None

    def fill(self, device: Any, keypair: Any, valid_for: int) -> None:
        """Keep ``keypair`` (``datapath.receive_lane``'s grant, asked at generation ``valid_for``)."""
        peer = keypair.peer
        self.keypair = keypair
        self.receiver = keypair.local_index
        self.cipher = keypair.cipher
        self.endpoint = peer.endpoint
        self.slot = peer.slot
        self.table = device.routes()
        self.created = float(keypair.created)
        self.valid_for = valid_for

    def decide(self, device: Any, bufs: list[bytearray], lengths: list[int], sources: list[Any],
               now: float) -> Any:
        """``datapath.receive_lane(device, ...)``'s answer: from the snapshot when it holds, else
        asked and kept."""
        keypair = self.check(bufs, lengths, sources, now)
        if keypair is not None:
            self.hits += 1
            return keypair
        self.misses += 1
        generation = self.generation
        valid_for = NONE if generation is None else generation.value
        keypair = device.datapath.receive_lane(device, bufs, lengths, sources, now)
        if keypair is not None and valid_for != NONE:
            self.fill(device, keypair, valid_for)
        return keypair


__all__ = ["INITIATOR_LIMIT", "NONE", "RESPONDER_LIMIT", "Generation", "ReceiveLane", "SendLane"]
