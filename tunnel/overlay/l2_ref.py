"""The L2 overlay's per-packet loops, pure-Python reference of ``tunnel.overlay._l2``.

``tunnel/overlay/_l2.pyx`` is the fast path (C loops over a batch); this module does the same in
plain Python with the same API, results and errors. ``tunnel.overlay.l2.select()`` picks one
(``WGPY_PURE=1`` forces this one); ``tests/test_overlay_l2.py`` runs against both.

Two loops sit at the seam between the VXLAN engine and the WireGuard engine of one process:

- :func:`encap` (outbound): Ethernet frames read from the TAP at ``bufs[i][headroom:]`` get, in
  front of them, the inner IP + UDP + VXLAN headers (``template``, built once per remote by
  :func:`template`), with the lengths, the UDP source port (the frame's flow hash, ``sports[i]``)
  and the checksums filled in: IPv4 header checksum; IPv4 UDP checksum 0 (the kernel vxlan's
  default ``noudpcsum``; the AEAD of the tunnel protects the packet); IPv6 a full UDP checksum
  (RFC 8200 forbids 0). The packet then starts at ``bufs[i][headroom - len(template):]``, where
  the WireGuard engine wants it (its own 16-byte header goes before that). A frame sent to a
  second remote (head-end replication) is copied into a spare buffer first.
  :func:`encap_runs` is the endpoint's outbound lane around it: per run of one destination MAC,
  the FDB snapshot's templates (or the flood entry's), then :func:`encap` for each.
- :func:`claim` (inbound): decrypted packets that passed the allowed-IPs source check
  (``verdicts[i] == 0``, packet at ``bufs[i][headroom:lengths[i]]``) and are UDP to the local
  tunnel address and the VXLAN port are taken from the TUN's batch (``verdicts[i]`` becomes
  :data:`TAKEN`); their UDP payload (VXLAN header + frame) is moved to ``bufs[i][0:]`` and listed
  for the VXLAN engine with the inner source address (the sender's VTEP) as text. A packet with
  a bad UDP checksum is dropped (:data:`TAKEN` too, and counted); fragments, IPv6 extension
  headers and malformed headers are not claimed (they go to the TUN as any packet).

Buffers are borrowed for the call only; nothing here keeps a reference to them.
"""

from __future__ import annotations

import socket
import struct
from array import array
from typing import Any

TX_OK = 0
TX_ARP = 2  # tunnel.vxlan.fast_ref's codes of a sendable frame
TAKEN = 2  # claim's verdict for a packet the overlay took (TunBatch.write_slots skips it)
IPV4_HLEN = 20
IPV6_HLEN = 40
UDP_HLEN = 8
VXLAN_HLEN = 8
#: template sizes: IPv4 / IPv6 + UDP + VXLAN
HLEN4 = IPV4_HLEN + UDP_HLEN + VXLAN_HLEN
HLEN6 = IPV6_HLEN + UDP_HLEN + VXLAN_HLEN
VXLAN_FLAGS = 0x08000000
DF = 0x4000
MAX_BATCH = 1024

_H = struct.Struct(">H")


def template(local: bytes, remote: bytes, dstport: int, vni: int, ttl: int) -> bytes:
    """The headers in front of every frame to one remote: IPv4 (DF, ID 0, ``ttl``, protocol
    17) or IPv6 (hop limit ``ttl``, next header 17), UDP to ``dstport`` and the VXLAN header of
    ``vni``; lengths, source port and checksums zero (:func:`encap` fills them). ``local`` and
    ``remote`` are packed addresses of one family (4 or 16 bytes). ValueError otherwise."""
    if len(local) != len(remote) or len(local) not in (4, 16):
        raise ValueError("local and remote must be packed addresses of one family")
    if not 0 < dstport <= 0xFFFF or not 0 <= vni < 1 << 24 or not 0 < ttl <= 255:
        raise ValueError("dstport, vni or ttl out of range")
    udp = struct.pack(">HHHH", 0, dstport, 0, 0) + struct.pack(">II", VXLAN_FLAGS, vni << 8)
    if len(local) == 4:
        ip = struct.pack(">BBHHHBBH", 0x45, 0, 0, 0, DF, ttl, 17, 0) + local + remote
    else:
        ip = struct.pack(">IHBB", 0x60000000, 0, 17, ttl) + local + remote
    return ip + udp


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum(data: Any) -> int:
    """One's-complement sum (unfolded) of ``data`` as big-endian 16-bit words."""
    b = bytes(data)
    if len(b) & 1:
        b += b"\0"
    return sum(struct.unpack(f">{len(b) // 2}H", b)) if b else 0


def _check_template(tmpl: bytes) -> int:
    n = len(tmpl)
    if n == HLEN4 and tmpl[0] == 0x45:
        return n
    if n == HLEN6 and tmpl[0] >> 4 == 6:
        return n
    raise ValueError("template is not an IPv4 or IPv6 overlay template")


def encap(
    bufs: list[bytearray], lengths: list[int], start: int, end: int, headroom: int,
    verdicts: Any, sports: array[int], tmpl: bytes, mtu: int, out_bufs: list[bytearray],
    out_lengths: list[int], spares: list[bytearray], used: bytearray,
) -> tuple[int, int, int]:
    """Put ``tmpl``'s headers in front of every sendable frame ``start <= i < end`` (verdict
    ``TX_OK`` or ``TX_ARP``; frame at ``bufs[i][headroom:headroom+lengths[i]]``) and append the
    buffer and the IP packet's length (``len(tmpl) + lengths[i]``) to ``out_bufs`` /
    ``out_lengths``. A frame whose packet would exceed ``mtu`` is skipped and counted
    (*oversized*: never fragmented). The first use of ``bufs[i]`` (``used[i] == 0``) writes in
    place and sets ``used[i]``; a later one (another remote) copies the frame into a buffer
    popped from ``spares`` (none left: skipped and counted). Returns ``(appended, oversized,
    no_spare)``. ValueError for a bad template, a range beyond the lists, ``headroom`` below
    ``len(tmpl)`` or a frame beyond its buffer; TypeError for wrong list/buffer types."""
    hlen = _check_template(tmpl)
    for name, value in (("bufs", bufs), ("lengths", lengths), ("out_bufs", out_bufs),
                        ("out_lengths", out_lengths), ("spares", spares)):
        if type(value) is not list:
            raise TypeError(f"{name} must be a list")
    if type(used) is not bytearray:
        raise TypeError("used must be a bytearray")
    if start < 0 or end < start or end > len(bufs) or end > len(lengths) or end > len(verdicts) \
            or end > len(sports) or end > len(used):
        raise ValueError("range exceeds the batch")
    if headroom < hlen:
        raise ValueError("headroom is smaller than the template")
    appended = oversized = no_spare = 0
    ipv6 = hlen == HLEN6
    for i in range(start, end):
        if verdicts[i] not in (TX_OK, TX_ARP):
            continue
        n = lengths[i]
        buf = bufs[i]
        if type(buf) is not bytearray:
            raise TypeError("bufs must hold bytearrays")
        if n < 0 or headroom + n > len(buf):
            raise ValueError("frame exceeds its buffer")
        total = hlen + n
        if total > mtu:
            oversized += 1
            continue
        if used[i]:
            if not spares:
                no_spare += 1
                continue
            target = spares.pop()
            if type(target) is not bytearray:
                raise TypeError("spares must hold bytearrays")
            if headroom + n > len(target):
                raise ValueError("spare buffer too small")
            target[headroom : headroom + n] = buf[headroom : headroom + n]
        else:
            used[i] = 1
            target = buf
        p = headroom - hlen
        target[p : headroom] = tmpl
        if ipv6:
            udp = p + IPV6_HLEN
            _H.pack_into(target, p + 4, total - IPV6_HLEN)
            _H.pack_into(target, udp, sports[i])
            _H.pack_into(target, udp + 4, total - IPV6_HLEN)
            s = _sum(target[p + 8 : p + 40]) + (total - IPV6_HLEN) + 17
            s += _sum(target[udp : p + total])
            csum = 0xFFFF - _fold(s)
            _H.pack_into(target, udp + 6, csum if csum else 0xFFFF)
        else:
            udp = p + IPV4_HLEN
            _H.pack_into(target, p + 2, total)
            _H.pack_into(target, p + 10, 0xFFFF - _fold(_sum(target[p : udp])))
            _H.pack_into(target, udp, sports[i])
            _H.pack_into(target, udp + 4, total - IPV4_HLEN)
        out_bufs.append(target)
        out_lengths.append(total)
        appended += 1
    return appended, oversized, no_spare


_ZERO_MAC = bytes(6)
_MISSING = object()


def encap_runs(
    bufs: list[bytearray], lengths: list[int], headroom: int, verdicts: Any, sports: array[int],
    runs: list[tuple[int, int, int, int]], entries: dict[bytes, Any], mtu: int,
    out_bufs: list[bytearray], out_lengths: list[int], spares: list[bytearray], used: bytearray,
    macs: list[bytes], remotes: list[tuple[Any, int, int]],
) -> tuple[int, int] | None:
    """The L2 endpoint's outbound lane over a batch ``fast.scan_tx`` checked: ``runs`` are its
    ``(start, end, frames, nbytes)`` runs of one destination MAC (``bufs[start][headroom:
    headroom + 6]``), ``entries`` an FDB snapshot's (``tunnel.vxlan.pump_ref.Snapshot``) with
    header templates (:func:`template`) as destinations: ``entries[mac] = (templates, ips)`` or
    None, the flood entry under the all-zeros MAC. If a run starts with an ARP frame (verdict
    ``TX_ARP``: proxy ARP), or its MAC (or, for a MAC not in ``entries``, the flood entry) has
    no entry or None, returns None having changed nothing. Otherwise :func:`encap` puts each
    run's frames behind each of its templates (``used`` must be all zeros for the batch; a
    frame for a further template is copied into a buffer from a copy of ``spares``, which is
    left as it is), appends each run's MAC to ``macs`` and ``(ips, frames, nbytes)`` to
    ``remotes``, and returns ``(oversized, no_spare)``, :func:`encap`'s counts summed. Errors
    as :func:`encap` (TypeError for ``runs``, ``entries``, ``macs`` or ``remotes`` of the wrong
    type)."""
    if type(runs) is not list or type(entries) is not dict or type(macs) is not list \
            or type(remotes) is not list:
        raise TypeError("runs, macs and remotes must be lists, entries a dict")
    plan = []
    copies = 0
    for start, _end, _frames, _nbytes in runs:
        if verdicts[start] == TX_ARP:
            return None
        buf = bufs[start]
        if type(buf) is not bytearray:
            raise TypeError("bufs must hold bytearrays")
        mac = bytes(buf[headroom : headroom + 6])
        entry = entries.get(mac, _MISSING)
        if entry is _MISSING:
            entry = entries.get(_ZERO_MAC)
        if entry is None:
            return None
        plan.append((mac, entry))
        copies += len(entry[0]) - 1
    pool = list(spares) if copies else []
    oversized = no_spare = 0
    for (start, end, frames, nbytes), (mac, (templates, ips)) in zip(runs, plan, strict=True):
        for tmpl in templates:
            _n, big, short = encap(bufs, lengths, start, end, headroom, verdicts, sports, tmpl, mtu,
                                   out_bufs, out_lengths, pool, used)
            oversized += big
            no_spare += short
        macs.append(mac)
        remotes.append((ips, frames, nbytes))
    return oversized, no_spare


class SourceCache:
    """The text of the last inner source address seen (so a run of packets from one VTEP costs
    one string). Each twin has its own class; ``claim`` takes only its twin's."""

    __slots__ = ("packed", "text")

    def __init__(self) -> None:
        self.packed = b""
        self.text = ""

    def get(self, packed: bytes) -> str:
        if packed != self.packed:
            family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
            self.packed = packed
            self.text = socket.inet_ntop(family, packed)
        return self.text


def claim(
    bufs: list[bytearray], lengths: list[int], count: int, headroom: int, verdicts: bytearray,
    local: bytes, port: int, out_bufs: list[bytearray], out_lengths: list[int],
    out_sources: list[Any], cache: SourceCache,
) -> tuple[int, int]:
    """Take the VXLAN packets of an opened batch (see module doc): for each ``i < count`` with
    ``verdicts[i] == 0`` whose packet ``bufs[i][headroom:lengths[i]]`` is IPv4 (not a fragment)
    or IPv6 (UDP as the first next header) to ``local`` (packed, 4 or 16 bytes) and UDP port
    ``port``: a bad UDP checksum (a wrong one, or 0 over IPv6) marks it :data:`TAKEN` and counts
    it; otherwise its UDP payload moves to ``bufs[i][0:]``, ``verdicts[i] = TAKEN``, and
    ``bufs[i]``, the payload length and the source address text are appended to the out lists.
    Returns ``(claimed, bad_checksum)``. ValueError/TypeError as :func:`encap`."""
    for name, value in (("bufs", bufs), ("lengths", lengths), ("out_bufs", out_bufs),
                        ("out_lengths", out_lengths), ("out_sources", out_sources)):
        if type(value) is not list:
            raise TypeError(f"{name} must be a list")
    if type(verdicts) is not bytearray:
        raise TypeError("verdicts must be a bytearray")
    if type(cache) is not SourceCache:
        raise TypeError("cache must be a SourceCache")
    if len(local) not in (4, 16):
        raise ValueError("local must be a packed IPv4 or IPv6 address")
    if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
        raise ValueError("count exceeds the batch")
    if headroom < 0:
        raise ValueError("negative headroom")
    ipv6 = len(local) == 16
    claimed = bad = 0
    for i in range(count):
        if verdicts[i] != 0:
            continue
        buf = bufs[i]
        if type(buf) is not bytearray:
            raise TypeError("bufs must hold bytearrays")
        end = min(lengths[i], len(buf))
        p = headroom
        size = end - p
        if ipv6:
            if size < IPV6_HLEN + UDP_HLEN or buf[p] >> 4 != 6 or buf[p + 6] != 17:
                continue
            if buf[p + 24 : p + 40] != local:
                continue
            udp = p + IPV6_HLEN
            src = bytes(buf[p + 8 : p + 24])
        else:
            if size < IPV4_HLEN + UDP_HLEN or buf[p] >> 4 != 4 or buf[p + 9] != 17:
                continue
            ihl = (buf[p] & 15) * 4
            if ihl < IPV4_HLEN or size < ihl + UDP_HLEN:
                continue
            if _H.unpack_from(buf, p + 6)[0] & 0x3FFF:  # MF or a fragment offset
                continue
            if buf[p + 16 : p + 20] != local:
                continue
            udp = p + ihl
            src = bytes(buf[p + 12 : p + 16])
        if _H.unpack_from(buf, udp + 2)[0] != port:
            continue
        ulen = _H.unpack_from(buf, udp + 4)[0]
        if ulen < UDP_HLEN or udp + ulen > end:
            continue
        csum = _H.unpack_from(buf, udp + 6)[0]
        verdicts[i] = TAKEN
        if csum or ipv6:
            if ipv6:
                s = _sum(buf[p + 8 : p + 40])
            else:
                s = _sum(buf[p + 12 : p + 20])
            s += ulen + 17 + _sum(buf[udp : udp + ulen])
            if csum == 0 or _fold(s) != 0xFFFF:
                bad += 1
                continue
        payload = ulen - UDP_HLEN
        buf[0:payload] = buf[udp + UDP_HLEN : udp + ulen]
        out_bufs.append(buf)
        out_lengths.append(payload)
        out_sources.append(cache.get(src))
        claimed += 1
    return claimed, bad
