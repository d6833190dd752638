"""TCP segmentation and coalescing of IP packets, pure Python: the reference of the C in
``tunnel/io/_io.h``, used by :class:`tunnel.io.io_ref.TunBatch` (see the docstring of
``tunnel/io/io_ref.py`` for the contract of the TUN/TAP batch I/O).

- Segmentation (TSO split): :func:`parse_super` reads a TCP GSO super-packet and its
  virtio-net header into a :class:`_Super`; :func:`cut_segment` writes its next segment (IP
  length, IPv4 id and header checksum, TCP sequence number, flags and checksum rewritten).
- :func:`complete_checksum` finishes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM);
  :func:`checksum_partial` says whether a received packet's checksum was left partial by the
  sender's kernel (the facts and the rule: the comment above ``wgpy_csum_partial`` in
  ``tunnel/io/_io.h``).
- Coalescing (GRO): :func:`tcp_info` says whether a packet is a plain TCP data segment,
  :func:`tcp_follows` whether one may follow another in a run, :func:`coalesce_run` measures a
  run, and :func:`super_header` builds the run's virtio-net header and IP+TCP header.
- :func:`checksum`: the 16-bit one's complement sum everything here uses.

Pure functions of their arguments; nothing here keeps state or touches a file descriptor.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tunnel.io.constants import (
    GRO_BYTES,
    GRO_SEGMENTS,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET_F_NEEDS_CSUM,
)

Buffer = bytes | bytearray | memoryview

_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset


def checksum(data: Buffer, initial: int = 0) -> int:
    """The 16-bit one's complement sum (not complemented) of ``data`` plus ``initial``."""
    view = bytes(data)
    if len(view) & 1:
        view += b"\0"
    total: int = initial + sum(struct.unpack(f"!{len(view) // 2}H", view))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo_sum(packet: Buffer, version: int, protocol: int, length: int) -> int:
    if version == 4:
        return checksum(packet[12:20], protocol + length)
    return checksum(packet[8:40], protocol + length)


# ---------------------------------------------------------------------------- TCP


class _Super:
    """A TCP super-packet being cut: the packet, where its TCP header is, the segment size."""

    __slots__ = ("packet", "l4", "header", "mss", "next_offset", "index")

    def __init__(self, packet: bytes, l4: int, header: int, mss: int) -> None:
        self.packet = packet
        self.l4 = l4
        self.header = header
        self.mss = mss
        self.next_offset = header
        self.index = 0


def complete_checksum(packet: bytearray | memoryview, start: int, offset: int) -> bool:
    """Finish a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) in place; False if out of range.

    The field at ``start + offset`` holds the pseudo-header sum; the checksum is over
    ``packet[start:]`` with it included. A UDP result of 0 is sent as 0xFFFF.
    """
    size = len(packet)
    where = start + offset
    if start >= size or where + 2 > size:
        return False
    value = (~checksum(packet[start:size])) & 0xFFFF
    if value == 0 and offset == 6:
        value = 0xFFFF
    struct.pack_into("!H", packet, where, value)
    return True


def l3_offset(frame: Buffer, l2: int) -> int:
    """Where the IP packet of a frame behind an ``l2``-byte link header starts (0: no link
    header; 14: Ethernet, whose EtherType must match the IP version); -1 if there is none."""
    if l2 == 0:
        return 0
    if len(frame) < l2 + 20:
        return -1
    kind = (frame[l2 - 2] << 8) | frame[l2 - 1]
    version = frame[l2] >> 4
    if (kind == 0x0800 and version == 4) or (kind == 0x86DD and version == 6):
        return l2
    return -1


def checksum_partial(packet: Buffer) -> tuple[int, int, int] | None:
    """``(L4 offset, checksum field offset in L4, IP length)`` if the TCP/UDP checksum of the IP
    packet holds exactly its pseudo-header sum (CHECKSUM_PARTIAL left unfinished by the
    sender's kernel; 0 and 0xFFFF are the same zero, but a UDP field of 0 means "none"); None
    otherwise. IPv4 without fragmentation, IPv6 without extension headers; the IP length may
    be shorter than ``packet`` (link padding). See ``wgpy_csum_partial`` in ``_io.h``."""
    size = len(packet)
    if size < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        l4 = (packet[0] & 15) * 4
        total = (packet[2] << 8) | packet[3]
        if l4 < 20 or total < l4 or total > size or ((packet[6] << 8) | packet[7]) & 0x3FFF:
            return None
        proto = packet[9]
    elif version == 6 and size >= 40:
        l4 = 40
        total = 40 + ((packet[4] << 8) | packet[5])
        if total > size:
            return None
        proto = packet[6]
    else:
        return None
    if proto == 6 and total >= l4 + 20:
        offset = 16
    elif proto == 17 and total >= l4 + 8:
        offset = 6
    else:
        return None
    field = (packet[l4 + offset] << 8) | packet[l4 + offset + 1]
    if field == 0 and proto == 17:
        return None
    pseudo = _pseudo_sum(packet, version, proto, total - l4)
    if (field or 0xFFFF) != pseudo:
        return None
    return l4, offset, total


def tcp_checksum_partial(packet: Buffer, info: TcpInfo) -> bool:
    """Does the TCP checksum of ``packet`` (described by :func:`tcp_info`) hold exactly its
    pseudo-header sum (see :func:`checksum_partial`)?"""
    return checksum_partial(packet[: info.header + info.payload]) is not None


def tcp_checksum_ok(packet: Buffer, info: TcpInfo) -> bool:
    """Is the TCP checksum of ``packet`` (described by :func:`tcp_info`) right?"""
    size = info.header + info.payload
    pseudo = _pseudo_sum(packet, info.version, 6, size - info.l4)
    return checksum(packet[info.l4:size], pseudo) == 0xFFFF


def parse_super(packet: bytes, hdr: tuple[int, int, int, int, int, int], mtu: int) -> _Super | None:
    """Where the TCP header of a GSO super-packet is, and its segment size; None if malformed."""
    flags, gso_type, _hdr_len, gso_size, csum_start, _csum_offset = hdr
    kind = gso_type & ~GSO_ECN
    size = len(packet)
    if size < 20:
        return None
    version = packet[0] >> 4
    if kind == GSO_TCPV4 and version == 4:
        ihl = (packet[0] & 15) * 4
        if ihl < 20 or packet[9] != 6:
            return None
        l4 = csum_start if flags & VNET_F_NEEDS_CSUM and csum_start >= ihl else ihl
    elif kind == GSO_TCPV6 and version == 6:
        l4 = csum_start if flags & VNET_F_NEEDS_CSUM and csum_start >= 40 else 40
    else:
        return None
    if l4 + 20 > size:
        return None
    header = l4 + (packet[l4 + 12] >> 4) * 4
    if header < l4 + 20 or header > size:
        return None
    mss = gso_size if gso_size else mtu - header
    mss = min(mss, mtu - header)
    if mss <= 0:
        return None
    return _Super(packet, l4, header, mss)


def cut_segment(work: _Super, out: bytearray | memoryview) -> int:
    """Write the next segment of ``work`` into ``out``; returns its length (0 if out is short)."""
    packet = work.packet
    l4 = work.l4
    header = work.header
    start = work.next_offset
    end = min(start + work.mss, len(packet))
    last = end >= len(packet)
    size = header + end - start
    if size > len(out):
        return 0
    out[:header] = packet[:header]
    out[header:size] = packet[start:end]
    k = work.index
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 15) * 4
        struct.pack_into("!H", out, 2, size)
        ident = (struct.unpack_from("!H", packet, 4)[0] + k) & 0xFFFF
        struct.pack_into("!H", out, 4, ident)
        struct.pack_into("!H", out, 10, 0)
        struct.pack_into("!H", out, 10, (~checksum(out[:ihl])) & 0xFFFF)
    else:
        struct.pack_into("!H", out, 4, size - 40)
    seq = (struct.unpack_from("!I", packet, l4 + 4)[0] + (start - header)) & 0xFFFFFFFF
    struct.pack_into("!I", out, l4 + 4, seq)
    tcp_flags = packet[l4 + 13]
    if not last:
        tcp_flags &= ~0x09  # FIN, PSH only on the last segment
    if k:
        tcp_flags &= ~0x80  # CWR only on the first
    out[l4 + 13] = tcp_flags
    struct.pack_into("!H", out, l4 + 16, 0)
    pseudo = _pseudo_sum(out, version, 6, size - l4)
    struct.pack_into("!H", out, l4 + 16, (~checksum(out[l4:size], pseudo)) & 0xFFFF)
    work.next_offset = end
    work.index = k + 1
    return size


def tso_frame(packet: Buffer, mtu: int) -> tuple[int, _Super | None, bool]:
    """``(kind, work, partial)`` for the IP packet of a frame larger than the MTU (the twin of
    ``wgpy_tso_frame`` in ``_io.h``): kind 0 if it is not a TCP super-packet to cut into
    segments of at most ``mtu`` bytes (IPv4 without fragmentation, or IPv6 with TCP as the first
    next header, IP length exactly ``len(packet)``, room for payload in a segment); else
    ``work`` (for :func:`cut_segment` / :func:`tso_header`), ``partial`` (the TCP checksum holds
    the pseudo-header sum) and kind 1 if the checksum is right or partial, 2 if it is neither
    (written as it is: integrity is never papered over)."""
    size = len(packet)
    if size < 20 or size > 65535:
        return 0, None, False
    version = packet[0] >> 4
    if version == 4:
        if (struct.unpack_from("!H", packet, 2)[0] != size
                or struct.unpack_from("!H", packet, 6)[0] & 0x3FFF or packet[9] != 6):
            return 0, None, False
        kind = GSO_TCPV4
    elif version == 6 and size >= 40:
        if struct.unpack_from("!H", packet, 4)[0] + 40 != size or packet[6] != 6:
            return 0, None, False
        kind = GSO_TCPV6
    else:
        return 0, None, False
    work = parse_super(bytes(packet), (0, kind, 0, 0, 0, 0), mtu)
    if work is None:
        return 0, None, False
    found = checksum_partial(packet)
    if found is not None and found[0] == work.l4:
        return 1, work, True
    info = TcpInfo(version, work.l4, work.header, size - work.header)
    return (1 if tcp_checksum_ok(packet, info) else 2), work, False


def tso_header(frame: Buffer, l2: int, work: _Super) -> tuple[bytes, bytearray]:
    """``(virtio-net header, link + IP + TCP header)`` of the GSO super-frame for ``work`` (from
    :func:`tso_frame`) behind ``frame``'s ``l2``-byte link header: TCPV4/TCPV6, +ECN if CWR is
    set (as the kernel's tcp_gro_complete marks it), gso_size ``work.mss``, NEEDS_CSUM at the
    TCP checksum, which gets the pseudo-header sum of the whole packet (the kernel's
    segmentation adjusts it per segment)."""
    packet = work.packet
    l4 = work.l4
    version = packet[0] >> 4
    out = bytearray(frame[: l2 + work.header])
    struct.pack_into("!H", out, l2 + l4 + 16, _pseudo_sum(packet, version, 6, len(packet) - l4))
    kind = GSO_TCPV4 if version == 4 else GSO_TCPV6
    if packet[l4 + 13] & 0x80:
        kind |= GSO_ECN
    vnet = _VNET.pack(VNET_F_NEEDS_CSUM, kind, l2 + work.header, work.mss, l2 + l4, 16)
    return vnet, out


class TcpInfo:
    """Where a plain TCP data segment's parts are (see :func:`tcp_info`)."""

    __slots__ = ("version", "l4", "header", "payload")

    def __init__(self, version: int, l4: int, header: int, payload: int) -> None:
        self.version = version
        self.l4 = l4
        self.header = header
        self.payload = payload


def tcp_info(packet: Buffer) -> TcpInfo | None:
    """A TCP data segment we may coalesce: IPv4 without options (not a fragment) or IPv6
    without extension headers, lengths consistent, flags ACK and maybe PSH only, a payload."""
    size = len(packet)
    if size < 40 or size > GRO_BYTES:
        return None
    if packet[0] == 0x45:
        if packet[9] != 6 or struct.unpack_from("!H", packet, 2)[0] != size:
            return None
        if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:
            return None
        l4 = 20
    elif packet[0] >> 4 == 6:
        if size < 60 or packet[6] != 6 or struct.unpack_from("!H", packet, 4)[0] + 40 != size:
            return None
        l4 = 40
    else:
        return None
    header = l4 + (packet[l4 + 12] >> 4) * 4
    if header < l4 + 20 or header >= size:
        return None
    if packet[l4 + 13] & ~0x08 != 0x10:
        return None
    return TcpInfo(packet[0] >> 4, l4, header, size - header)


def tcp_follows(first: Buffer, tf: TcpInfo, prev: Buffer, tp: TcpInfo, q: Buffer, tq: TcpInfo) -> bool:
    """May segment ``q`` follow ``prev`` in the run that starts with ``first``?"""
    if tq.version != tf.version or tq.header != tf.header or tq.payload > tf.payload:
        return False
    f, p, n = bytes(first[: tf.header]), bytes(prev[: tf.header]), bytes(q[: tq.header])
    if tf.version == 4:
        if n[1] != f[1] or (n[6] ^ f[6]) & 0x40 or n[8] != f[8] or n[12:20] != f[12:20]:
            return False
    elif n[0:4] != f[0:4] or n[7] != f[7] or n[8:40] != f[8:40]:
        return False
    l4 = tf.l4
    if (n[l4:l4 + 4] != f[l4:l4 + 4] or n[l4 + 8:l4 + 13] != f[l4 + 8:l4 + 13]
            or n[l4 + 14:l4 + 16] != f[l4 + 14:l4 + 16] or n[l4 + 18:] != f[l4 + 18:]):
        return False
    seq_prev = struct.unpack_from("!I", p, l4 + 4)[0]
    return bool(struct.unpack_from("!I", n, l4 + 4)[0] == (seq_prev + tp.payload) & 0xFFFFFFFF)


def coalesce_run(packets: Sequence[Buffer], start: int, l2: int = 0,
                 verify: bool = False) -> tuple[int, int, TcpInfo | None]:
    """``(count, total IP length, info of the first)`` of the run of segments from ``start``
    that coalesce into one super-packet; count 1 means none (write the packet as it is).
    ``l2``: link header bytes before each IP packet (identical within a run); ``verify``: only
    segments with a right or a partial (:func:`tcp_checksum_partial`) TCP checksum join (the
    super-packet's checksum is partial anyway)."""
    frame = packets[start]
    if l3_offset(frame, l2) < 0:
        return 1, len(frame), None
    first = memoryview(frame)[l2:]
    tf = tcp_info(first)
    if tf is None or first[tf.l4 + 13] & 0x08 or (verify and not _checks(first, tf)):
        return 1, len(first), tf
    link = bytes(frame[:l2])
    prev, tp = first, tf
    size = len(first)
    count = 1
    k = start + 1
    while k < len(packets) and count < GRO_SEGMENTS:
        qf = packets[k]
        if l3_offset(qf, l2) < 0 or bytes(qf[:l2]) != link:
            break
        q = memoryview(qf)[l2:]
        tq = tcp_info(q)
        if tq is None or not tcp_follows(first, tf, prev, tp, q, tq):
            break
        if verify and not _checks(q, tq):
            break
        if size + tq.payload > GRO_BYTES:
            break
        size += tq.payload
        count += 1
        k += 1
        if tq.payload < tf.payload or q[tf.l4 + 13] & 0x08:
            break
        prev, tp = q, tq
    return count, size, tf


def _checks(packet: Buffer, info: TcpInfo) -> bool:
    return tcp_checksum_partial(packet, info) or tcp_checksum_ok(packet, info)


def super_header(first: Buffer, tf: TcpInfo, last: Buffer, total: int) -> tuple[bytes, bytearray]:
    """``(virtio-net header, IP+TCP header)`` of the super-packet of a run (see module doc)."""
    out = bytearray(first[: tf.header])
    l4 = tf.l4
    if tf.version == 4:
        struct.pack_into("!H", out, 2, total)
        struct.pack_into("!H", out, 10, 0)
        struct.pack_into("!H", out, 10, (~checksum(out[:20])) & 0xFFFF)
    else:
        struct.pack_into("!H", out, 4, total - 40)
    pseudo = _pseudo_sum(out, tf.version, 6, total - l4)
    out[l4 + 13] |= last[l4 + 13] & 0x08
    struct.pack_into("!H", out, l4 + 16, pseudo)
    vnet = _VNET.pack(VNET_F_NEEDS_CSUM, GSO_TCPV4 if tf.version == 4 else GSO_TCPV6, tf.header,
                      tf.payload, l4, 16)
    return vnet, out
