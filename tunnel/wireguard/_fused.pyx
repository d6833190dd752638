# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A lane batch's native steps in one ``with nogil:`` section (Cython twin of ``fused_ref.py``).

Read ``tunnel/wireguard/fused_ref.py`` for the contract: :meth:`Fused.seal_send` is
``seal_batch`` then ``send_slots``, :meth:`Fused.open_deliver` is ``open_batch``, then
``accept_slots``, then ``write_slots``, with the same results and errors. Here, when every
object is the native one (``crypto._transport.TransportCipher``, ``tunnel.io._io.UdpBatch`` /
``TunBatch``, ``tunnel.wireguard._datapath.RouteTable``) and every buffer a ``bytearray``, the
steps run through those modules' C entry points (their ``_capi`` PyCapsules): their checks
and set-up with the GIL held, then the AEAD, the replay window, the inner-packet checks and
the system calls of the common case in **one** ``with nogil:`` section, then the results and
anything uncommon (a send error, a fallback, a device gone) with the GIL again. The GIL is
released once per batch instead of twice (seal, send; open, write): a worker thread of ``workers N`` gives
it up, and must win it back, once (docs/multicore.md 4.7). Any other object (the pure twins,
a test's fakes) takes the plain sequence of Python calls.

One :class:`Fused` per thread (it keeps the batch's C arrays); the objects handed to a call
are used from that thread for the call's duration, as their own Python methods would be.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pycapsule cimport PyCapsule_GetPointer

from wgpy_ints cimport wgpy_set_length  # include/wgpy_ints.pxd: batch lengths as kept ints

from crypto import _transport
from tunnel.io import _io
from tunnel.wireguard import _datapath

__all__ = ["Fused"]

ctypedef void *(*seal_begin_t)(void *, unsigned char **, Py_ssize_t *, Py_ssize_t *, Py_ssize_t, Py_ssize_t,
                               Py_ssize_t *) except? NULL
ctypedef Py_ssize_t (*seal_run_t)(void *, void *, Py_ssize_t, Py_ssize_t *) noexcept nogil
ctypedef void *(*open_begin_t)(void *, unsigned char **, Py_ssize_t *, Py_ssize_t *, Py_ssize_t) except? NULL
ctypedef Py_ssize_t (*open_run_t)(void *, void *, Py_ssize_t, Py_ssize_t *, int *) noexcept nogil
ctypedef void (*cipher_end_t)(void *, void *, bint) noexcept
ctypedef int (*send_begin_t)(void *, Py_ssize_t, object) except -1
ctypedef Py_ssize_t (*send_run_t)(void *, unsigned char **, Py_ssize_t *, Py_ssize_t, Py_ssize_t *) noexcept nogil
ctypedef Py_ssize_t (*send_end_t)(void *, Py_ssize_t, Py_ssize_t, object) except -1
ctypedef int (*write_begin_t)(void *, Py_ssize_t) except -1
ctypedef Py_ssize_t (*write_run_t)(void *, unsigned char **, Py_ssize_t *, Py_ssize_t) noexcept nogil
ctypedef Py_ssize_t (*write_end_t)(void *, Py_ssize_t) except -1
ctypedef Py_ssize_t (*accept_t)(void *, int, unsigned char **, Py_ssize_t *, const int *, Py_ssize_t, Py_ssize_t,
                                unsigned char *, Py_ssize_t *) noexcept nogil


cdef void *_get(dict capi, str name, bytes full) except NULL:
    return PyCapsule_GetPointer(capi[name], full)


cdef seal_begin_t _seal_begin = <seal_begin_t>_get(_transport._capi, "seal_begin", b"wgpy.cipher.seal_begin")
cdef seal_run_t _seal_run = <seal_run_t>_get(_transport._capi, "seal_run", b"wgpy.cipher.seal_run")
cdef open_begin_t _open_begin = <open_begin_t>_get(_transport._capi, "open_begin", b"wgpy.cipher.open_begin")
cdef open_run_t _open_run = <open_run_t>_get(_transport._capi, "open_run", b"wgpy.cipher.open_run")
cdef cipher_end_t _cipher_end = <cipher_end_t>_get(_transport._capi, "end", b"wgpy.cipher.end")
cdef send_begin_t _send_begin = <send_begin_t>_get(_io._capi, "send_begin", b"wgpy.udp.send_begin")
cdef send_run_t _send_run = <send_run_t>_get(_io._capi, "send_run", b"wgpy.udp.send_run")
cdef send_end_t _send_end = <send_end_t>_get(_io._capi, "send_end", b"wgpy.udp.send_end")
cdef write_begin_t _write_begin = <write_begin_t>_get(_io._capi, "write_begin", b"wgpy.tun.write_begin")
cdef write_run_t _write_run = <write_run_t>_get(_io._capi, "write_run", b"wgpy.tun.write_run")
cdef write_end_t _write_end = <write_end_t>_get(_io._capi, "write_end", b"wgpy.tun.write_end")
cdef accept_t _accept = <accept_t>_get(_datapath._capi, "accept", b"wgpy.datapath.accept")

cdef object _Cipher = _transport.TransportCipher
cdef object _Udp = _io.UdpBatch
cdef object _Tun = _io.TunBatch
cdef object _Table = _datapath.RouteTable


cdef class Fused:
    """The fused lane steps of one thread; see the module doc and fused_ref.Fused."""

    cdef Py_ssize_t _cap
    cdef Py_buffer *_views
    cdef unsigned char **_ptrs
    cdef Py_ssize_t *_lens
    cdef Py_ssize_t *_caps
    cdef int *_codes
    cdef unsigned char **_wptrs
    cdef Py_ssize_t *_wlens
    cdef readonly long native_batches  # batches that took the one-nogil path (for tests and stats)

    def __cinit__(self):
        self._cap = 0
        self._views = NULL
        self._ptrs = NULL
        self._lens = NULL
        self._caps = NULL
        self._codes = NULL
        self._wptrs = NULL
        self._wlens = NULL
        self.native_batches = 0

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        PyMem_Free(self._views)
        PyMem_Free(self._ptrs)
        PyMem_Free(self._lens)
        PyMem_Free(self._caps)
        PyMem_Free(self._codes)
        PyMem_Free(self._wptrs)
        PyMem_Free(self._wlens)
        self._views = NULL
        self._ptrs = NULL
        self._lens = NULL
        self._caps = NULL
        self._codes = NULL
        self._wptrs = NULL
        self._wlens = NULL
        self._cap = 0

    cdef int _reserve(self, Py_ssize_t n) except -1:
        if n <= self._cap:
            return 0
        self._free()
        self._views = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._ptrs = <unsigned char **>PyMem_Malloc(n * sizeof(unsigned char *))
        self._lens = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._caps = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._codes = <int *>PyMem_Malloc(n * sizeof(int))
        self._wptrs = <unsigned char **>PyMem_Malloc(n * sizeof(unsigned char *))
        self._wlens = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        if (self._views == NULL or self._ptrs == NULL or self._lens == NULL or self._caps == NULL
                or self._codes == NULL or self._wptrs == NULL or self._wlens == NULL):
            self._free()
            raise MemoryError()
        self._cap = n
        return 0

    cdef Py_ssize_t _pin(self, list bufs, list lengths, Py_ssize_t n) except -1:
        """Pin bufs[:n] (bytearrays, writable) and read lengths[:n]; returns how many are
        pinned (release them even on error: the count is kept in ``pinned`` by the caller)."""
        cdef Py_ssize_t i
        for i in range(n):
            PyObject_GetBuffer(bufs[i], &self._views[i], PyBUF_WRITABLE)
            self._ptrs[i] = <unsigned char *>self._views[i].buf
            self._caps[i] = self._views[i].len
        return n

    cdef void _release(self, Py_ssize_t pinned) noexcept:
        cdef Py_ssize_t i
        for i in range(pinned):
            PyBuffer_Release(&self._views[i])

    def seal_send(self, cipher, udp, list bufs not None, list lengths not None, Py_ssize_t mtu, endpoint):
        """``sealed = cipher.seal_batch(bufs, lengths, mtu)``, then
        ``udp.send_slots(bufs, lengths, 0, sealed, endpoint)``; returns ``sealed``."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, count = 0, sealed = 0, done, stopped = 0, pinned = 0
        cdef void *c
        cdef void *u
        cdef void *s = NULL
        if (type(cipher) is not _Cipher or type(udp) is not _Udp or n == 0 or len(lengths) < n
                or not _all_bytearrays(bufs, n)):
            sealed = cipher.seal_batch(bufs, lengths, mtu)
            udp.send_slots(bufs, lengths, 0, sealed, endpoint)
            return sealed
        c = <void *>cipher
        u = <void *>udp
        self._reserve(n)
        try:
            pinned = self._pin(bufs, lengths, n)
            for i in range(n):
                self._lens[i] = lengths[i]
            s = _seal_begin(c, self._ptrs, self._lens, self._caps, n, mtu, &count)
            if count == 0:
                return 0
            try:
                _send_begin(u, count, endpoint)
            except BaseException:
                _cipher_end(c, s, True)
                raise
            with nogil:
                sealed = _seal_run(c, s, count, self._lens)
                if sealed > 0:
                    _send_run(u, self._ptrs, self._lens, sealed, &stopped)
            _cipher_end(c, s, True)
            done = sealed if sealed >= 0 else -1 - sealed
            for i in range(done):
                wgpy_set_length(lengths, i, self._lens[i])
            if sealed < 0:
                _send_end(u, 0, 0, endpoint)
                raise RuntimeError(f"OpenSSL: sealing packet {done} failed")
            _send_end(u, stopped, sealed, endpoint)
            self.native_batches += 1
            return sealed
        finally:
            self._release(pinned)

    def open_deliver(self, cipher, accept_slots, table, int slot, tun, list bufs not None,
                     list lengths not None, list results not None, Py_ssize_t headroom, verdicts):
        """``opened = cipher.open_batch(bufs, lengths, results)``; if any opened,
        ``accept_slots(table, slot, bufs, lengths, results, headroom, verdicts)`` (a datapath
        module's; with a native ``table`` the native rule runs in C); if any is to
        be delivered, ``tun.write_slots(bufs, lengths, headroom, verdicts, len(bufs))``.
        Returns ``(opened, delivered, (keepalives, invalid, disallowed), written, write_error)``
        (the write's OSError is returned, not raised)."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, k, opened = 0, delivered = 0, done = 0, pinned = 0, written = 0, end, offset
        cdef Py_ssize_t counts[3]
        cdef unsigned char *verdict
        cdef void *c
        cdef void *t
        cdef void *r
        cdef void *s = NULL
        counts[0] = counts[1] = counts[2] = 0
        if (type(cipher) is not _Cipher or type(tun) is not _Tun or type(table) is not _Table
                or type(verdicts) is not bytearray or n == 0 or len(lengths) < n or len(results) < n
                or headroom < 0 or PyByteArray_GET_SIZE(verdicts) < n or not _all_bytearrays(bufs, n)):
            return _open_deliver_calls(cipher, accept_slots, table, slot, tun, bufs, lengths, results, headroom,
                                       verdicts)
        c = <void *>cipher
        t = <void *>tun
        r = <void *>table
        verdict = <unsigned char *>PyByteArray_AS_STRING(verdicts)
        self._reserve(n)
        try:
            pinned = self._pin(bufs, lengths, n)
            for i in range(n):
                self._lens[i] = lengths[i]
            s = _open_begin(c, self._ptrs, self._lens, self._caps, n)
            try:
                _write_begin(t, n)
            except BaseException:
                _cipher_end(c, s, False)
                raise
            with nogil:
                opened = _open_run(c, s, n, self._lens, self._codes)
                if opened:
                    delivered = _accept(r, slot, self._ptrs, self._lens, self._codes, n, headroom, verdict, counts)
                if delivered:
                    k = 0
                    for i in range(n):
                        if verdict[i]:
                            continue
                        end = self._lens[i] if self._lens[i] < self._caps[i] else self._caps[i]
                        offset = headroom if headroom < self._caps[i] else self._caps[i]
                        self._wptrs[k] = self._ptrs[i] + offset
                        self._wlens[k] = end - offset if end > offset else 0
                        k += 1
                    done = _write_run(t, self._wptrs, self._wlens, k)
            _cipher_end(c, s, False)
            for i in range(n):
                results[i] = self._codes[i]
                wgpy_set_length(lengths, i, self._lens[i])
            write_error = None
            try:
                written = _write_end(t, done)
            except OSError as exc:
                write_error = exc
            self.native_batches += 1
            return opened, delivered, (counts[0], counts[1], counts[2]), written, write_error
        finally:
            self._release(pinned)


cdef bint _all_bytearrays(list bufs, Py_ssize_t n):
    cdef Py_ssize_t i
    for i in range(n):
        if type(bufs[i]) is not bytearray:
            return False
    return True


def _open_deliver_calls(cipher, accept_slots, table, int slot, tun, list bufs, list lengths, list results,
                        Py_ssize_t headroom, verdicts):
    """The plain sequence of calls (any object that is not the native one)."""
    opened = cipher.open_batch(bufs, lengths, results)
    delivered = 0
    accepted = (0, 0, 0)
    written = 0
    write_error = None
    if opened:
        delivered, keepalives, invalid, disallowed = accept_slots(table, slot, bufs, lengths, results,
                                                                  headroom, verdicts)
        accepted = (keepalives, invalid, disallowed)
        if delivered:
            try:
                written = tun.write_slots(bufs, lengths, headroom, verdicts, len(bufs))
            except OSError as exc:
                write_error = exc
    return opened, delivered, accepted, written, write_error

