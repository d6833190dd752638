# cython: language_level=3
"""Checks the WireGuard batch entry points share (inline, cimported by _datapath and _lane).

Both take the caller's buffers as they are: nothing is copied or kept.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE


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
