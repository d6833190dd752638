"""Differential fuzzing: the Cython twin and the pure-Python twin of every parser of untrusted
bytes get the same random inputs and must give the same verdicts, outputs and errors.

Covered: the WireGuard datagram classifier (``classify_batch``), the inner-packet checks after
decryption (``inner_length``, ``accept_slots``, ``accept_batch``, ``RouteTable.lookup_packet``),
the transport opener (``TransportCipher.open_batch``: forged, truncated, replayed and corrupted
messages), the VXLAN receive and transmit scans (``decap_batch``, ``scan_tx``, ``flow_hash``) and
the TUN reader with IFF_VNET_HDR (``TunBatch.read``: the virtio header and GSO super-packet
parser), fed through a socketpair standing in for the TUN fd.

Each test needs both twins, so it is skipped (visibly) under ``WGPY_PURE=1``; a missing native
build is an error, as everywhere in the suite. ``make fuzz`` runs them with many more examples.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from crypto.backend import load as load_backend
from tunnel.io.offload import load_io
from tunnel.vxlan.fast import load as load_vxlan
from tunnel.wireguard.datapath import load as load_datapath

from .fuzzing import fuzz_settings

pytestmark = pytest.mark.skipif(os.environ.get("WGPY_PURE") == "1",
                                reason="WGPY_PURE=1: differential tests need the Cython twin")

DP = {name: load_datapath(name) for name in ("cython", "pure")}
VX = {name: load_vxlan(name) for name in ("cython", "pure")}
TR = {name: load_backend(name) for name in ("cython", "pure")}
IO = {name: load_io(name) for name in ("cython", "pure")}


def both(call: Callable[[Any], Any], make: Callable[[], Any], mods: dict[str, Any]) -> list[Any]:
    """Run ``call(module, *make())`` on fresh inputs for each twin; the outcome or the error type."""
    outcomes = []
    for name in ("cython", "pure"):
        args = make()
        try:
            result = call(mods[name], *args)
        except Exception as exc:  # the errors must match too
            result = ("raised", type(exc).__name__)
        outcomes.append((result, args))
    return outcomes


# ---- WireGuard: classify_batch ---------------------------------------------------------------

typed = st.builds(
    lambda kind, pad, body: bytes([kind]) + pad + body,
    st.integers(0, 6),
    st.sampled_from([b"\0\0\0", b"\0\0\1", b"\1\0\0"]),
    st.one_of(st.binary(max_size=40), st.binary(min_size=26, max_size=30),  # 32 - 4 at the edge
              st.binary(min_size=140, max_size=150),
              st.binary(min_size=85, max_size=95), st.binary(min_size=56, max_size=66)),
)
# type 4 around its 32-byte minimum, handshake types around their exact sizes
edges = st.builds(lambda kind, size: bytes([kind, 0, 0, 0]) + bytes(size - 4),
                  st.sampled_from([1, 2, 3, 4]),
                  st.sampled_from([4, 31, 32, 33, 63, 64, 65, 91, 92, 93, 147, 148, 149]))
datagram = st.one_of(st.binary(max_size=200), typed, edges)


@fuzz_settings(300)
@given(st.lists(st.tuples(datagram, st.integers(0, 8)), max_size=12))
def test_classify_batch_twins_agree(items: list[tuple[bytes, int]]) -> None:
    def make() -> tuple[list[bytearray], list[int]]:
        # lengths[i] <= len(bufs[i]): buffers carry slack after the datagram, as the shell's do
        return ([bytearray(d) + bytearray(slack) for d, slack in items], [len(d) for d, _ in items])

    (native, _), (pure, _) = both(lambda m, b, n: m.classify_batch(b, n), make, DP)
    assert native == pure
    if not isinstance(native[0], str):
        transport, handshakes, drops = native
        assert sum(len(v) for v in transport.values()) + len(handshakes) + sum(drops.values()) \
            == len(items)


# ---- WireGuard: inner packet checks ----------------------------------------------------------

ENTRIES = [
    (bytes([10, 0, 0, 0]), 8, 0), (bytes([10, 1, 0, 0]), 16, 1), (bytes([192, 168, 1, 7]), 32, 2),
    (bytes([0, 0, 0, 0]), 0, 3), (bytes.fromhex("fd00" + "00" * 14), 16, 1),
    (bytes.fromhex("fd000000000000000000000000000001"), 128, 0),
]
TABLES = {name: DP[name].RouteTable(ENTRIES) for name in DP}


def ip_packet(version: int, src: bytes, dst: bytes, declared: int, body: bytes) -> bytes:
    if version == 4:
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, declared & 0xFFFF, 0, 0, 64, 17, 0, src[:4], dst[:4])
    else:
        head = struct.pack("!IHBB16s16s", 6 << 28, declared & 0xFFFF, 17, 64, src, dst)
    return head + body


addresses = st.one_of(
    st.sampled_from([bytes([10, 1, 2, 3]) + bytes(12), bytes([192, 168, 1, 7]) + bytes(12),
                     bytes.fromhex("fd000000000000000000000000000001"),
                     bytes.fromhex("fd00ffff000000000000000000000009")]),
    st.binary(min_size=16, max_size=16),
)
def ip_packet_near(version: int, src: bytes, dst: bytes, delta: int, body: bytes) -> bytes:
    """A packet whose declared length is its real one plus ``delta`` (padding, truncation)."""
    real = len(body) + (20 if version == 4 else 0)
    return ip_packet(version, src, dst, max(0, real + delta), body)


inner = st.one_of(
    st.binary(max_size=80),
    st.builds(ip_packet, st.sampled_from([4, 6]), addresses, addresses,
              st.one_of(st.integers(0, 200), st.integers(0, 0xFFFF)), st.binary(max_size=120)),
    st.builds(ip_packet_near, st.sampled_from([4, 6]), addresses, addresses, st.integers(-3, 3),
              st.binary(max_size=60)),
)


@fuzz_settings(300)
@given(st.lists(st.tuples(inner, st.sampled_from([0, 0, 0, 2]), st.integers(0, 4)), max_size=10),
       st.integers(0, 3), st.sampled_from([0, 16]))
def test_inner_packet_checks_twins_agree(items: list[tuple[bytes, int, int]], slot: int,
                                         headroom: int) -> None:
    for packet, _, _ in items:
        outcomes = [DP[n].inner_length(bytearray(headroom) + packet, headroom, len(packet)) for n in DP]
        assert outcomes[0] == outcomes[1]
        for source in (True, False):
            found = [TABLES[n].lookup_packet(bytes(headroom) + packet, headroom, len(packet), source)
                     for n in DP]
            assert found[0] == found[1]

    def make() -> tuple[Any, ...]:
        bufs = [bytearray(headroom) + bytearray(p) + bytearray(slack) for p, _, slack in items]
        return (bufs, [len(p) for p, _, _ in items], [r for _, r, _ in items], bytearray(len(items)))

    outcomes = [(TABLES[n], make()) for n in DP]
    results = []
    for name, (table, (bufs, lengths, res, verdicts)) in zip(DP, outcomes, strict=True):
        got = DP[name].accept_slots(table, slot, bufs, lengths, res, headroom, verdicts)
        results.append((got, lengths, bytes(verdicts)))
    assert results[0] == results[1]
    views = []
    for name in DP:
        bufs, lengths, res, _ = make()
        packets, *counts = DP[name].accept_batch(TABLES[name], slot, bufs, lengths, res, headroom)
        views.append(([bytes(p) for p in packets], counts))
    assert views[0] == views[1]


# ---- WireGuard: TransportCipher.open_batch ----------------------------------------------------

SEND_KEY, RECEIVE_KEY = bytes(range(32)), bytes(range(100, 132))


def sealed_messages(count: int) -> list[bytes]:
    sender = TR["pure"].TransportCipher(SEND_KEY, RECEIVE_KEY, 0x01020304)
    bufs = [bytearray(16 + 64 + 16 + 16) for _ in range(count)]
    lengths = [(i * 7) % 64 for i in range(count)]
    for i, buf in enumerate(bufs):
        buf[16 : 16 + lengths[i]] = bytes([i]) * lengths[i]
    assert sender.seal_batch(bufs, lengths, 1420) == count
    return [bytes(b[: lengths[i]]) for i, b in enumerate(bufs)]


GENUINE = sealed_messages(8)


def mutate(message: bytes, how: int, where: int, value: int) -> bytes:
    data = bytearray(message)
    if how == 0:
        return bytes(data)
    if how == 1:
        data[where % len(data)] ^= 1 << (value % 8)
    elif how == 2:
        return bytes(data[: where % (len(data) + 1)])
    elif how == 3:
        data[8:16] = (value * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    elif how == 4:
        data[8:16] = (0xFFFFFFFFFFFFFFFF - (value % 20)).to_bytes(8, "little")
    else:
        data += bytes([value & 0xFF]) * (where % 40)
    return bytes(data)


@fuzz_settings(300)
@given(st.lists(st.tuples(st.integers(0, len(GENUINE) - 1), st.integers(0, 5), st.integers(0, 200),
                          st.integers(0, 2**16)), min_size=1, max_size=12),
       st.integers(0, 32))
def test_open_batch_twins_agree(items: list[tuple[int, int, int, int]], slack: int) -> None:
    messages = [mutate(GENUINE[k], how, where, value) for k, how, where, value in items]
    outcomes = []
    for name in ("cython", "pure"):
        receiver = TR[name].TransportCipher(RECEIVE_KEY, SEND_KEY, 0x05060708)
        bufs = [bytearray(m) + bytearray(slack) for m in messages]
        lengths = [len(m) for m in messages]
        results = [-1] * len(messages)
        ok = receiver.open_batch(bufs, lengths, results)
        plain = [bytes(bufs[i][16 : 16 + lengths[i]]) if results[i] == TR[name].OK else None
                 for i in range(len(bufs))]
        # a second pass: everything authentic is now a replay
        again = [-1] * len(messages)
        receiver.open_batch([bytearray(m) + bytearray(slack) for m in messages],
                            [len(m) for m in messages], again)
        outcomes.append((ok, results, plain, again))
    assert outcomes[0] == outcomes[1]
    ok, results, plain, _ = outcomes[0]
    assert ok == sum(r == TR["pure"].OK for r in results)
    for k, (index, _, _, _) in enumerate(items):
        event(f"open_batch result {results[k]}")
        if results[k] == TR["pure"].OK:  # only authentic bytes open, to their own zero-padded plaintext
            size = (index * 7) % 64
            assert plain[k] == bytes([index]) * size + bytes(len(plain[k]) - size)


# ---- VXLAN: decap_batch, scan_tx, flow_hash ---------------------------------------------------

VNI = 42
OWN = bytes.fromhex("0200000000aa")


def vxlan_header(vni: int, flags: int = 0x08) -> bytes:
    return bytes([flags, 0, 0, 0]) + (vni << 8).to_bytes(4, "big")


macs = st.one_of(st.sampled_from([OWN, bytes(6), b"\xff" * 6, bytes.fromhex("020000000001"),
                                  bytes.fromhex("020000000002"), bytes.fromhex("010000000003")]),
                 st.binary(min_size=6, max_size=6))
ethertypes = st.one_of(st.sampled_from([b"\x08\x06", b"\x08\x00", b"\x86\xdd", b"\x81\x00",
                                        b"\x08", b""]), st.binary(min_size=2, max_size=2))
frames = st.builds(lambda d, s, et, rest: d + s + et + rest, macs, macs, ethertypes,
                   st.binary(max_size=60))
rx_datagram = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda f: vxlan_header(VNI) + f, frames),
    st.builds(lambda h, f: h + f, st.sampled_from([vxlan_header(VNI + 1), vxlan_header(VNI, 0x0C),
                                                   vxlan_header(VNI, 0),
                                                   vxlan_header(VNI)[:7] + b"\x01"]), frames),
)
rx_sources = st.sampled_from([("10.0.0.2", 4789), ("10.0.0.3", 4789), ("fd00::2", 4789, 0, 0)])


@fuzz_settings(300)
@given(st.lists(st.tuples(rx_datagram, rx_sources, st.integers(-3, 3)), max_size=16),
       st.booleans(), st.sampled_from([OWN, b""]))
def test_decap_batch_twins_agree(items: list[tuple[bytes, Any, int]], learning: bool,
                                 own: bytes) -> None:
    def make() -> tuple[Any, ...]:
        # lengths may claim a few bytes more or fewer than the datagram (the buffer is exact)
        bufs = [bytearray(d) for d, _, _ in items]
        lengths = [max(0, len(d) + delta) for d, _, delta in items]
        return (bufs, lengths, len(items), VNI, own, learning, [s for _, s, _ in items],
                bytearray(len(items)), [])

    (native, nargs), (pure, pargs) = both(lambda m, *a: m.decap_batch(*a), make, VX)
    assert native == pure
    assert bytes(nargs[7]) == bytes(pargs[7]) and nargs[8] == pargs[8]  # verdicts, runs
    if not isinstance(native[0], str):
        verdicts = bytes(nargs[7])
        assert native[0] == verdicts.count(0)


@fuzz_settings(300)
@given(st.lists(st.tuples(frames, st.integers(-20, 4)), max_size=16),
       st.sampled_from([0, 8, 16, -1]), st.integers(0, 2**32 - 1), st.booleans(),
       st.sampled_from([(32768, 61000), (1, 65535), (4789, 4790), (100, 100)]))
def test_scan_tx_twins_agree(items: list[tuple[bytes, int]], headroom: int, seed: int,
                             split_arp: bool, ports: tuple[int, int]) -> None:
    lo, hi = ports

    def make() -> tuple[Any, ...]:
        room = max(headroom, 0)
        bufs = [bytearray(room) + bytearray(f) for f, _ in items]
        lengths = [len(f) + delta for f, delta in items]
        return (bufs, lengths, len(items), headroom, seed, lo, hi, split_arp,
                bytearray(len(items)), array("H", [0] * len(items)), [])

    (native, nargs), (pure, pargs) = both(lambda m, *a: m.scan_tx(*a), make, VX)
    assert native == pure, (native, pure)
    if isinstance(native, tuple):
        return
    verdicts_n, verdicts_p = bytes(nargs[8]), bytes(pargs[8])
    assert verdicts_n == verdicts_p and nargs[10] == pargs[10]
    sendable = [i for i, v in enumerate(verdicts_n) if v != VX["pure"].TX_TOO_SHORT]
    assert [nargs[9][i] for i in sendable] == [pargs[9][i] for i in sendable]
    for i in sendable:
        assert lo <= nargs[9][i] < hi or lo == hi == nargs[9][i]


@fuzz_settings(300)
@given(st.binary(max_size=120), st.integers(0, 20), st.integers(0, 2**32 - 1))
def test_flow_hash_twins_agree(frame: bytes, offset: int, seed: int) -> None:
    offset = min(offset, len(frame))
    hashes = [VX[n].flow_hash(bytearray(frame), offset, seed) for n in VX]
    assert hashes[0] == hashes[1]


# ---- TUN: TunBatch.read (virtio-net header, GSO super-packets) --------------------------------

VNET = struct.Struct("=BBHHHH")


@contextlib.contextmanager
def device_pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """One fresh (kernel side, our side) socketpair per twin (as conftest ``device_pair``)."""
    pairs = []
    try:
        for _ in range(2):
            kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            pairs.append((kernel, ours))
            for sock in (kernel, ours):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setblocking(False)
        yield pairs
    finally:
        for kernel, ours in pairs:
            kernel.close()
            ours.close()


def tcp_super(version: int, payload: int, options: bytes, flags: int) -> bytes:
    """An IPv4/IPv6 TCP packet with ``payload`` bytes (any checksum: the parser must cope)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 7, 9, ((20 + len(options)) // 4) << 4, flags,
                      1000, 0x1234, 0) + options + bytes(range(256)) * (payload // 256) \
        + bytes(payload % 256)
    if version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                         bytes([10, 1, 2, 3]), bytes([10, 9, 8, 7]))
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(15) + b"\1", bytes(15) + b"\2")
    return ip + tcp


vnet_headers = st.builds(
    VNET.pack,
    st.sampled_from([0, 1, 2, 3, 0x80]),
    st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 0x80, 0x7F]),
    st.one_of(st.sampled_from([40, 52, 60, 72]), st.integers(0, 0xFFFF)),
    st.one_of(st.sampled_from([0, 1, 536, 1200, 1368, 1448]), st.integers(0, 0xFFFF)),
    st.one_of(st.sampled_from([20, 40, 0]), st.integers(0, 0xFFFF)),
    st.one_of(st.sampled_from([16, 6]), st.integers(0, 0xFFFF)),
)
tun_packets = st.one_of(
    st.binary(max_size=100),
    st.builds(tcp_super, st.sampled_from([4, 6]), st.integers(0, 9000),
              st.sampled_from([b"", bytes([1, 1, 8, 10]) + bytes(8), b"\2\4\5\xb4"]),
              st.sampled_from([0x10, 0x18, 0x19, 0x02, 0x90])),
    st.builds(lambda p, cut: p[:cut], st.builds(tcp_super, st.sampled_from([4, 6]),
                                                 st.integers(0, 3000), st.just(b""), st.just(0x10)),
              st.integers(0, 80)),
)


@st.composite
def consistent_super(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A TCP super-packet with the header the kernel would give it, sometimes one field off."""
    version = draw(st.sampled_from([4, 6]))
    options = draw(st.sampled_from([b"", bytes([1, 1, 8, 10]) + bytes(8), b"\2\4\5\xb4"]))
    packet = tcp_super(version, draw(st.integers(0, 12000)), options,
                       draw(st.sampled_from([0x10, 0x18, 0x19, 0x02, 0x90, 0x11])))
    l4 = 20 if version == 4 else 40
    fields = [1, (1 if version == 4 else 4) | draw(st.sampled_from([0, 0, 0x80])),
              l4 + 20 + len(options), draw(st.sampled_from([7, 536, 1200, 1368, 1448, 9000])),
              l4, 16]
    if draw(st.booleans()):
        fields[draw(st.integers(0, 5))] = draw(st.integers(0, 0xFFFF))
        fields[0] &= 0xFF
        fields[1] &= 0xFF
    return VNET.pack(*fields), packet


@fuzz_settings(200)
@given(st.lists(st.one_of(st.tuples(vnet_headers, tun_packets), consistent_super()),
                min_size=1, max_size=4),
       st.sampled_from([1, 3, 64]), st.sampled_from([1280, 1420, 9000]),
       st.sampled_from([1600, 9100]))
def test_tun_read_twins_agree(items: list[tuple[bytes, bytes]], slots: int, mtu: int,
                              size: int) -> None:
    with device_pairs() as pairs:
        seen = [read_everything(kernel, ours, IO[name], items, slots, mtu, size)
                for (kernel, ours), name in zip(pairs, ("cython", "pure"), strict=True)]
    assert seen[0] == seen[1]
    event(f"super-packets {min(seen[0][2], 2)}")
    for reason in seen[0][1]:
        event(f"TunBatch error {reason}")
    for segment in seen[0][0]:
        assert len(segment) <= size - 16


def read_everything(kernel: socket.socket, ours: socket.socket, io: Any,
                    items: list[tuple[bytes, bytes]], slots: int, mtu: int, size: int
                    ) -> tuple[list[bytes], dict[str, int], int]:
    """Send the datagrams to the fake TUN fd and read with ``io.TunBatch`` until drained."""
    for header, packet in items:
        kernel.send(header + packet)
    batch = io.TunBatch(ours.fileno())
    bufs = [bytearray(size) for _ in range(slots)]
    lengths = [0] * slots
    out: list[bytes] = []
    for _ in range(70000):  # a 64 KiB super-packet cut into 1-byte segments, one slot a read
        try:
            count = batch.read(bufs, lengths, 16, mtu)
        except Exception as exc:
            out.append(type(exc).__name__.encode())
            break
        if count == 0 and batch.pending == 0:
            break
        out.extend(bytes(bufs[i][16 : 16 + lengths[i]]) for i in range(count))
    else:
        raise AssertionError("the reader never drained")
    return out, dict(batch.errors), batch.super_packets
