# cython: language_level=3, boundscheck=False, wraparound=False
"""Checks and scans the WireGuard batch entry points share (inline, cimported by _datapath and
_lane; pure twins in datapath_ref). They take the caller's buffers as they are: nothing is
copied or kept. The scans index ``lengths`` unchecked: call them after :func:`check_batch`.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport uint32_t


cdef inline unsigned char *data_of(object buf, Py_ssize_t need) except NULL:
    """The bytes of bytearray buf, which must hold at least need of them (else ValueError)."""
    cdef bytearray b = <bytearray?>buf
    if PyByteArray_GET_SIZE(b) < need:
        raise ValueError("buffer shorter than its length")
    return <unsigned char *>PyByteArray_AS_STRING(b)


cdef inline int check_batch(list bufs, list lengths, Py_ssize_t headroom) except -1:
    """Refuse a batch the unchecked loops would overrun.

    The callers index lengths without bounds checks (boundscheck=False): lengths must cover
    bufs, and a negative headroom would read before the buffer.
    """
    if len(lengths) < len(bufs):
        raise ValueError("lengths is shorter than bufs")
    if headroom < 0:
        raise ValueError("headroom must not be negative")
    return 0


cdef inline long long transport_receiver(list bufs, list lengths, Py_ssize_t n) except -2:
    """The receiver index that all of the first ``n`` datagrams are transport messages for (type
    4, at least 32 bytes), or -1 if one is not or two name different indices (the inbound lane
    rule's batch check; datapath_ref.transport_receiver)."""
    cdef Py_ssize_t i, size
    cdef unsigned char *p
    cdef long long receiver = -1, index
    for i in range(n):
        size = lengths[i]
        p = data_of(bufs[i], size)
        if size < 32 or p[0] != 4 or p[1] or p[2] or p[3]:
            return -1
        index = (<uint32_t>p[4]) | (<uint32_t>p[5] << 8) | (<uint32_t>p[6] << 16) | (<uint32_t>p[7] << 24)
        if receiver >= 0 and index != receiver:
            return -1
        receiver = index
    return receiver


cdef inline bint all_from(list sources, Py_ssize_t n, object endpoint) except -1:
    """Whether each of the first ``n`` sources is ``endpoint`` (the same object, as the batch
    I/O hands out for a repeated source, or an equal one; datapath_ref.all_from)."""
    cdef Py_ssize_t i
    for i in range(n):
        source = sources[i]
        if source is not endpoint and source != endpoint:
            return False
    return True
