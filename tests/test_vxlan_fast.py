"""The VXLAN per-packet loops (``tunnel.vxlan._fast`` and its pure twin ``fast_ref``), the
engine's buffer-batch forms built on them, and the batch senders / TAP I/O.

Every test runs against both implementations (``impl`` fixture); the Cython one is skipped
only under WGPY_PURE=1, and a missing build is an error (as ``tests/conftest.py`` says).
Results are checked against independent references: a flow hash and source port written here
from their definition (``_oracle_flow_hash``), a straightforward checksum,
``header.check_header`` and the engine's per-packet forms.
"""

from __future__ import annotations

import os
import socket
import struct
from array import array
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vxlan_wire import oracle_flow_hash, oracle_port
from tunnel.vxlan import fast as fast_select
from tunnel.vxlan import fast_ref, flow
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.fdb import Remote
from tunnel.vxlan.header import check_header, encode_header
from tunnel.vxlan.sockets import POOL_SIZE, PoolSender, RawSender, open_pool

IMPLS = ["pure", "cython"]


def _load(name: str) -> ModuleType:
    """The implementation ``name``; ImportError (a missing build) fails the test."""
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython implementation")
    return fast_select.load(name)


def _impls() -> list[ModuleType]:
    return [fast_select.load(name) for name in IMPLS
            if name == "pure" or os.environ.get("WGPY_PURE") != "1"]


def _oracle_flow_hash(frame: bytes, offset: int = 0, seed: int = 0) -> int:
    """The flow hash of ``frame[offset:]`` from its definition (``tests/vxlan_wire.py``)."""
    return oracle_flow_hash(frame[offset:], seed)


def _oracle_source_port(frame: bytes, port_min: int, port_max: int, seed: int) -> int:
    """The kernel's udp_flow_src_port scaling: hash ^= hash << 16 (32 bits), then
    ``min + ((hash * (max - min)) >> 32)``."""
    return oracle_port(_oracle_flow_hash(frame, 0, seed), port_min, port_max)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return _load(request.param)


def _reference_checksum(src: bytes, dst: bytes, udp: bytes) -> int:
    data = src + dst + struct.pack(">BBH", 0, 17, len(udp)) + udp
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
MAC_OWN = bytes.fromhex("02000000ffff")


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes = b"") -> bytes:
    return dst + src + struct.pack(">H", ethertype) + payload


def ipv4_tcp(sport: int, dport: int, src: str = "10.0.0.1", dst: str = "10.0.0.2",
             frag: int = 0, proto: int = 6) -> bytes:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, frag, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + struct.pack(">HH", sport, dport) + bytes(16)


def ipv6_udp(sport: int, dport: int) -> bytes:
    ip = struct.pack(">IHBB16s16s", 6 << 28, 8, 17, 64,
                     socket.inet_pton(socket.AF_INET6, "fd00::1"),
                     socket.inet_pton(socket.AF_INET6, "fd00::2"))
    return ip + struct.pack(">HHHH", sport, dport, 8, 0)


FRAMES = [
    eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1000, 80)),
    eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1000, 80, frag=0x2000)),
    eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1000, 80, proto=1)),
    eth(MAC_B, MAC_A, 0x86DD, ipv6_udp(53, 5353)),
    eth(MAC_B, MAC_A, 0x8100, b"\x00\x05\x08\x00" + ipv4_tcp(7, 9)),
    eth(MAC_B, MAC_A, 0x0806, bytes(28)),
    eth(MAC_B, MAC_A, 0x0800, b"\x45\x00"),  # truncated IPv4
    b"\x01\x02\x03",  # shorter than Ethernet
]


# ---- flow hash and checksum ---------------------------------------------------------------------


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("seed", [0, 0xDEADBEEF])
def test_flow_hash_matches_the_definition(impl: ModuleType, frame: bytes, seed: int) -> None:
    padded = b"\xaa" * 5 + frame
    assert impl.flow_hash(padded, 5, seed) == _oracle_flow_hash(padded, 5, seed)
    assert flow.flow_hash(padded, 5, seed) == _oracle_flow_hash(padded, 5, seed)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=120), seed=st.integers(0, 2**32 - 1),
       ethertype=st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806]))
def test_flow_hash_fuzz_matches_the_definition(data: bytes, seed: int, ethertype: int) -> None:
    frame = eth(MAC_B, MAC_A, ethertype, data)
    want = _oracle_flow_hash(frame, 0, seed)
    for module in _impls():
        assert module.flow_hash(frame, 0, seed) == want
    assert flow.source_port(frame, 0, 1000, 60000, seed) == _oracle_source_port(frame, 1000, 60000, seed)


def test_flow_hash_separates_flows(impl: ModuleType) -> None:
    hashes = {impl.flow_hash(eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(p, 80))) for p in range(1000, 1064)}
    assert len(hashes) == 64


@pytest.mark.parametrize("size", [14, 15, 60, 1449, 1450, 9000])
def test_udp_checksum_matches_reference(impl: ModuleType, size: int) -> None:
    frame = bytes((i * 37 + size) & 0xFF for i in range(size))
    src, dst = socket.inet_aton("10.1.2.3"), socket.inet_aton("192.168.200.7")
    pseudo = impl.pseudo_sum("10.1.2.3", "192.168.200.7")
    udp = struct.pack(">HHHH", 40000, 4789, 16 + size, 0) + encode_header(42) + frame
    assert impl.udp_checksum(pseudo, 40000, 4789, 42, frame) == _reference_checksum(src, dst, udp)


# ---- decap -------------------------------------------------------------------------------------


def _datagram(first: int, second: int, frame: bytes) -> bytes:
    return struct.pack(">II", first, second) + frame


GOOD = eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 2))
CASES: list[tuple[bytes, int]] = [
    (_datagram(0x08000000, 42 << 8, GOOD), fast_ref.RX_OK),
    (b"\x08\x00\x00", fast_ref.RX_TOO_SHORT),
    (_datagram(0x08000000, 42 << 8, bytes(6)), fast_ref.RX_TOO_SHORT),
    (_datagram(0, 42 << 8, GOOD), fast_ref.RX_NO_I_FLAG),
    (_datagram(0x08000000, 43 << 8, GOOD), fast_ref.RX_WRONG_VNI),
    (_datagram(0x08000001, 42 << 8, GOOD), fast_ref.RX_RESERVED_BITS),
    (_datagram(0x88000000, 42 << 8, GOOD), fast_ref.RX_RESERVED_BITS),
    (_datagram(0x08000000, 42 << 8 | 1, GOOD), fast_ref.RX_RESERVED_BITS),
    (_datagram(0x08000000, 42 << 8, eth(MAC_B, MAC_OWN, 0x0800, bytes(46))), fast_ref.RX_OWN_SOURCE_MAC),
    (_datagram(0x08000000, 42 << 8, eth(MAC_B, b"\x01" + bytes(5), 0x0800, bytes(46))),
     fast_ref.RX_INVALID_SOURCE_MAC),
    (_datagram(0x08000000, 42 << 8, eth(MAC_B, bytes(6), 0x0800, bytes(46))),
     fast_ref.RX_INVALID_SOURCE_MAC),
]


def _batch(datagrams: list[bytes], size: int = 2048) -> tuple[list[bytearray], list[int]]:
    bufs = [bytearray(size) for _ in datagrams]
    for buf, d in zip(bufs, datagrams, strict=True):
        buf[: len(d)] = d
    return bufs, [len(d) for d in datagrams]


@pytest.mark.parametrize("learning", [True, False])
def test_decap_batch_verdicts(impl: ModuleType, learning: bool) -> None:
    datagrams = [d for d, _ in CASES]
    bufs, lengths = _batch(datagrams)
    verdicts = bytearray(len(bufs))
    runs: list[int] = []
    accepted, nbytes = impl.decap_batch(bufs, lengths, len(bufs), 42, MAC_OWN, learning,
                                        ["10.0.0.9"] * len(bufs), verdicts, runs)
    want = [code for _, code in CASES]
    if not learning:
        want = [fast_ref.RX_OK if c == fast_ref.RX_INVALID_SOURCE_MAC else c for c in want]
    assert list(verdicts) == want
    assert impl.RX_REASONS[fast_ref.RX_WRONG_VNI] == "wrong_vni"
    assert accepted == want.count(fast_ref.RX_OK)
    assert nbytes == sum(len(d) - 8 for d, c in zip(datagrams, want, strict=True) if c == 0)
    # the header rules agree with header.check_header
    for d, code in zip(datagrams, want, strict=True):
        reason = check_header(d, 42)
        if code in (fast_ref.RX_TOO_SHORT, fast_ref.RX_NO_I_FLAG, fast_ref.RX_WRONG_VNI,
                    fast_ref.RX_RESERVED_BITS):
            assert reason == fast_ref.RX_REASONS[code]
    assert runs == ([0] if learning else [])


def test_decap_batch_runs(impl: ModuleType) -> None:
    a = _datagram(0x08000000, 42 << 8, eth(MAC_B, MAC_A, 0x0800, bytes(46)))
    b = _datagram(0x08000000, 42 << 8, eth(MAC_A, MAC_B, 0x0800, bytes(46)))
    bad = _datagram(0x08000000, 43 << 8, GOOD)
    datagrams = [a, a, bad, a, b, b, a, a, a]
    ip1, ip2 = "10.0.0.1", "".join(["10.0.", "0.1"])  # equal, not identical
    sources = [ip1, ip1, ip1, ip2, ip1, ip1, ip1, "10.0.0.2", "10.0.0.2"]
    bufs, lengths = _batch(datagrams)
    verdicts = bytearray(len(bufs))
    runs: list[int] = []
    impl.decap_batch(bufs, lengths, len(bufs), 42, b"", True, sources, verdicts, runs)
    assert runs == [0, 4, 6, 7]


def test_decap_batch_rejects_bad_arguments(impl: ModuleType) -> None:
    bufs, lengths = _batch([GOOD])
    with pytest.raises(ValueError):
        impl.decap_batch(bufs, lengths, 2, 42, b"", True, ["x"], bytearray(2), [])
    with pytest.raises(ValueError):
        impl.decap_batch(bufs, lengths, 1, 42, b"", True, [], bytearray(1), [])


# ---- transmit scan -----------------------------------------------------------------------------


def _tx_batch(frames: list[bytes], headroom: int = 8) -> tuple[list[bytearray], list[int]]:
    bufs = [bytearray(headroom + 2048) for _ in frames]
    for buf, f in zip(bufs, frames, strict=True):
        buf[headroom : headroom + len(f)] = f
    return bufs, [len(f) for f in frames]


@pytest.mark.parametrize("split_arp", [False, True])
def test_scan_tx(impl: ModuleType, split_arp: bool) -> None:
    f1 = eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1000, 80))
    f2 = eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1001, 80))
    arp = eth(MAC_B, MAC_A, 0x0806, bytes(28))
    other = eth(MAC_A, MAC_B, 0x0800, ipv4_tcp(5, 6))
    frames = [f1, f2, b"short", f1, arp, f2, other, other]
    bufs, lengths = _tx_batch(frames)
    verdicts = bytearray(len(frames))
    sports = array("H", bytes(2 * len(frames)))
    runs: list[tuple[int, int, int, int]] = []
    ok = impl.scan_tx(bufs, lengths, len(frames), 8, 7, 32768, 61000, split_arp, verdicts,
                      sports, runs)
    assert ok == 7
    assert verdicts[2] == impl.TX_TOO_SHORT
    assert verdicts[4] == (impl.TX_ARP if split_arp else impl.TX_OK)
    for i, f in enumerate(frames):
        if i != 2:
            assert sports[i] == _oracle_source_port(f, 32768, 61000, 7)
    n = len
    if split_arp:
        assert runs == [(0, 4, 3, n(f1) * 2 + n(f2)), (4, 5, 1, n(arp)), (5, 6, 1, n(f2)),
                        (6, 8, 2, 2 * n(other))]
    else:
        assert runs == [(0, 6, 5, n(f1) * 2 + n(f2) * 2 + n(arp)), (6, 8, 2, 2 * n(other))]


def test_write_headers(impl: ModuleType) -> None:
    bufs, _ = _tx_batch([GOOD, GOOD, GOOD])
    verdicts = bytearray([impl.TX_OK, impl.TX_TOO_SHORT, impl.TX_ARP])
    impl.write_headers(bufs, verdicts, 0, 3, 8, 0x123456)
    assert bufs[0][:8] == encode_header(0x123456) == bufs[2][:8]
    assert bufs[1][:8] == bytes(8)
    with pytest.raises(ValueError):
        impl.write_headers(bufs, verdicts, 0, 3, 4, 1)


# ---- the engine's buffer-batch forms agree with its per-packet forms ----------------------------


def _engine(impl: ModuleType, **kw: Any) -> VxlanEngine:
    config = VxlanConfig(vni=42, remote="10.0.0.1", name="vxf0", **kw)
    engine = VxlanEngine(config, 0.0, impl)
    engine.set_own_mac(MAC_OWN)
    return engine


@pytest.mark.parametrize("proxy", [False, True])
def test_receive_bufs_matches_receive(impl: ModuleType, proxy: bool) -> None:
    datagrams = [d for d, _ in CASES] * 2
    sources = ["10.0.0.5"] * 5 + ["10.0.0.6"] * (len(datagrams) - 5)
    batch, single = _engine(impl, proxy=proxy), _engine(impl, proxy=proxy)
    batch.fdb.add(MAC_B, "10.0.0.7", now=0.0)  # permanent: a claim from elsewhere is a drop
    single.fdb.add(MAC_B, "10.0.0.7", now=0.0)
    claim = _datagram(0x08000000, 42 << 8, eth(MAC_A, MAC_B, 0x0800, bytes(46)))
    datagrams += [claim, claim]
    sources += ["10.0.0.6", "10.0.0.6"]
    bufs, lengths = _batch(datagrams)
    verdicts = bytearray(len(bufs))
    delivered = batch.receive_bufs(bufs, lengths, sources, len(bufs), 5.0, verdicts)
    want = [single.receive(d, (s, 4789), 5.0) for d, s in zip(datagrams, sources, strict=True)]
    assert delivered == sum(w is not None for w in want)
    for i, w in enumerate(want):
        assert (verdicts[i] == 0) == (w is not None)
        if w is not None:
            assert bytes(bufs[i][8 : lengths[i]]) == bytes(w)
    assert batch.drops == single.drops and batch.drops["static_entry_conflict"] == 2
    assert batch.stats() == single.stats()
    assert batch.fdb.show(5.0) == single.fdb.show(5.0)
    assert any("10.0.0.6" in line for line in batch.fdb.show())


def test_receive_bufs_moves_a_mac_once(impl: ModuleType) -> None:
    engine = _engine(impl)
    d = _datagram(0x08000000, 42 << 8, eth(MAC_B, MAC_A, 0x0800, bytes(46)))
    bufs, lengths = _batch([d] * 6)
    sources = ["10.0.0.5"] * 3 + ["10.0.0.6"] * 3
    engine.receive_bufs(bufs, lengths, sources, 6, 1.0, bytearray(6))
    entry = engine.fdb.get(MAC_A)
    assert entry is not None and entry.remotes[0].ip == "10.0.0.6"
    assert engine.fdb.migrated_count == 1 and engine.rx_packets == 6


@pytest.mark.parametrize("proxy", [False, True])
def test_transmit_bufs_matches_transmit(impl: ModuleType, proxy: bool) -> None:
    batch, single = _engine(impl, proxy=proxy), _engine(impl, proxy=proxy)
    for engine in (batch, single):
        engine.fdb.append(bytes(6), "10.0.0.2", now=0.0)
        engine.fdb.append(bytes(6), "10.0.0.3", now=0.0, vni=77)
        engine.fdb.add(MAC_B, "10.0.0.9", now=0.0, permanent=False)
        engine.neigh.learn(socket.inet_aton("192.168.1.9"), MAC_B, 0.0)
    arp_request = eth(b"\xff" * 6, MAC_A, 0x0806, struct.pack(
        ">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, socket.inet_aton("192.168.1.1"),
        bytes(6), socket.inet_aton("192.168.1.9")))
    frames = [eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 2)), eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 3)),
              b"tiny", arp_request, eth(MAC_OWN, MAC_A, 0x0800, ipv4_tcp(9, 9)),
              eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 2))]
    bufs, lengths = _tx_batch(frames)
    verdicts = bytearray(len(frames))
    sports = array("H", bytes(2 * len(frames)))
    plan = batch.transmit_bufs(bufs, lengths, len(frames), 3.0, 8, verdicts, sports)
    want = single.transmit_batch(frames, 3.0)
    got = []
    for start, end, remote in plan.items:
        for i in range(start, end):
            if verdicts[i] in (impl.TX_OK, impl.TX_ARP):
                got.append((encode_header(remote.vni) + frames[i], (remote.ip, remote.port),
                            sports[i]))
    assert sorted(got) == sorted((bytes(p), a, s) for p, a, s in want.datagrams)
    assert plan.local == want.local
    assert batch.stats() == single.stats()
    assert (verdicts[3] == impl.TX_DONE) == proxy


# ---- TAP batch I/O (a SOCK_SEQPACKET pair behaves like a TAP fd: one frame per read) ------------


@pytest.fixture
def seqpacket() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_plain_tap_batch_read_and_write(io: ModuleType, seqpacket: tuple[socket.socket, socket.socket]) -> None:
    """A plain TAP (``WGPY_NO_OFFLOAD=1``) is read and written by ``TunBatch`` without the
    virtio-net header: frames at the headroom, accepted frames written from the offset."""
    ours, peer = seqpacket
    tap = io.TunBatch(ours.fileno(), vnet_hdr=False, l2=14)
    frames = [bytes([i]) * (60 + i) for i in range(5)]
    for f in frames:
        peer.send(f)
    bufs = [bytearray(8 + 2048) for _ in range(4)]
    lengths = [0] * 4
    assert tap.read(bufs, lengths, 8, 1500) == 4
    assert [bytes(b[8 : 8 + n]) for b, n in zip(bufs, lengths, strict=True)] == frames[:4]
    assert tap.read(bufs, lengths, 8, 1500) == 1 and bytes(bufs[0][8 : 8 + lengths[0]]) == frames[4]
    assert tap.read(bufs, lengths, 8, 1500) == 0  # EAGAIN ends the batch
    # write_slots: verdict 0 only, from the offset
    out = [bytearray(b"HDRHDRHD" + f) for f in frames[:3]]
    assert tap.write_slots(out, [len(b) for b in out], 8, bytearray([0, 5, 0]), 3) == 2
    assert peer.recv(4096) == frames[0] and peer.recv(4096) == frames[2]
    assert tap.write([b"hello", memoryview(b"world")]) == 2
    assert peer.recv(100) == b"hello" and peer.recv(100) == b"world"


def test_plain_tap_batch_errors(io: ModuleType, seqpacket: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = seqpacket
    tap = io.TunBatch(ours.fileno(), vnet_hdr=False, l2=14)
    peer.close()
    assert tap.write([b"x" * 60]) == 0
    assert sum(tap.errors.values()) == 1
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        io.TunBatch(r, vnet_hdr=False, l2=14).read([bytearray(100)], [0], 8, 1500)


# ---- the batch senders, over loopback --------------------------------------------------------


def _frames_for(count: int) -> list[bytes]:
    return [eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(2000 + i % 3, 80) + bytes(i * 7)) for i in range(count)]


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_raw_sender_batch_on_the_wire(impl: ModuleType, family: socket.AddressFamily, host: str) -> None:
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    config = VxlanConfig(vni=42, remote=host, dstport=port)
    sender = RawSender(config, impl)
    try:
        frames = _frames_for(6) + [b"short"]
        bufs, lengths = _tx_batch(frames)
        verdicts = bytearray(len(frames))
        sports = array("H", bytes(2 * len(frames)))
        impl.scan_tx(bufs, lengths, len(frames), 8, 1, 40000, 50000, False, verdicts, sports, [])
        other = "127.0.0.2" if family == socket.AF_INET else "::2"  # nobody listens: dropped
        items = [(0, 4, Remote(host, port, 42)), (4, 7, Remote(host, port, 7)),
                 (0, 1, Remote(other, port, 42))]
        sent, full, errors = sender.send_batch(bufs, lengths, 8, verdicts, sports, items)
        assert (sent, full, errors) == (7, 0, 0)
        got = [receiver.recvfrom(65536) for _ in range(6)]  # the kernel drops a bad checksum
        for i, (data, src) in enumerate(got):
            vni = 42 if i < 4 else 7
            assert data == encode_header(vni) + frames[i] and src[1] == sports[i]
        # a remote of the other family cannot be sent to from this socket: counted, not raised
        wrong = Remote("10.0.0.1" if family == socket.AF_INET6 else "::1", port, 42)
        assert sender.send_batch(bufs, lengths, 8, verdicts, sports, [(0, 2, wrong)]) == (0, 0, 2)
    finally:
        sender.close()
        receiver.close()


UDP_GRO = 104


def _receiver(family: socket.AddressFamily, host: str, gro: bool = False) -> socket.socket:
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.settimeout(5)
    if gro:
        receiver.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    return receiver


def _scan(impl: ModuleType, frames: list[bytes]) -> tuple[list[bytearray], list[int], bytearray, array[int]]:
    bufs, lengths = _tx_batch(frames)
    verdicts = bytearray(len(frames))
    sports = array("H", bytes(2 * len(frames)))
    impl.scan_tx(bufs, lengths, len(frames), 8, 1, 40000, 50000, False, verdicts, sports, [])
    return bufs, lengths, verdicts, sports


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_pool_sender_batch_on_the_wire(impl: ModuleType, family: socket.AddressFamily, host: str) -> None:
    """Each frame leaves behind its remote's VXLAN header, from the pool socket its hashed port
    picks (one flow, one source port), in order; a short frame is not sent."""
    receiver = _receiver(family, host)
    port = receiver.getsockname()[1]
    sender = PoolSender(VxlanConfig(vni=42, remote=host, dstport=port), impl)
    try:
        assert len(sender.ports) == POOL_SIZE and len(set(sender.ports)) == POOL_SIZE
        frames = [eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 2) + bytes(100))] * 5 + _frames_for(3)
        frames.append(b"short")
        bufs, lengths, verdicts, sports = _scan(impl, frames)
        items = [(0, 5, Remote(host, port, 42)), (0, 2, Remote(host, port, 9)),
                 (5, 9, Remote(host, port, 42))]
        assert sender.send_batch(bufs, lengths, 8, verdicts, sports, items) == (10, 0, 0)
        got = [receiver.recvfrom(65536) for _ in range(10)]
        order = [*range(5), 0, 1, 5, 6, 7]
        vnis = [42] * 5 + [9] * 2 + [42] * 3
        for (data, src), i, vni in zip(got, order, vnis, strict=True):
            assert data == encode_header(vni) + frames[i]
            assert src[1] == sender.ports[sports[i] % POOL_SIZE]
        assert {src[1] for _, src in got[:5]} == {sender.ports[sports[0] % POOL_SIZE]}
        # nothing is written into the caller's buffers
        assert [bytes(b[8 : 8 + n]) for b, n in zip(bufs, lengths, strict=True)] == frames
        # a remote of the other family cannot be sent to from these sockets: counted, not raised
        wrong = Remote("10.0.0.1" if family == socket.AF_INET6 else "::1", port, 42)
        assert sender.send_batch(bufs, lengths, 8, verdicts, sports, [(0, 2, wrong)]) == (0, 0, 2)
    finally:
        sender.close()
        receiver.close()


def _gro_messages(receiver: socket.socket, total: int) -> list[tuple[bytes, int]]:
    """Receive ``total`` bytes as (message, segment size) pairs (0: not coalesced)."""
    out: list[tuple[bytes, int]] = []
    got = 0
    while got < total:
        data, ancdata, _flags, _src = receiver.recvmsg(65536, socket.CMSG_SPACE(4))
        size = 0
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_UDP and kind == UDP_GRO:
                size = struct.unpack("=i", value[:4])[0]
        out.append((data, size))
        got += len(data)
    return out


def test_gso_batch_sends_runs_as_one_message(impl: ModuleType) -> None:
    """A run of equal-sized datagrams of one flow to one remote leaves as one GSO message (a
    GRO receiver on loopback gets it back as one buffer with its segment size); the last of a
    run may be shorter; a larger one starts a new message."""
    receiver = _receiver(socket.AF_INET, "127.0.0.1", gro=True)
    port = receiver.getsockname()[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    batch = impl.GsoBatch([sock.fileno()])
    try:
        flow = eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 2))
        frames = [flow + bytes(1000)] * 6 + [flow + bytes(300)] + [flow + bytes(1200)] * 2
        bufs, lengths, verdicts, sports = _scan(impl, frames)
        dest = impl.Dest("127.0.0.1", port, 42)
        assert batch.send(bufs, lengths, 8, verdicts, sports, [(0, 9, dest)]) == (9, 0, 0)
        wire = [encode_header(42) + f for f in frames]
        messages = _gro_messages(receiver, sum(map(len, wire)))
        assert b"".join(m for m, _ in messages) == b"".join(wire)
        assert messages[0] == (b"".join(wire[:7]), len(wire[0]))
        assert batch.gso and not batch.fallbacks
    finally:
        batch.close()
        sock.close()
        receiver.close()


def test_gso_refused_falls_back_to_datagrams(impl: ModuleType) -> None:
    """The kernel refuses UDP GSO on a socket without UDP checksums (SO_NO_CHECK): GsoBatch
    says so once, turns GSO off and sends every datagram on its own."""
    receiver = _receiver(socket.AF_INET, "127.0.0.1")
    port = receiver.getsockname()[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    sock.setblocking(False)
    batch = impl.GsoBatch([sock.fileno()])
    try:
        frames = [eth(MAC_B, MAC_A, 0x0800, ipv4_tcp(1, 2) + bytes(500))] * 4
        bufs, lengths, verdicts, sports = _scan(impl, frames)
        dest = impl.Dest("127.0.0.1", port, 5)
        assert batch.send(bufs, lengths, 8, verdicts, sports, [(0, 4, dest)]) == (4, 0, 0)
        assert [receiver.recv(65536) for _ in range(4)] == [encode_header(5) + f for f in frames]
        assert not batch.gso and len(batch.fallbacks) == 1 and "GSO" in batch.fallbacks[0]
    finally:
        batch.close()
        sock.close()
        receiver.close()


def test_gso_batch_rejects_bad_arguments(impl: ModuleType) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(ValueError):
            impl.GsoBatch([])
        batch = impl.GsoBatch([sock.fileno()])
        frames = _frames_for(2)
        bufs, lengths, verdicts, sports = _scan(impl, frames)
        v6 = impl.Dest("::1", 4789, 1)
        with pytest.raises(ValueError):
            batch.send(bufs, lengths, 8, verdicts, sports, [(0, 2, v6)])
        with pytest.raises(ValueError):
            batch.send(bufs, lengths, 8, verdicts, sports, [(0, 3, impl.Dest("127.0.0.1", 1, 1))])
        lengths[0] = len(bufs[0])  # past the end of its buffer
        with pytest.raises(ValueError):
            batch.send(bufs, lengths, 8, verdicts, sports, [(0, 1, impl.Dest("127.0.0.1", 1, 1))])
        batch.close()
    finally:
        sock.close()


def test_pool_ports_come_from_a_configured_srcport_range() -> None:
    """With ``srcport`` set, the pool binds free ports of ``[min, max)`` (a busy one is
    skipped); a range smaller than the pool gives fewer sockets; none free is an error."""
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        lo = taken - 2 if taken > 1026 else taken
        config = VxlanConfig(vni=1, remote="127.0.0.1", local="127.0.0.1", srcport=(lo, lo + 4))
        socks = open_pool(config)
        try:
            ports = {s.getsockname()[1] for s in socks}
            assert ports and ports <= set(range(lo, lo + 4)) - {taken}
            assert len(socks) == len(ports) <= 3
        finally:
            for s in socks:
                s.close()
        with pytest.raises(OSError):
            open_pool(VxlanConfig(vni=1, remote="127.0.0.1", local="127.0.0.1",
                                  srcport=(taken, taken + 1)))
    finally:
        busy.close()
