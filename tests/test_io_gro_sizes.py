"""UDP GRO receive across changes of the segment size (both twins, same results).

Written for a receive straight into the slots (tried on branch stream, not kept: no
measurable gain, see docs/benchmarks.md), kept because they drive the GRO receive through
cases tests/test_io.py does not: the segment size staying, changing (up and down) from one
message to the next, a lone datagram larger than a segment, an empty datagram, messages
running past the slots (the rest held, ``pending``) in batches of 3 to 64, slots too small
for a segment, and two senders. The oracle is what the plain Python sockets sent, in order,
with its sender.
"""

from __future__ import annotations

import socket
from types import ModuleType
from typing import Any

import pytest

from tests.test_io import FAMILIES, gro_sockets, gso_burst, payload, sender, slots, sockets, wait_readable

__all__ = ["sockets"]  # the fixture, imported for pytest


def _receive_all(batch: Any, rx: socket.socket, nslots: int, size: int, expect: int) -> list[tuple[bytes, Any]]:
    """Everything the batch hands out, up to ``expect`` datagrams (bounded calls)."""
    bufs = [bytearray(size) for _ in range(nslots)]
    lengths = [0] * nslots
    sources: list[Any] = [None] * nslots
    got: list[tuple[bytes, Any]] = []
    for _ in range(4 * expect + 20):
        if len(got) >= expect and not batch.pending:
            break
        if not batch.pending and not wait_readable(rx, 0.5):
            break
        count = batch.recv(bufs, lengths, sources)
        assert 0 <= count <= nslots
        got.extend((bytes(bufs[i][: lengths[i]]), sources[i]) for i in range(count))
        assert count == nslots or batch.pending == 0  # a short batch holds nothing back
    return got


def _send(tx: socket.socket, dest: Any, bursts: list[list[bytes]]) -> list[bytes]:
    """Each burst of more than one datagram as one GSO message (segment: its first's size)."""
    sent: list[bytes] = []
    for burst in bursts:
        if len(burst) > 1:
            gso_burst(tx, dest, burst, len(burst[0]))
        else:
            tx.sendto(burst[0], dest)
        sent.extend(burst)
    return sent


@FAMILIES
@pytest.mark.parametrize("nslots", [3, 8, 64])
def test_gro_segment_sizes_change_and_overflow(io: ModuleType, sockets: Any, family: int,
                                                      nslots: int) -> None:
    rx, tx = gro_sockets(io, sockets, family)
    dest = rx.getsockname()[:2]
    who = sender(tx, family)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bursts = [
        [payload(k, 1000) for k in range(12)] + [payload(12, 77)],   # sets the segment size
        [payload(20 + k, 1000) for k in range(30)],                   # the same size, past the slots
        [b"small"],                                                   # alone, fits a segment
        [b""],                                                        # empty
        [payload(40, 1400)],                                          # alone, larger than a segment
        [payload(50 + k, 600) for k in range(9)],                     # a smaller segment size
        [payload(60 + k, 1200) for k in range(7)] + [payload(67, 5)], # a larger one
        [payload(70 + k, 1200) for k in range(5)],                    # the larger one again
    ]
    sent: list[bytes] = []
    got: list[tuple[bytes, Any]] = []
    for burst in bursts:  # one burst at a time: the kernel would coalesce neighbours
        sent += _send(tx, dest, [burst])
        assert wait_readable(rx)
        got += _receive_all(batch, rx, nslots, 1500, len(burst))
    assert [data for data, _ in got] == sent
    assert all(source == who for _, source in got)
    assert batch.pending == 0


@FAMILIES
def test_gro_many_messages_one_call(io: ModuleType, sockets: Any, family: int) -> None:
    """Several coalesced messages waiting: one call fills every slot, in order, the rest held."""
    rx, tx = gro_sockets(io, sockets, family)
    dest = rx.getsockname()[:2]
    batch = io.UdpBatch(rx.fileno(), gro=True)
    first = _send(tx, dest, [[payload(k, 900) for k in range(4)]])
    assert wait_readable(rx)
    assert [d for d, _ in _receive_all(batch, rx, 16, 1500, 4)] == first
    sent = _send(tx, dest, [[payload(10 * m + k, 900) for k in range(6)] for m in range(5)])
    assert wait_readable(rx)
    bufs, lengths, sources = slots(16)
    count = batch.recv(bufs, lengths, sources)
    assert count == 16  # 30 waiting: a full batch
    got = [bytes(bufs[i][: lengths[i]]) for i in range(count)]
    got += [d for d, _ in _receive_all(batch, rx, 16, 1500, 14)]
    assert got == sent
    assert batch.pending == 0


@FAMILIES
def test_gro_two_senders_and_small_slots(io: ModuleType, sockets: Any, family: int) -> None:
    rx, tx_a, tx_b = gro_sockets(io, sockets, family, senders=2)
    dest = rx.getsockname()[:2]
    a, b = sender(tx_a, family), sender(tx_b, family)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    expected: list[tuple[bytes, Any]] = []
    for tx, who, k in ((tx_a, a, 0), (tx_b, b, 1), (tx_a, a, 2), (tx_b, b, 3)):
        burst = [payload(10 * k + j, 700) for j in range(5)]
        expected += [(d, who) for d in _send(tx, dest, [burst])]
        assert wait_readable(rx)
        got = _receive_all(batch, rx, 4, 1500, 5)
        assert got == expected[-5:]
    # slots smaller than the segment size: each segment truncated to its slot, as without GRO
    burst = [payload(90 + j, 700) for j in range(3)]
    _send(tx_a, dest, [burst])
    assert wait_readable(rx)
    got = _receive_all(batch, rx, 8, 300, 3)
    assert got == [(d[:300], a) for d in burst]
