# The senders of tunnel/vxlan/_fast.pyx that share its frame collector (included there: they use
# the module's C declarations and helpers). RawBatch: a raw UDP socket, the UDP header built
# natively. Contract: the docstring of tunnel/vxlan/fast_ref.py.

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

