# The pool sender of tunnel/vxlan/_fast.pyx (included there: it uses the module's C declarations,
# helpers and _Frames). GsoBatch: sendmmsg over a pool of UDP sockets with UDP GSO. Contract: the
# docstring of tunnel/vxlan/fast_ref.py.

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
