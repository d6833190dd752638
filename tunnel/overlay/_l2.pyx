# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The L2 overlay's per-packet loops in Cython: same API, results and errors as
``tunnel/overlay/l2_ref.py`` (read its docstring for the contract).

The loops read and write the batch's ``bytearray``s through raw pointers; checksums are 64-bit
one's complement sums. No Python object is made per packet except the appends to the out lists
(and a source address text when the inner source changes).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove

import socket as _socket

from tunnel.overlay.l2_ref import (
    DF, HLEN4, HLEN6, IPV4_HLEN, IPV6_HLEN, MAX_BATCH, TAKEN, TX_ARP, TX_OK, UDP_HLEN, VXLAN_FLAGS,
    VXLAN_HLEN, template,
)

__all__ = ["DF", "HLEN4", "HLEN6", "IPV4_HLEN", "IPV6_HLEN", "MAX_BATCH", "TAKEN", "TX_ARP", "TX_OK",
           "UDP_HLEN", "VXLAN_FLAGS", "VXLAN_HLEN", "SourceCache", "claim", "encap", "encap_runs",
           "template"]

cdef int C_TAKEN = TAKEN
cdef enum:
    C_IPV4 = 20
    C_IPV6 = 40
    C_UDP = 8
    C_HLEN4 = 36
    C_HLEN6 = 56
    C_TX_OK = 0
    C_TX_ARP = 2
assert (IPV4_HLEN, IPV6_HLEN, UDP_HLEN, HLEN4, HLEN6, TX_OK, TX_ARP) == (20, 40, 8, 36, 56, 0, 2)


cdef inline uint64_t _sum(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """Unfolded one's-complement sum of big-endian 16-bit words (odd tail padded with 0)."""
    cdef uint64_t total = 0
    cdef Py_ssize_t i = 0
    while i + 1 < n:
        total += (<uint64_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        total += <uint64_t>p[i] << 8
    return total


cdef inline uint32_t _fold(uint64_t total) noexcept nogil:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return <uint32_t>total


cdef inline void _put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline uint32_t _get16(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef Py_ssize_t _check_template(bytes tmpl) except -1:
    cdef Py_ssize_t n = len(tmpl)
    cdef const uint8_t *t = <const uint8_t *>(<char *>tmpl)
    if n == C_HLEN4 and t[0] == 0x45:
        return n
    if n == C_HLEN6 and t[0] >> 4 == 6:
        return n
    raise ValueError("template is not an IPv4 or IPv6 overlay template")


def encap(list bufs, list lengths, Py_ssize_t start, Py_ssize_t end, Py_ssize_t headroom,
          verdicts, sports, tmpl, Py_ssize_t mtu, list out_bufs, list out_lengths, list spares,
          used):
    """See tunnel/overlay/l2_ref.py."""
    if type(tmpl) is not bytes:
        raise TypeError("template must be bytes")
    cdef Py_ssize_t hlen = _check_template(tmpl)
    if out_bufs is None or out_lengths is None or spares is None or bufs is None or lengths is None:
        raise TypeError("the batch lists must be lists")
    if type(used) is not bytearray:
        raise TypeError("used must be a bytearray")
    if start < 0 or end < start or end > len(bufs) or end > len(lengths) or end > len(verdicts) \
            or end > len(sports) or end > len(used):
        raise ValueError("range exceeds the batch")
    if headroom < hlen:
        raise ValueError("headroom is smaller than the template")
    cdef const uint8_t[:] vview = verdicts
    cdef const uint16_t[:] sview = sports
    cdef uint8_t *usedp = <uint8_t *>PyByteArray_AS_STRING(used)
    cdef const uint8_t *t = <const uint8_t *>(<char *>tmpl)
    cdef Py_ssize_t appended = 0, oversized = 0, no_spare = 0
    cdef Py_ssize_t i, n, total, p, udp
    cdef bint ipv6 = hlen == C_HLEN6
    cdef uint8_t *b
    cdef uint8_t *src
    cdef uint8_t v
    cdef uint32_t csum
    cdef uint64_t s
    for i in range(start, end):
        v = vview[i]
        if v != C_TX_OK and v != C_TX_ARP:
            continue
        n = lengths[i]
        buf = bufs[i]
        if type(buf) is not bytearray:
            raise TypeError("bufs must hold bytearrays")
        if n < 0 or headroom + n > PyByteArray_GET_SIZE(buf):
            raise ValueError("frame exceeds its buffer")
        total = hlen + n
        if total > mtu:
            oversized += 1
            continue
        if usedp[i]:
            if not spares:
                no_spare += 1
                continue
            target = spares.pop()
            if type(target) is not bytearray:
                raise TypeError("spares must hold bytearrays")
            if headroom + n > PyByteArray_GET_SIZE(target):
                raise ValueError("spare buffer too small")
            src = <uint8_t *>PyByteArray_AS_STRING(buf)
            b = <uint8_t *>PyByteArray_AS_STRING(target)
            memcpy(b + headroom, src + headroom, n)
        else:
            usedp[i] = 1
            target = buf
            b = <uint8_t *>PyByteArray_AS_STRING(target)
        p = headroom - hlen
        memcpy(b + p, t, hlen)
        if ipv6:
            udp = p + C_IPV6
            _put16(b + p + 4, total - C_IPV6)
            _put16(b + udp, sview[i])
            _put16(b + udp + 4, total - C_IPV6)
            s = _sum(b + p + 8, 32) + <uint64_t>(total - C_IPV6) + 17 + _sum(b + udp, total - C_IPV6)
            csum = 0xFFFF - _fold(s)
            _put16(b + udp + 6, csum if csum else 0xFFFF)
        else:
            udp = p + C_IPV4
            _put16(b + p + 2, total)
            _put16(b + p + 10, 0xFFFF - _fold(_sum(b + p, C_IPV4)))
            _put16(b + udp, sview[i])
            _put16(b + udp + 4, total - C_IPV4)
        out_bufs.append(target)
        out_lengths.append(total)
        appended += 1
    return appended, oversized, no_spare


cdef bytes _ZERO_MAC = bytes(6)
cdef object _MISSING = object()


def encap_runs(list bufs, list lengths, Py_ssize_t headroom, verdicts, sports, list runs,
               dict entries, Py_ssize_t mtu, list out_bufs, list out_lengths, list spares, used,
               list macs, list remotes):
    """See tunnel/overlay/l2_ref.py."""
    cdef Py_ssize_t start, end, frames, nbytes, copies = 0, oversized = 0, no_spare = 0, k
    cdef list plan = []
    cdef list pool
    cdef tuple run, step, entry
    if runs is None or entries is None or macs is None or remotes is None:
        raise TypeError("runs, macs and remotes must be lists, entries a dict")
    for run in runs:
        start = run[0]
        if verdicts[start] == C_TX_ARP:
            return None
        buf = bufs[start]
        if type(buf) is not bytearray:
            raise TypeError("bufs must hold bytearrays")
        mac = bytes((<bytearray>buf)[headroom:headroom + 6])
        found = entries.get(mac, _MISSING)
        if found is _MISSING:
            found = entries.get(_ZERO_MAC)
        if found is None:
            return None
        entry = <tuple?>found
        plan.append((mac, entry))
        copies += len(<tuple?>entry[0]) - 1
    pool = list(spares) if copies else []
    for k in range(len(runs)):
        run = <tuple?>runs[k]
        start, end, frames, nbytes = run
        step = <tuple>plan[k]
        entry = <tuple>step[1]
        for tmpl in <tuple?>entry[0]:
            result = encap(bufs, lengths, start, end, headroom, verdicts, sports, tmpl, mtu,
                           out_bufs, out_lengths, pool, used)
            oversized += <Py_ssize_t>result[1]
            no_spare += <Py_ssize_t>result[2]
        macs.append(step[0])
        remotes.append((entry[1], frames, nbytes))
    return oversized, no_spare


cdef class SourceCache:
    """The text of the last inner source address seen (see tunnel/overlay/l2_ref.py)."""

    cdef public bytes packed
    cdef public str text

    def __init__(self):
        self.packed = b""
        self.text = ""

    def get(self, bytes packed not None):
        if packed != self.packed:
            family = _socket.AF_INET if len(packed) == 4 else _socket.AF_INET6
            self.packed = packed
            self.text = _socket.inet_ntop(family, packed)
        return self.text

    cdef str _get(self, const uint8_t *addr, Py_ssize_t n):
        cdef bytes known = self.packed
        if len(known) == n and memcmp(<const char *>known, addr, n) == 0:
            return self.text
        return self.get((<const char *>addr)[:n])


def claim(list bufs, list lengths, Py_ssize_t count, Py_ssize_t headroom, verdicts, local,
          Py_ssize_t port, list out_bufs, list out_lengths, list out_sources, cache):
    """See tunnel/overlay/l2_ref.py."""
    if bufs is None or lengths is None or out_bufs is None or out_lengths is None or out_sources is None:
        raise TypeError("the batch lists must be lists")
    if type(verdicts) is not bytearray:
        raise TypeError("verdicts must be a bytearray")
    if type(cache) is not SourceCache:
        raise TypeError("cache must be a SourceCache")
    cdef bytes packed = bytes(local)
    cdef Py_ssize_t alen = len(packed)
    if alen != 4 and alen != 16:
        raise ValueError("local must be a packed IPv4 or IPv6 address")
    if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
        raise ValueError("count exceeds the batch")
    if headroom < 0:
        raise ValueError("negative headroom")
    cdef const uint8_t *addr = <const uint8_t *>(<char *>packed)
    cdef uint8_t *vp = <uint8_t *>PyByteArray_AS_STRING(verdicts)
    cdef SourceCache sc = <SourceCache>cache
    cdef bint ipv6 = alen == 16
    cdef Py_ssize_t claimed = 0, bad = 0
    cdef Py_ssize_t i, end, p, size, ihl, udp, ulen, payload
    cdef uint8_t *b
    cdef uint32_t csum
    cdef uint64_t s
    cdef const uint8_t *srcp
    for i in range(count):
        if vp[i] != 0:
            continue
        buf = bufs[i]
        if type(buf) is not bytearray:
            raise TypeError("bufs must hold bytearrays")
        end = lengths[i]
        if end > PyByteArray_GET_SIZE(buf):
            end = PyByteArray_GET_SIZE(buf)
        b = <uint8_t *>PyByteArray_AS_STRING(buf)
        p = headroom
        size = end - p
        if ipv6:
            if size < C_IPV6 + C_UDP or b[p] >> 4 != 6 or b[p + 6] != 17:
                continue
            if memcmp(b + p + 24, addr, 16) != 0:
                continue
            udp = p + C_IPV6
            srcp = b + p + 8
        else:
            if size < C_IPV4 + C_UDP or b[p] >> 4 != 4 or b[p + 9] != 17:
                continue
            ihl = (b[p] & 15) * 4
            if ihl < C_IPV4 or size < ihl + C_UDP:
                continue
            if _get16(b + p + 6) & 0x3FFF:
                continue
            if memcmp(b + p + 16, addr, 4) != 0:
                continue
            udp = p + ihl
            srcp = b + p + 12
        if <Py_ssize_t>_get16(b + udp + 2) != port:
            continue
        ulen = _get16(b + udp + 4)
        if ulen < C_UDP or udp + ulen > end:
            continue
        csum = _get16(b + udp + 6)
        vp[i] = C_TAKEN
        if csum or ipv6:
            s = _sum(srcp, 2 * alen) + <uint64_t>ulen + 17 + _sum(b + udp, ulen)
            if csum == 0 or _fold(s) != 0xFFFF:
                bad += 1
                continue
        text = sc._get(srcp, alen)
        payload = ulen - C_UDP
        memmove(b, b + udp + C_UDP, payload)
        out_bufs.append(buf)
        out_lengths.append(payload)
        out_sources.append(text)
        claimed += 1
    return claimed, bad
