# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The VXLAN data path's per-packet loops in Cython: same API and results as
``tunnel/vxlan/fast_ref.py`` (read its docstring for the contract).

Here the loops read the packets through raw pointers into the batch's ``bytearray``s (the only
buffer type accepted for ``bufs``), the flow hash is a table CRC-32 identical to zlib's, the
IPv4 UDP checksum is a 64-bit one's complement sum, and the senders' ``sendmmsg`` calls (raw
socket, UDP pool with GSO) run in C loops with the GIL released after the buffers were pinned
(buffer protocol) so that nothing can resize them meanwhile. No Python object is made
per packet except the run tuples (one per run of frames to one MAC) and learning run indices.
Single-threaded: one event loop owns an object.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject_RichCompareBool, Py_EQ
from libc.errno cimport errno, EINTR, EAGAIN, ENOBUFS, EIO, EINVAL
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from posix.uio cimport iovec

from tunnel.io._socket cimport AF_INET6, mmsghdr, sendmmsg, socket_family, socklen_t

import errno as _errno

from tunnel.vxlan.fast_ref import (
    GSO_BYTES, GSO_SEGMENTS, MAX_BATCH, RX_INVALID_SOURCE_MAC, RX_NO_I_FLAG, RX_OK, RX_OWN_SOURCE_MAC, RX_REASONS,
    RX_RESERVED_BITS, RX_STATIC_CONFLICT, RX_TOO_SHORT, RX_WRONG_VNI, TX_ARP, TX_DONE, TX_OK,
    TX_TOO_SHORT, pseudo_sum,
)

__all__ = [
    "GSO_BYTES", "GSO_SEGMENTS", "MAX_BATCH", "RX_INVALID_SOURCE_MAC", "RX_NO_I_FLAG", "RX_OK", "RX_OWN_SOURCE_MAC",
    "RX_REASONS", "RX_RESERVED_BITS", "RX_STATIC_CONFLICT", "RX_TOO_SHORT", "RX_WRONG_VNI",
    "TX_ARP", "TX_DONE", "TX_OK", "TX_TOO_SHORT", "Dest", "GsoBatch", "RawBatch",
    "decap_batch",
    "flow_hash", "pseudo_sum", "scan_tx", "udp_checksum", "write_headers",
]

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    #include <unistd.h>
    #include <string.h>

    typedef union {
        struct sockaddr sa;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } vx_sockaddr;

    static int vx_parse_addr(vx_sockaddr *out, const char *ip, int *len) {
        memset(out, 0, sizeof(*out));
        if (inet_pton(AF_INET, ip, &out->v4.sin_addr) == 1) {
            out->v4.sin_family = AF_INET;
            *len = sizeof(struct sockaddr_in);
            return 4;
        }
        if (inet_pton(AF_INET6, ip, &out->v6.sin6_addr) == 1) {
            out->v6.sin6_family = AF_INET6;
            *len = sizeof(struct sockaddr_in6);
            return 6;
        }
        return 0;
    }

    static void vx_set_port(vx_sockaddr *a, unsigned int port) {
        if (a->sa.sa_family == AF_INET6) a->v6.sin6_port = htons((uint16_t)port);
        else a->v4.sin_port = htons((uint16_t)port);
    }

    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #define VX_SEGMENT_SPACE CMSG_SPACE(sizeof(uint16_t))

    /* Write a UDP_SEGMENT control message (segment size) into ctl; returns its length. */
    static size_t vx_put_segment(unsigned char *ctl, unsigned int size) {
        struct cmsghdr *c = (struct cmsghdr *)ctl;
        uint16_t value = (uint16_t)size;
        memset(ctl, 0, VX_SEGMENT_SPACE);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(value));
        memcpy(CMSG_DATA(c), &value, sizeof(value));
        return VX_SEGMENT_SPACE;
    }
    """
    ctypedef struct vx_sockaddr:
        pass
    int vx_parse_addr(vx_sockaddr *out, const char *ip, int *len) nogil
    void vx_set_port(vx_sockaddr *a, unsigned int port) nogil
    size_t vx_put_segment(unsigned char *ctl, unsigned int size) nogil
    enum: VX_SEGMENT_SPACE

cdef enum:
    C_MAX_BATCH = 1024
    C_HLEN = 8
    C_ETH = 14
    C_FLAGS = 0x08000000
    C_GSO_SEGMENTS = 64
    C_GSO_BYTES = 65000

assert MAX_BATCH == C_MAX_BATCH
assert GSO_SEGMENTS == C_GSO_SEGMENTS and GSO_BYTES == C_GSO_BYTES


# ---------------------------------------------------------------------------- CRC-32 (zlib's)

cdef uint32_t CRC_TABLE[256]


cdef void _init_crc() noexcept:
    cdef uint32_t c
    cdef int n, k
    for n in range(256):
        c = n
        for k in range(8):
            if c & 1:
                c = 0xEDB88320U ^ (c >> 1)
            else:
                c = c >> 1
        CRC_TABLE[n] = c


_init_crc()


cdef inline uint32_t crc32(const uint8_t *p, Py_ssize_t n, uint32_t crc) noexcept nogil:
    cdef uint32_t c = ~crc
    cdef Py_ssize_t i
    for i in range(n):
        c = CRC_TABLE[(c ^ p[i]) & 0xFF] ^ (c >> 8)
    return ~c


cdef inline bint port_protocol(uint8_t proto) noexcept nogil:
    return proto == 6 or proto == 17 or proto == 33 or proto == 132 or proto == 136


cdef uint32_t c_flow_hash(const uint8_t *f, Py_ssize_t n, uint32_t seed) noexcept nogil:
    """Hash of the frame f[0:n] (same inputs and order as tunnel/vxlan/flow.py)."""
    cdef Py_ssize_t l3 = 14, l4, ihl
    cdef uint32_t h
    cdef unsigned int et
    cdef uint8_t proto
    if n < l3:
        return crc32(f, n, seed)
    et = (<unsigned int>f[12] << 8) | f[13]
    if (et == 0x8100 or et == 0x88A8) and n >= l3 + 4:
        l3 += 4
        et = (<unsigned int>f[l3 - 2] << 8) | f[l3 - 1]
    if et == 0x0800 and n >= l3 + 20:
        ihl = (f[l3] & 0x0F) * 4
        proto = f[l3 + 9]
        h = crc32(f + l3 + 12, 8, seed)
        l4 = l3 + ihl
        if (port_protocol(proto) and not (((f[l3 + 6] & 0x3F) << 8) | f[l3 + 7])
                and ihl >= 20 and n >= l4 + 4):
            h = crc32(f + l4, 4, h)
        return crc32(&proto, 1, h)
    if et == 0x86DD and n >= l3 + 40:
        proto = f[l3 + 6]
        h = crc32(f + l3 + 8, 32, seed)
        l4 = l3 + 40
        if port_protocol(proto) and n >= l4 + 4:
            h = crc32(f + l4, 4, h)
        return crc32(&proto, 1, h)
    return crc32(f, 14, seed)


cdef inline uint16_t scale(uint32_t h, unsigned int lo, unsigned int hi) noexcept nogil:
    h = h ^ (h << 16)
    return <uint16_t>(lo + ((<uint64_t>h * (hi - lo)) >> 32))


def flow_hash(frame, Py_ssize_t offset=0, unsigned int seed=0) -> int:
    """32-bit hash of the inner flow of the Ethernet frame at ``frame[offset:]``."""
    cdef Py_buffer view
    cdef uint32_t h
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        if offset < 0:
            offset = 0
        if offset > view.len:
            offset = view.len
        h = c_flow_hash(<const uint8_t *>view.buf + offset, view.len - offset, seed)
    finally:
        PyBuffer_Release(&view)
    return h


# ---------------------------------------------------------------------------- checksums


cdef inline uint64_t sum_native(const uint8_t *p, Py_ssize_t n, uint64_t acc) noexcept nogil:
    """Add the native-order 16-bit words of p[0:n] (n even, or last byte padded) to acc."""
    cdef uint32_t w
    cdef uint16_t s
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        memcpy(&w, p + i, 4)
        acc += w
        i += 4
    if i + 2 <= n:
        memcpy(&s, p + i, 2)
        acc += s
        i += 2
    if i < n:
        s = 0
        memcpy(&s, p + i, 1)
        acc += s
    return acc


cdef inline uint32_t fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return <uint32_t>acc


cdef inline uint32_t to_network(uint32_t native16) noexcept nogil:
    """A folded native-order sum as a network-order (big-endian) 16-bit value."""
    cdef uint16_t probe = 1
    if (<uint8_t *>&probe)[0] == 1:  # little-endian host
        return ((native16 & 0xFF) << 8) | (native16 >> 8)
    return native16


cdef inline uint16_t c_udp_checksum(uint64_t pseudo, uint16_t sport, uint16_t dport,
                                    const uint8_t *vxlan, const uint8_t *frame,
                                    Py_ssize_t n) noexcept nogil:
    cdef uint32_t length = 16 + <uint32_t>n
    cdef uint64_t acc = sum_native(vxlan, 8, 0)
    acc = sum_native(frame, n, acc)
    cdef uint64_t total = to_network(fold(acc))
    total += fold(pseudo) + (length & 0xFFFF) * 2 + sport + dport
    cdef uint32_t value = fold(total)
    value = (~value) & 0xFFFF
    return 0xFFFF if value == 0 else <uint16_t>value


cdef inline void put_vxlan(uint8_t *p, uint32_t vni) noexcept nogil:
    p[0] = 0x08
    p[1] = 0
    p[2] = 0
    p[3] = 0
    p[4] = (vni >> 16) & 0xFF
    p[5] = (vni >> 8) & 0xFF
    p[6] = vni & 0xFF
    p[7] = 0


def udp_checksum(pseudo: int, int sport, int dport, unsigned int vni, frame) -> int:
    """IPv4 UDP checksum of ``UDP header + VXLAN header(vni) + frame`` (see fast_ref)."""
    cdef Py_buffer view
    cdef uint8_t hdr[8]
    cdef uint16_t value
    if pseudo < 0:
        raise ValueError("pseudo must be non-negative")
    cdef uint64_t p = <uint64_t>(pseudo % 0xFFFF)
    put_vxlan(hdr, vni)
    PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
    try:
        value = c_udp_checksum(p, <uint16_t>sport, <uint16_t>dport, hdr,
                               <const uint8_t *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return value


# ---------------------------------------------------------------------------- batch checks


cdef inline uint8_t *_bytes_of(object buf, Py_ssize_t *size) except NULL:
    if type(buf) is not bytearray:
        raise TypeError("batch buffers must be bytearrays")
    size[0] = PyByteArray_GET_SIZE(buf)
    return <uint8_t *>PyByteArray_AS_STRING(buf)


cdef _check_count(bufs, lengths, Py_ssize_t count, verdicts):
    if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
        raise ValueError("count exceeds bufs, lengths or verdicts")
    if count > C_MAX_BATCH:
        raise ValueError(f"batch larger than {MAX_BATCH}")


cdef inline uint32_t load32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


def decap_batch(bufs, lengths, Py_ssize_t count, unsigned int vni, bytes own_mac not None,
                bint learning, sources, bytearray verdicts not None, list runs not None):
    """Check ``count`` datagrams; returns ``(accepted, inner_bytes)`` (see fast_ref)."""
    _check_count(bufs, lengths, count, verdicts)
    if len(sources) < count:
        raise ValueError("sources is shorter than count")
    cdef uint8_t *out = <uint8_t *>PyByteArray_AS_STRING(verdicts)
    cdef const uint8_t *own = <const uint8_t *>(<char *>own_mac)
    cdef bint have_own = len(own_mac) == 6
    cdef Py_ssize_t i, n, size = 0, accepted = 0, total = 0
    cdef uint8_t *p
    cdef uint8_t code
    cdef uint32_t flags, word
    cdef uint8_t prev_mac[6]
    cdef bint have_prev = False
    cdef object prev_src = None
    cdef object src
    for i in range(count):
        p = _bytes_of(bufs[i], &size)
        n = lengths[i]
        if n > size:
            n = size
        code = RX_OK
        if n < C_HLEN:
            code = RX_TOO_SHORT
        else:
            flags = load32(p)
            word = load32(p + 4)
            if not flags & C_FLAGS:
                code = RX_NO_I_FLAG
            elif word >> 8 != vni:
                code = RX_WRONG_VNI
            elif flags != C_FLAGS or word & 0xFF:
                code = RX_RESERVED_BITS
            elif n < C_HLEN + C_ETH:
                code = RX_TOO_SHORT
            elif have_own and memcmp(p + 14, own, 6) == 0:
                code = RX_OWN_SOURCE_MAC
            elif learning:
                if p[14] & 1 or (p[14] | p[15] | p[16] | p[17] | p[18] | p[19]) == 0:
                    code = RX_INVALID_SOURCE_MAC
                else:
                    src = sources[i]
                    if (not have_prev or memcmp(p + 14, prev_mac, 6) != 0
                            or not (src is prev_src or PyObject_RichCompareBool(src, prev_src, Py_EQ))):
                        runs.append(i)
                        memcpy(prev_mac, p + 14, 6)
                        prev_src = src
                        have_prev = True
        out[i] = code
        if code == RX_OK:
            accepted += 1
            total += n - C_HLEN
    return accepted, total


def scan_tx(bufs, lengths, Py_ssize_t count, Py_ssize_t headroom, unsigned int seed,
            unsigned int port_min, unsigned int port_max, bint split_arp,
            bytearray verdicts not None, sports, list runs not None) -> int:
    """Transmit checks, hashed source ports and destination-MAC runs (see fast_ref)."""
    _check_count(bufs, lengths, count, verdicts)
    cdef Py_buffer sview
    PyObject_GetBuffer(sports, &sview, PyBUF_WRITABLE)
    cdef uint8_t *out = <uint8_t *>PyByteArray_AS_STRING(verdicts)
    cdef Py_ssize_t i, n, size, ok = 0, run_start = -1, run_frames = 0, run_bytes = 0
    cdef uint8_t *p
    cdef uint8_t *f
    cdef uint8_t prev_mac[6]
    cdef bint arp
    cdef uint16_t *ports
    try:
        if sview.itemsize != 2 or sview.len < count * 2:
            raise ValueError("sports must be an array('H') of at least count items")
        if headroom < 0:
            raise ValueError("negative headroom")
        ports = <uint16_t *>sview.buf
        for i in range(count):
            p = _bytes_of(bufs[i], &size)
            n = lengths[i]
            if n < C_ETH or headroom + n > size:
                out[i] = TX_TOO_SHORT
                continue
            f = p + headroom
            ports[i] = scale(c_flow_hash(f, n, seed), port_min, port_max)
            ok += 1
            arp = split_arp and f[12] == 0x08 and f[13] == 0x06
            out[i] = TX_ARP if arp else TX_OK
            if run_start >= 0 and (arp or memcmp(f, prev_mac, 6) != 0):
                runs.append((run_start, i, run_frames, run_bytes))
                run_start = -1
            if run_start < 0:
                run_start = i
                run_frames = 0
                run_bytes = 0
                memcpy(prev_mac, f, 6)
            run_frames += 1
            run_bytes += n
            if arp:
                runs.append((run_start, i + 1, run_frames, run_bytes))
                run_start = -1
        if run_start >= 0:
            runs.append((run_start, count, run_frames, run_bytes))
    finally:
        PyBuffer_Release(&sview)
    return ok


def write_headers(bufs, verdicts, Py_ssize_t start, Py_ssize_t end, Py_ssize_t headroom,
                  unsigned int vni) -> None:
    """The VXLAN header in the headroom of the sendable frames of ``[start, end)``."""
    if headroom < C_HLEN or vni >= (1 << 24):
        raise ValueError("headroom below 8 or VNI out of range")
    if start < 0 or end > len(bufs) or end > len(verdicts):
        raise ValueError("range exceeds bufs or verdicts")
    cdef Py_buffer vview
    cdef Py_ssize_t i, size = 0
    cdef uint8_t *p
    cdef const uint8_t *v
    PyObject_GetBuffer(verdicts, &vview, PyBUF_SIMPLE)
    try:
        v = <const uint8_t *>vview.buf
        for i in range(start, end):
            if v[i] == TX_OK or v[i] == TX_ARP:
                p = _bytes_of(bufs[i], &size)
                if size < headroom:
                    raise ValueError("buffer shorter than the headroom")
                put_vxlan(p + headroom - C_HLEN, vni)
    finally:
        PyBuffer_Release(&vview)



include "_fast_raw.pxi"

include "_fast_gso.pxi"
