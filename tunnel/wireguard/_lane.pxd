# The steady-state lanes' snapshots (tunnel/wireguard/_lane.pyx), cimported by the pumps.

cdef class Generation:
    cdef readonly long long value
    cpdef bump(self)


cdef inline bint generation_holds(long long valid_for, Generation gen, object pygen) except -1:
    """Whether a snapshot taken at ``valid_for`` (NONE: none kept) is still current: a native
    Generation is read as a C field, another twin's through its ``value``."""
    if valid_for < 0:
        return False
    if gen is not None:
        return valid_for == gen.value
    return pygen is not None and valid_for == pygen.value


cdef class SendLane:
    cdef readonly object generation
    cdef Generation _gen
    cdef object _pygen
    cdef readonly long long valid_for
    cdef readonly object lane
    cdef readonly object cipher
    cdef readonly object endpoint
    cdef readonly object table
    cdef void *_cipher_c
    cdef void *_table_c
    cdef readonly bint v6
    cdef readonly int slot
    cdef readonly Py_ssize_t mtu
    cdef readonly double created
    cdef readonly double limit
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses

    cdef inline bint _holds(self) except -1:
        return generation_holds(self.valid_for, self._gen, self._pygen)

    cdef object _check(self, list bufs, list lengths, Py_ssize_t headroom, double now)
    cpdef fill(self, device, tuple lane, long long valid_for)
    cpdef object decide(self, device, list bufs, list lengths, Py_ssize_t headroom, double now)


cdef class ReceiveLane:
    cdef readonly object generation
    cdef Generation _gen
    cdef object _pygen
    cdef readonly long long valid_for
    cdef readonly long long receiver
    cdef readonly object keypair
    cdef readonly object cipher
    cdef readonly object endpoint
    cdef readonly int slot
    cdef readonly object table
    cdef readonly double created
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses

    cdef inline bint _holds(self) except -1:
        return generation_holds(self.valid_for, self._gen, self._pygen)

    cdef object _check(self, list bufs, list lengths, list sources, double now)
    cpdef fill(self, device, keypair, long long valid_for)
    cpdef object decide(self, device, list bufs, list lengths, list sources, double now)
