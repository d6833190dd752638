# The steady-state lanes' snapshots (tunnel/wireguard/_lane.pyx), cimported by the pumps.

cdef class Generation:
    cdef readonly long long value
    cpdef bump(self)


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
        # a native Generation is read as a C field; another twin's through its ``value``
        if self.valid_for < 0:
            return False
        if self._gen is not None:
            return self.valid_for == self._gen.value
        return self._pygen is not None and self.valid_for == self._pygen.value

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
        # a native Generation is read as a C field; another twin's through its ``value``
        if self.valid_for < 0:
            return False
        if self._gen is not None:
            return self.valid_for == self._gen.value
        return self._pygen is not None and self.valid_for == self._pygen.value

    cdef object _check(self, list bufs, list lengths, list sources, double now)
    cpdef fill(self, device, keypair, long long valid_for)
    cpdef object decide(self, device, list bufs, list lengths, list sources, double now)
