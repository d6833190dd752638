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

from tunnel._socket cimport AF_INET6, mmsghdr, sendmmsg, socket_family, socklen_t

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


# ---------------------------------------------------------------------------- raw sender


cdef class Dest:
    """One remote VTEP for :class:`RawBatch` (see fast_ref)."""

    cdef vx_sockaddr addr    # port 0: for the raw socket (IPv6 raw reads the port as protocol)
    cdef vx_sockaddr uaddr   # with the destination port: for UDP sockets
    cdef int addrlen
    cdef readonly str ip
    cdef readonly int port
    cdef readonly unsigned int vni
    cdef readonly object pseudo
    cdef readonly bint ipv6
    cdef uint64_t c_pseudo
    cdef uint8_t header[8]

    def __init__(self, str ip not None, int port, unsigned int vni, pseudo=0) -> None:
        cdef bytes raw = ip.encode("ascii")
        cdef int version = vx_parse_addr(&self.addr, raw, &self.addrlen)
        if version == 0:
            raise ValueError(f"not an IP address: {ip!r}")
        if not 0 <= port <= 0xFFFF or vni >= (1 << 24):
            raise ValueError("port or VNI out of range")
        if pseudo < 0:
            raise ValueError("pseudo must be non-negative")
        import ipaddress
        self.ip = str(ipaddress.ip_address(ip))
        self.port = port
        self.vni = vni
        self.pseudo = pseudo
        self.ipv6 = version == 6
        self.c_pseudo = <uint64_t>(pseudo % 0xFFFF)
        put_vxlan(self.header, vni)
        self.uaddr = self.addr
        vx_set_port(&self.uaddr, <unsigned int>port)

    def __repr__(self) -> str:
        return f"Dest({self.ip!r}, {self.port}, {self.vni})"


cdef class _Frames:
    """The sendable frames of one ``send`` call, pinned, as C arrays: frame pointer and size,
    source port and Dest (borrowed: the caller's ``items`` keep them alive). Shared by the
    two senders; ``collect`` checks the arguments as fast_ref does, ``release`` unpins."""

    cdef Py_buffer *views
    cdef Py_ssize_t pinned
    cdef int *view_of        # batch index -> pinned view (-1: not pinned)
    cdef uint8_t **frame
    cdef Py_ssize_t *size
    cdef uint16_t *port
    cdef void **dest
    cdef Py_ssize_t count

    def __cinit__(self) -> None:
        self.views = <Py_buffer *>PyMem_Malloc(C_MAX_BATCH * sizeof(Py_buffer))
        self.view_of = <int *>PyMem_Malloc(C_MAX_BATCH * sizeof(int))
        self.frame = <uint8_t **>PyMem_Malloc(C_MAX_BATCH * sizeof(uint8_t *))
        self.size = <Py_ssize_t *>PyMem_Malloc(C_MAX_BATCH * sizeof(Py_ssize_t))
        self.port = <uint16_t *>PyMem_Malloc(C_MAX_BATCH * sizeof(uint16_t))
        self.dest = <void **>PyMem_Malloc(C_MAX_BATCH * sizeof(void *))
        if (self.views == NULL or self.view_of == NULL or self.frame == NULL
                or self.size == NULL or self.port == NULL or self.dest == NULL):
            raise MemoryError()

    def __dealloc__(self) -> None:
        self.release()
        PyMem_Free(self.views)
        PyMem_Free(self.view_of)
        PyMem_Free(self.frame)
        PyMem_Free(self.size)
        PyMem_Free(self.port)
        PyMem_Free(self.dest)

    cdef int collect(self, bufs, lengths, Py_ssize_t headroom, verdicts, sports, items,
                     bint ipv6) except -1:
        cdef Py_buffer vview, sview
        cdef Py_ssize_t nbufs = len(bufs), nlen = len(lengths)
        cdef Py_ssize_t i, start, end, n
        cdef const uint8_t *v
        cdef const uint16_t *ports
        cdef Dest d
        self.release()
        if headroom < 0:
            raise ValueError("negative headroom")
        PyObject_GetBuffer(verdicts, &vview, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(sports, &sview, PyBUF_SIMPLE)
        except BaseException:
            PyBuffer_Release(&vview)
            raise
        try:
            v = <const uint8_t *>vview.buf
            ports = <const uint16_t *>sview.buf
            if sview.itemsize != 2:
                raise ValueError("sports must be an array('H')")
            for i in range(C_MAX_BATCH):
                self.view_of[i] = -1
            for item in items:
                start, end, d = item
                if start < 0 or end > nbufs or end > nlen or end > vview.len or end > C_MAX_BATCH:
                    raise ValueError("item range exceeds the batch")
                if end * 2 > sview.len:
                    raise ValueError("sports is shorter than the batch")
                if d.ipv6 != ipv6:
                    raise ValueError("destination family differs from the socket's")
                for i in range(start, end):
                    if v[i] != TX_OK and v[i] != TX_ARP:
                        continue
                    if self.count >= C_MAX_BATCH:
                        raise ValueError(f"more than {MAX_BATCH} datagrams in one call")
                    if self.view_of[i] < 0:
                        if type(bufs[i]) is not bytearray:
                            raise TypeError("batch buffers must be bytearrays")
                        PyObject_GetBuffer(bufs[i], &self.views[self.pinned], PyBUF_SIMPLE)
                        self.view_of[i] = <int>self.pinned
                        self.pinned += 1
                    n = lengths[i]
                    if n < 0 or headroom + n > self.views[self.view_of[i]].len:
                        raise ValueError("frame exceeds its buffer")
                    self.frame[self.count] = <uint8_t *>self.views[self.view_of[i]].buf + headroom
                    self.size[self.count] = n
                    self.port[self.count] = ports[i]
                    self.dest[self.count] = <void *>d
                    self.count += 1
        except BaseException:
            self.release()
            raise
        finally:
            PyBuffer_Release(&vview)
            PyBuffer_Release(&sview)
        return 0

    cdef void release(self) noexcept:
        cdef Py_ssize_t k
        for k in range(self.pinned):
            PyBuffer_Release(&self.views[k])
        self.pinned = 0
        self.count = 0


cdef bint _is_ipv6(int fd) except -1:
    """Whether socket ``fd`` is IPv6; OSError if ``fd`` is not a socket."""
    cdef int family = socket_family(fd)
    if family < 0:
        raise OSError(errno, "not a socket")
    return family == AF_INET6


cdef class RawBatch:
    """sendmmsg on a raw IPPROTO_UDP socket (see fast_ref). The caller owns ``fd``."""

    cdef readonly int fd
    cdef readonly bint udpcsum
    cdef readonly bint ipv6
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef uint8_t *hdrs
    cdef _Frames frames

    def __cinit__(self, int fd, *, bint udpcsum=True) -> None:
        self.fd = fd
        self.udpcsum = udpcsum
        self.ipv6 = _is_ipv6(fd)
        self.frames = _Frames()
        self.msgs = <mmsghdr *>PyMem_Malloc(C_MAX_BATCH * sizeof(mmsghdr))
        self.iov = <iovec *>PyMem_Malloc(2 * C_MAX_BATCH * sizeof(iovec))
        self.hdrs = <uint8_t *>PyMem_Malloc(16 * C_MAX_BATCH)
        if self.msgs == NULL or self.iov == NULL or self.hdrs == NULL:
            raise MemoryError()

    def __dealloc__(self) -> None:
        PyMem_Free(self.msgs)
        PyMem_Free(self.iov)
        PyMem_Free(self.hdrs)

    def close(self) -> None:
        """Nothing to release (the fd is the caller's); for API parity with fast_ref."""

    def send(self, bufs, lengths, Py_ssize_t headroom, verdicts, sports, items):
        """Send the sendable frames of each item's range to its Dest; returns
        ``(sent, dropped_full, errors)`` (see fast_ref)."""
        cdef _Frames f = self.frames
        cdef Py_ssize_t m, total, off = 0, n
        cdef uint8_t *h
        cdef Dest dest
        cdef int r, err
        cdef Py_ssize_t sent = 0, full = 0, errors = 0
        cdef uint16_t csum, length
        cdef bint csum_on = self.udpcsum and not self.ipv6
        f.collect(bufs, lengths, headroom, verdicts, sports, items, self.ipv6)
        try:
            total = f.count
            for m in range(total):
                dest = <Dest>f.dest[m]
                n = f.size[m]
                h = self.hdrs + 16 * m
                length = <uint16_t>((16 + n) & 0xFFFF)
                h[0] = f.port[m] >> 8
                h[1] = f.port[m] & 0xFF
                h[2] = dest.port >> 8
                h[3] = dest.port & 0xFF
                h[4] = length >> 8
                h[5] = length & 0xFF
                h[6] = 0
                h[7] = 0
                memcpy(h + 8, dest.header, 8)
                if csum_on:
                    csum = c_udp_checksum(dest.c_pseudo, f.port[m], <uint16_t>dest.port,
                                          h + 8, f.frame[m], n)
                    h[6] = csum >> 8
                    h[7] = csum & 0xFF
                self.iov[2 * m].iov_base = h
                self.iov[2 * m].iov_len = 16
                self.iov[2 * m + 1].iov_base = f.frame[m]
                self.iov[2 * m + 1].iov_len = <size_t>n
                memset(&self.msgs[m], 0, sizeof(mmsghdr))
                self.msgs[m].msg_hdr.msg_name = &dest.addr
                self.msgs[m].msg_hdr.msg_namelen = <socklen_t>dest.addrlen
                self.msgs[m].msg_hdr.msg_iov = &self.iov[2 * m]
                self.msgs[m].msg_hdr.msg_iovlen = 2
            # send: the Dest objects stay alive through ``items`` for the whole call
            with nogil:
                while off < total:
                    r = sendmmsg(self.fd, self.msgs + off, <unsigned int>(total - off), 0)
                    if r > 0:
                        sent += r
                        off += r
                        continue
                    err = errno
                    if r < 0 and err == EINTR:
                        continue
                    if r < 0 and (err == EAGAIN or err == ENOBUFS):
                        full = total - off
                        break
                    errors += 1  # this datagram failed; go on with the next
                    off += 1
        finally:
            f.release()
        return sent, full, errors


# ---------------------------------------------------------------------------- UDP pool + GSO


cdef class GsoBatch:
    """sendmmsg over a pool of UDP sockets, with UDP GSO (see fast_ref). The caller owns the
    fds."""

    cdef int *fds
    cdef readonly int nfds
    cdef readonly bint gso
    cdef readonly bint ipv6
    cdef readonly list fallbacks
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef unsigned char *ctl
    cdef _Frames frames
    # per datagram of the current call: socket index, the Dest's UDP address (also its
    # identity), its length and VXLAN header
    cdef int *sock
    cdef vx_sockaddr **addrs
    cdef int *alens
    cdef uint8_t **headers
    cdef Py_ssize_t *first      # message -> its first datagram
    cdef Py_ssize_t *segments   # message -> datagrams in it

    def __cinit__(self, fds, *, bint gso=True) -> None:
        cdef Py_ssize_t i
        self.nfds = len(fds)
        if self.nfds < 1:
            raise ValueError("GsoBatch needs at least one socket")
        self.gso = gso
        self.fallbacks = []
        self.frames = _Frames()
        self.fds = <int *>PyMem_Malloc(self.nfds * sizeof(int))
        self.msgs = <mmsghdr *>PyMem_Malloc(C_MAX_BATCH * sizeof(mmsghdr))
        self.iov = <iovec *>PyMem_Malloc(2 * C_MAX_BATCH * sizeof(iovec))
        self.ctl = <unsigned char *>PyMem_Malloc(C_MAX_BATCH * VX_SEGMENT_SPACE)
        self.sock = <int *>PyMem_Malloc(C_MAX_BATCH * sizeof(int))
        self.addrs = <vx_sockaddr **>PyMem_Malloc(C_MAX_BATCH * sizeof(vx_sockaddr *))
        self.alens = <int *>PyMem_Malloc(C_MAX_BATCH * sizeof(int))
        self.headers = <uint8_t **>PyMem_Malloc(C_MAX_BATCH * sizeof(uint8_t *))
        self.first = <Py_ssize_t *>PyMem_Malloc(C_MAX_BATCH * sizeof(Py_ssize_t))
        self.segments = <Py_ssize_t *>PyMem_Malloc(C_MAX_BATCH * sizeof(Py_ssize_t))
        if (self.fds == NULL or self.msgs == NULL or self.iov == NULL or self.ctl == NULL
                or self.sock == NULL or self.addrs == NULL or self.alens == NULL
                or self.headers == NULL or self.first == NULL or self.segments == NULL):
            raise MemoryError()
        for i in range(self.nfds):
            self.fds[i] = fds[i]
        self.ipv6 = _is_ipv6(self.fds[0])

    def __dealloc__(self) -> None:
        PyMem_Free(self.fds)
        PyMem_Free(self.msgs)
        PyMem_Free(self.iov)
        PyMem_Free(self.ctl)
        PyMem_Free(self.sock)
        PyMem_Free(self.addrs)
        PyMem_Free(self.alens)
        PyMem_Free(self.headers)
        PyMem_Free(self.first)
        PyMem_Free(self.segments)

    def close(self) -> None:
        """Nothing to release (the fds are the caller's); for API parity with fast_ref."""

    @property
    def fd_list(self) -> list:
        """The pool's fds, in socket-index order."""
        return [self.fds[i] for i in range(self.nfds)]

    cdef Py_ssize_t _plan(self, Py_ssize_t d, Py_ssize_t total) noexcept nogil:
        """Group datagrams d.. into messages of one socket (GSO runs when on); returns the
        message count (all of them for the socket of datagram d, stopping where it changes)."""
        cdef Py_ssize_t m = 0, k, size, nbytes, j
        cdef Py_ssize_t *sizes = self.frames.size
        cdef uint8_t **frames = self.frames.frame
        cdef int s = self.sock[d]
        while d < total and self.sock[d] == s and m < C_MAX_BATCH:
            size = sizes[d]
            k = 1
            nbytes = 8 + size
            if self.gso:
                while (d + k < total and k < C_GSO_SEGMENTS and self.sock[d + k] == s
                       and self.addrs[d + k] == self.addrs[d] and sizes[d + k] <= size
                       and sizes[d + k] > 0
                       and nbytes + 8 + sizes[d + k] <= C_GSO_BYTES):
                    nbytes += 8 + sizes[d + k]
                    k += 1
                    if sizes[d + k - 1] < size:
                        break
            memset(&self.msgs[m], 0, sizeof(mmsghdr))
            self.msgs[m].msg_hdr.msg_name = self.addrs[d]
            self.msgs[m].msg_hdr.msg_namelen = <socklen_t>self.alens[d]
            self.msgs[m].msg_hdr.msg_iov = &self.iov[2 * d]
            self.msgs[m].msg_hdr.msg_iovlen = <size_t>(2 * k)
            if k > 1:
                self.msgs[m].msg_hdr.msg_control = self.ctl + m * VX_SEGMENT_SPACE
                self.msgs[m].msg_hdr.msg_controllen = vx_put_segment(
                    self.ctl + m * VX_SEGMENT_SPACE, <unsigned int>(8 + size))
            for j in range(k):
                self.iov[2 * (d + j)].iov_base = self.headers[d + j]
                self.iov[2 * (d + j)].iov_len = 8
                self.iov[2 * (d + j) + 1].iov_base = frames[d + j]
                self.iov[2 * (d + j) + 1].iov_len = <size_t>sizes[d + j]
            self.first[m] = d
            self.segments[m] = k
            d += k
            m += 1
        return m

    def send(self, bufs, lengths, Py_ssize_t headroom, verdicts, sports, items):
        """Send the sendable frames of each item's range to its Dest, frame ``i`` from socket
        ``sports[i] % nfds``; returns ``(sent, dropped_full, errors)`` (see fast_ref)."""
        cdef _Frames f = self.frames
        cdef Py_ssize_t total, d = 0, m, off, k
        cdef Dest dest
        cdef int r, err, refused = 0
        cdef Py_ssize_t sent = 0, full = 0, errors = 0
        f.collect(bufs, lengths, headroom, verdicts, sports, items, self.ipv6)
        try:
            total = f.count
            for k in range(total):
                dest = <Dest>f.dest[k]
                self.sock[k] = f.port[k] % self.nfds
                self.addrs[k] = &dest.uaddr
                self.alens[k] = dest.addrlen
                self.headers[k] = dest.header
            # send, one sendmmsg per run of one socket (Dests stay alive through ``items``)
            with nogil:
                while d < total:
                    m = self._plan(d, total)
                    off = 0
                    while off < m:
                        r = sendmmsg(self.fds[self.sock[d]], self.msgs + off,
                                     <unsigned int>(m - off), 0)
                        if r > 0:
                            for k in range(off, off + r):
                                sent += self.segments[k]
                            off += r
                            continue
                        err = errno
                        if r < 0 and err == EINTR:
                            continue
                        if r < 0 and (err == EAGAIN or err == ENOBUFS):
                            full = total - self.first[off]
                            break
                        if (self.segments[off] > 1 and self.gso
                                and (err == EIO or err == EINVAL)):
                            # the kernel refuses GSO here: plain datagrams from now on
                            self.gso = False
                            refused = err
                            break
                        errors += self.segments[off]  # this message failed; go on
                        off += 1
                    if full:
                        break
                    if off < m:  # GSO refused at message ``off``: re-plan from its datagram
                        d = self.first[off]
                    else:
                        d = self.first[m - 1] + self.segments[m - 1]
        finally:
            f.release()
        if refused:
            self.fallbacks.append(
                f"UDP GSO refused by the kernel ({_errno.errorcode.get(refused, refused)}): "
                "sending datagrams one by one")
        return sent, full, errors
