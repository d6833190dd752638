"""Partial inner checksums (issue 11): what a kernel vxlan sends, and what TunBatch makes of it.

The packets are made by a real kernel in this module's fixture: a kernel vxlan in one
namespace talks TCP and UDP (inner IPv4 and IPv6) to a kernel vxlan in another through a plain
UDP socket that records each datagram as a userspace receiver reads it (``tests/vxlan_wire.py
relay``). With default offloads the kernel leaves the inner checksums partial (the field holds
the pseudo-header sum); the fixture asserts that it does, so the tests below cannot pass on
packets that never had the property.

Each test runs both twins (the ``io`` fixture: ``tunnel.io._io`` and ``tunnel.io.io_ref``; a
missing native build is an error) writing through ``TunBatch(verify=True)`` into a
SOCK_SEQPACKET pair standing in for the TAP, and judges the output with ``tests/vxlan_wire.py``
(the test's own RFC 1071 checksum), never with wg-py's.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests import vxlan_wire as wire
from tunnel.lab.netns import Lab, missing_requirements, wait_for

pytestmark = [pytest.mark.netns]

_missing = missing_requirements(("ip", "iperf3", "bridge"))
WIRE = str(Path(wire.__file__).resolve())
VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset


def _kernel_datagrams() -> list[bytes]:
    """VXLAN datagrams a kernel vxlan sent (K -> B), as a UDP socket in B read them."""
    if _missing:
        pytest.skip(_missing)
    lab = Lab(f"vc{__import__('os').getpid() % 10000}")
    try:
        k, b = lab.namespace("k"), lab.namespace("b")
        lab.veth(k, b, ["10.98.0.1/24"], ["10.98.0.2/24"], names=("eth0", "eth0"))
        lab.run(k, ["ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dstport", "4789",
                    "remote", "10.98.0.2", "local", "10.98.0.1", "dev", "eth0"])
        # B's kernel vxlan listens on 4790 behind the relay, and answers K on 4789 directly
        lab.run(b, ["ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dstport", "4790",
                    "local", "10.98.0.2", "nolearning", "dev", "eth0"])
        lab.run(b, ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxlan0",
                    "dst", "10.98.0.1", "port", "4789"])
        for ns, host in ((k, 1), (b, 2)):
            lab.add_address(ns, "vxlan0", f"192.168.98.{host}/24")
            lab.add_address(ns, "vxlan0", f"fd00:98::{host}/64")
            lab.run(ns, ["ip", "link", "set", "vxlan0", "up"])
        record = lab.path("relay.txt")
        relay = lab.spawn(b, [sys.executable, WIRE, "relay", "10.98.0.2", "4789", "4790", "40",
                              str(record)])
        assert wait_for(lambda: "ready" in relay.output() or not relay.alive(), 10.0)
        assert relay.alive(), relay.output()
        assert lab.wait_ping(k, "192.168.98.2") and lab.wait_ping(k, "fd00:98::2")
        for addr in ("192.168.98.2", "fd00:98::2"):
            lab.iperf3(b, k, addr, seconds=1)
        lab.run(k, [sys.executable, "-c", (
            "import socket\n"
            "for fam, ip in ((socket.AF_INET, '192.168.98.2'), (socket.AF_INET6, 'fd00:98::2')):\n"
            "    s = socket.socket(fam, socket.SOCK_DGRAM)\n"
            "    for n in (1, 101, 1000):\n"
            "        s.sendto(bytes(range(256)) * (n // 256) + bytes(n % 256), (ip, 9))\n")])
        # the UDP datagrams last: wait for the last one (1000 bytes over IPv6) to be recorded
        assert wait_for(lambda: any(len(line) == 2 * (8 + 14 + 40 + 8 + 1000)
                                    for line in record.read_text().split()), 5.0)
        relay.stop()
        return [bytes.fromhex(line) for line in record.read_text().split()]
    finally:
        lab.close()


@pytest.fixture(scope="module")
def frames() -> Iterator[list[bytes]]:
    """The inner Ethernet frames (IPv4/IPv6) of what the kernel sent, in order."""
    yield [d[8:] for d in _kernel_datagrams() if d[20:22] in (b"\x08\x00", b"\x86\xdd")]


def _ip(frame: bytes) -> bytes:
    return frame[14:]


def _proto(frame: bytes) -> int:
    ip = _ip(frame)
    return ip[9] if ip[0] >> 4 == 4 else ip[6]


def _pick(frames: list[bytes], version: int, proto: int, kind: str = "partial") -> list[bytes]:
    return [f for f in frames if _ip(f)[0] >> 4 == version and _proto(f) == proto
            and wire.verdict(_ip(f)) == kind]


def _tcp(frame: bytes) -> tuple[int, int, int, int]:
    """(L4 offset in the frame, header end, sequence number, flags) of a TCP frame."""
    ip = _ip(frame)
    l4 = (ip[0] & 15) * 4 if ip[0] >> 4 == 4 else 40
    seq = struct.unpack_from("!I", ip, l4 + 4)[0]
    return 14 + l4, 14 + l4 + (ip[l4 + 12] >> 4) * 4, seq, ip[l4 + 13]


def _segment_run(frames: list[bytes], version: int, count: int = 6) -> list[bytes]:
    """``count`` segments of 1,000 payload bytes cut from a kernel TCP super-segment.

    The UDP socket receives a kernel vxlan's TSO packets whole (a tunnel GSO skb is not
    segmented for a socket that did not ask for UDP GRO: up to 64 KiB of inner TCP in one
    datagram), so the capture holds no MSS-sized runs. They are cut here the way the kernel's
    tcp_gso_segment cuts for a device with checksum offload: headers copied, sequence
    numbers advanced, IP length (and IPv4 id and header checksum) per segment, PSH on the
    last only, and the TCP checksum field = the segment's pseudo-header sum (partial)."""
    mss = 1000
    big = next(f for f in _pick(frames, version, 6) if len(f) - _tcp(f)[1] >= count * mss)
    l4, end, seq, flags = _tcp(big)
    out = []
    for k in range(count):
        seg = bytearray(big[:end] + big[end + k * mss:end + (k + 1) * mss])
        size = len(seg) - 14
        if version == 4:
            struct.pack_into("!HH", seg, 16, size, (struct.unpack_from("!H", big, 18)[0] + k) & 0xFFFF)
            struct.pack_into("!H", seg, 24, 0)
            struct.pack_into("!H", seg, 24, ~wire.ones_sum(bytes(seg[14:34])) & 0xFFFF)
        else:
            struct.pack_into("!H", seg, 18, size - 40)
        struct.pack_into("!I", seg, l4 + 4, (seq + k * mss) & 0xFFFFFFFF)
        seg[l4 + 13] = flags & ~0x08 if k < count - 1 else flags
        info = wire.l4_info(bytes(seg[14:]))
        assert info is not None
        struct.pack_into("!H", seg, l4 + 16, info[3])
        assert wire.verdict(bytes(seg[14:])) == "partial"
        out.append(bytes(seg))
    return out


def _read_all(peer: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(peer.recv(1 << 17))
        except BlockingIOError:
            return out


@pytest.fixture
def tap() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, peer):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def _slots(frames: list[bytes]) -> tuple[list[bytearray], list[int]]:
    bufs = [bytearray(b"VXLANHDR" + f + bytes(16)) for f in frames]
    return bufs, [8 + len(f) for f in frames]


# ---- what the kernel sends -----------------------------------------------------------------


def test_the_kernel_leaves_inner_checksums_partial(frames: list[bytes]) -> None:
    """The premise: over veth with default offloads, the inner TCP and UDP packets of a
    kernel vxlan arrive at a UDP socket with the pseudo-header sum in their checksum field
    (all of the UDP ones, nearly all TCP ones), and none with a wrong one."""
    for version in (4, 6):
        for proto in (6, 17):
            kinds = [wire.verdict(_ip(f)) for f in frames
                     if _ip(f)[0] >> 4 == version and _proto(f) == proto]
            assert set(kinds) <= {"partial", "valid"}, (version, proto, kinds)
            assert kinds.count("partial") >= 0.9 * len(kinds), (version, proto, kinds)
            if proto == 17:
                assert kinds == ["partial"] * 3
    assert len(_pick(frames, 4, 6)) > 20 and len(_pick(frames, 6, 6)) > 20
    # TSO packets arrive whole, far above the MTU (see _segment_run)
    assert max(len(f) for f in _pick(frames, 4, 6)) > 9000


# ---- frame by frame ----------------------------------------------------------------------------


def _samples(frames: list[bytes]) -> list[bytes]:
    """Partial TCP (a SYN, a data segment) and UDP (1, 101, 1000 bytes) of both versions."""
    out = []
    for version in (4, 6):
        tcp = _pick(frames, version, 6)
        out.append(next(f for f in tcp if _tcp(f)[3] & 0x02))  # the SYN
        out.append(next(f for f in tcp if _tcp(f)[1] < len(f)))  # data
        out.extend(_pick(frames, version, 17)[:3])
    return out


def _wrong(frame: bytes) -> bytes:
    """The frame with its checksum field one off: neither valid nor partial."""
    ip = _ip(frame)
    info = wire.l4_info(ip)
    assert info is not None
    where = 14 + info[1] + wire.field_at(info[0])
    value = struct.unpack_from("!H", frame, where)[0]
    out = bytearray(frame)
    struct.pack_into("!H", out, where, value % 0xFFFE + 1)
    assert wire.verdict(bytes(out[14:])) == "wrong"
    return bytes(out)


@pytest.mark.parametrize("gro", [False, True])
def test_vnet_tap_hands_partial_frames_on_with_needs_csum(
        io: ModuleType, frames: list[bytes], tap: tuple[socket.socket, socket.socket],
        gro: bool) -> None:
    """Frame by frame on the vnet_hdr TAP: a partial frame goes out unchanged behind
    NEEDS_CSUM with csum_start/csum_offset at its L4 checksum; a wrong one and a complete one
    go out as they are behind a zeroed header (the stack judges them)."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=gro, l2=14, verify=True)
    partial = _samples(frames)
    complete = [f[:14] + wire.completed(_ip(f)) for f in partial]
    wrong = [_wrong(f) for f in partial]
    sent = [x for trio in zip(partial, complete, wrong, strict=True) for x in trio]
    bufs, lengths = _slots(sent)
    before = [bytes(b) for b in bufs]
    assert batch.write_slots(bufs, lengths, 8, bytearray(len(sent)), len(sent)) == len(sent)
    got = _read_all(peer)
    assert len(got) == len(sent)
    for message, frame in zip(got, sent, strict=True):
        flags, gso, hdr_len, gso_size, start, offset = VNET.unpack_from(message)
        assert message[10:] == frame and gso == 0 and gso_size == 0
        info = wire.l4_info(_ip(frame))
        assert info is not None
        if wire.verdict(_ip(frame)) == "partial":
            assert flags == 1 and start == 14 + info[1] and offset == wire.field_at(info[0])
            assert hdr_len == start + offset + 2
        else:
            assert (flags, hdr_len, start, offset) == (0, 0, 0, 0)
    assert batch.csum_partial == len(partial)
    assert [bytes(b) for b in bufs] == before  # the slots are not written


def test_plain_tap_finishes_partial_frames(io: ModuleType, frames: list[bytes],
                                           tap: tuple[socket.socket, socket.socket]) -> None:
    """Without the virtio-net header a partial frame is finished in software: exactly the
    checksum the test computes from scratch; wrong and complete frames are written as they
    are; the caller's buffer is left alone (the copy is finished)."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=False, l2=14, verify=True)
    partial = _samples(frames)
    sent = [x for f in partial for x in (f, _wrong(f), f[:14] + wire.completed(_ip(f)))]
    bufs, lengths = _slots(sent)
    before = [bytes(b) for b in bufs]
    assert batch.write_slots(bufs, lengths, 8, bytearray(len(sent)), len(sent)) == len(sent)
    got = _read_all(peer)
    want = [f[:14] + wire.completed(_ip(f)) if wire.verdict(_ip(f)) == "partial" else f
            for f in sent]
    assert got == want
    assert all(wire.verdict(_ip(g)) in ("valid", "wrong") for g in got)
    assert batch.csum_partial == len(partial)
    assert [bytes(b) for b in bufs] == before
    # write() takes read-only bytes too
    assert batch.write([bytes(partial[0])]) == 1
    assert _read_all(peer) == [partial[0][:14] + wire.completed(_ip(partial[0]))]


def test_without_verify_nothing_is_touched(io: ModuleType, frames: list[bytes],
                                           tap: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=False, l2=14)
    sent = _samples(frames)
    assert batch.write(sent) == len(sent)
    assert _read_all(peer) == sent and batch.csum_partial == 0


def test_the_zero_edge_of_the_pseudo_header_sum(io: ModuleType, frames: list[bytes],
                                                 tap: tuple[socket.socket, socket.socket]) -> None:
    """When the pseudo-header sum is 0xFFFF, a TCP field of 0xFFFF or 0 (the same one's
    complement zero) is partial; a UDP field of 0 over IPv4 means "no checksum" and is left
    alone. The kernel's packets are shifted to that sum by changing the inner source address
    (IPv4 header checksum fixed)."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=False, l2=14, verify=True)
    out = []
    for proto in (6, 17):
        frame = bytearray(next(f for f in _pick(frames, 4, proto) if len(f) > 60))
        info = wire.l4_info(bytes(frame[14:]))
        assert info is not None
        # add (0xFFFF - P) to the source address's low word: P becomes 0xFFFF
        low = struct.unpack_from("!H", frame, 14 + 14)[0]
        struct.pack_into("!H", frame, 14 + 14, wire.ones_sum(b"", low + 0xFFFF - info[3]))
        struct.pack_into("!H", frame, 14 + 10, 0)
        struct.pack_into("!H", frame, 14 + 10, ~wire.ones_sum(bytes(frame[14:34])) & 0xFFFF)
        assert wire.l4_info(bytes(frame[14:]))[3] == 0xFFFF  # type: ignore[index]
        where = 14 + info[1] + wire.field_at(proto)
        for field in (0xFFFF, 0):
            struct.pack_into("!H", frame, where, field)
            out.append(bytes(frame))
    assert batch.write(out) == 4
    got = _read_all(peer)
    assert [wire.verdict(_ip(g)) for g in got] == ["valid", "valid", "valid", "none"]
    assert got[3] == out[3] and batch.csum_partial == 3


# ---- coalescing -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_partial_segments_coalesce_into_a_partial_super_frame(
        io: ModuleType, frames: list[bytes], tap: tuple[socket.socket, socket.socket],
        version: int) -> None:
    """Segments with partial checksums join a GRO run: one super-frame whose
    checksum is the pseudo-header sum of the whole (NEEDS_CSUM), carrying their payloads; a
    wrong segment in the middle ends the run and goes alone, unchanged."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True, l2=14, verify=True)
    run = _segment_run(frames, version)
    half = len(run) // 2
    sent = run[:half] + [_wrong(run[half])] + run[half + 1:]
    bufs, lengths = _slots(sent)
    assert batch.write_slots(bufs, lengths, 8, bytearray(len(sent)), len(sent)) == len(sent)
    got = _read_all(peer)
    _, end, _, _ = _tcp(run[0])
    groups = [run[:half], [sent[half]], run[half + 1:]]
    messages = iter(got)
    for group in groups:
        if len(group) == 1:
            message = next(messages)
            assert message[10:] == group[0]
            continue
        message = next(messages)
        flags, gso, _hdr_len, gso_size, start, offset = VNET.unpack_from(message)
        frame = message[10:]
        assert flags == 1 and gso == (1 if version == 4 else 4) and offset == 16
        assert start == _tcp(run[0])[0] and gso_size == len(run[0]) - end
        assert frame[end:] == b"".join(f[end:] for f in group)
        assert wire.verdict(_ip(frame)) == "partial"
        assert wire.verdict(wire.completed(_ip(frame))) == "valid"
    assert next(messages, None) is None
    assert batch.csum_partial == len(run) - 1


# ---- oversized frames: a kernel peer's TSO packet in one datagram -------------------------------

MTU = 1450  # what wg-py sets on a TAP over a 1500-byte IPv4 underlay


def _big(frames: list[bytes], version: int, kind: str = "partial") -> bytes:
    """A whole kernel TSO packet as our UDP socket read it: far above the MTU, one frame."""
    return next(f for f in _pick(frames, version, 6, kind) if len(f) - 14 > 4 * MTU)


def _with_cwr(frame: bytes) -> bytes:
    """The frame with CWR set and its checksum computed (by the test) from scratch."""
    out = bytearray(frame)
    out[_tcp(frame)[0] + 13] |= 0x80
    return bytes(out[:14]) + wire.completed(bytes(out[14:]))


def _oversized_sample(frames: list[bytes]) -> list[bytes]:
    """Kernel TSO packets: partial (IPv4, IPv6), completed by the test, with CWR; and a small
    partial data segment between them (unchanged path)."""
    big4, big6 = _big(frames, 4), _big(frames, 6)
    small = next(f for f in _pick(frames, 4, 6) if _tcp(f)[1] < len(f) <= 14 + MTU)
    return [big4, small, big6, big4[:14] + wire.completed(_ip(big4)), _with_cwr(big6)]


@pytest.mark.parametrize("gro", [False, True])
def test_oversized_tcp_frame_goes_as_a_gso_super_frame(
        io: ModuleType, frames: list[bytes], tap: tuple[socket.socket, socket.socket],
        gro: bool) -> None:
    """With ``mtu`` set, a TCP frame above it leaves the vnet_hdr TAP batch as one GSO
    super-frame for the kernel to segment: TCPV4/TCPV6 (+ECN with CWR), gso_size = MTU - IP -
    TCP headers, NEEDS_CSUM at the TCP checksum, which holds the whole packet's pseudo-header
    sum (the test's own); the bytes are otherwise the kernel's. A small frame is unchanged."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=gro, l2=14, verify=True)
    batch.mtu = MTU
    sent = _oversized_sample(frames)
    bufs, lengths = _slots(sent)
    assert batch.write_slots(bufs, lengths, 8, bytearray(len(sent)), len(sent)) == len(sent)
    got = _read_all(peer)
    assert len(got) == len(sent)
    for message, frame in zip(got, sent, strict=True):
        flags, gso, hdr_len, gso_size, start, offset = VNET.unpack_from(message)
        body = message[10:]
        if len(frame) <= 14 + MTU:
            assert body == frame and gso == 0
            continue
        l4, end, _, tcp_flags = _tcp(frame)
        version = _ip(frame)[0] >> 4
        info = wire.l4_info(_ip(frame))
        assert info is not None
        ecn = 0x80 if tcp_flags & 0x80 else 0
        assert (flags, gso) == (1, (1 if version == 4 else 4) | ecn)
        assert (hdr_len, gso_size, start, offset) == (end, MTU - (end - 14), l4, 16)
        assert struct.unpack_from("!H", body, l4 + 16)[0] == info[3]
        assert body[:l4 + 16] == frame[:l4 + 16] and body[l4 + 18:] == frame[l4 + 18:]
    assert batch.tso_frames == 4
    assert batch.csum_partial == 3  # the two partial TSO packets and the small segment
    assert not batch.errors


def test_plain_tap_cuts_oversized_tcp_frames_to_the_mtu(
        io: ModuleType, frames: list[bytes], tap: tuple[socket.socket, socket.socket]) -> None:
    """Without the virtio-net header the batch cuts an oversized TCP frame itself: frames of at
    most MTU IP bytes behind the same Ethernet header, whose payloads put together are the
    original's, sequence numbers advancing, IPv4 ids counting up, FIN/PSH on the last only,
    CWR on the first only, and every checksum valid (judged by the test's own code)."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=False, l2=14, verify=True)
    batch.mtu = MTU
    sent = _oversized_sample(frames)
    bufs, lengths = _slots(sent)
    before = [bytes(b) for b in bufs]
    assert batch.write_slots(bufs, lengths, 8, bytearray(len(sent)), len(sent)) == len(sent)
    got = iter(_read_all(peer))
    for frame in sent:
        if len(frame) <= 14 + MTU:
            assert next(got) == frame[:14] + wire.completed(_ip(frame))
            continue
        l4, end, seq, tcp_flags = _tcp(frame)
        mss = MTU - (end - 14)
        payload = frame[end:]
        count = -(-len(payload) // mss)
        assert count > 4
        for k in range(count):
            seg = next(got)
            ip = _ip(seg)
            assert seg[:14] == frame[:14] and len(ip) <= MTU
            assert seg[end:] == payload[k * mss:(k + 1) * mss]
            if ip[0] >> 4 == 6:  # the IPv6 header differs in its payload length only
                assert seg[14:18] == frame[14:18] and seg[20:l4] == frame[20:l4]
            _, _, seg_seq, seg_flags = _tcp(seg)
            assert seg_seq == (seq + k * mss) & 0xFFFFFFFF
            want = tcp_flags
            if k < count - 1:
                want &= ~0x09
            if k:
                want &= ~0x80
            assert seg_flags == want
            assert wire.verdict(ip) == "valid"
            if ip[0] >> 4 == 4:
                assert struct.unpack_from("!H", ip, 2)[0] == len(ip)
                ident = (struct.unpack_from("!H", _ip(frame), 4)[0] + k) & 0xFFFF
                assert struct.unpack_from("!H", ip, 4)[0] == ident
                assert wire.ones_sum(ip[:20]) == 0xFFFF
            else:
                assert struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40
    assert next(got, None) is None
    assert batch.tso_frames == 4 and batch.csum_partial == 3
    assert [bytes(b) for b in bufs] == before  # the caller's slots are not written


def _oversized_udp(frames: list[bytes]) -> bytes:
    """The kernel's 1,000-byte UDP datagram (IPv4) grown past the MTU, checksum by the test."""
    small = _pick(frames, 4, 17)[-1]
    ip = bytearray(_ip(small)) + bytes(2 * MTU)
    struct.pack_into("!H", ip, 2, len(ip))
    struct.pack_into("!H", ip, 10, 0)
    struct.pack_into("!H", ip, 10, ~wire.ones_sum(bytes(ip[:20])) & 0xFFFF)
    struct.pack_into("!H", ip, 24, len(ip) - 20)
    return small[:14] + wire.completed(bytes(ip))


@pytest.mark.parametrize("vnet", [True, False])
def test_oversized_frames_that_cannot_be_cut(
        io: ModuleType, frames: list[bytes], tap: tuple[socket.socket, socket.socket],
        vnet: bool) -> None:
    """An oversized frame that is not TCP is dropped and counted (``write:oversized``); an
    oversized TCP frame whose checksum is wrong is written as it is (never given a checksum
    it did not have); with ``mtu`` 0 (the default) nothing is cut."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=vnet, l2=14, verify=True)
    assert batch.mtu == 0
    big = _big(frames, 4)
    wrong = _wrong(big[:14] + wire.completed(_ip(big)))
    udp = _oversized_udp(frames)
    assert wire.verdict(_ip(udp)) == "valid"
    batch.mtu = MTU
    assert batch.write([udp, wrong]) == 1
    got = _read_all(peer)
    assert [g[10:] if vnet else g for g in got] == [wrong]
    if vnet:
        assert VNET.unpack_from(got[0]) == (0, 0, 0, 0, 0, 0)
    assert batch.errors == {"write:oversized": 1} and batch.tso_frames == 0
    batch.mtu = 0
    assert batch.write([udp]) == 1
    assert [g[10:] if vnet else g for g in _read_all(peer)] == [udp]


def test_mtu_attribute_errors(io: ModuleType, tap: tuple[socket.socket, socket.socket]) -> None:
    """``mtu``: an int >= 0, the same errors on both twins."""
    batch = io.TunBatch(tap[0].fileno(), vnet_hdr=True, l2=14)
    batch.mtu = 9000
    assert batch.mtu == 9000
    with pytest.raises(ValueError):
        batch.mtu = -1
    with pytest.raises(TypeError):
        batch.mtu = 1500.0
    with pytest.raises(TypeError):
        batch.mtu = "1500"
    assert batch.mtu == 9000


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("where", [0, 301, 999])
def test_complete_segments_coalesce_and_a_corrupt_one_is_caught(
        io: ModuleType, frames: list[bytes], tap: tuple[socket.socket, socket.socket],
        version: int, where: int) -> None:
    """What a wg-py sender's TSO cut puts in the datagrams: segments with complete checksums.
    Nothing vouches for a complete inner checksum on our side (the kernel vxlan verifies such a
    packet's checksum in its TCP, from CHECKSUM_COMPLETE or in software; only a CHECKSUM_PARTIAL
    skb is trusted as it is), so each one is verified before it joins a run written with
    NEEDS_CSUM (which the kernel trusts). A payload byte flipped after the checksum was computed
    (corrupted before the encapsulation: the outer UDP checksum would cover the corrupt bytes)
    ends the run: that frame goes alone, unchanged, behind a zeroed virtio-net header, so the
    kernel's TCP checks it and drops it, as a kernel vxlan receiver would. The corrupt byte sits
    in the native sum's 64-byte blocks (0, 301) or in its tail (999 of 1,000)."""
    ours, peer = tap
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True, l2=14, verify=True)
    run = [f[:14] + wire.completed(_ip(f)) for f in _segment_run(frames, version)]
    assert all(wire.verdict(_ip(f)) == "valid" for f in run)
    _, end, _, _ = _tcp(run[0])
    half = len(run) // 2
    corrupt = bytearray(run[half])
    corrupt[end + where] ^= 0x20
    assert wire.verdict(_ip(bytes(corrupt))) == "wrong"
    sent = run[:half] + [bytes(corrupt)] + run[half + 1:]
    bufs, lengths = _slots(sent)
    assert batch.write_slots(bufs, lengths, 8, bytearray(len(sent)), len(sent)) == len(sent)
    got = _read_all(peer)
    assert len(got) == 3
    for message, group in zip(got, [run[:half], [bytes(corrupt)], run[half + 1:]], strict=True):
        flags, gso = message[0], message[1]
        if len(group) == 1:
            assert message[:10] == bytes(10)  # no NEEDS_CSUM, no DATA_VALID: the stack checks
            assert message[10:] == group[0]
            continue
        assert flags == 1 and gso == (1 if version == 4 else 4)
        assert message[10 + end:] == b"".join(f[end:] for f in group)
        assert wire.verdict(wire.completed(_ip(message[10:]))) == "valid"
    assert batch.csum_partial == 0
