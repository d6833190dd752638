"""``TunBatch.write_slots`` (tunnel.io._io and tunnel.io.io_ref, same tests): writing the selected slots
of a batch must be exactly ``write`` on the list of their slices
``[memoryview(bufs[i])[offset:lengths[i]] for i in range(count) if verdicts[i] == 0]``: same
frames on the wire, same return value, same coalescing, errors and exceptions.

A datagram socketpair stands in for the TUN/TAP fd (one write = one datagram), as in
tests/test_tun_gro.py and tests/test_vxlan_offload.py, whose packet builders are reused.
"""

from __future__ import annotations

import errno
import functools
import os
import random
import socket
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import pytest

from tests.test_offload import ACK, FIN, PSH, SYN, VNET
from tests.test_tun_gro import drain, segment, stream
from tests.test_vxlan_offload import segments
from tunnel.io.offload import load_io

GSO_TCPV4, GSO_TCPV6 = 1, 4
OFFSET = 16

Pair = tuple[socket.socket, socket.socket]


def slots(packets: Sequence[bytes], offset: int = OFFSET, tail: int = 40,
          seed: int = 1) -> tuple[list[bytearray], list[int]]:
    """Buffers holding each packet at ``offset``, with junk before and after it."""
    rng = random.Random(seed)
    bufs = []
    for p in packets:
        bufs.append(bytearray(rng.randbytes(offset)) + bytearray(p) + bytearray(rng.randbytes(tail)))
    return bufs, [offset + len(p) for p in packets]


def selected(bufs: Sequence[bytearray], lengths: Sequence[int], offset: int, verdicts: bytearray,
             count: int) -> list[memoryview]:
    """The list ``write_slots`` must be equivalent to (the contract's own expression; a negative
    length is at or below the offset, so an empty packet, not a slice counted from the end)."""
    return [memoryview(bufs[i])[offset:max(lengths[i], 0)] for i in range(count) if verdicts[i] == 0]


def both_ways(make: Callable[[], Any], kernel: socket.socket, bufs: list[bytearray],
              lengths: list[int], offset: int, verdicts: bytearray,
              count: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(write_slots outcome, write outcome): return value, frames, counters of a fresh batch."""
    outcomes = []
    for way in ("slots", "write"):
        batch = make()
        if way == "slots":
            got = batch.write_slots(bufs, lengths, offset, verdicts, count)
        else:
            views = selected(bufs, lengths, offset, verdicts, count)
            got = batch.write(views)
            for v in views:
                v.release()
        outcomes.append((got, drain(kernel), batch.coalesced, dict(batch.errors), list(batch.fallbacks)))
    return outcomes[0], outcomes[1]


# ------------------------------------------------------------------------ equivalence with write


@pytest.mark.parametrize("offset", [0, OFFSET])
def test_plain_tun_equals_write(io: ModuleType, device_pair: Pair, offset: int) -> None:
    kernel, ours = device_pair
    packets = stream(4, [1000, 200, 1368, 7]) + [segment(6, b"q" * 300, 5, SYN), b"\x00" * 30]
    bufs, lengths = slots(packets, offset)
    verdicts = bytearray([0, 1, 0, 0, 2, 0])
    ours_out, write_out = both_ways(lambda: io.TunBatch(ours.fileno(), vnet_hdr=False), kernel,
                                    bufs, lengths, offset, verdicts, len(packets))
    assert ours_out == write_out
    keep = [p for p, v in zip(packets, verdicts, strict=True) if v == 0]
    assert ours_out[:2] == (4, keep)  # no header, exactly the selected packets, in order


@pytest.mark.parametrize("version", [4, 6])
def test_vnet_gro_runs_equal_write(io: ModuleType, device_pair: Pair, version: int) -> None:
    kernel, ours = device_pair
    a = stream(version, [1368] * 12 + [300], seq=1000)
    b = stream(version, [900] * 5, seq=77, sport=40001)
    packets = a[:6] + [b[0], b[1]] + a[6:] + b[2:] + [segment(version, b"", 3, SYN)]
    bufs, lengths = slots(packets)
    verdicts = bytearray(len(packets))
    verdicts[3] = 1  # a gap in flow a: its run breaks there
    ours_out, write_out = both_ways(lambda: io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True),
                                    kernel, bufs, lengths, OFFSET, verdicts, len(packets))
    assert ours_out == write_out
    got, frames, coalesced, errors, fallbacks = ours_out
    assert got == len(packets) - 1 and not errors and not fallbacks
    kinds = [VNET.unpack_from(f)[1] for f in frames]
    gso = GSO_TCPV4 if version == 4 else GSO_TCPV6
    # a[0:3] | a[4:6] | b[0:2] | a[6:13] | b[2:5] | the SYN alone
    assert kinds == [gso, gso, gso, gso, gso, 0] and coalesced == 5


def test_tap_verify_equals_write(io: ModuleType, device_pair: Pair) -> None:
    kernel, ours = device_pair
    frames = segments(4, [1000] * 8)
    corrupt = bytearray(frames[5])
    corrupt[-1] ^= 0xFF  # its TCP checksum no longer holds: written alone
    frames[5] = bytes(corrupt)
    frames.append(frames[0][:12] + b"\x81\x00" + frames[0][14:])  # not IP: as it is
    bufs, lengths = slots(frames, offset=8)
    verdicts = bytearray(len(frames))
    verdicts[1] = 1
    ours_out, write_out = both_ways(
        lambda: io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True, l2=14, verify=True),
        kernel, bufs, lengths, 8, verdicts, len(frames))
    assert ours_out == write_out
    got, out, coalesced, _, _ = ours_out
    # [0] alone (1 dropped: 2 no longer follows), [2,3,4] one super-frame, [5] alone (bad
    # checksum), [6,7] one super-frame, the non-IP frame alone
    assert got == 8
    assert [VNET.unpack_from(f)[1] for f in out] == [0, GSO_TCPV4, 0, GSO_TCPV4, 0]
    assert coalesced == 2
    assert out[2][10:] == bytes(corrupt) and out[4][10:] == frames[-1]


def test_random_mixes_equal_write_and_backends_agree(device_pair: Pair) -> None:
    """A differential check: random flows, sizes, gaps, flags, verdicts, lengths, offsets."""
    names = ["pure"] if os.environ.get("WGPY_PURE") == "1" else ["cython", "pure"]
    kernel, ours = device_pair
    results = []
    for name in names:
        io = load_io(name)
        rng = random.Random(11)
        frames: list[bytes] = []
        for _ in range(25):
            packets: list[bytes] = []
            seqs = {40000: 0xFFFFF000, 40001: 7}
            for _ in range(rng.randrange(1, 90)):
                sport = rng.choice([40000, 40000, 40001])
                size = rng.choice([1368, 1368, 1368, 900, 0])
                flags = rng.choice([ACK] * 8 + [ACK | PSH, ACK | FIN, SYN])
                seq = seqs[sport] + rng.choice([0] * 9 + [1])
                packets.append(segment(4 if rng.random() < 0.8 else 6, bytes(size), seq & 0xFFFFFFFF,
                                       flags, sport=sport))
                seqs[sport] = (seq + size) & 0xFFFFFFFF
            offset = rng.choice([0, 4, OFFSET])
            bufs, lengths = slots(packets, offset, seed=rng.randrange(1000))
            for i in range(len(lengths)):
                if rng.random() < 0.05:
                    lengths[i] = rng.choice([0, offset, offset + 10, 1 << 20])  # clipped/empty
            verdicts = bytearray(1 if rng.random() < 0.1 else 0 for _ in packets)
            count = rng.randrange(len(packets) + 1)
            ours_out, write_out = both_ways(
                functools.partial(io.TunBatch, ours.fileno(), vnet_hdr=True, gro=True), kernel,
                bufs, lengths, offset, verdicts, count)
            assert ours_out == write_out
            frames.extend(ours_out[1])
        results.append(frames)
    assert all(r == results[0] for r in results)
    assert any(VNET.unpack_from(f)[1] in (GSO_TCPV4, GSO_TCPV6) for f in results[0])


# ------------------------------------------------------------------------ slicing details


@pytest.mark.parametrize("vnet_hdr", [True, False])
def test_lengths_are_clipped_and_short_ones_give_empty_packets(
        io: ModuleType, device_pair: Pair, vnet_hdr: bool) -> None:
    kernel, ours = device_pair
    bufs = [bytearray(b"0123456789abcdef" + bytes([k]) * 20) for k in range(5)]
    lengths = [26, 1000, 16, 3, -5]  # normal, past the end, == offset, < offset, negative
    verdicts = bytearray(5)
    ours_out, write_out = both_ways(lambda: io.TunBatch(ours.fileno(), vnet_hdr=vnet_hdr), kernel,
                                    bufs, lengths, 16, verdicts, 5)
    assert ours_out == write_out
    assert ours_out[0] == 5
    prefix = bytes(10) if vnet_hdr else b""
    expected = [bytes([0]) * 10, bytes([1]) * 20, b"", b"", b""]
    if vnet_hdr:
        assert ours_out[1] == [prefix + e for e in expected]
    else:
        # An empty packet without a header is a zero-byte write, which the Cython backend's
        # writev never hands to the device (neither does its write()): compare the rest.
        assert [f for f in ours_out[1] if f] == expected[:2]
    # an offset past the end of a buffer: an empty packet too
    ours_out, write_out = both_ways(lambda: io.TunBatch(ours.fileno(), vnet_hdr=True), kernel,
                                    [bytearray(4)], [4], 9, bytearray(1), 1)
    assert ours_out == write_out
    assert ours_out[:2] == (1, [bytes(10)])


def test_only_the_first_count_slots_and_zero_verdicts_go(io: ModuleType, device_pair: Pair) -> None:
    kernel, ours = device_pair
    packets = [bytes([k]) * (10 + k) for k in range(8)]
    bufs, lengths = slots(packets)
    verdicts = bytearray([0, 3, 0, 255, 0, 0, 0, 0, 9, 9])  # longer than count: fine
    batch = io.TunBatch(ours.fileno(), vnet_hdr=False)
    assert batch.write_slots(bufs, lengths + [0, 0], OFFSET, verdicts, 6) == 4
    assert drain(kernel) == [packets[0], packets[2], packets[4], packets[5]]


def test_empty_selection_returns_zero_and_writes_nothing(io: ModuleType, device_pair: Pair) -> None:
    kernel, ours = device_pair
    bufs, lengths = slots([b"abc", b"def"])
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True)
    assert batch.write_slots(bufs, lengths, OFFSET, bytearray([1, 1]), 2) == 0
    assert batch.write_slots(bufs, lengths, OFFSET, bytearray([0, 0]), 0) == 0
    assert batch.write_slots([], [], 0, bytearray(), 0) == 0
    assert drain(kernel) == []
    assert batch.errors == {} and batch.coalesced == 0


@pytest.mark.parametrize("args", [
    ("bufs", 3),        # count > len(bufs)
    ("lengths", 3),     # count > len(lengths)
    ("verdicts", 3),    # count > len(verdicts)
    ("offset", 2),      # offset < 0
    ("count", -1),      # count < 0
])
def test_bad_arguments_raise_value_error(io: ModuleType, device_pair: Pair, args: tuple[str, int]) -> None:
    kernel, ours = device_pair
    which, count = args
    bufs, lengths = slots([b"abc", b"def", b"ghi"])
    verdicts = bytearray(3)
    offset = OFFSET
    if which == "bufs":
        bufs = bufs[:2]
    elif which == "lengths":
        lengths = lengths[:2]
    elif which == "verdicts":
        verdicts = verdicts[:2]
    elif which == "offset":
        offset = -1
    batch = io.TunBatch(ours.fileno(), vnet_hdr=False)
    with pytest.raises(ValueError):
        batch.write_slots(bufs, lengths, offset, verdicts, count)
    assert drain(kernel) == []  # nothing written
    bufs[0].append(1)  # nothing left pinned
    assert batch.write_slots(bufs, lengths, OFFSET, bytearray(3), 2) == 2  # the object still works


# ------------------------------------------------------------------------ errors


def test_refused_packets_are_counted_like_write(io: ModuleType) -> None:
    packets = stream(4, [1000] * 4) + [b"abc"]
    bufs, lengths = slots(packets)
    verdicts = bytearray([0, 0, 0, 1, 0])
    outcomes = []
    for way in ("slots", "write"):
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        kernel.close()  # the peer is gone: ECONNREFUSED, which does not mean the fd is dead
        try:
            batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True)
            if way == "slots":
                got = batch.write_slots(bufs, lengths, OFFSET, verdicts, 5)
            else:
                got = batch.write(selected(bufs, lengths, OFFSET, verdicts, 5))
        finally:
            ours.close()
        outcomes.append((got, dict(batch.errors), batch.coalesced, list(batch.fallbacks)))
    assert outcomes[0] == outcomes[1]
    # [0,1,2] one super-packet (three refused), then "abc"
    assert outcomes[0][0] == 0 and sum(outcomes[0][1].values()) == 4


def test_device_gone_raises_and_unpins(io: ModuleType) -> None:
    fd = os.open("/dev/null", os.O_RDONLY)  # write(2) on it: EBADF, "the device is gone"
    try:
        bufs, lengths = slots(stream(4, [1000] * 3))
        batch = io.TunBatch(fd, vnet_hdr=True, gro=True)
        with pytest.raises(OSError) as info:
            batch.write_slots(bufs, lengths, OFFSET, bytearray(3), 3)
        assert info.value.errno == errno.EBADF
        for buf in bufs:
            buf.extend(b"more")  # resizable again: no buffer is left pinned
    finally:
        os.close(fd)
