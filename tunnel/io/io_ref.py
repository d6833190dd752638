"""Batched UDP and TUN I/O, pure-Python reference of ``tunnel.io._io`` (same API, same behaviour).

``tunnel/io/_io.pyx`` is the fast path (recvmmsg/sendmmsg, GIL released, no Python object per
packet); this module does the same with one ``recvmsg``/``sendmsg``/``readv``/``writev`` per
message and ``struct``. ``tunnel.io.offload.load_io`` picks one (``WGPY_PURE=1`` forces this one);
``tests/test_io.py`` and ``tests/test_offload.py`` run against both.
The TCP segmentation and coalescing helpers live in ``tunnel/io/segment_ref.py``.

UDP (:class:`UdpBatch`, one per non-blocking UDP socket fd; the caller keeps owning the fd):

* ``recv(bufs, lengths, sources) -> count``: datagram ``i`` at ``bufs[i][0:lengths[i]]``, from
  ``sources[i] = make_source(ip, port, local)`` where ``local`` is the address it was sent to
  (IP_PKTINFO / IPV6_PKTINFO; None if the socket lacks the option). A datagram longer than its
  buffer is truncated. With UDP GRO on, one kernel message may carry several datagrams of the
  same size (the last may be shorter): they are split into consecutive slots. Coalesced messages
  are received into a scratch area owned by the object (64 KiB per message, touched lazily) and
  copied into the slots; segments that do not fit this batch stay there for the next call
  (:attr:`UdpBatch.pending`), which hands them out before reading the socket again.
* ``send(datagrams) -> count``: ``datagrams`` is a sequence of ``(payload, endpoint)`` where the
  endpoint is a 3-tuple ``(ip, port, local)`` or any object with ``ip``/``port``/``local``
  (``tunnel.io.endpoint.Endpoint``). ``local`` (when set) is the source address (IP_PKTINFO). With
  GSO on, runs of consecutive datagrams to the same destination and of the same size (the last
  may be shorter) leave as one message with one iovec per datagram and a UDP_SEGMENT control
  message (no copy; at most 64 segments and 65,000 bytes per message). When the kernel refuses
  GSO (EIO or EINVAL on a GSO message while the same datagram alone goes through), GSO is turned
  off for this object and a line is appended to :attr:`UdpBatch.fallbacks` (the caller logs it at
  verbose). When a sticky source is gone (EINVAL, EADDRNOTAVAIL, ENETUNREACH), the datagram is
  retried from any address and its endpoint appended to :attr:`UdpBatch.lost_sources`. Other
  failures drop the datagram and are counted in :attr:`UdpBatch.errors`; EAGAIN (socket buffer
  full) ends the batch. Nothing raises for a per-datagram error.

TUN (:class:`TunBatch`, one per TUN fd opened with IFF_NO_PI, optionally IFF_VNET_HDR; see
``tunnel/io/offload.py``):

* ``read(bufs, lengths, headroom, mtu) -> count``: reads until EAGAIN or until every slot is used;
  packet ``i`` at ``bufs[i][headroom:headroom+lengths[i]]``. With the virtio-net header, a TCP
  GSO super-packet (TCPV4/TCPV6) is cut into packets of at most ``mtu`` bytes (gso_size payload
  each) with their IP lengths, IPv4 ids and header checksums, TCP sequence numbers, flags (FIN
  and PSH on the last only, CWR on the first only) and TCP checksums rewritten; a packet with
  NEEDS_CSUM gets its partial checksum completed. Segments that do not fit the batch stay in the
  object's scratch (:attr:`TunBatch.pending`) and come first on the next call. A packet larger
  than its slot (without GSO) or a super-packet that cannot be parsed is dropped and counted;
  with ``TunBatch(fd, hold_oversized=True)`` (virtio-net header only) a packet larger than its
  slot is instead held, the batch ends, and :attr:`TunBatch.needed` says how many bytes (after
  the headroom) it needs: the next call delivers it first if slot 0 is large enough, else drops
  and counts it (a packet is held once). :attr:`TunBatch.pending` counts it.
* ``write(packets) -> count``: one ``writev`` per packet, behind a zeroed virtio-net header when
  the device has one. Packets the kernel refuses are counted in :attr:`TunBatch.errors`.
  With ``TunBatch(fd, vnet_hdr=True, gro=True)`` runs of consecutive TCP segments of one flow
  (see :func:`coalesce_run`: same addresses, ports and header fields, consecutive sequence
  numbers, ACK and maybe PSH only, equal payload sizes but a shorter or PSH last one, at most 64
  segments and 65,535 bytes) leave as one TCP super-packet (GSO TCPV4/TCPV6, partial checksum)
  in one ``writev`` of the rewritten header and each segment's payload in place (no copy); the
  count still counts the packets. :attr:`TunBatch.coalesced` counts super-packets written; if
  the kernel refuses one (EINVAL), GRO is turned off, a line is appended to
  :attr:`TunBatch.fallbacks` and the packets go one by one.
* ``write_slots(bufs, lengths, offset, verdicts, count) -> count``: ``write`` straight from the
  slots of a batch, without a view per packet: for each ``i < count`` whose ``verdicts[i]`` (a
  bytearray) is 0, the packet ``bufs[i][offset:lengths[i]]`` (``bufs``: bytearrays; the length
  is clipped to the buffer, and a length at or below ``offset``, negative included, gives an
  empty packet). Exactly ``write([memoryview(bufs[i])[offset:lengths[i]] for i in range(count)
  if verdicts[i] == 0])`` (same count, coalescing, errors, fallbacks, exceptions); 0 if no slot
  is selected. The buffers are pinned only during the call. ValueError
  if ``offset < 0``, ``count < 0`` or ``count`` exceeds ``len(bufs)``, ``len(lengths)`` or
  ``len(verdicts)`` (checked before anything is written).

TAP (``TunBatch(fd, l2=14)``, a TAP fd opened with IFF_VNET_HDR, see ``offload.open_tun``):
every packet is an Ethernet frame. On read, a GSO super-frame's IP packet (after the 14-byte
Ethernet header, whose EtherType must match the IP version; ``csum_start`` counts from the frame
start) is cut as above and each segment gets a copy of the Ethernet header; ``mtu`` is the IP MTU
(segments are at most ``14 + mtu`` bytes). On write with ``gro``, runs of frames with identical
Ethernet headers whose IP packets coalesce (as above) leave as one super-frame (hdr_len and
csum_start counting the Ethernet header). With ``verify=True`` a segment joins a run only if its
TCP checksum is right or partial (a frame that fails is written on its own, for the kernel to
judge): for payloads no authenticated transport vouches for (VXLAN), so coalescing never turns
a bad checksum into a trusted partial one.

Partial checksums (``verify=True``, TAP or TUN, with or without the virtio-net header): a
TCP/UDP packet whose checksum field holds exactly its pseudo-header sum was left
CHECKSUM_PARTIAL by the sending kernel (facts and rule: ``segment_ref.checksum_partial`` and the
comment above ``wgpy_csum_partial`` in ``tunnel/io/_io.h``). Written on its own, it goes behind
a virtio-net header with VIRTIO_NET_HDR_F_NEEDS_CSUM, ``csum_start`` (from the frame's start)
and ``csum_offset`` (16 TCP, 6 UDP), as the kernel's own vxlan would hand it on; without the
virtio-net header it is finished in software in a copy (frames up to 65,550 bytes; the
caller's buffer is never written). In a coalesced run it simply joins (the super-packet's
checksum is partial). :attr:`TunBatch.csum_partial` counts such packets written. A checksum
that is neither right nor partial is written as it is (the stack drops it).

Oversized frames (:attr:`TunBatch.mtu`, the IP MTU, 0 = no limit, set by the owner when the
device's MTU changes; ValueError if negative): on write, a frame whose IP packet is longer than
``mtu`` (a kernel vxlan peer's TSO super-packet that arrived in one VXLAN datagram) is never
written as one oversized frame, which a bridge behind a TAP would drop. A TCP packet
(IPv4 without fragmentation, IPv6 with TCP as the first next header, IP length = frame length
- ``l2``) whose TCP checksum is right or partial goes, with the virtio-net header, as one GSO
super-frame (TCPV4/TCPV6, +ECN if CWR is set, as the kernel's tcp_gro_complete marks it;
gso_size = ``mtu`` - IP - TCP headers; NEEDS_CSUM with csum_start/csum_offset counting the link
header and the checksum field set to the whole packet's pseudo-header sum; hdr_len = link + IP
+ TCP headers) for the kernel to segment, and without it is cut here into frames of at most
``mtu`` IP bytes (:func:`segment_ref.cut_segment`, the TUN read's TSO split: full checksums,
FIN/PSH on the last, CWR on the first), each behind a copy of the link header; it counts as one
packet written, and :attr:`TunBatch.tso_frames` counts such frames (a partial checksum among
them also counts in ``csum_partial`` with ``verify``). A TCP packet whose checksum is neither
right nor partial is written as it is (the stack drops it). Any other oversized frame (not TCP,
malformed, or too small an MTU for its headers) is dropped and counted as ``write:oversized``.
Such a frame never starts a coalesced run (and nothing larger than a run's first segment joins
one).

Read errors other than EAGAIN/EINTR raise OSError when nothing was read yet (else the batch
ends and the next call meets the error); write errors that mean the device is gone (EBADFD,
EBADF, EIO, ENXIO, ENODEV) raise OSError. Single-threaded: one event loop owns an object.
"""

from __future__ import annotations

import errno
import ipaddress
import operator
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from tunnel.io.constants import GRO_MESSAGE as GRO_MESSAGE
from tunnel.io.constants import GSO_ECN as GSO_ECN
from tunnel.io.constants import GSO_NONE as GSO_NONE
from tunnel.io.constants import GSO_REFUSED as GSO_REFUSED
from tunnel.io.constants import GSO_TCPV4 as GSO_TCPV4
from tunnel.io.constants import GSO_TCPV6 as GSO_TCPV6
from tunnel.io.constants import GSO_UDP as GSO_UDP
from tunnel.io.constants import MAX_GSO_BYTES as MAX_GSO_BYTES
from tunnel.io.constants import MAX_GSO_SEGMENTS as MAX_GSO_SEGMENTS
from tunnel.io.constants import SOURCE_GONE as SOURCE_GONE
from tunnel.io.constants import SUPER_PACKET as SUPER_PACKET
from tunnel.io.constants import TUN_GONE as TUN_GONE
from tunnel.io.constants import VNET_F_DATA_VALID as VNET_F_DATA_VALID
from tunnel.io.constants import VNET_F_NEEDS_CSUM as VNET_F_NEEDS_CSUM
from tunnel.io.constants import VNET_HDR_LEN as VNET_HDR_LEN
from tunnel.io.segment_ref import (
    _VNET,
    _Super,
    checksum_partial,
    coalesce_run,
    cut_segment,
    l3_offset,
    parse_super,
    super_header,
    tcp_checksum_partial,
    tcp_info,
    tso_frame,
    tso_header,
)
from tunnel.io.segment_ref import complete_checksum as complete_checksum

Buffer = bytes | bytearray | memoryview

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50




_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_ANCILLARY = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(4)
_ZERO_VNET = bytes(VNET_HDR_LEN)

MakeSource = Callable[[str, int, str | None], Any]


def _tuple_source(ip: str, port: int, local: str | None) -> Any:
    return (ip, port, local)


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def enable_udp_gro(fd: int) -> bool:
    """Turn UDP_GRO on for the socket ``fd``; False if the kernel refuses (older than 5.0, or
    ``fd`` is not a UDP socket)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:  # not an open fd, or not a socket: refused, as setsockopt(2) would say
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def probe_udp_gso(fd: int) -> bool:
    """True if the kernel knows UDP_SEGMENT on this socket (4.18+). Send-time refusal (a device
    without checksum offload) is handled by :meth:`UdpBatch.send` falling back."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:  # not an open fd, or not a socket
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        return True
    except OSError:
        return False
    finally:
        sock.close()


# ---------------------------------------------------------------------------- UDP


def _writable(buf: Any) -> None:
    """A receive slot must be writable: BufferError otherwise, as PyObject_GetBuffer says."""
    with memoryview(buf) as view:
        if view.readonly:
            raise BufferError("Object is not writable.")


def _unpack_endpoint(endpoint: Any) -> tuple[str, int, str | None]:
    if type(endpoint) is tuple:
        return endpoint[0], endpoint[1], endpoint[2] if len(endpoint) > 2 else None
    return endpoint.ip, endpoint.port, endpoint.local


class UdpBatch:
    """Batch receive/send on one UDP socket fd (see the module docstring for the contract)."""

    def __init__(self, fd: int, *, gso: bool = True, gro: bool = False,
                 make_source: MakeSource | None = None) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self.fd = fd
        self.family: int = self._sock.family
        self._make: MakeSource = make_source or _tuple_source
        self.gso: bool = gso and probe_udp_gso(fd)
        self.gro: bool = gro
        self.fallbacks: list[str] = []
        self.errors: dict[str, int] = {}
        self.lost_sources: list[Any] = []
        if gso and not self.gso:
            self.fallbacks.append("UDP GSO (UDP_SEGMENT) is not supported by this kernel")
        # Coalesced messages not yet handed out: (data, segment size, source).
        self._pending: list[tuple[memoryview, int, Any]] = []
        self._scratch: list[bytearray] = []
        self._sources: list[tuple[tuple[str, int, str | None], Any] | None] = [None] * 16

    @property
    def pending(self) -> int:
        """Datagrams received but not yet handed out (GRO segments past the last batch)."""
        return sum(-(-len(data) // size) for data, size, _ in self._pending)

    def close(self) -> None:
        """Release this object's duplicate of the fd (the caller's fd stays open)."""
        self._sock.close()

    def _count(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    # -- receive -----------------------------------------------------------------------------

    def _source(self, address: Any, ancdata: list[tuple[int, int, bytes]]) -> tuple[Any, int]:
        local: str | None = None
        segment = 0
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                local = socket.inet_ntoa(_IN_PKTINFO.unpack_from(data)[1])
            elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack_from(data)[0])
            elif level == SOL_UDP and kind == UDP_GRO:
                segment = int.from_bytes(data[:4], "little")
        host: str = address[0].split("%", 1)[0]
        # As the native twin: a repeated sender gets the same object (a direct-mapped cache of
        # 16 by port), whatever the segment size, so the lanes' identity test holds.
        key = (host, address[1], local)
        port: int = address[1]
        slot = (port ^ (port >> 4)) & 15
        cached = self._sources[slot]
        if cached is not None and cached[0] == key:
            return cached[1], segment
        source = self._make(host, address[1], local)
        self._sources[slot] = (key, source)
        return source, segment

    def recv(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Any]) -> int:
        """Receive until EAGAIN or every slot is used; returns the count (see module doc)."""
        n = len(bufs)
        if len(lengths) < n or len(sources) < n:
            raise ValueError("lengths or sources is shorter than bufs")
        count = self._drain(bufs, lengths, sources, 0)
        if not self.gro:
            while count < n:
                _writable(bufs[count])
                try:
                    size, ancdata, _flags, address = self._sock.recvmsg_into([bufs[count]], _ANCILLARY)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self._count(f"recv:{_errname(exc.errno)}")
                    break
                sources[count], _ = self._source(address, ancdata)
                lengths[count] = size
                count += 1
            return count
        while count < n and not self._pending:
            if not self._scratch:
                self._scratch.append(bytearray(GRO_MESSAGE))
            scratch = self._scratch[0]
            try:
                size, ancdata, _flags, address = self._sock.recvmsg_into([scratch], _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._count(f"recv:{_errname(exc.errno)}")
                break
            source, segment = self._source(address, ancdata)
            self._pending.append((memoryview(scratch)[:size], segment or max(size, 1), source))
            count = self._drain(bufs, lengths, sources, count)
        return count

    def _drain(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Any], count: int) -> int:
        n = len(bufs)
        while self._pending and count < n:
            data, segment, source = self._pending[0]
            if not data:
                # A zero-length datagram is still one datagram.
                lengths[count] = 0
                sources[count] = source
                count += 1
                self._pending.pop(0)
                continue
            while data and count < n:
                _writable(bufs[count])
                chunk = data[:segment]
                take = min(len(chunk), len(bufs[count]))
                bufs[count][:take] = chunk[:take]
                lengths[count] = take
                sources[count] = source
                count += 1
                data = data[segment:]
            if data:
                self._pending[0] = (data, segment, source)
            else:
                self._pending.pop(0)
        return count

    # -- send --------------------------------------------------------------------------------

    def send_slots(self, bufs: Sequence[Buffer], lengths: Sequence[int], offset: int, count: int,
                   endpoint: Any) -> int:
        """Send ``bufs[i][offset:offset+lengths[i]]`` for ``i < count``, all to ``endpoint``.

        Exactly :meth:`send` of those datagrams (the native twin builds no object per datagram).
        Raises ValueError (sending nothing) when a length does not fit its buffer.
        """
        if count < 0 or count > len(bufs) or count > len(lengths) or offset < 0:
            raise ValueError("count or offset out of range")
        datagrams = []
        for i in range(count):
            view = memoryview(bufs[i])
            size = lengths[i]
            if size < 0 or offset + size > len(view):
                raise ValueError(f"datagram {i}: length {size} does not fit its buffer")
            datagrams.append((view[offset : offset + size], endpoint))
        return self.send(datagrams)

    def send(self, datagrams: Sequence[tuple[Buffer, Any]]) -> int:
        """Send each datagram (GSO runs as one message); returns how many left (see module doc)."""
        items: list[tuple[Buffer, Any, tuple[Any, ...], str | None]] = []
        v6 = self.family == socket.AF_INET6
        len(datagrams)  # a sized sequence (TypeError for a generator), as the native twin takes
        for payload, endpoint in datagrams:
            ip, port, local = _unpack_endpoint(endpoint)
            # A port no sockaddr can hold is the caller's bad address, as in the native twin
            # (the socket module would raise OverflowError and lose the rest of the batch).
            address: tuple[Any, ...] = ()  # () marks a bad address: equal to no real one
            if isinstance(port, int) and 0 <= port <= 0xFFFF:
                address = (ip, port, 0, 0) if v6 else (ip, port)
            items.append((payload, endpoint, address, local or None))
        sent = 0
        index = 0
        total = len(items)
        while index < total:
            if not items[index][2]:
                self._count("send:bad_address")
                index += 1
                continue
            group = self._group(items, index)
            payloads = [items[k][0] for k in range(index, index + group)]
            _, endpoint, address, local = items[index]
            ancdata = _source_cmsg(local, v6)
            if group > 1:
                ancdata = ancdata + [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(payloads[0])))]
            try:
                self._sock.sendmsg(payloads, ancdata, 0, address)
                sent += group
                index += group
                continue
            except (BlockingIOError, InterruptedError):
                self._count("send:EAGAIN")
                return sent
            except OSError as exc:
                code = exc.errno
            if code == errno.EAGAIN:
                self._count("send:EAGAIN")
                return sent
            # Retry the first datagram alone, without GSO; then decide whose fault it was.
            done, again = self._send_one(items[index], v6, code)
            if group > 1 and done and code in GSO_REFUSED:
                self.gso = False
                self.fallbacks.append(
                    f"UDP GSO refused by the kernel ({_errname(code)}): sending datagrams one by one")
            if again:
                return sent + done
            sent += done
            index += 1
        return sent

    def _group(self, items: list[tuple[Buffer, Any, tuple[Any, ...], str | None]], start: int) -> int:
        if not self.gso:
            return 1
        first = items[start]
        size = len(first[0])
        if size == 0:
            return 1
        count = 1
        total = size
        k = start + 1
        while k < len(items) and count < MAX_GSO_SEGMENTS:
            item = items[k]
            length = len(item[0])
            if item[2] != first[2] or item[3] != first[3] or length > size or length == 0:
                break
            if total + length > MAX_GSO_BYTES:
                break
            count += 1
            total += length
            k += 1
            if length < size:
                break
        return count

    def _send_one(self, item: tuple[Buffer, Any, tuple[Any, ...], str | None], v6: bool,
                  first_error: int | None) -> tuple[int, bool]:
        """Send one datagram without GSO; returns (sent 0/1, stop the batch)."""
        payload, endpoint, address, local = item
        code: int | None = first_error
        try:
            self._sock.sendmsg([payload], _source_cmsg(local, v6), 0, address)
            return 1, False
        except (BlockingIOError, InterruptedError):
            self._count("send:EAGAIN")
            return 0, True
        except OSError as exc:
            code = exc.errno
        if local is not None and code in SOURCE_GONE:
            try:
                self._sock.sendmsg([payload], [], 0, address)
                self.lost_sources.append(endpoint)
                return 1, False
            except (BlockingIOError, InterruptedError):
                self._count("send:EAGAIN")
                return 0, True
            except OSError as exc:
                code = exc.errno
        self._count(f"send:{_errname(code)}")
        return 0, False


def _partial_segment(packet: Buffer) -> bool:
    info = tcp_info(packet)
    return info is not None and tcp_checksum_partial(packet, info)


def _source_cmsg(local: str | None, v6: bool) -> list[tuple[int, int, bytes]]:
    if not local:
        return []
    try:
        packed = ipaddress.ip_address(local).packed
    except ValueError:
        return []
    if v6 and len(packed) == 16:
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, 0))]
    if not v6 and len(packed) == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, packed, bytes(4)))]
    return []


# ---------------------------------------------------------------------------- TUN


class TunBatch:
    """Batch read/write on one TUN fd (see the module docstring for the contract)."""

    def __init__(self, fd: int, *, vnet_hdr: bool = True, gro: bool = False,
                 hold_oversized: bool = False, l2: int = 0, verify: bool = False) -> None:
        if l2 not in (0, 14):
            raise ValueError("l2 must be 0 (TUN) or 14 (TAP: Ethernet)")
        self.l2 = l2
        self.verify = verify
        self.fd = fd
        self.hold_oversized = hold_oversized and vnet_hdr
        self._big: bytes | None = None
        self.vnet_hdr = vnet_hdr
        self.gro = gro and vnet_hdr
        self.coalesced = 0  # super-packets written so far (a statistic)
        self.fallbacks: list[str] = []
        self.errors: dict[str, int] = {}
        self.super_packets = 0  # GSO super-packets cut so far (a statistic)
        self.csum_partial = 0  # partial checksums delivered (verify only; a statistic)
        self.tso_frames = 0  # oversized TCP frames written as GSO or cut (a statistic)
        self._mtu = 0
        self._work: _Super | None = None
        self._link = b""  # the link header of the super-frame being cut
        self._header = bytearray(VNET_HDR_LEN)
        self._overflow = bytearray(SUPER_PACKET)

    @property
    def pending(self) -> int:
        """Segments of a super-packet cut but not handed out yet (or 1: a held packet)."""
        if self._big is not None:
            return 1
        work = self._work
        if work is None:
            return 0
        return -(-(len(work.packet) - work.next_offset) // work.mss)

    @property
    def mtu(self) -> int:
        """The IP MTU frames written to the device must fit (0: no limit; see module doc)."""
        return self._mtu

    @mtu.setter
    def mtu(self, value: int) -> None:
        value = operator.index(value)
        if value < 0:
            raise ValueError("mtu must be >= 0")
        self._mtu = value

    @property
    def needed(self) -> int:
        """Bytes (after the headroom) the held oversized packet needs in a slot; 0 if none."""
        return 0 if self._big is None else len(self._big)

    def _count(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    def _drain(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int, count: int) -> int:
        work = self._work
        l2 = self.l2
        while work is not None and count < len(bufs):
            slot = memoryview(bufs[count])[headroom:]
            size = cut_segment(work, slot[l2:]) if len(slot) > l2 else 0
            if size == 0:
                self._count("read:too_big")
                self._work = work = None
                break
            slot[:l2] = self._link
            lengths[count] = size + l2
            count += 1
            if work.next_offset >= len(work.packet):
                self._work = work = None
        return count

    def read(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int, mtu: int) -> int:
        """Read packets into ``bufs[i][headroom:]`` until EAGAIN or the batch is full."""
        n = len(bufs)
        if len(lengths) < n:
            raise ValueError("lengths is shorter than bufs")
        if headroom < 0 or mtu <= 0:
            raise ValueError("headroom must be >= 0 and mtu > 0")
        if n and len(memoryview(bufs[0])) < headroom:  # the native twin pins slots as it fills them
            raise ValueError("buffer 0 is shorter than the headroom")
        count = 0
        big, self._big = self._big, None
        if big is not None:  # held last time: deliver it if it fits now, else drop it
            if len(big) <= len(bufs[0]) - headroom:
                bufs[0][headroom:headroom + len(big)] = big
                lengths[0] = len(big)
                count = 1
            else:
                self._count("read:too_big")
        count = self._drain(bufs, lengths, headroom, count)
        while count < n and self._work is None:
            slot = memoryview(bufs[count])[headroom:]
            room = len(slot)
            try:
                if self.vnet_hdr:
                    got = os.readv(self.fd, [self._header, slot, self._overflow])
                else:
                    got = os.readv(self.fd, [slot])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                if count:
                    break
                raise
            if not self.vnet_hdr:
                lengths[count] = got
                count += 1
                continue
            if got < VNET_HDR_LEN:
                self._count("read:short")
                continue
            size = got - VNET_HDR_LEN
            hdr = _VNET.unpack(self._header)
            flags, gso_type, _, _, csum_start, csum_offset = hdr
            if gso_type & ~GSO_ECN == GSO_NONE:
                if size > room:
                    if self.hold_oversized:
                        self._big = bytes(slot) + bytes(self._overflow[: size - room])
                        break
                    self._count("read:too_big")
                    continue
                if flags & VNET_F_NEEDS_CSUM and not complete_checksum(slot[:size], csum_start, csum_offset):
                    self._count("read:bad_csum")
                    continue
                lengths[count] = size
                count += 1
                continue
            head = min(size, room)
            packet = bytes(slot[:head]) + bytes(self._overflow[: size - head])
            work = self._parse(packet, hdr, mtu)
            if work is None:
                self._count("read:bad_gso")
                continue
            self._work = work
            self.super_packets += 1
            count = self._drain(bufs, lengths, headroom, count)
        return count

    def _parse(self, frame: bytes, hdr: tuple[int, int, int, int, int, int], mtu: int) -> _Super | None:
        l2 = self.l2
        if l2 == 0:
            return parse_super(frame, hdr, mtu)
        if l3_offset(frame, l2) < 0:
            return None
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = hdr
        if flags & VNET_F_NEEDS_CSUM:
            if csum_start < l2:
                return None
            csum_start -= l2
        self._link = frame[:l2]
        return parse_super(frame[l2:], (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset), mtu)

    def _partial(self, frame: Buffer) -> tuple[int, int, int] | None:
        """``(csum_start, csum_offset, end)`` counted from the frame's start if the frame's IP
        packet carries a partial checksum (see ``checksum_partial``), else None."""
        l2 = self.l2
        if not self.vnet_hdr and len(frame) > SUPER_PACKET + 14:
            return None  # as the native twin: larger than its copy area, written as it is
        if l3_offset(frame, l2) < 0:
            return None
        found = checksum_partial(memoryview(frame)[l2:])
        if found is None:
            return None
        start, offset, iplen = found
        return l2 + start, offset, l2 + iplen

    def write_slots(self, bufs: Sequence[bytearray], lengths: Sequence[int], offset: int,
                    verdicts: bytearray, count: int) -> int:
        """Write ``bufs[i][offset:lengths[i]]`` for each ``i < count`` with ``verdicts[i] == 0``;
        the same as :meth:`write` on the list of those slices (see module doc)."""
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
            raise ValueError("count must be >= 0 and at most len(bufs), len(lengths), len(verdicts)")
        packets: list[memoryview] = []
        try:
            for i in range(count):
                if verdicts[i] == 0:
                    buf = bufs[i]
                    end = max(0, min(lengths[i], len(buf)))  # clipped; at or below offset: empty
                    packets.append(memoryview(buf)[offset:end])
            return self.write(packets) if packets else 0
        finally:
            for view in packets:  # unpin now, even if write raised (a traceback keeps the list)
                view.release()

    def _write_big(self, frame: Buffer) -> int:
        """Write a frame whose IP packet exceeds the MTU (see module doc); returns 1 if it
        went, 0 if it was dropped (not TCP: ``write:oversized``) or refused."""
        l2 = self.l2
        kind, work, partial = (0, None, False)
        if l3_offset(frame, l2) >= 0:
            kind, work, partial = tso_frame(memoryview(frame)[l2:], self._mtu)
        if kind == 0 or work is None:
            self._count("write:oversized")
            return 0
        try:
            if kind == 2:
                if self.vnet_hdr:
                    os.writev(self.fd, [_ZERO_VNET, frame])
                else:
                    os.write(self.fd, frame)
            elif self.vnet_hdr:
                vnet, header = tso_header(frame, l2, work)
                os.writev(self.fd, [vnet, header, memoryview(frame)[l2 + work.header:]])
            else:  # cut here into MTU-sized frames (full checksums), behind the link header
                link = bytes(frame[:l2])
                out = bytearray(SUPER_PACKET)
                while work.next_offset < len(work.packet):
                    size = cut_segment(work, out)
                    if size == 0:  # cannot happen (a segment is at most the packet): never loop
                        self._count("write:oversized")
                        return 0
                    os.write(self.fd, link + bytes(out[:size]))
        except OSError as exc:
            if exc.errno in TUN_GONE:
                raise
            self._count(f"write:{_errname(exc.errno)}")
            return 0
        if kind == 1:
            self.tso_frames += 1
            if self.verify:
                self.csum_partial += partial
        return 1

    def write(self, packets: Sequence[Buffer]) -> int:
        """Write each packet (behind a zeroed virtio-net header if on); returns how many went.

        With ``gro`` on, runs found by :func:`coalesce_run` leave as one super-packet each."""
        written = 0
        index = 0
        total = len(packets)
        while index < total:
            if self._mtu and len(packets[index]) > self.l2 + self._mtu:
                written += self._write_big(packets[index])
                index += 1
                continue
            if self.gro and total - index > 1:
                l2 = self.l2
                count, size, tf = coalesce_run(packets, index, l2, self.verify)
                if count > 1 and tf is not None:
                    run = packets[index:index + count]
                    vnet, header = super_header(memoryview(run[0])[l2:], tf, memoryview(run[-1])[l2:], size)
                    if l2:
                        flags, kind, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack(vnet)
                        vnet = _VNET.pack(flags, kind, hdr_len + l2, gso_size, csum_start + l2, csum_offset)
                        header = bytearray(run[0][:l2]) + header
                    start = l2 + tf.header
                    try:
                        os.writev(self.fd, [vnet, header, *(memoryview(p)[start:] for p in run)])
                        written += count
                        self.coalesced += 1
                        if self.verify:
                            self.csum_partial += sum(
                                _partial_segment(memoryview(p)[l2:]) for p in run)
                    except OSError as exc:
                        if exc.errno == errno.EINVAL:
                            self.gro = False
                            self.fallbacks.append(
                                "TUN GRO (coalesced TCP writes) refused by the kernel "
                                f"({_errname(exc.errno)}): writing packets one by one")
                            continue
                        if exc.errno in TUN_GONE:
                            raise
                        for _ in range(count):
                            self._count(f"write:{_errname(exc.errno)}")
                    index += count
                    continue
            packet = packets[index]
            index += 1
            vnet_header = _ZERO_VNET
            partial = self._partial(packet) if self.verify else None
            if partial is not None:
                start, offset, end = partial
                if self.vnet_hdr:  # handed on partial, as the kernel's vxlan would
                    vnet_header = _VNET.pack(VNET_F_NEEDS_CSUM, GSO_NONE, start + offset + 2, 0,
                                             start, offset)
                else:  # finished here, in a copy (the buffer is the caller's)
                    packet = bytearray(packet)
                    complete_checksum(memoryview(packet)[self.l2:end], start - self.l2, offset)
            try:
                if self.vnet_hdr:
                    os.writev(self.fd, [vnet_header, packet])
                else:
                    os.write(self.fd, packet)
                written += 1
                if partial is not None:
                    self.csum_partial += 1
            except OSError as exc:
                if exc.errno in TUN_GONE:
                    raise
                self._count(f"write:{_errname(exc.errno)}")
        return written
