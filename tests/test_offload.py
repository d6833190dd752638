"""TUN offloads (tunnel.io._io and tunnel.io.io_ref, same tests): TSO super-packets cut into MTU-sized
packets, partial checksums completed, the virtio-net header on writes, and a real TUN device with
IFF_VNET_HDR + TUNSETOFFLOAD in a namespace receiving super-packets from a kernel TCP sender.

Super-packets are built here by hand and fed through a SOCK_DGRAM socketpair (one read = one
packet, like a TUN fd). Every checksum is verified with the small independent computation below.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.test_io import in_netns, namespace
from tunnel.io import offload

VNET = struct.Struct("=BBHHHH")
NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6 = 1, 4
FIN, SYN, RST, PSH, ACK, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x80
SRC4, DST4 = bytes([10, 1, 2, 3]), bytes([10, 9, 8, 7])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd0000000000000000000000000000ff")
HEADROOM = 16


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(kernel side, our side): a datagram socketpair standing in for a TUN fd."""
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ours.setblocking(False)
    yield kernel, ours
    kernel.close()
    ours.close()


# ------------------------------------------------------------------------ independent checksums


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for k in range(0, len(data), 2):
        total += (data[k] << 8) | data[k + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(packet: bytes, l4_len: int, proto: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + bytes([0, proto]) + l4_len.to_bytes(2, "big")
    return packet[8:40] + l4_len.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def l4_checksum_ok(packet: bytes, l4: int, proto: int) -> bool:
    return ones_sum(pseudo(packet, len(packet) - l4, proto) + packet[l4:]) == 0xFFFF


def l4_checksum(packet: bytes, l4: int, proto: int, field: int) -> int:
    body = bytearray(packet[l4:])
    body[field : field + 2] = b"\0\0"
    return (~ones_sum(pseudo(packet, len(packet) - l4, proto) + bytes(body))) & 0xFFFF


# ------------------------------------------------------------------------ packet builders

TCP_OPTIONS = bytes([1, 1, 8, 10]) + (123456).to_bytes(4, "big") + (654321).to_bytes(4, "big")


def tcp_packet(version: int, data: bytes, seq: int, flags: int, *, options: bytes = TCP_OPTIONS,
               ident: int = 0xFFF0, partial: bool = True, sport: int = 40000, dport: int = 5201) -> bytes:
    """An IPv4/IPv6 TCP packet; its TCP checksum field holds the pseudo-header sum (as the
    kernel leaves it with NEEDS_CSUM) when ``partial``, else the full checksum."""
    offset = (20 + len(options)) // 4
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, 0xABCDEF01, offset << 4, flags,
                                 0x7000, 0, 0) + options + data)
    if version == 4:
        total = 20 + len(tcp)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 64, 6, 0, SRC4, DST4))
        ip[10:12] = ((~ones_sum(bytes(ip))) & 0xFFFF).to_bytes(2, "big")
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, SRC6, DST6))
    packet = bytes(ip) + bytes(tcp)
    l4 = len(ip)
    if partial:
        value = ones_sum(pseudo(packet, len(tcp), 6))
    else:
        value = l4_checksum(packet, l4, 6, 16)
    return packet[: l4 + 16] + value.to_bytes(2, "big") + packet[l4 + 18 :]


def super_packet(version: int, data: bytes, mss: int, flags: int = ACK | PSH | FIN | CWR,
                 seq: int = 0xFFFFF000) -> tuple[bytes, bytes]:
    packet = tcp_packet(version, data, seq, flags)
    l4 = 20 if version == 4 else 40
    hdr_len = l4 + 20 + len(TCP_OPTIONS)
    kind = GSO_TCPV4 if version == 4 else GSO_TCPV6
    return VNET.pack(NEEDS_CSUM, kind, hdr_len, mss, l4, 16), packet


def read_all(batch: Any, ours: socket.socket, slots: int = 64, mtu: int = 1420,
             size: int = 1600) -> list[bytes]:
    bufs = [bytearray(size) for _ in range(slots)]
    lengths = [0] * slots
    out: list[bytes] = []
    for _ in range(1000):
        count = batch.read(bufs, lengths, HEADROOM, mtu)
        if count == 0:
            break
        out.extend(bytes(bufs[i][HEADROOM : HEADROOM + lengths[i]]) for i in range(count))
    return out


def check_segments(segments: list[bytes], original: bytes, mss: int, mtu: int) -> None:
    """Every header field of every segment, against the super-packet it came from."""
    version = original[0] >> 4
    l4 = 20 if version == 4 else 40
    header = l4 + 20 + len(TCP_OPTIONS)
    data = original[header:]
    step = min(mss, mtu - header)
    assert len(segments) == max(1, -(-len(data) // step))
    seq0 = int.from_bytes(original[l4 + 4 : l4 + 8], "big")
    flags0 = original[l4 + 13]
    joined = b""
    for k, seg in enumerate(segments):
        last = k == len(segments) - 1
        assert len(seg) <= mtu
        assert seg[l4 + 20 : header] == TCP_OPTIONS
        body = seg[header:]
        assert body == data[k * step : (k + 1) * step]
        joined += body
        if version == 4:
            assert int.from_bytes(seg[2:4], "big") == len(seg)
            assert int.from_bytes(seg[4:6], "big") == (int.from_bytes(original[4:6], "big") + k) & 0xFFFF
            assert ones_sum(seg[:20]) == 0xFFFF  # IPv4 header checksum
            assert seg[6:10] == original[6:10] and seg[12:20] == original[12:20]
        else:
            assert int.from_bytes(seg[4:6], "big") == len(seg) - 40
            assert seg[:4] == original[:4] and seg[6:40] == original[6:40]
        assert int.from_bytes(seg[l4 + 4 : l4 + 8], "big") == (seq0 + k * step) & 0xFFFFFFFF
        assert seg[l4 : l4 + 4] == original[l4 : l4 + 4]  # ports
        assert seg[l4 + 8 : l4 + 12] == original[l4 + 8 : l4 + 12]  # ack
        flags = seg[l4 + 13]
        expected = flags0
        if not last:
            expected &= ~(FIN | PSH)
        if k:
            expected &= ~CWR
        assert flags == expected, (k, flags, expected)
        assert l4_checksum_ok(seg, l4, 6), k
    assert joined == data


# ------------------------------------------------------------------------ TSO split


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("length", [1, 1368, 1369, 13680, 40000, 65000 - 72])
def test_tso_split(io: ModuleType, pair: Any, version: int, length: int) -> None:
    kernel, ours = pair
    mss = 1368
    data = bytes((k * 31 + 7) & 0xFF for k in range(length))
    hdr, packet = super_packet(version, data, mss)
    kernel.send(hdr + packet)
    batch = io.TunBatch(ours.fileno())
    segments = read_all(batch, ours, mtu=1420)
    check_segments(segments, packet, mss, 1420)
    assert batch.super_packets == 1
    assert batch.errors == {}


@pytest.mark.parametrize("mss", [255, 256, 257, 300, 319, 320, 383, 1021])
@pytest.mark.parametrize("fill", ["ones", "pattern"])
def test_tso_split_checksums_every_block_tail(io: ModuleType, pair: Any, mss: int, fill: str) -> None:
    """Segment payloads around and above the native sum's vector threshold (256 bytes, 64-byte
    blocks), with every tail length mod 64 the sizes give, and all-0xFF data (the most carries):
    every segment's checksum holds by the independent computation (the cut sums as it copies)."""
    kernel, ours = pair
    length = mss * 5 + 77
    if fill == "ones":
        data = b"\xff" * length
    else:
        data = bytes((k * 151 + 29) & 0xFF for k in range(length))
    hdr, packet = super_packet(4, data, mss)
    kernel.send(hdr + packet)
    segments = read_all(io.TunBatch(ours.fileno()), ours, mtu=1500)
    check_segments(segments, packet, mss, 1500)


@pytest.mark.parametrize("version", [4, 6])
def test_tso_split_across_batches_keeps_order(io: ModuleType, pair: Any, version: int) -> None:
    kernel, ours = pair
    data = bytes(range(256)) * 40  # 10240 bytes: 8 segments of 1300
    hdr, packet = super_packet(version, data, 1300)
    after = tcp_packet(version, b"next", 99, ACK, partial=False)
    kernel.send(hdr + packet)
    kernel.send(bytes(10) + after)
    batch = io.TunBatch(ours.fileno())
    bufs = [bytearray(1600) for _ in range(3)]
    lengths = [0] * 3
    seen: list[bytes] = []
    counts = []
    for _ in range(10):
        count = batch.read(bufs, lengths, HEADROOM, 1420)
        if count == 0:
            break
        counts.append(count)
        seen.extend(bytes(bufs[i][HEADROOM : HEADROOM + lengths[i]]) for i in range(count))
    assert counts == [3, 3, 3]  # 8 segments + the next packet through 3 slots
    check_segments(seen[:8], packet, 1300, 1420)
    assert seen[8] == after
    assert batch.pending == 0


def test_tso_split_caps_segments_at_mtu(io: ModuleType, pair: Any) -> None:
    kernel, ours = pair
    data = bytes(9000)
    hdr, packet = super_packet(4, data, 1448)  # gso_size larger than the MTU allows
    kernel.send(hdr + packet)
    segments = read_all(io.TunBatch(ours.fileno()), ours, mtu=1280)
    check_segments(segments, packet, 1448, 1280)


def test_tso_split_from_small_slots_uses_overflow(io: ModuleType, pair: Any) -> None:
    """The super-packet is larger than a slot: it is read through the overflow scratch."""
    kernel, ours = pair
    data = bytes((k * 13) & 0xFF for k in range(30000))
    hdr, packet = super_packet(6, data, 1400)
    kernel.send(hdr + packet)
    segments = read_all(io.TunBatch(ours.fileno()), ours, mtu=1500, size=HEADROOM + 1500)
    check_segments(segments, packet, 1400, 1500)


def test_malformed_super_packet_is_dropped_and_counted(io: ModuleType, pair: Any) -> None:
    kernel, ours = pair
    hdr, packet = super_packet(6, bytes(5000), 1000)
    bad = VNET.pack(NEEDS_CSUM, GSO_TCPV4, 0, 1000, 40, 16)  # says TCPv4, carries IPv6
    good = tcp_packet(4, b"fine", 1, ACK, partial=False)
    kernel.send(bad + packet)
    kernel.send(bytes(3))  # shorter than a virtio-net header
    kernel.send(bytes(10) + good)
    batch = io.TunBatch(ours.fileno())
    assert read_all(batch, ours) == [good]
    assert batch.errors == {"read:bad_gso": 1, "read:short": 1}


def test_packet_larger_than_slot_is_dropped(io: ModuleType, pair: Any) -> None:
    kernel, ours = pair
    big = tcp_packet(4, bytes(3000), 1, ACK, partial=False)
    small = tcp_packet(4, bytes(10), 1, ACK, partial=False)
    kernel.send(bytes(10) + big)
    kernel.send(bytes(10) + small)
    batch = io.TunBatch(ours.fileno())
    assert read_all(batch, ours, size=HEADROOM + 1500) == [small]
    assert batch.errors == {"read:too_big": 1}


# ------------------------------------------------------------------------ NEEDS_CSUM


@pytest.mark.parametrize("version", [4, 6])
def test_needs_csum_completed_tcp(io: ModuleType, pair: Any, version: int) -> None:
    kernel, ours = pair
    packet = tcp_packet(version, b"hello world, odd length!", 5, ACK | PSH)
    l4 = 20 if version == 4 else 40
    assert not l4_checksum_ok(packet, l4, 6)
    kernel.send(VNET.pack(NEEDS_CSUM, 0, 0, 0, l4, 16) + packet)
    [out] = read_all(io.TunBatch(ours.fileno()), ours)
    assert l4_checksum_ok(out, l4, 6)
    assert out[: l4 + 16] == packet[: l4 + 16] and out[l4 + 18 :] == packet[l4 + 18 :]


@pytest.mark.parametrize("version", [4, 6])
def test_needs_csum_completed_udp(io: ModuleType, pair: Any, version: int) -> None:
    kernel, ours = pair
    body = b"\x12\x34\x00\x35" + (13).to_bytes(2, "big") + b"\0\0" + b"query"
    if version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0, SRC4, DST4))
        ip[10:12] = ((~ones_sum(bytes(ip))) & 0xFFFF).to_bytes(2, "big")
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(body), 17, 64, SRC6, DST6))
    packet = bytearray(bytes(ip) + body)
    l4 = len(ip)
    packet[l4 + 6 : l4 + 8] = ones_sum(pseudo(bytes(packet), len(body), 17)).to_bytes(2, "big")
    kernel.send(VNET.pack(NEEDS_CSUM, 0, 0, 0, l4, 6) + bytes(packet))
    [out] = read_all(io.TunBatch(ours.fileno()), ours)
    assert l4_checksum_ok(out, l4, 17)
    assert out[l4 + 6 : l4 + 8] == l4_checksum(bytes(packet), l4, 17, 6).to_bytes(2, "big")


def test_needs_csum_out_of_range_is_dropped(io: ModuleType, pair: Any) -> None:
    kernel, ours = pair
    packet = tcp_packet(4, b"x", 5, ACK)
    kernel.send(VNET.pack(NEEDS_CSUM, 0, 0, 0, 20, len(packet)) + packet)
    batch = io.TunBatch(ours.fileno())
    assert read_all(batch, ours) == []
    assert batch.errors == {"read:bad_csum": 1}


# ------------------------------------------------------------------------ plain mode and writes


def test_plain_mode_reads_packets_as_they_are(io: ModuleType, pair: Any) -> None:
    kernel, ours = pair
    packets = [tcp_packet(4, bytes([k]) * (k * 50), k, ACK, partial=False) for k in range(5)]
    for p in packets:
        kernel.send(p)
    assert read_all(io.TunBatch(ours.fileno(), vnet_hdr=False), ours) == packets


@pytest.mark.parametrize("vnet_hdr", [True, False])
def test_write_prefixes_zeroed_vnet_header(io: ModuleType, pair: Any, vnet_hdr: bool) -> None:
    kernel, ours = pair
    packets = [tcp_packet(6, bytes([k]) * 100, k, ACK, partial=False) for k in range(4)]
    batch = io.TunBatch(ours.fileno(), vnet_hdr=vnet_hdr)
    assert batch.write([memoryview(p) for p in packets]) == 4
    prefix = bytes(10) if vnet_hdr else b""
    assert [kernel.recv(70000) for _ in packets] == [prefix + p for p in packets]


def test_write_counts_refused_packets(io: ModuleType, pair: Any) -> None:
    kernel, ours = pair
    kernel.close()  # the peer is gone: ECONNREFUSED, which does not mean the fd is dead
    batch = io.TunBatch(ours.fileno())
    assert batch.write([b"abc", b"def"]) == 0
    assert sum(batch.errors.values()) == 2


# ------------------------------------------------------------------------ a real TUN device


def tun_name() -> str:
    return f"wgio{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"


@pytest.mark.netns
def test_open_tun_plain_and_offloaded(io: ModuleType) -> None:
    with namespace() as ns:
        fd, info = in_netns(ns, lambda: offload.open_tun(tun_name(), vnet_hdr=False))
        os.close(fd)
        assert not info.vnet_hdr and info.offloads == 0
        fd, info = in_netns(ns, lambda: offload.open_tun(tun_name()))
        try:
            assert info.vnet_hdr, info.notes
            assert info.offloads == offload.DEFAULT_OFFLOADS, info.notes
            assert info.tso and "tso4" in info.describe()
        finally:
            os.close(fd)


def _wait(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def syn_ack(syn: bytes, isn: int, mss: int) -> bytes:
    """Our answer to the kernel's SYN: MSS and window scale options, a full checksum."""
    sport, dport, seq = struct.unpack_from("!HHI", syn, 20)
    options = struct.pack("!BBH", 2, 4, mss) + bytes([1, 3, 3, 7])
    tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, isn, seq + 1, 7 << 4, SYN | ACK, 65535, 0, 0) + options)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, syn[16:20], syn[12:16]))
    ip[10:12] = ((~ones_sum(bytes(ip))) & 0xFFFF).to_bytes(2, "big")
    packet = bytes(ip) + bytes(tcp)
    value = l4_checksum(packet, 20, 6, 16)
    return packet[:36] + value.to_bytes(2, "big") + packet[38:]


@pytest.mark.netns
def test_real_tun_hands_us_tcp_super_packets(io: ModuleType) -> None:
    """A kernel TCP sender writing through a TUN with TSO gives us super-packets; cut, they are
    valid MTU-sized segments carrying the byte stream in order."""
    with namespace() as ns:
        name = tun_name()
        fd, info = in_netns(ns, lambda: offload.open_tun(name))
        sock: socket.socket | None = None
        try:
            if not info.tso:
                pytest.skip(f"TSO refused here: {info.notes}")
            for argv in (["addr", "add", "10.213.0.1/24", "dev", name], ["link", "set", name, "mtu", "1420"],
                         ["link", "set", name, "up"]):
                subprocess.run(["ip", "-n", ns, *argv], check=True, timeout=10)
            batch = io.TunBatch(fd)
            sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setblocking(False)
            assert sock.connect_ex(("10.213.0.2", 5201)) in (115, 11)  # EINPROGRESS
            bufs = [bytearray(HEADROOM + 1500) for _ in range(64)]
            lengths = [0] * 64
            syn: bytes | None = None
            for _ in range(50):
                if not _wait(fd, 0.2):
                    continue
                for i in range(batch.read(bufs, lengths, HEADROOM, 1420)):
                    p = bytes(bufs[i][HEADROOM : HEADROOM + lengths[i]])
                    if p[0] >> 4 == 4 and p[9] == 6 and p[33] & SYN:
                        syn = p
                if syn:
                    break
            assert syn is not None, "no SYN came out of the TUN"
            assert l4_checksum_ok(syn, 20, 6)  # completed from the partial checksum if needed
            isn = 1000
            assert batch.write([syn_ack(syn, isn, 1380)]) == 1
            assert select.select([], [sock], [], 5)[1], "handshake did not complete"
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            stream = bytes((k * 7) & 0xFF for k in range(100000))
            sock.send(stream)
            received: dict[int, bytes] = {}
            seq0 = struct.unpack_from("!I", syn, 24)[0] + 1
            for _ in range(20):
                if not _wait(fd, 0.25):
                    if received:
                        break
                    continue
                for i in range(batch.read(bufs, lengths, HEADROOM, 1420)):
                    p = bytes(bufs[i][HEADROOM : HEADROOM + lengths[i]])
                    if p[0] >> 4 != 4 or p[9] != 6:
                        continue
                    assert len(p) <= 1420
                    assert ones_sum(p[:20]) == 0xFFFF
                    assert l4_checksum_ok(p, 20, 6)
                    header = 20 + (p[32] >> 4) * 4
                    if len(p) > header:
                        received[struct.unpack_from("!I", p, 24)[0]] = p[header:]
            assert batch.super_packets > 0, "the kernel sent no TSO super-packet"
            # The first flight, in order and contiguous, is the start of the stream.
            offset = 0
            for seq in sorted(received):
                assert seq - seq0 == offset
                offset += len(received[seq])
            assert offset >= 2 * 1380 and stream[:offset] == b"".join(received[s] for s in sorted(received))
        finally:
            if sock is not None:
                sock.close()
            os.close(fd)


@pytest.mark.parametrize("vnet_hdr", [True, False])
def test_one_read_fills_a_large_batch(io: ModuleType, pair: Any, vnet_hdr: bool) -> None:
    """Slots are pinned as the batch fills (2, 8, 32, ...): one call still takes every queued
    packet up to the batch size, in order; a two-slot batch takes a lone packet."""
    kernel, ours = pair
    packets = [tcp_packet(4, bytes([k]) * 40, k, ACK, partial=False) for k in range(50)]
    for p in packets:
        kernel.send((bytes(10) if vnet_hdr else b"") + p)
    batch = io.TunBatch(ours.fileno(), vnet_hdr=vnet_hdr)
    bufs = [bytearray(2000) for _ in range(64)]
    lengths = [0] * 64
    assert batch.read(bufs, lengths, 0, 1500) == 50
    assert [bytes(bufs[i][: lengths[i]]) for i in range(50)] == packets
    kernel.send((bytes(10) if vnet_hdr else b"") + packets[0])
    short = [bytearray(2000), bytearray(2000)]
    assert batch.read(short, [0, 0], 0, 1500) == 1


def test_one_slot_batches(io: ModuleType, pair: Any) -> None:
    """A batch of one slot reads one packet per call (the rest waits for the next call)."""
    kernel, ours = pair
    packets = [tcp_packet(4, bytes([k]) * 40, k, ACK, partial=False) for k in range(3)]
    for p in packets:
        kernel.send(bytes(10) + p)
    batch = io.TunBatch(ours.fileno())
    got = []
    for _ in range(3):
        buf, lengths = [bytearray(2000)], [0]
        assert batch.read(buf, lengths, 0, 1500) == 1
        got.append(bytes(buf[0][: lengths[0]]))
    assert got == packets
    assert batch.read([bytearray(2000)], [0], 0, 1500) == 0
