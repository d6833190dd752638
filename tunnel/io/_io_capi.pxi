# C entry points of the batch I/O for a native caller (tunnel/wireguard/_worker.pyx).
#
# The same sending and writing as UdpBatch.send_slots and TunBatch.write_slots, over C arrays of
# packet addresses and lengths, split so that the caller can run the system calls inside its
# own ``with nogil:`` section together with other native work (the cipher): ``*_begin`` (GIL
# held: the object marked busy, its arrays sized, the destination parsed; the same errors as
# the Python methods), ``*_run`` (nogil: the system calls of the common case), ``*_end`` (GIL
# held: whatever the common case left (an error, a retry, a fallback) done by the Python
# methods' own code, errors tallied, the object released). Exported as PyCapsules in
# ``_capi``; the caller keeps the object alive and uses it from one thread.


cdef int _capi_send_begin(void *u, Py_ssize_t n, object endpoint) except -1:
    """Make ready to send ``n`` datagrams to ``endpoint`` (parsed as send_slots does)."""
    cdef UdpBatch self = <UdpBatch>u
    self._enter()
    try:
        self._reserve_send(n if n > 0 else 1)
        if endpoint is not self._last_ep:
            self._parse_endpoint(endpoint)
        if self._last_dest_ok:
            memcpy(&self._dests[0], &self._last_dest, sizeof(wgpy_dest))
    except BaseException:
        self._busy = False
        raise
    return 0


cdef Py_ssize_t _capi_send_run(void *u, unsigned char **ptrs, Py_ssize_t *lens, Py_ssize_t n,
                               Py_ssize_t *stopped) noexcept nogil:
    """Send datagrams ``ptrs[i][:lens[i]]`` (no GIL) until all left or a call failed;
    ``*stopped`` is the first datagram not sent (n: all). Returns how many left."""
    cdef Py_ssize_t i, index = 0, sent = 0
    cdef int nmsgs, r, dest = 0 if (<UdpBatch>u)._last_dest_ok else -1
    for i in range(n):
        (<UdpBatch>u)._sptr[i] = ptrs[i]
        (<UdpBatch>u)._slen[i] = lens[i]
        (<UdpBatch>u)._sdest[i] = dest
    while index < n and dest >= 0:
        nmsgs = (<UdpBatch>u)._build(index, n)
        while True:
            r = sendmmsg((<UdpBatch>u).fd, (<UdpBatch>u)._smsgs, <unsigned int>nmsgs, MSG_DONTWAIT)
            if r < 0 and errno == EINTR:
                continue
            break
        if r <= 0:
            break
        for i in range(r):
            sent += (<UdpBatch>u)._mcount[i]
        index = (<UdpBatch>u)._mfirst[r - 1] + (<UdpBatch>u)._mcount[r - 1]
    stopped[0] = index
    return sent


cdef Py_ssize_t _capi_send_end(void *u, Py_ssize_t stopped, Py_ssize_t n, object endpoint) except -1:
    """After run: datagrams ``stopped..n-1`` go through send_slots' own path (its retries,
    fallbacks and error counts); returns how many of them left. Always releases the object."""
    cdef UdpBatch self = <UdpBatch>u
    cdef Py_ssize_t i, rest = n - stopped
    try:
        if rest <= 0:
            return 0
        for i in range(rest):
            self._sptr[i] = self._sptr[stopped + i]
            self._slen[i] = self._slen[stopped + i]
            self._sdest[i] = self._sdest[stopped + i]
        return self._send_pinned(rest, None, endpoint)
    finally:
        self._busy = False


cdef int _capi_write_begin(void *t, Py_ssize_t n) except -1:
    """Make ready to write up to ``n`` packets."""
    cdef TunBatch self = <TunBatch>t
    self._enter()
    try:
        self._reserve(n if n > 0 else 1)
    except BaseException:
        self._busy = False
        raise
    return 0


cdef Py_ssize_t _capi_write_run(void *t, unsigned char **ptrs, Py_ssize_t *lens, Py_ssize_t n) noexcept nogil:
    """Write packets ``ptrs[i][:lens[i]]`` (no GIL), as write_slots does; returns the count of
    per-packet results for end."""
    cdef Py_ssize_t i
    if n == 0:
        return 0
    for i in range(n):
        (<TunBatch>t)._ptrs[i] = ptrs[i]
        (<TunBatch>t)._lens[i] = lens[i]
    return (<TunBatch>t)._write_nogil(n)


cdef Py_ssize_t _capi_write_end(void *t, Py_ssize_t done) except -1:
    """After run: tally the results as write_slots does (OSError if the device is gone);
    returns how many packets went. Always releases the object."""
    cdef TunBatch self = <TunBatch>t
    try:
        return self._written(done) if done else 0
    finally:
        self._busy = False


from cpython.pycapsule cimport PyCapsule_New

_capi = {
    "send_begin": PyCapsule_New(<void *>_capi_send_begin, b"wgpy.udp.send_begin", NULL),
    "send_run": PyCapsule_New(<void *>_capi_send_run, b"wgpy.udp.send_run", NULL),
    "send_end": PyCapsule_New(<void *>_capi_send_end, b"wgpy.udp.send_end", NULL),
    "write_begin": PyCapsule_New(<void *>_capi_write_begin, b"wgpy.tun.write_begin", NULL),
    "write_run": PyCapsule_New(<void *>_capi_write_run, b"wgpy.tun.write_run", NULL),
    "write_end": PyCapsule_New(<void *>_capi_write_end, b"wgpy.tun.write_end", NULL),
}
