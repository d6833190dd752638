"""The engine's per-packet loops, pure-Python reference (``tunnel.wireguard._datapath`` is the Cython twin).

The WireGuard engine (:mod:`tunnel.wireguard.device`) keeps protocol decisions in Python and hands the
loops that run once per packet to these functions, which work on a whole batch at once:

- :class:`RouteTable`: allowed-IPs compiled into a sorted step function per address family
  (every address maps to a peer *slot*, a small int, or -1), looked up by binary search. It is a
  read-only snapshot of :class:`tunnel.wireguard.allowedips.AllowedIPs`; the engine recompiles it when the
  table's ``version`` changes.
- :func:`route_batch`: outbound, destination lookup and grouping by peer slot.
- :func:`lane`: outbound, whether a batch may take the fast lane (one peer, a session in its
  steady state): the decision behind :meth:`tunnel.wireguard.device.Device.lane`.
- :func:`receive_lane`: inbound, the same for a batch of datagrams (all transport messages for
  one established keypair, from the peer's current endpoint).
- :func:`classify_batch`: inbound, message type and exact size, grouping transport messages by
  receiver index.
- :func:`accept_batch`: inbound after decryption, padding strip and the allowed-IPs source check,
  returning views of the packets to write to the TUN; :func:`accept_slots` does the same with
  per-slot verdicts instead of views (for ``TunBatch.write_slots``).

Same API and results in both implementations; the tests run against both. Buffers are only
borrowed for the call; returned memoryviews point into them.

Arguments (the same errors in both twins; ``tests/test_datapath.py`` checks them on both): the
batch arguments ``bufs``, ``lengths``, ``results`` and ``sources`` are ``list``s (TypeError
otherwise), ``lengths``, ``results`` and ``sources`` at least as long as ``bufs`` (ValueError),
every buffer is a ``bytearray`` (TypeError) holding its packet, ``headroom + lengths[i]`` bytes
(ValueError: checked for every item, in batch order, before it is looked at), ``headroom`` is
not negative (ValueError), ``table`` is this module's :class:`RouteTable` and ``verdicts`` a
``bytearray`` (TypeError). Addresses and the single-packet helpers take any bytes-like object;
``buf[offset:offset+size]`` is cut as a Python slice is.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

from tunnel.wireguard.constants import REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME
from tunnel.wireguard.peer import Keypair

NO_SLOT = -1

# Inbound drop reasons (names shared with tunnel.wireguard.messages.Drop).
INVALID_TYPE = "invalid_type"
INVALID_SIZE = "invalid_size"

_HANDSHAKE_SIZES = {1: 148, 2: 92, 3: 64}

Buffer = bytes | bytearray | memoryview


def _require_list(name: str, value: object) -> None:
    if type(value) is not list:
        raise TypeError(f"{name} must be a list, not {type(value).__name__}")


def _check_batch(bufs: object, lengths: object, headroom: int) -> None:
    """The checks both twins make before a batch loop (see the module docstring)."""
    _require_list("bufs", bufs)
    _require_list("lengths", lengths)
    if len(lengths) < len(bufs):  # type: ignore[arg-type]
        raise ValueError("lengths is shorter than bufs")
    if headroom < 0:
        raise ValueError("headroom must not be negative")


def _check_buffer(buf: object, need: int) -> bytearray:
    """``buf`` as the Cython twin's ``_data`` takes it: a bytearray of at least ``need`` bytes."""
    if type(buf) is not bytearray:
        raise TypeError(f"buffers must be bytearrays, not {type(buf).__name__}")
    if len(buf) < need:
        raise ValueError("buffer shorter than its length")
    return buf


def _check_table(table: object) -> None:
    if not isinstance(table, RouteTable):
        raise TypeError(f"table must be a RouteTable, not {type(table).__name__}")


def compile_intervals(
    entries: Iterable[tuple[bytes, int, int]], width: int
) -> tuple[list[int], list[int]]:
    """Turn prefixes (address bytes, cidr, slot) of one family into a step function.

    Returns (starts, slots): address ``a`` maps to ``slots[i]`` for the greatest ``starts[i] <= a``
    (``starts[0] == 0``). Longest prefix wins because a nested prefix is visited after the one
    containing it and overrides it until its own end.
    """
    prefixes = []
    for addr, cidr, slot in entries:
        start = int.from_bytes(addr, "big")
        size = 1 << (width - cidr)
        start &= ~(size - 1)
        prefixes.append((start, cidr, start + size - 1, slot))
    prefixes.sort()
    starts: list[int] = [0]
    slots: list[int] = [NO_SLOT]

    def emit(position: int, slot: int) -> None:
        if starts[-1] == position:
            slots[-1] = slot
            if len(slots) > 1 and slots[-2] == slot:
                starts.pop()
                slots.pop()
        elif slots[-1] != slot:
            starts.append(position)
            slots.append(slot)

    stack: list[tuple[int, int]] = []  # (end, slot) of the prefixes containing the cursor
    for start, _, end, slot in prefixes:
        while stack and stack[-1][0] < start:
            closed_end = stack.pop()[0]
            emit(closed_end + 1, stack[-1][1] if stack else NO_SLOT)
        emit(start, slot)
        stack.append((end, slot))
    limit = 1 << width
    while stack:
        closed_end = stack.pop()[0]
        if closed_end + 1 < limit:
            emit(closed_end + 1, stack[-1][1] if stack else NO_SLOT)
    return starts, slots


class RouteTable:
    """A compiled, read-only longest-prefix-match table: address -> peer slot (or -1)."""

    def __init__(self, entries: Iterable[tuple[bytes, int, int]]) -> None:
        v4: list[tuple[bytes, int, int]] = []
        v6: list[tuple[bytes, int, int]] = []
        for entry in entries:
            (v4 if len(entry[0]) == 4 else v6).append(entry)
        self._starts4, self._slots4 = compile_intervals(v4, 32)
        self._starts6, self._slots6 = compile_intervals(v6, 128)

    def lookup(self, addr: Buffer) -> int:
        """The slot of the longest prefix containing ``addr`` (4 or 16 bytes), or -1."""
        raw = bytes(memoryview(addr))  # bytes-like only (TypeError for an int or a list)
        if len(raw) == 4:
            return self._slots4[bisect.bisect_right(self._starts4, int.from_bytes(raw, "big")) - 1]
        if len(raw) == 16:
            return self._slots6[bisect.bisect_right(self._starts6, int.from_bytes(raw, "big")) - 1]
        return NO_SLOT

    def lookup_packet(self, buf: Buffer, offset: int, size: int, source: bool) -> int:
        """Slot for the source or destination of the IP packet at buf[offset:offset+size]."""
        raw = bytes(memoryview(buf)[offset : offset + size])
        return self._find_packet(raw, 0, len(raw), source)

    def _find_packet(self, buf: Buffer, offset: int, size: int, source: bool) -> int:
        """lookup_packet on a packet known to lie inside ``buf``."""
        if size < 1:
            return NO_SLOT
        version = buf[offset] >> 4
        if version == 4 and size >= 20:
            at = offset + (12 if source else 16)
            return self.lookup(bytes(buf[at : at + 4]))
        if version == 6 and size >= 40:
            at = offset + (8 if source else 24)
            return self.lookup(bytes(buf[at : at + 16]))
        return NO_SLOT


def route_batch(
    table: RouteTable, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int, mtu: int
) -> tuple[dict[int, list[int]], int, int]:
    """Group packets ``bufs[i][headroom:headroom+lengths[i]]`` by destination peer slot.

    Returns (slot -> indices in batch order, packets with no route, packets over the MTU).
    """
    _check_table(table)
    _check_batch(bufs, lengths, headroom)
    groups: dict[int, list[int]] = {}
    no_route = too_big = 0
    for i in range(len(bufs)):
        size = lengths[i]
        buf = _check_buffer(bufs[i], headroom + size)
        if size > mtu:
            too_big += 1
            continue
        slot = table._find_packet(buf, headroom, size, False)
        if slot < 0:
            no_route += 1
            continue
        group = groups.get(slot)
        if group is None:
            groups[slot] = [i]
        else:
            group.append(i)
    return groups, no_route, too_big


def lane(device: Any, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int,
         now: float) -> tuple[Any, Any] | None:
    """``(peer, keypair)`` if the batch may take the fast lane, else None (see Device.lane).

    ``device`` is a :class:`tunnel.wireguard.device.Device`; this reads its ``identity``, ``mtu``,
    ``routes()`` and ``peer_slots``, and the peer's and keypair's state, and changes nothing.
    The rules are :meth:`Device.send_batch`'s for a batch that needs nothing but sealing: every
    packet fits the MTU and routes to one peer; the peer has an endpoint and no staged packets;
    its current keypair is younger than REJECT_AFTER_TIME (and than REKEY_AFTER_TIME if we
    initiated it), and sealing the batch keeps its counter under REKEY_AFTER_MESSAGES.
    """
    _check_batch(bufs, lengths, headroom)
    if device.identity is None or not bufs:
        return None
    table = device.routes()
    _check_table(table)
    mtu = device.mtu
    slot = NO_SLOT
    for i in range(len(bufs)):
        size = lengths[i]
        buf = _check_buffer(bufs[i], headroom + size)
        if size > mtu:
            return None
        found = table._find_packet(buf, headroom, size, False)
        if found < 0 or (slot >= 0 and found != slot):
            return None
        slot = found
    peer = device.peer_slots[slot]
    if peer is None or peer.staged or peer.endpoint is None:
        return None
    keypair = peer.current
    if keypair is None:
        return None
    age = now - keypair.created
    if age >= REJECT_AFTER_TIME or (keypair.is_initiator and age >= REKEY_AFTER_TIME):
        return None
    if keypair.cipher.send_counter + len(bufs) >= REKEY_AFTER_MESSAGES:
        return None
    return peer, keypair


def receive_lane(device: Any, bufs: Sequence[bytearray], lengths: Sequence[int], sources: Sequence[Any],
                 now: float) -> Any:
    """The keypair to open the whole batch with in the inbound fast lane, else None.

    Granted when the general path (:meth:`tunnel.wireguard.device.Device.receive_batch`) would only open,
    check and deliver: every datagram is a transport message (type 4, at least 32 bytes) for
    one receiver index that names a keypair younger than REJECT_AFTER_TIME which is not waiting
    for its confirmation (``peer.next``), and every source is the peer's current endpoint
    (the same object, as the batch I/O hands out for a repeated source, or an equal one), so
    there is no roaming to record before a reply. Reads ``device.receivers``; changes nothing.
    """
    _require_list("sources", sources)
    _check_batch(bufs, lengths, 0)
    if len(sources) < len(bufs):
        raise ValueError("sources is shorter than bufs")
    if not bufs:
        return None
    receiver = transport_receiver(bufs, lengths, len(bufs))
    if receiver < 0:
        return None
    keypair = device.receivers.get(receiver)
    if not isinstance(keypair, Keypair):  # None, or the peer of a handshake in progress
        return None
    peer = keypair.peer
    if now - keypair.created >= REJECT_AFTER_TIME or peer.next is keypair:
        return None
    return keypair if all_from(sources, len(bufs), peer.endpoint) else None


def transport_receiver(bufs: Sequence[bytearray], lengths: Sequence[int], n: int) -> int:
    """The receiver index that all of the first ``n`` datagrams are transport messages for (type
    4, at least 32 bytes), or -1 if one is not or two name different indices (the inbound lane
    rule's batch check, shared with the lane snapshot; native twin in ``_batchbuf.pxd``)."""
    receiver = -1
    for i in range(n):
        size = lengths[i]
        buf = _check_buffer(bufs[i], size)
        if size < 32 or buf[0] != 4 or buf[1] or buf[2] or buf[3]:
            return -1
        index = int.from_bytes(buf[4:8], "little")
        if receiver >= 0 and index != receiver:
            return -1
        receiver = index
    return receiver


def all_from(sources: Sequence[Any], n: int, endpoint: Any) -> bool:
    """Whether each of the first ``n`` sources is ``endpoint`` (the same object, as the batch
    I/O hands out for a repeated source, or an equal one)."""
    for source in sources[:n]:
        if source is not endpoint and source != endpoint:
            return False
    return True


def classify_batch(
    bufs: Sequence[bytearray], lengths: Sequence[int]
) -> tuple[dict[int, list[int]], list[int], dict[str, int]]:
    """Sort datagrams ``bufs[i][:lengths[i]]`` into transport groups by receiver index and
    handshake messages (types 1-3 of the exact size, in order); count the rest by reason."""
    _check_batch(bufs, lengths, 0)
    transport: dict[int, list[int]] = {}
    handshakes: list[int] = []
    drops: dict[str, int] = {}
    for i in range(len(bufs)):
        size = lengths[i]
        buf = _check_buffer(bufs[i], size)
        kind = buf[0] if size >= 4 and not (buf[1] or buf[2] or buf[3]) else 0
        if kind == 4:
            if size >= 32:
                receiver = int.from_bytes(buf[4:8], "little")
                group = transport.get(receiver)
                if group is None:
                    transport[receiver] = [i]
                else:
                    group.append(i)
                continue
            reason = INVALID_SIZE
        elif kind in _HANDSHAKE_SIZES:
            if size == _HANDSHAKE_SIZES[kind]:
                handshakes.append(i)
                continue
            reason = INVALID_SIZE
        else:
            reason = INVALID_TYPE
        drops[reason] = drops.get(reason, 0) + 1
    return transport, handshakes, drops


def inner_length(buf: Buffer, offset: int, size: int) -> int:
    """Length of the IP packet at buf[offset:offset+size] from its header (padding stripped), or -1."""
    raw = bytes(memoryview(buf)[offset : offset + size])
    return _inner_length(raw, 0, len(raw))


def _inner_length(buf: Buffer, offset: int, size: int) -> int:
    """inner_length of a packet known to lie inside ``buf``."""
    if size < 1:
        return -1
    version = buf[offset] >> 4
    if version == 4 and size >= 20:
        total = (buf[offset + 2] << 8) | buf[offset + 3]
        return total if 20 <= total <= size else -1
    if version == 6 and size >= 40:
        total = 40 + ((buf[offset + 4] << 8) | buf[offset + 5])
        return total if total <= size else -1
    return -1


def accept_slots(
    table: RouteTable,
    slot: int,
    bufs: Sequence[bytearray],
    lengths: list[int],
    results: Sequence[int],
    headroom: int,
    verdicts: bytearray,
) -> tuple[int, int, int, int]:
    """Check the plaintexts ``bufs[i][headroom:headroom+lengths[i]]`` where ``results[i] == 0``,
    with no object per packet: the verdicts are for ``TunBatch.write_slots``.

    For each ``i``: ``verdicts[i] = 0`` if the packet is to be delivered, and then ``lengths[i]``
    becomes where it ends in its buffer (``headroom`` + its IP length: padding stripped);
    otherwise ``verdicts[i] = 1`` and ``lengths[i]`` is left alone. Returns (delivered,
    keepalives, invalid inner packets, packets whose source is not routed to ``slot``).
    """
    _check_table(table)
    _require_list("bufs", bufs)
    _require_list("lengths", lengths)
    _require_list("results", results)
    if type(verdicts) is not bytearray:
        raise TypeError(f"verdicts must be a bytearray, not {type(verdicts).__name__}")
    if len(verdicts) < len(bufs):
        raise ValueError("verdicts is shorter than bufs")
    _check_batch(bufs, lengths, headroom)
    if len(results) < len(bufs):
        raise ValueError("results is shorter than bufs")
    delivered = keepalives = invalid = disallowed = 0
    for i in range(len(bufs)):
        size = lengths[i]
        buf = _check_buffer(bufs[i], headroom + size)
        verdicts[i] = 1
        if results[i] != 0:
            continue
        if size == 0:
            keepalives += 1
            continue
        length = _inner_length(buf, headroom, size)
        if length < 0:
            invalid += 1
            continue
        if table._find_packet(buf, headroom, length, True) != slot:
            disallowed += 1
            continue
        verdicts[i] = 0
        lengths[i] = headroom + length
        delivered += 1
    return delivered, keepalives, invalid, disallowed


def accept_batch(
    table: RouteTable,
    slot: int,
    bufs: Sequence[bytearray],
    lengths: Sequence[int],
    results: Sequence[int],
    headroom: int,
) -> tuple[list[memoryview], int, int, int]:
    """Check the plaintexts ``bufs[i][headroom:headroom+lengths[i]]`` where ``results[i] == 0``.

    Returns (views of packets to deliver, keepalives, invalid inner packets, packets whose source
    is not routed to ``slot``): :func:`accept_slots` with the delivered packets as views.
    """
    _check_table(table)
    _require_list("results", results)
    _check_batch(bufs, lengths, headroom)
    ends = list(lengths)
    verdicts = bytearray(len(bufs))
    _, keepalives, invalid, disallowed = accept_slots(table, slot, bufs, ends, results, headroom, verdicts)
    packets = [memoryview(bufs[i])[headroom : ends[i]] for i in range(len(bufs)) if not verdicts[i]]
    return packets, keepalives, invalid, disallowed
