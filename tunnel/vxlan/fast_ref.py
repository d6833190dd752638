"""The VXLAN data path's per-packet loops, pure-Python reference of ``tunnel.vxlan._fast``.

``tunnel/vxlan/_fast.pyx`` is the fast path (C loops over the batch, syscalls with the GIL
released); this module does the same in plain Python with the same API and results.
``tunnel.vxlan.fast.select()`` picks one (``WGPY_PURE=1`` forces this one);
``tests/test_vxlan_fast.py`` runs against both.

The engine keeps every protocol decision that touches Python state (FDB learning and lookup,
proxy ARP, counters); the functions here do the work that is the same for every packet of a
batch and tell the engine where a decision is needed, so that one FDB lookup or learn serves a
whole run of frames of one flow.

Batch layout (the shell's preallocated buffers; the native twin requires ``bytearray``s):

- Receive: datagram ``i`` (a UDP payload: VXLAN header + inner frame) is
  ``bufs[i][0:lengths[i]]``, from ``sources[i]`` (any object; equal objects mean the same
  outer source address).
- Transmit: inner frame ``i`` is ``bufs[i][headroom:headroom + lengths[i]]``.
- ``verdicts`` is a writable byte buffer of at least ``count`` bytes: one code per packet.

Functions:

- :func:`decap_batch`: the kernel's receive checks over a batch (header length, I flag, VNI,
  reserved bits, own source MAC, and, when learning, an invalid source MAC), a verdict per
  datagram (``RX_*``; ``RX_REASONS[code]`` is the drop-reason name), and the learning runs: the
  index of each accepted datagram whose inner source MAC or outer source differs from the
  previous accepted one (so the engine learns once per run).
- :func:`scan_tx`: transmit checks (``TX_TOO_SHORT``), the outer UDP source port per frame (the
  flow hash scaled into the ``srcport`` range, as :mod:`tunnel.vxlan.flow`), and the runs of
  consecutive frames to one destination MAC as ``(start, end, frames, bytes)`` tuples (one FDB
  lookup per run). With ``split_arp`` each ARP frame gets ``TX_ARP`` and a run of its own (the
  engine may answer it by proxy).
- :func:`write_headers`: the 8-byte VXLAN header in the headroom of the accepted frames of a
  range (for a sender that takes one contiguous payload per datagram).
- :func:`udp_checksum`: the IPv4 UDP checksum of one datagram (tests and the reference sender).
- :class:`Dest`: one remote VTEP as the raw sender wants it (parsed once by the shell).
- :class:`RawBatch`: sendmmsg on a raw IPPROTO_UDP socket. Each datagram is two pieces, a
  16-byte header built per message (UDP header with the frame's hashed source port, length and,
  over IPv4, the checksum over the pseudo-header; then the VXLAN header of the remote's VNI) and
  the frame in place: nothing is written into the caller's buffers, so one frame can go to
  remotes of different VNIs.
- :class:`GsoBatch`: sendmmsg over a pool of UDP sockets (one per outer source port; frame
  ``i`` leaves from socket ``sports[i] % len(fds)``, so one flow keeps one source port). Each
  datagram is the remote's 8-byte VXLAN header and the frame in place (two iovecs; the kernel
  builds UDP and IP, and the UDP checksum). With ``gso``, runs of consecutive datagrams of one
  socket to one remote, of equal size (the last may be shorter), at most ``GSO_SEGMENTS``
  datagrams and ``GSO_BYTES`` bytes, leave as one message with a UDP_SEGMENT control message:
  the kernel segments (or hands the whole train to a GRO-enabled receiver). If the kernel
  refuses GSO (EIO or EINVAL on a message of several datagrams), GSO is turned off for the
  object, a line is added to ``fallbacks``, and the datagrams go one by one.

Buffers are borrowed for the call only; nothing here keeps a reference to them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from array import array
from collections.abc import Sequence
from typing import Any

from .flow import flow_hash, scale_port

Buffer = bytes | bytearray | memoryview

RX_OK = 0
RX_TOO_SHORT = 1
RX_NO_I_FLAG = 2
RX_WRONG_VNI = 3
RX_RESERVED_BITS = 4
RX_OWN_SOURCE_MAC = 5
RX_INVALID_SOURCE_MAC = 6
RX_STATIC_CONFLICT = 7  # set by the engine after learning, never by decap_batch
#: drop-reason name of each RX code (the engine's ``drops`` keys)
RX_REASONS: tuple[str, ...] = (
    "", "too_short", "no_i_flag", "wrong_vni", "reserved_bits", "own_source_mac",
    "invalid_source_mac", "static_entry_conflict",
)

TX_OK = 0
TX_TOO_SHORT = 1
TX_ARP = 2  # an ARP frame (only with split_arp); sent like TX_OK unless the engine changes it
TX_DONE = 3  # set by the engine: handled locally (proxy ARP), not sent

VXLAN_HLEN = 8
ETH_HLEN = 14
FLAGS = 0x08000000
#: largest batch the native twin handles per call (the shell's batches are smaller)
MAX_BATCH = 1024
#: most datagrams and payload bytes in one UDP GSO message
GSO_SEGMENTS = 64
GSO_BYTES = 65000
SOL_UDP = 17
UDP_SEGMENT = 103

_WORDS = struct.Struct(">II")
_UDP = struct.Struct(">HHHH")
_SEND_GONE_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


def _check_count(bufs: Sequence[Any], lengths: Sequence[int], count: int, verdicts: Any) -> None:
    if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
        raise ValueError("count exceeds bufs, lengths or verdicts")
    if count > MAX_BATCH:
        raise ValueError(f"batch larger than {MAX_BATCH}")


def decap_batch(
    bufs: Sequence[bytearray], lengths: Sequence[int], count: int, vni: int, own_mac: bytes,
    learning: bool, sources: Sequence[Any], verdicts: bytearray, runs: list[int],
) -> tuple[int, int]:
    """Check ``count`` datagrams; returns ``(accepted, inner_bytes)``.

    ``verdicts[i]`` gets ``RX_OK`` or the drop code, in the kernel's order: too short for the
    VXLAN header, no I flag, VNI other than ``vni``, any reserved bit, too short for the inner
    Ethernet header, inner source MAC equal to ``own_mac`` (``b""``: not known yet), and with
    ``learning`` a multicast or all-zeros source MAC. ``inner_bytes`` sums the accepted inner
    frame lengths. A length beyond its buffer is cut to the buffer (the slice's meaning).
    With ``learning``, the index of every accepted datagram that starts a run (see module doc)
    is appended to ``runs``.
    """
    _check_count(bufs, lengths, count, verdicts)
    if len(sources) < count:
        raise ValueError("sources is shorter than count")
    accepted = 0
    total = 0
    prev_mac = b""
    prev_src: Any = None
    have_prev = False
    for i in range(count):
        buf = bufs[i]
        n = min(lengths[i], len(buf))  # the datagram is the slice bufs[i][0:lengths[i]]
        code = RX_OK
        if n < VXLAN_HLEN:
            code = RX_TOO_SHORT
        else:
            flags, word = _WORDS.unpack_from(buf, 0)
            if not flags & FLAGS:
                code = RX_NO_I_FLAG
            elif word >> 8 != vni:
                code = RX_WRONG_VNI
            elif flags != FLAGS or word & 0xFF:
                code = RX_RESERVED_BITS
            elif n < VXLAN_HLEN + ETH_HLEN:
                code = RX_TOO_SHORT
            else:
                smac = bytes(buf[14:20])
                if smac == own_mac:
                    code = RX_OWN_SOURCE_MAC
                elif learning and (smac[0] & 1 or smac == b"\0\0\0\0\0\0"):
                    code = RX_INVALID_SOURCE_MAC
                elif learning:
                    src = sources[i]
                    if not have_prev or smac != prev_mac or not (src is prev_src or src == prev_src):
                        runs.append(i)
                        prev_mac, prev_src, have_prev = smac, src, True
        verdicts[i] = code
        if code == RX_OK:
            accepted += 1
            total += n - VXLAN_HLEN
    return accepted, total


def scan_tx(
    bufs: Sequence[bytearray], lengths: Sequence[int], count: int, headroom: int, seed: int,
    port_min: int, port_max: int, split_arp: bool, verdicts: bytearray, sports: array[int],
    runs: list[tuple[int, int, int, int]],
) -> int:
    """Check ``count`` frames, hash their source ports into ``sports[i]`` (an ``array('H')``)
    and append the destination-MAC runs to ``runs``; returns how many frames are ``TX_OK`` or
    ``TX_ARP``. A run ``(start, end, frames, bytes)`` covers ``start <= i < end``; ``frames``
    and ``bytes`` count its sendable frames and their lengths (frames in the range with another
    verdict are skipped by the senders)."""
    _check_count(bufs, lengths, count, verdicts)
    if len(sports) < count:
        raise ValueError("sports is shorter than count")
    if headroom < 0:
        raise ValueError("negative headroom")
    ok = 0
    run_start = -1
    run_frames = run_bytes = 0
    prev_mac = b""
    for i in range(count):
        buf = bufs[i]
        n = lengths[i]
        if n < ETH_HLEN or headroom + n > len(buf):
            verdicts[i] = TX_TOO_SHORT
            continue
        h = headroom
        sports[i] = scale_port(flow_hash(memoryview(buf)[: h + n], h, seed), port_min, port_max)
        ok += 1
        dmac = bytes(buf[h : h + 6])
        arp = split_arp and buf[h + 12] == 0x08 and buf[h + 13] == 0x06
        verdicts[i] = TX_ARP if arp else TX_OK
        if run_start >= 0 and (arp or dmac != prev_mac):
            runs.append((run_start, i, run_frames, run_bytes))
            run_start = -1
        if run_start < 0:
            run_start, run_frames, run_bytes, prev_mac = i, 0, 0, dmac
        run_frames += 1
        run_bytes += n
        if arp:
            runs.append((run_start, i + 1, run_frames, run_bytes))
            run_start = -1
    if run_start >= 0:
        runs.append((run_start, count, run_frames, run_bytes))
    return ok


def write_headers(
    bufs: Sequence[bytearray], verdicts: Buffer, start: int, end: int, headroom: int, vni: int
) -> None:
    """Write the VXLAN header of ``vni`` at ``bufs[i][headroom-8:headroom]`` for every
    ``start <= i < end`` whose verdict is ``TX_OK`` or ``TX_ARP`` (``headroom >= 8``)."""
    if headroom < VXLAN_HLEN or not 0 <= vni < 1 << 24:
        raise ValueError("headroom below 8 or VNI out of range")
    if start < 0 or end > len(bufs) or end > len(verdicts):
        raise ValueError("range exceeds bufs or verdicts")
    header = _WORDS.pack(FLAGS, vni << 8)
    for i in range(start, end):
        if verdicts[i] in (TX_OK, TX_ARP):
            bufs[i][headroom - VXLAN_HLEN : headroom] = header


def _sum16(data: Buffer) -> int:
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def udp_checksum(pseudo: int, sport: int, dport: int, vni: int, frame: Buffer) -> int:
    """IPv4 UDP checksum of the datagram ``UDP header + VXLAN header(vni) + frame``. ``pseudo``
    is the pseudo-header sum without the length: source address words + destination address
    words + 17, as an integer (any size). Never 0 (RFC 768: a computed zero is sent as
    0xFFFF)."""
    length = 8 + VXLAN_HLEN + len(frame)
    total = (pseudo + length + _sum16(_UDP.pack(sport, dport, length, 0))
             + _sum16(_WORDS.pack(FLAGS, vni << 8)) + _sum16(frame)) % 0xFFFF
    return 0xFFFF - total if total else 0xFFFF


def pseudo_sum(src: str, dst: str) -> int:
    """The IPv4 pseudo-header partial sum ``udp_checksum`` wants (addresses + protocol 17)."""
    words = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return _sum16(words) + socket.IPPROTO_UDP


class Dest:
    """One remote VTEP for :class:`RawBatch`: address (IPv4 or IPv6 text), destination port,
    VNI and the IPv4 pseudo-header sum (:func:`pseudo_sum`; ignored over IPv6)."""

    __slots__ = ("ip", "port", "vni", "pseudo", "ipv6", "_header")

    def __init__(self, ip: str, port: int, vni: int, pseudo: int = 0) -> None:
        address = ipaddress.ip_address(ip)
        if not 0 <= port <= 0xFFFF or not 0 <= vni < 1 << 24:
            raise ValueError("port or VNI out of range")
        self.ip = str(address)
        self.port = port
        self.vni = vni
        self.pseudo = pseudo
        self.ipv6 = address.version == 6
        self._header = _WORDS.pack(FLAGS, vni << 8)

    def __repr__(self) -> str:
        return f"Dest({self.ip!r}, {self.port}, {self.vni})"


def _sendable(
    bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int, verdicts: Buffer,
    sports: array[int], items: Sequence[tuple[int, int, Dest]], ipv6: bool,
) -> list[tuple[memoryview, int, Dest]]:
    """``(frame, source port, dest)`` of every sendable frame of the items, in order, with the
    senders' argument checks (the native twin: ``_fast._Frames.collect``)."""
    if headroom < 0:
        raise ValueError("negative headroom")
    out: list[tuple[memoryview, int, Dest]] = []
    for start, end, dest in items:
        if start < 0 or end > len(bufs) or end > len(lengths) or end > len(verdicts):
            raise ValueError("item range exceeds the batch")
        if dest.ipv6 != ipv6:
            raise ValueError("destination family differs from the socket's")
        for i in range(start, end):
            if verdicts[i] in (TX_OK, TX_ARP):
                if lengths[i] < 0 or headroom + lengths[i] > len(bufs[i]):
                    raise ValueError("frame exceeds its buffer")
                out.append((memoryview(bufs[i])[headroom : headroom + lengths[i]], sports[i], dest))
    return out


class RawBatch:
    """sendmmsg on a raw IPPROTO_UDP socket ``fd`` (the caller keeps owning it; over IPv6 the
    caller sets IPV6_CHECKSUM so the kernel fills the checksum). ``udpcsum``: compute the IPv4
    checksum (else send zero)."""

    def __init__(self, fd: int, *, udpcsum: bool = True) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self.fd = fd
        self.udpcsum = udpcsum
        self.ipv6 = self._sock.family == socket.AF_INET6

    def close(self) -> None:
        """Release this object's duplicate of the fd."""
        self._sock.close()

    def send(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int, verdicts: Buffer,
        sports: array[int], items: Sequence[tuple[int, int, Dest]],
    ) -> tuple[int, int, int]:
        """Send frame ``i`` (``bufs[i][headroom:headroom+lengths[i]]``) to ``dest`` for each
        item ``(start, end, dest)`` and each ``start <= i < end`` with verdict ``TX_OK`` or
        ``TX_ARP``, from source port ``sports[i]``. Returns ``(sent, dropped_full, errors)``:
        a full socket buffer (EAGAIN/ENOBUFS) drops the rest of the batch; any other error
        drops that datagram. Never raises for a per-datagram error."""
        sent = full = errors = 0
        messages = _sendable(bufs, lengths, headroom, verdicts, sports, items, self.ipv6)
        for k, (frame, sport, dest) in enumerate(messages):
            length = 16 + len(frame)
            csum = 0
            if self.udpcsum and not self.ipv6:
                csum = udp_checksum(dest.pseudo, sport, dest.port, dest.vni, frame)
            header = _UDP.pack(sport, dest.port, length & 0xFFFF, csum) + dest._header
            address = (dest.ip, 0, 0, 0) if self.ipv6 else (dest.ip, 0)
            try:
                self._sock.sendmsg([header, frame], (), 0, address)
                sent += 1
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in _SEND_GONE_AGAIN:
                    full = len(messages) - k
                    break
                errors += 1
        return sent, full, errors


class GsoBatch:
    """sendmmsg over a pool of UDP sockets ``fds`` of one family, with UDP GSO (see the module
    doc). The caller keeps owning the fds (bound, non-blocking)."""

    def __init__(self, fds: Sequence[int], *, gso: bool = True) -> None:
        if not fds:
            raise ValueError("GsoBatch needs at least one socket")
        self._socks = [socket.socket(fileno=os.dup(fd)) for fd in fds]
        self.fd_list = list(fds)
        self.nfds = len(fds)
        self.gso = gso
        self.fallbacks: list[str] = []
        self.ipv6 = self._socks[0].family == socket.AF_INET6

    def close(self) -> None:
        """Release this object's duplicates of the fds."""
        for sock in self._socks:
            sock.close()

    def _messages(self, datagrams: list[tuple[int, Dest, memoryview]],
                  start: int) -> list[tuple[int, int]]:
        """``(first, count)`` of the messages of the socket of datagram ``start``, from there
        to where the socket changes (GSO runs as one message when on)."""
        out: list[tuple[int, int]] = []
        d, total = start, len(datagrams)
        sock = datagrams[start][0]
        while d < total and datagrams[d][0] == sock:
            _, dest, frame = datagrams[d]
            size = len(frame)
            k, nbytes = 1, 8 + size
            while self.gso and d + k < total and k < GSO_SEGMENTS:
                s2, dest2, frame2 = datagrams[d + k]
                if (s2 != sock or dest2 is not dest or not 0 < len(frame2) <= size
                        or nbytes + 8 + len(frame2) > GSO_BYTES):
                    break
                nbytes += 8 + len(frame2)
                k += 1
                if len(frame2) < size:
                    break
            out.append((d, k))
            d += k
        return out

    def send(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], headroom: int, verdicts: Buffer,
        sports: array[int], items: Sequence[tuple[int, int, Dest]],
    ) -> tuple[int, int, int]:
        """Send frame ``i`` (``bufs[i][headroom:headroom+lengths[i]]``) behind the VXLAN header
        of ``dest`` to ``(dest.ip, dest.port)`` from socket ``sports[i] % nfds``, for each item
        ``(start, end, dest)`` and each ``start <= i < end`` with verdict ``TX_OK`` or
        ``TX_ARP``. Returns ``(sent, dropped_full, errors)`` counted in datagrams: a full socket
        buffer (EAGAIN/ENOBUFS) drops the rest of the batch; any other error drops that message's
        datagrams. Never raises for a per-datagram error."""
        datagrams = [
            (sport % self.nfds, dest, frame)
            for frame, sport, dest in _sendable(bufs, lengths, headroom, verdicts, sports, items,
                                                self.ipv6)
        ]
        sent = full = errors = 0
        d = 0
        while d < len(datagrams):
            messages = self._messages(datagrams, d)
            replan = False
            for first, count in messages:
                sock_index, dest, frame = datagrams[first]
                parts: list[Buffer] = []
                for _, _, f in datagrams[first : first + count]:
                    parts += [dest._header, f]
                ancillary = []
                if count > 1:
                    ancillary = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 8 + len(frame)))]
                address = (dest.ip, dest.port, 0, 0) if self.ipv6 else (dest.ip, dest.port)
                while True:
                    try:
                        self._socks[sock_index].sendmsg(parts, ancillary, 0, address)
                        sent += count
                    except InterruptedError:
                        continue
                    except OSError as exc:
                        if exc.errno in _SEND_GONE_AGAIN:
                            full = len(datagrams) - first
                        elif count > 1 and self.gso and exc.errno in (errno.EIO, errno.EINVAL):
                            self.gso = False
                            self.fallbacks.append(
                                f"UDP GSO refused by the kernel ({errno.errorcode[exc.errno]}): "
                                "sending datagrams one by one")
                            d, replan = first, True
                        else:
                            errors += count
                    break
                if full or replan:
                    break
            if full:
                break
            if not replan:
                last_first, last_count = messages[-1]
                d = last_first + last_count
        return sent, full, errors


__all__ = [
    "GSO_BYTES", "GSO_SEGMENTS", "MAX_BATCH", "RX_INVALID_SOURCE_MAC", "RX_NO_I_FLAG", "RX_OK", "RX_OWN_SOURCE_MAC",
    "RX_REASONS", "RX_RESERVED_BITS", "RX_STATIC_CONFLICT", "RX_TOO_SHORT", "RX_WRONG_VNI",
    "TX_ARP", "TX_DONE", "TX_OK", "TX_TOO_SHORT", "Dest", "GsoBatch", "RawBatch",
    "decap_batch", "flow_hash", "pseudo_sum", "scan_tx", "udp_checksum", "write_headers",
]
