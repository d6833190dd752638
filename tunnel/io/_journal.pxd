# cython: language_level=3
# The pumps' journal and their shared inline helpers, for ``cimport`` by the native pumps
# (tunnel/wireguard/_pump.pyx, tunnel/vxlan/_pump.pyx). See tunnel/io/journal_ref.py.

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef class Journal:
    cdef public object loop
    cdef public double delay
    cdef public object flush
    cdef public list records
    cdef public bint armed

    cpdef add(self, tuple record)
    cpdef bint open(self)


cdef inline Py_ssize_t check_headroom(Py_ssize_t value) except -1:
    # A headroom: >= 0 (ValueError); the argument's C type already refused a non-int.
    if value < 0:
        raise ValueError("headroom must be >= 0")
    return value


cdef inline double monotonic() noexcept nogil:
    # The clock of Python's time.monotonic(), which the rest of the shell reads.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9
