# cython: language_level=3, wraparound=False, boundscheck=False, cdivision=True, initializedcheck=False
"""Batched UDP and TUN I/O in Cython (the fast path of ``tunnel/io/io_ref.py``, same API).

UDP: one ``recvmmsg``/``sendmmsg`` per batch, UDP GRO receive (coalesced messages split into
consecutive slots) and UDP GSO send (runs of same-size datagrams to one destination leave as one
message of several iovecs with a UDP_SEGMENT control message: no copy). TUN: ``readv`` with the
virtio-net header, TCP super-packets cut into MTU-sized packets and partial checksums completed;
``writev`` behind a zeroed header (``write`` takes a list of packets, ``write_slots`` the selected
slots of a batch, with no Python object per packet; both fill the same C arrays of packet
addresses and lengths). The full contract is in the docstring of ``tunnel/io/io_ref.py``.

How the GIL is used: every buffer of the batch is pinned with the buffer protocol while the GIL
is held (nobody can resize a bytearray under us), addresses are converted to C structs, then the
syscalls and all per-packet byte work (cmsg parsing, splitting, checksums) run in one
``with nogil:`` section; results go back into the Python lists afterwards. A source Python object
is made only when the source differs from the previous datagram's (a batch from one peer makes
one). Single-threaded: one event loop owns an object; a second thread gets RuntimeError.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.errno cimport EAGAIN, EINTR, EINVAL, errno
from libc.stdint cimport uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.uio cimport iovec, readv, writev

from tunnel.io._socket cimport (
    getsockopt, mmsghdr, msghdr, recvmmsg, sendmmsg, sendmsg, setsockopt, socket_family, socklen_t,
)

from wgpy_ints cimport wgpy_set_length  # include/wgpy_ints.pxd: batch lengths as kept ints

import errno as _errno


cdef extern from "_io.h":
    ctypedef struct wgpy_sockaddr:
        pass
    ctypedef struct wgpy_source:
        int family
        int port
        unsigned char addr[16]
        int local_family
        unsigned char local[16]
        int gro
    size_t WGPY_SOURCE_KEY
    ctypedef struct wgpy_dest:
        wgpy_sockaddr addr
        socklen_t addrlen
        int local_family
        unsigned char local[16]
    ctypedef struct wgpy_super:
        const unsigned char *pkt
        size_t len
        size_t next
        size_t mss
        size_t l4
        size_t header
    ctypedef struct wgpy_tcpinfo:
        int version
        size_t l4
        size_t header
        size_t payload

    enum:
        SOL_UDP
        UDP_SEGMENT
        UDP_GRO
        MSG_DONTWAIT
        AF_INET
        AF_INET6
        INET6_ADDRSTRLEN
        WGPY_CONTROL
        WGPY_GRO_MESSAGE
        WGPY_SUPER

    void wgpy_read_source(const msghdr *m, wgpy_source *s) nogil
    void wgpy_source_text(const wgpy_source *s, char *ip, char *local) nogil
    int wgpy_dest_parse(wgpy_dest *d, const char *ip, long port, const char *local) nogil
    size_t wgpy_put_control(unsigned char *ctl, const wgpy_dest *d, int family, int use_local,
                            int segment) nogil
    int wgpy_complete_csum(unsigned char *pkt, size_t len, size_t start, size_t offset) nogil
    int wgpy_parse_super(wgpy_super *w, const unsigned char *pkt, size_t len,
                         const unsigned char *hdr, size_t mtu) nogil
    size_t wgpy_cut(wgpy_super *w, unsigned char *out, size_t room) nogil
    size_t wgpy_segments_left(const wgpy_super *w) nogil
    void wgpy_tcp_info(const unsigned char *p, size_t len, wgpy_tcpinfo *t) nogil
    int wgpy_tcp_follows(const unsigned char *first, const wgpy_tcpinfo *tf,
                         const unsigned char *prev, const wgpy_tcpinfo *tp,
                         const unsigned char *q, const wgpy_tcpinfo *tq) nogil
    void wgpy_tcp_super(unsigned char *out, unsigned char *vnet, const unsigned char *first,
                        const wgpy_tcpinfo *tf, const unsigned char *last, size_t total) nogil
    int wgpy_tun_gone(int code) nogil
    const unsigned char *wgpy_l3(const unsigned char *p, size_t len, size_t l2) nogil
    int wgpy_tcp_csum_ok(const unsigned char *p, const wgpy_tcpinfo *t) nogil
    int wgpy_tcp_csum_partial(const unsigned char *p, const wgpy_tcpinfo *t) nogil
    int wgpy_csum_partial(const unsigned char *p, size_t len, size_t *start, size_t *offset,
                          size_t *iplen) nogil
    int wgpy_tso_frame(wgpy_super *w, const unsigned char *p, size_t len, size_t mtu,
                       int *partial) nogil
    void wgpy_tso_header(unsigned char *out, unsigned char *vnet, const unsigned char *frame,
                         size_t l2, const wgpy_super *w) nogil


# --- Public constants: defined once in tunnel/io/constants.py, shared with the pure twin ---
from tunnel.io.constants import (
    GRO_BYTES,
    GRO_MESSAGE,
    GRO_SEGMENTS,
    GSO_ECN,
    GSO_NONE,
    GSO_REFUSED,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    MAX_GSO_BYTES,
    MAX_GSO_SEGMENTS,
    SOURCE_GONE,
    SUPER_PACKET,
    TUN_GONE,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
)

cdef enum:
    C_MAX_SEGMENTS = 64
    C_MAX_GSO_BYTES = 65000
    C_VNET = 10
    C_GRO_SEGMENTS = 64       # segments per coalesced TUN write
    C_GRO_BYTES = 65535       # the largest IP packet
    C_ETH = 14                # an Ethernet header (TunBatch l2 on a TAP)
    MAX_BATCH = 1024          # UIO_MAXIOV: the most messages one recvmmsg/sendmmsg takes

# The C code needs its sizes as compile-time constants: refuse to load a build whose copies
# differ from tunnel/io/constants.py (and the C header's scratch sizes from the Python ones).
if (C_MAX_SEGMENTS, C_MAX_GSO_BYTES, C_VNET, C_GRO_SEGMENTS, C_GRO_BYTES, WGPY_GRO_MESSAGE, WGPY_SUPER) != (
        MAX_GSO_SEGMENTS, MAX_GSO_BYTES, VNET_HDR_LEN, GRO_SEGMENTS, GRO_BYTES, GRO_MESSAGE, SUPER_PACKET):
    raise ImportError("tunnel.io._io: compiled constants differ from tunnel/io/constants.py; rebuild it")


cdef str _errname(int code):
    return _errno.errorcode.get(code, str(code))


def enable_udp_gro(int fd) -> bool:
    """Turn UDP_GRO on for the socket ``fd``; False if the kernel refuses (older than 5.0)."""
    cdef int one = 1
    return setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0


def probe_udp_gso(int fd) -> bool:
    """True if the kernel knows UDP_SEGMENT on this socket (4.18+)."""
    cdef int value = 0
    cdef socklen_t size = sizeof(value)
    return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &value, &size) == 0


# UdpBatch's "no endpoint parsed yet" marker (None is an endpoint to refuse, not a marker).
_NO_ENDPOINT = object()


def _tuple_source(ip, port, local):
    return (ip, port, local)


cdef inline void release_views(Py_buffer *views, Py_ssize_t count) noexcept:
    cdef Py_ssize_t i
    for i in range(count):
        PyBuffer_Release(&views[i])


include "_io_udp.pxi"


include "_io_tun.pxi"


include "_io_capi.pxi"
