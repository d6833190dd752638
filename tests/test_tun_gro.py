"""TUN-side GRO (``TunBatch(fd, vnet_hdr=True, gro=True).write``), both backends.

Consecutive TCP segments of one flow must leave as one super-packet (virtio-net header with
GSO TCPV4/TCPV6 and a partial checksum); anything else must leave as it came, in order. A
datagram socketpair stands in for the TUN fd (one write = one datagram), as in
tests/test_offload.py; checksums are checked with that module's independent sum. That the
kernel cuts a super-packet back into exactly the segments we were given is checked by the
kernel itself in tests/test_gro_kernel_netns.py.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from types import ModuleType
from typing import Any

import pytest

from tests.test_offload import ACK, FIN, PSH, SYN, VNET, l4_checksum_ok, ones_sum, pseudo, tcp_packet
from tunnel.io.offload import load_io

HEADROOM = 16
GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM = 1, 4, 1


def segment(version: int, payload: bytes, seq: int, flags: int = ACK, *, ident: int = 100,
            sport: int = 40000) -> bytes:
    """A TCP segment with a full (valid) checksum."""
    return tcp_packet(version, payload, seq, flags, ident=ident, partial=False, sport=sport)


def stream(version: int, sizes: list[int], seq: int = 0xFFFFFF00, last_flags: int = ACK | PSH,
           sport: int = 40000) -> list[bytes]:
    """Consecutive segments of one flow (sequence numbers wrap if they must)."""
    out = []
    for k, size in enumerate(sizes):
        flags = last_flags if k == len(sizes) - 1 else ACK
        out.append(segment(version, bytes((seq + k + j) & 0xFF for j in range(size)), seq, flags,
                           ident=(100 + k) & 0xFFFF, sport=sport))
        seq = (seq + size) & 0xFFFFFFFF
    return out


def drain(kernel: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(kernel.recv(70000))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("sizes", [[1368] * 2, [1368] * 10 + [500], [1000] * 64, [1368] * 47 + [7]])
def test_run_becomes_one_super_packet(io: ModuleType, device_pair: Any, version: int, sizes: list[int]) -> None:
    kernel, ours = device_pair
    packets = stream(version, sizes)
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True)
    assert batch.write([memoryview(bytearray(p)) for p in packets]) == len(packets)
    frames = drain(kernel)
    l4 = 20 if version == 4 else 40
    header = l4 + 32
    runs, count, total = 1, 0, header  # a run: at most 64 segments and 65,535 bytes
    for size in sizes:
        if count == 64 or total + size > 65535:
            runs, count, total = runs + 1, 0, header
        count, total = count + 1, total + size
    assert len(frames) == runs
    flags, kind, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(frames[0])
    assert (flags, kind) == (NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6)
    assert (hdr_len, gso_size, csum_start, csum_offset) == (header, sizes[0], l4, 16)
    big = bytearray(frames[0][10:])
    if version == 4:
        assert struct.unpack_from("!H", big, 2)[0] == len(big)
        assert ones_sum(bytes(big[:20])) == 0xFFFF
    else:
        assert struct.unpack_from("!H", big, 4)[0] == len(big) - 40
    # The TCP checksum field holds the pseudo-header sum for the super-packet's length (the
    # partial checksum the kernel completes): complete it here, independently, and check it.
    assert struct.unpack_from("!H", big, l4 + 16)[0] == ones_sum(pseudo(bytes(big), len(big) - l4, 6))
    struct.pack_into("!H", big, l4 + 16, (~ones_sum(bytes(big[l4:]))) & 0xFFFF)
    assert l4_checksum_ok(bytes(big), l4, 6)
    assert b"".join(p[header:] for p in packets).startswith(bytes(big[header:]))
    assert batch.coalesced == len(frames)
    # What the kernel cuts them into is checked by the kernel: tests/test_gro_kernel_netns.py.


@pytest.mark.parametrize("version", [4, 6])
def test_what_does_not_coalesce_goes_as_it_came(io: ModuleType, device_pair: Any, version: int) -> None:
    kernel, ours = device_pair
    a = stream(version, [1000] * 3, seq=1000, last_flags=ACK)
    b = stream(version, [1000] * 3, seq=5000, last_flags=ACK, sport=40001)
    gap = segment(version, b"x" * 1000, 9999)  # not the next sequence number of anything
    syn = segment(version, b"", 1, SYN)
    fin = segment(version, b"y" * 1000, 4000, ACK | FIN)  # follows a, but FIN
    bigger = segment(version, b"z" * 1200, 4000)  # follows a, but larger than a's segments
    packets = [a[0], b[0], a[1], gap, syn, a[2], fin, bigger, b"\x00" * 30]
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True)
    assert batch.write(packets) == len(packets)
    assert drain(kernel) == [bytes(10) + p for p in packets]
    assert batch.coalesced == 0


def test_gro_off_or_plain_device_writes_one_by_one(io: ModuleType, device_pair: Any) -> None:
    kernel, ours = device_pair
    packets = stream(4, [1368] * 5)
    for batch, prefix in ((io.TunBatch(ours.fileno(), vnet_hdr=True), bytes(10)),
                          (io.TunBatch(ours.fileno(), vnet_hdr=False, gro=True), b"")):
        assert not batch.gro or batch.vnet_hdr
        assert batch.write(packets) == 5
        assert drain(kernel) == [prefix + p for p in packets]


def test_backends_write_identical_frames(device_pair: Any) -> None:
    """A differential check over random mixes of flows, sizes, gaps and flags."""
    if os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    kernel, ours = device_pair
    rng = random.Random(5)
    results = []
    for name in ("cython", "pure"):
        io = load_io(name)
        rng.seed(5)
        frames: list[bytes] = []
        for _ in range(30):
            packets: list[bytes] = []
            seqs = {40000: 0xFFFFF000, 40001: 7}
            for _ in range(rng.randrange(1, 80)):
                version = 4 if rng.random() < 0.8 else 6
                sport = rng.choice([40000, 40000, 40000, 40001])
                size = rng.choice([1368, 1368, 1368, 900, 0])
                flags = rng.choice([ACK] * 8 + [ACK | PSH, ACK | FIN, SYN])
                seq = seqs[sport] + (rng.choice([0] * 9 + [1]))
                packets.append(segment(version, bytes(size), seq & 0xFFFFFFFF, flags, sport=sport))
                seqs[sport] = (seq + size) & 0xFFFFFFFF
            batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True)
            assert batch.write(packets) == len(packets)
            frames.extend(drain(kernel))
        results.append(frames)
    assert results[0] == results[1]
    assert any(f[1] in (GSO_TCPV4, GSO_TCPV6) for f in results[0])


# ------------------------------------------------------------------------ oversized packets held


def test_oversized_packet_is_held_until_slots_grow(io: ModuleType, device_pair: Any) -> None:
    kernel, ours = device_pair
    first = segment(4, bytes(100), 1)
    big = segment(4, bytes(3000), 101)
    after = segment(4, bytes(10), 3101)
    for packet in (first, big, after):
        kernel.send(bytes(10) + packet)
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, hold_oversized=True)
    small = [bytearray(HEADROOM + 1500) for _ in range(8)]
    lengths = [0] * 8
    assert batch.read(small, lengths, HEADROOM, 1500) == 1  # the batch ends at the big one
    assert bytes(small[0][HEADROOM:HEADROOM + lengths[0]]) == first
    assert batch.needed == len(big) and batch.pending == 1
    large = [bytearray(HEADROOM + batch.needed) for _ in range(8)]
    assert batch.read(large, lengths, HEADROOM, 1500) == 2
    assert [bytes(large[i][HEADROOM:HEADROOM + lengths[i]]) for i in range(2)] == [big, after]
    assert batch.needed == 0 and batch.pending == 0 and batch.errors == {}


def test_held_packet_is_dropped_if_slots_stay_small(io: ModuleType, device_pair: Any) -> None:
    kernel, ours = device_pair
    big = segment(6, bytes(3000), 1)
    after = segment(6, bytes(10), 3001)
    for packet in (big, after):
        kernel.send(bytes(10) + packet)
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, hold_oversized=True)
    bufs = [bytearray(HEADROOM + 1500) for _ in range(8)]
    lengths = [0] * 8
    assert batch.read(bufs, lengths, HEADROOM, 1500) == 0 and batch.needed == len(big)
    assert batch.read(bufs, lengths, HEADROOM, 1500) == 1  # held once, then dropped
    assert bytes(bufs[0][HEADROOM:HEADROOM + lengths[0]]) == after
    assert batch.errors == {"read:too_big": 1} and batch.needed == 0
