"""VXLAN on the wire, read independently of wg-py: the test's own Internet checksum, a parser
of captured VXLAN datagrams (UDP GSO trains included) and two programs run inside a test's
namespaces (``python tests/vxlan_wire.py capture|relay ...``).

Nothing here imports wg-py: it is the oracle the VXLAN checksum tests compare wg-py with.

- ``capture DEV SRC SECONDS OUT``: an AF_PACKET socket on DEV checks the VXLAN datagrams
  (UDP to 4789) whose outer source address is SRC for at most SECONDS (or 5,000 inner
  frames; SIGTERM ends it early), and writes a JSON
  summary to OUT: inner frames seen, TCP/UDP checksums checked, how many were complete and
  valid, how many partial, how many wrong. A UDP GSO train (one skb on the veth, up to 64
  KiB) is cut back into its datagrams by the inner IP lengths.
- ``relay LISTEN_IP LISTEN_PORT TO_PORT SECONDS OUT``: a plain UDP socket receives what a
  kernel vxlan sends, appends each datagram (hex) to OUT exactly as read, finishes the inner
  partial checksums (this module's code) and forwards it to ``LISTEN_IP:TO_PORT``, where a
  second kernel vxlan decapsulates it: so a real kernel TCP flow runs while its datagrams are
  recorded as a userspace receiver reads them.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import sys
import time
import zlib

ETH_P_ALL = 0x0003
VXLAN_PORT = 4789


def ones_sum(data: bytes, initial: int = 0) -> int:
    """16-bit one's complement sum (not complemented), written from RFC 1071: the words are
    summed in the machine's order and the folded sum byte-swapped (the sum does not depend on
    the byte order, section 2(B)), then ``initial`` is added."""
    if len(data) % 2:
        data += b"\0"
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    total += initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def oracle_flow_hash(frame: bytes, seed: int) -> int:
    """The flow hash from its definition (tunnel/vxlan/flow.py docstring), written without the
    code under test: CRC-32 seeded with ``seed`` over one flow key. IPv4: addresses, then the
    L4 ports (TCP/UDP/UDP-Lite/SCTP/DCCP, not a fragment, IHL >= 5, ports present), then the
    protocol byte; IPv6: addresses, ports (same protocols, no extension walk), next header;
    anything else or truncated: the 14-byte Ethernet header (or all of a shorter frame).
    One 802.1Q/802.1ad tag is skipped."""
    if len(frame) < 14:
        return zlib.crc32(frame, seed)
    l3, ethertype = 14, int.from_bytes(frame[12:14], "big")
    if ethertype in (0x8100, 0x88A8) and len(frame) >= 18:
        l3, ethertype = 18, int.from_bytes(frame[16:18], "big")
    ported = {6, 17, 33, 132, 136}
    key = None
    if ethertype == 0x0800 and len(frame) >= l3 + 20:
        ihl = (frame[l3] & 0x0F) * 4
        proto = frame[l3 + 9]
        fragment = int.from_bytes(frame[l3 + 6 : l3 + 8], "big") & 0x3FFF
        key = frame[l3 + 12 : l3 + 20]
        if proto in ported and fragment == 0 and ihl >= 20 and len(frame) >= l3 + ihl + 4:
            key += frame[l3 + ihl : l3 + ihl + 4]
        key += bytes([proto])
    elif ethertype == 0x86DD and len(frame) >= l3 + 40:
        nh = frame[l3 + 6]
        key = frame[l3 + 8 : l3 + 40]
        if nh in ported and len(frame) >= l3 + 44:
            key += frame[l3 + 40 : l3 + 44]
        key += bytes([nh])
    if key is None:
        key = frame[:14]
    return zlib.crc32(key, seed)


def oracle_port(hash32: int, lo: int, hi: int) -> int:
    """The kernel's udp_flow_src_port scaling: fold (hash ^ hash << 16, 32 bits), then
    lo + (folded * (hi - lo)) >> 32."""
    folded = (hash32 ^ (hash32 << 16)) % (1 << 32)
    return lo + (folded * (hi - lo)) // (1 << 32)


def l4_info(ip: bytes) -> tuple[int, int, int, int] | None:
    """(protocol, L4 offset, IP length, pseudo-header sum) of a TCP/UDP packet (IPv4 not a
    fragment, IPv6 without extension headers); None otherwise."""
    if len(ip) < 20:
        return None
    if ip[0] >> 4 == 4:
        l4 = (ip[0] & 15) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if struct.unpack_from("!H", ip, 6)[0] & 0x3FFF or total > len(ip) or total < l4:
            return None
        proto = ip[9]
        pseudo = ones_sum(ip[12:20] + struct.pack("!HH", proto, total - l4))
    elif ip[0] >> 4 == 6 and len(ip) >= 40:
        l4 = 40
        total = 40 + struct.unpack_from("!H", ip, 4)[0]
        if total > len(ip):
            return None
        proto = ip[6]
        pseudo = ones_sum(ip[8:40] + struct.pack("!IHBB", total - l4, 0, 0, proto))
    else:
        return None
    if proto not in (6, 17) or total - l4 < (20 if proto == 6 else 8):
        return None
    return proto, l4, total, pseudo


def field_at(proto: int) -> int:
    return 16 if proto == 6 else 6


def verdict(ip: bytes) -> str:
    """'valid', 'partial' (the field holds the pseudo-header sum), 'none' (UDP over IPv4 with
    no checksum), 'wrong', or 'other' (not TCP/UDP)."""
    info = l4_info(ip)
    if info is None:
        return "other"
    proto, l4, total, pseudo = info
    field = struct.unpack_from("!H", ip, l4 + field_at(proto))[0]
    if proto == 17 and field == 0:
        return "none" if ip[0] >> 4 == 4 else "wrong"
    if ones_sum(ip[l4:total], pseudo) == 0xFFFF:
        return "valid"
    if (field or 0xFFFF) == pseudo:
        return "partial"
    return "wrong"


def completed(ip: bytes) -> bytes:
    """The packet with its checksum computed from scratch (field zeroed first)."""
    info = l4_info(ip)
    assert info is not None
    proto, l4, total, pseudo = info
    where = l4 + field_at(proto)
    out = bytearray(ip)
    out[where:where + 2] = b"\0\0"
    value = ~ones_sum(bytes(out[l4:total]), pseudo) & 0xFFFF
    if proto == 17 and value == 0:
        value = 0xFFFF
    struct.pack_into("!H", out, where, value)
    return bytes(out)


def inner_frames(payload: bytes) -> list[bytes]:
    """The Ethernet frames of a VXLAN UDP payload, or of a UDP GSO train of them (datagrams
    back to back, each 8 + 14 + its inner IP length; a non-IP frame ends the walk)."""
    frames = []
    offset = 0
    while offset + 8 + 14 <= len(payload):
        eth = payload[offset + 8:]
        kind = struct.unpack_from("!H", eth, 12)[0]
        size = len(eth)
        if kind == 0x0800 and len(eth) >= 34:
            size = 14 + struct.unpack_from("!H", eth, 16)[0]
        elif kind == 0x86DD and len(eth) >= 54:
            size = 14 + 40 + struct.unpack_from("!H", eth, 18)[0]
        size = min(size, len(eth))
        frames.append(bytes(eth[:size]))
        offset += 8 + size
    return frames


def outer_udp(frame: bytes) -> tuple[str, int, bytes] | None:
    """(source address, destination port, UDP payload) of an Ethernet frame carrying UDP."""
    if len(frame) < 14:
        return None
    kind = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if kind == 0x0800 and len(ip) >= 28 and ip[9] == 17:
        l4 = (ip[0] & 15) * 4
        src = socket.inet_ntop(socket.AF_INET, ip[12:16])
    elif kind == 0x86DD and len(ip) >= 48 and ip[6] == 17:
        l4 = 40
        src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
    else:
        return None
    return src, struct.unpack_from("!H", ip, l4 + 2)[0], ip[l4 + 8:]


def _capture(dev: str, source: str, seconds: float, out: str, limit: int = 5000) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((dev, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    counts = {"frames": 0, "valid": 0, "partial": 0, "none": 0, "wrong": 0, "other": 0}
    wrong: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0 and counts["frames"] < limit:
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not ready:
                continue
            data, address = sock.recvfrom(1 << 17)
            if address[2] == socket.PACKET_OUTGOING:
                continue
            udp = outer_udp(data)
            if udp is None or udp[0] != source or udp[1] != VXLAN_PORT:
                continue
            for frame in inner_frames(udp[2]):
                counts["frames"] += 1
                ip = frame[12:14] in (b"\x08\x00", b"\x86\xdd")
                kind = verdict(frame[14:]) if ip else "other"
                counts[kind] += 1
                if kind == "wrong" and len(wrong) < 5:
                    wrong.append(frame[:80].hex())
    finally:
        with open(out, "w") as f:
            json.dump({**counts, "wrong_examples": wrong}, f)


def _relay(ip: str, port: int, to_port: int, seconds: float, out: str) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    records = 0
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    with open(out, "w", buffering=1) as f:  # line-buffered: a SIGTERM loses nothing
        while (left := deadline - time.monotonic()) > 0 and records < 100_000:
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not ready:
                continue
            data = sock.recv(1 << 16)
            f.write(data.hex() + "\n")
            records += 1
            frame = data[8:]
            if frame[12:14] in (b"\x08\x00", b"\x86\xdd") and verdict(frame[14:]) == "partial":
                data = data[:22] + completed(frame[14:])
            sock.sendto(data, (ip, to_port))


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        _capture(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "relay":
        _relay(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")
