"""TAP offloads for the VXLAN data path: ``TunBatch(fd, l2=14)`` (tunnel.io._io and tunnel.io.io_ref,
same tests) cuts TCP super-frames behind an Ethernet header and coalesces Ethernet frames of one
TCP flow into a super-frame; ``offload.open_tun(tap=True)`` opens a real TAP with IFF_VNET_HDR.

Frames go through a SOCK_DGRAM socketpair standing in for the TAP fd (one read = one frame), as
in tests/test_offload.py and tests/test_tun_gro.py, whose packet builders are reused; every
checksum is verified with their independent computation.
"""

from __future__ import annotations

import os
import socket
import struct
import uuid
from types import ModuleType

import pytest

from tests.test_offload import (
    ACK,
    CWR,
    FIN,
    NEEDS_CSUM,
    PSH,
    VNET,
    l4_checksum_ok,
    ones_sum,
    pseudo,
    super_packet,
    tcp_packet,
)
from tunnel.io import offload

HEADROOM = 8
DST_MAC = bytes.fromhex("020000000002")
SRC_MAC = bytes.fromhex("020000000001")
GSO_TCPV4, GSO_TCPV6 = 1, 4


def eth(version: int, other_mac: bytes = SRC_MAC) -> bytes:
    return DST_MAC + other_mac + (b"\x08\x00" if version == 4 else b"\x86\xdd")


def read_frames(batch: object, slots: int = 64, mtu: int = 1450) -> list[bytes]:
    bufs = [bytearray(HEADROOM + 65536) for _ in range(slots)]
    lengths = [0] * slots
    out: list[bytes] = []
    for _ in range(1000):
        count = batch.read(bufs, lengths, HEADROOM, mtu)  # type: ignore[attr-defined]
        out.extend(bytes(bufs[i][HEADROOM:HEADROOM + lengths[i]]) for i in range(count))
        if count == 0 and not batch.pending:  # type: ignore[attr-defined]
            break
    return out


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def segments(version: int, sizes: list[int], seq: int = 0xFFFFFF00) -> list[bytes]:
    """Ethernet frames of consecutive TCP segments of one flow (full checksums), PSH last."""
    out = []
    for k, size in enumerate(sizes):
        flags = ACK | PSH if k == len(sizes) - 1 else ACK
        data = bytes((seq + j) & 0xFF for j in range(size))
        out.append(eth(version) + tcp_packet(version, data, seq, flags, ident=100 + k, partial=False))
        seq = (seq + size) & 0xFFFFFFFF
    return out


# ------------------------------------------------------------------------ read: TSO split


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("slots", [64, 5])
def test_super_frame_is_cut_behind_the_ethernet_header(
        io: ModuleType, device_pair: tuple[socket.socket, socket.socket], version: int, slots: int) -> None:
    kernel, ours = device_pair
    data = os.urandom(20000)
    mss = 1398 if version == 4 else 1378
    hdr, packet = super_packet(version, data, mss)
    flags, kind, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack(hdr)
    # on a TAP the header lengths count the Ethernet header too
    kernel.send(VNET.pack(flags, kind, hdr_len + 14, gso_size, csum_start + 14, csum_offset)
                + eth(version) + packet)
    frames = read_frames(io.TunBatch(ours.fileno(), l2=14), slots=slots, mtu=1450)
    assert len(frames) == -(-len(data) // mss)
    l4 = 20 if version == 4 else 40
    joined = b""
    for k, frame in enumerate(frames):
        assert frame[:14] == eth(version)
        ip = frame[14:]
        assert len(ip) <= 1450
        if version == 4:
            assert struct.unpack_from("!H", ip, 2)[0] == len(ip)
            assert ones_sum(ip[:20]) == 0xFFFF
        else:
            assert struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40
        assert l4_checksum_ok(ip, l4, 6)
        tcp_flags = ip[l4 + 13]
        last = k == len(frames) - 1
        assert bool(tcp_flags & FIN) == last and bool(tcp_flags & PSH) == last
        assert bool(tcp_flags & CWR) == (k == 0)
        header = l4 + (ip[l4 + 12] >> 4) * 4
        joined += ip[header:]
    assert joined == data


def test_needs_csum_frame_is_completed(io: ModuleType, device_pair: tuple[socket.socket, socket.socket]) -> None:
    kernel, ours = device_pair
    packet = tcp_packet(4, b"hello vxlan", 1000, ACK | PSH)  # partial checksum
    kernel.send(VNET.pack(NEEDS_CSUM, 0, 0, 0, 14 + 20, 16) + eth(4) + packet)
    [frame] = read_frames(io.TunBatch(ours.fileno(), l2=14))
    assert frame[:14] == eth(4) and len(frame) == 14 + len(packet)
    assert l4_checksum_ok(frame[14:], 20, 6)


@pytest.mark.parametrize("ethertype", [b"\x81\x00", b"\x86\xdd"])
def test_super_frame_with_wrong_ethertype_is_dropped(
        io: ModuleType, device_pair: tuple[socket.socket, socket.socket], ethertype: bytes) -> None:
    kernel, ours = device_pair
    hdr, packet = super_packet(4, os.urandom(5000), 1398)
    flags, kind, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack(hdr)
    kernel.send(VNET.pack(flags, kind, hdr_len + 14, gso_size, csum_start + 14, csum_offset)
                + DST_MAC + SRC_MAC + ethertype + packet)
    batch = io.TunBatch(ours.fileno(), l2=14)
    assert read_frames(batch) == []
    assert batch.errors.get("read:bad_gso") == 1


def test_l2_must_be_ethernet_or_nothing(io: ModuleType, device_pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(ValueError):
        io.TunBatch(device_pair[1].fileno(), l2=4)


# ------------------------------------------------------------------------ write: GRO


@pytest.mark.parametrize("version", [4, 6])
def test_frames_of_one_flow_leave_as_one_super_frame(
        io: ModuleType, device_pair: tuple[socket.socket, socket.socket], version: int) -> None:
    kernel, ours = device_pair
    frames = segments(version, [1380] * 10 + [200])
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True, l2=14, verify=True)
    assert batch.write(frames) == len(frames)
    [out] = drain(kernel)
    flags, kind, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack(out[:10])
    l4 = 20 if version == 4 else 40
    assert flags == NEEDS_CSUM and kind == (GSO_TCPV4 if version == 4 else GSO_TCPV6)
    assert csum_start == 14 + l4 and csum_offset == 16 and gso_size == 1380
    assert hdr_len == 14 + l4 + 32
    assert out[10:24] == eth(version)
    assert batch.coalesced == 1
    # The kernel cuts it back into exactly these frames' packets: tests/test_gro_kernel_netns.py
    # checks that on a real TAP. Here, independently: one header, the payloads in order, and the
    # partial checksum (the pseudo-header sum for the super-packet's length).
    big = out[24:]
    header = l4 + 32
    assert big[header:] == b"".join(f[14 + header:] for f in frames)
    assert struct.unpack_from("!H", big, l4 + 16)[0] == ones_sum(pseudo(big, len(big) - l4, 6))


def test_different_macs_or_bad_checksum_break_the_run(
        io: ModuleType, device_pair: tuple[socket.socket, socket.socket]) -> None:
    kernel, ours = device_pair
    frames = segments(4, [1000] * 6)
    moved = bytearray(frames[2])
    moved[6:12] = bytes.fromhex("02000000000f")  # another source MAC
    corrupt = bytearray(frames[4])
    corrupt[-1] ^= 0xFF  # payload corrupted: its TCP checksum no longer holds
    sent = [frames[0], frames[1], bytes(moved), frames[3], bytes(corrupt), frames[5]]
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True, l2=14, verify=True)
    assert batch.write(sent) == len(sent)
    out = drain(kernel)
    # [0,1] coalesced; the moved frame alone; [3] alone (the next one fails its checksum);
    # the corrupt one alone, as it came; [5] alone
    kinds = [VNET.unpack(o[:10])[1] for o in out]
    assert kinds == [GSO_TCPV4, 0, 0, 0, 0]
    assert out[1][10:] == bytes(moved) and out[3][10:] == bytes(corrupt)
    assert out[2][10:] == frames[3] and out[4][10:] == frames[5]


def test_non_ip_frames_are_written_as_they_are(
        io: ModuleType, device_pair: tuple[socket.socket, socket.socket]) -> None:
    kernel, ours = device_pair
    frames = segments(4, [1000] * 3)
    tagged = [DST_MAC + SRC_MAC + b"\x81\x00" + f[14:] for f in frames]  # not IPv4 EtherType
    batch = io.TunBatch(ours.fileno(), vnet_hdr=True, gro=True, l2=14)
    assert batch.write(tagged) == 3
    assert [o[10:] for o in drain(kernel)] == tagged
    assert batch.coalesced == 0


# ------------------------------------------------------------------------ a real TAP device


def test_open_tap_with_offloads() -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    name = "wgvxo" + uuid.uuid4().hex[:8]
    fd, got = offload.open_tun(name, tap=True, mtu=1400)
    try:
        assert got.name == name and got.vnet_hdr
        assert got.offloads & offload.TUN_F_CSUM
        assert offload.get_mtu(name) == 1400
        mac = offload.get_hwaddr(name)
        assert len(mac) == 6 and mac != bytes(6)
        with open(f"/sys/class/net/{name}/type") as f:
            assert f.read().strip() == "1"  # ARPHRD_ETHER: a TAP, not a TUN
    finally:
        os.close(fd)
    plain_fd, plain = offload.open_tun(name, tap=True, vnet_hdr=False)
    try:
        assert not plain.vnet_hdr and plain.offloads == 0
    finally:
        os.close(plain_fd)
