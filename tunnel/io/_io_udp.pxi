# The UdpBatch class of tunnel/io/_io.pyx (included there: it shares the module's C declarations
# and helpers). Contract: the docstring of tunnel/io/io_ref.py.

cdef class UdpBatch:
    """Batch receive/send on one UDP socket fd; see tunnel/io/io_ref.py for the contract."""

    cdef readonly int fd
    cdef readonly int family
    cdef readonly bint gso
    cdef readonly bint gro
    cdef readonly list fallbacks
    cdef readonly dict errors
    cdef public list lost_sources  # the owner may share one list between sockets
    cdef object _make
    cdef bint _busy
    # receive side
    cdef Py_ssize_t _rcap
    cdef mmsghdr *_rmsgs
    cdef iovec *_riov
    cdef char *_rnames          # sockaddr storage, 32 bytes per message
    cdef unsigned char *_rctl
    cdef wgpy_source *_rsrc
    cdef Py_buffer *_rviews
    cdef Py_ssize_t *_slot_len
    cdef wgpy_source *_slot_src  # slot i's sender, copied when the slot is filled
    cdef unsigned char *_scratch
    cdef Py_ssize_t _scratch_msgs
    cdef int _pend_msg          # GRO: next message to hand out, its offset, how many messages
    cdef Py_ssize_t _pend_off
    cdef int _pend_count
    cdef wgpy_source _src_cache[16]  # recent sources and their objects, direct-mapped by port
    cdef list _obj_cache
    # send side
    cdef Py_ssize_t _scap
    cdef mmsghdr *_smsgs
    cdef iovec *_siov
    cdef unsigned char *_sctl
    cdef Py_buffer *_sviews
    cdef unsigned char **_sptr      # datagram i's first byte and length (inside _sviews[i])
    cdef Py_ssize_t *_slen
    cdef int *_sdest
    cdef wgpy_dest *_dests
    cdef int *_mfirst
    cdef int *_mcount
    cdef object _last_ep
    cdef wgpy_dest _last_dest
    cdef bint _last_dest_ok

    def __cinit__(self, int fd, *, bint gso=True, bint gro=False, make_source=None) -> None:
        self._rcap = 0
        self._scap = 0
        self._rmsgs = NULL
        self._riov = NULL
        self._rnames = NULL
        self._rctl = NULL
        self._rsrc = NULL
        self._rviews = NULL
        self._slot_len = NULL
        self._slot_src = NULL
        self._scratch = NULL
        self._scratch_msgs = 0
        self._smsgs = NULL
        self._siov = NULL
        self._sctl = NULL
        self._sviews = NULL
        self._sptr = NULL
        self._slen = NULL
        self._sdest = NULL
        self._dests = NULL
        self._mfirst = NULL
        self._mcount = NULL
        self.fd = fd
        self.family = socket_family(fd)
        if self.family not in (AF_INET, AF_INET6):
            raise OSError(_errno.ENOTSOCK, "not an IPv4 or IPv6 socket")
        self._make = make_source if make_source is not None else _tuple_source
        self.fallbacks = []
        self.errors = {}
        self.lost_sources = []
        self.gso = gso and probe_udp_gso(fd)
        if gso and not self.gso:
            self.fallbacks.append("UDP GSO (UDP_SEGMENT) is not supported by this kernel")
        self.gro = gro
        self._pend_msg = 0
        self._pend_off = 0
        self._pend_count = 0
        self._obj_cache = [None] * 16
        self._last_ep = _NO_ENDPOINT  # not None: None is parsed (and refused) like any endpoint
        self._last_dest_ok = False
        self._busy = False
        memset(self._src_cache, 0, sizeof(self._src_cache))

    def __dealloc__(self) -> None:
        PyMem_Free(self._rmsgs)
        PyMem_Free(self._riov)
        PyMem_Free(self._rnames)
        PyMem_Free(self._rctl)
        PyMem_Free(self._rsrc)
        PyMem_Free(self._rviews)
        PyMem_Free(self._slot_len)
        PyMem_Free(self._slot_src)
        free(self._scratch)
        PyMem_Free(self._smsgs)
        PyMem_Free(self._siov)
        PyMem_Free(self._sctl)
        PyMem_Free(self._sviews)
        PyMem_Free(self._sptr)
        PyMem_Free(self._slen)
        PyMem_Free(self._sdest)
        PyMem_Free(self._dests)
        PyMem_Free(self._mfirst)
        PyMem_Free(self._mcount)

    def close(self) -> None:
        """Nothing to release but memory (the caller owns the fd); kept for API parity."""

    @property
    def pending(self) -> int:
        """Datagrams received but not yet handed out (GRO segments past the last batch)."""
        return self._pending_segments()

    cdef void _count(self, str key):
        self.errors[key] = self.errors.get(key, 0) + 1

    cdef int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("UdpBatch used from two threads at once")
        self._busy = True
        return 0

    cdef int _reserve_recv(self, Py_ssize_t n) except -1:
        # realloc keeps the contents: GRO messages still pending live in _rmsgs/_rsrc.
        cdef void *p
        if n <= self._rcap:
            return 0
        p = PyMem_Realloc(self._rmsgs, n * sizeof(mmsghdr))
        if p == NULL:
            raise MemoryError()
        self._rmsgs = <mmsghdr *>p
        p = PyMem_Realloc(self._rsrc, n * sizeof(wgpy_source))
        if p == NULL:
            raise MemoryError()
        self._rsrc = <wgpy_source *>p
        PyMem_Free(self._riov)
        PyMem_Free(self._rnames)
        PyMem_Free(self._rctl)
        PyMem_Free(self._rviews)
        PyMem_Free(self._slot_len)
        PyMem_Free(self._slot_src)
        self._riov = <iovec *>PyMem_Malloc(n * sizeof(iovec))
        self._rnames = <char *>PyMem_Malloc(n * 32)
        self._rctl = <unsigned char *>PyMem_Malloc(n * WGPY_CONTROL)
        self._rviews = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._slot_len = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._slot_src = <wgpy_source *>PyMem_Malloc(n * sizeof(wgpy_source))
        if (self._riov == NULL or self._rnames == NULL or self._rctl == NULL
                or self._rviews == NULL or self._slot_len == NULL or self._slot_src == NULL):
            self._rcap = 0
            raise MemoryError()
        self._rcap = n
        return 0

    cdef object _source_object(self, wgpy_source *s):
        cdef char ip[64]
        cdef char local[64]
        # A repeated source gets the same object: a peer's datagrams (the lanes compare the
        # source with the peer's endpoint by identity first), and the few ports of a flood,
        # interleaved or not, cost no object per datagram. The key is the sender only, not
        # the GRO segment size, which changes between a peer's datagrams.
        cdef int slot = (s.port ^ (s.port >> 4)) & 15
        obj = self._obj_cache[slot]
        if obj is not None and memcmp(s, &self._src_cache[slot], WGPY_SOURCE_KEY) == 0:
            return obj
        wgpy_source_text(s, ip, local)
        obj = self._make(ip.decode("ascii"), s.port, local.decode("ascii") if local[0] else None)
        memcpy(&self._src_cache[slot], s, sizeof(wgpy_source))
        self._obj_cache[slot] = obj
        return obj

    cdef void _prepare(self, Py_ssize_t j, void *base, size_t size) noexcept nogil:
        cdef mmsghdr *m = &self._rmsgs[j]
        self._riov[j].iov_base = base
        self._riov[j].iov_len = size
        m.msg_hdr.msg_name = self._rnames + 32 * j
        m.msg_hdr.msg_namelen = 32
        m.msg_hdr.msg_iov = &self._riov[j]
        m.msg_hdr.msg_iovlen = 1
        m.msg_hdr.msg_control = self._rctl + WGPY_CONTROL * j
        m.msg_hdr.msg_controllen = WGPY_CONTROL
        m.msg_hdr.msg_flags = 0
        m.msg_len = 0

    cdef Py_ssize_t _drain(self, Py_ssize_t count, Py_ssize_t n) noexcept nogil:
        """GRO: copy pending segments into slots count.. ; returns the new count."""
        cdef Py_ssize_t size, seg, take, room
        cdef int m
        cdef unsigned char *data
        while self._pend_msg < self._pend_count and count < n:
            m = self._pend_msg
            size = self._rmsgs[m].msg_len
            data = self._scratch + <Py_ssize_t>m * WGPY_GRO_MESSAGE
            seg = self._rsrc[m].gro if self._rsrc[m].gro > 0 else size
            if size == 0:
                self._slot_len[count] = 0
                self._slot_src[count] = self._rsrc[m]
                count += 1
                self._pend_msg += 1
                self._pend_off = 0
                continue
            while self._pend_off < size and count < n:
                take = size - self._pend_off
                if take > seg:
                    take = seg
                room = self._rviews[count].len
                if take > room:
                    take = room
                memcpy(self._rviews[count].buf, data + self._pend_off, take)
                self._slot_len[count] = take
                self._slot_src[count] = self._rsrc[m]
                count += 1
                self._pend_off += seg
            if self._pend_off >= size:
                self._pend_msg += 1
                self._pend_off = 0
        return count

    def recv(self, bufs not None, list lengths not None, list sources not None) -> int:
        """Receive until EAGAIN or every slot is used; returns the count (see io_ref).

        Slots are pinned only as they are needed (with GRO: as many as the received segments
        fill; without: 2, then 8, 32, ...), so a lone datagram touches one or two buffers.
        """
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, count = 0, pinned = 0, need, limit = 0
        cdef int r = 0, err = 0, attempts
        cdef bint gro = self.gro
        if len(lengths) < n or len(sources) < n:
            raise ValueError("lengths or sources is shorter than bufs")
        if n == 0:
            return 0
        if n > MAX_BATCH:
            n = MAX_BATCH
        self._enter()
        try:
            self._reserve_recv(n)
            if gro and self._scratch == NULL:
                # Allocated once and never moved (pending segments live in it); pages are
                # touched only as far as datagrams fill them.
                self._scratch = <unsigned char *>malloc(<size_t>n * WGPY_GRO_MESSAGE)
                if self._scratch == NULL:
                    raise MemoryError()
                self._scratch_msgs = n
            if gro:
                # segments left from the last call first, then one recvmmsg into the scratch
                need = min(n, count + self._pending_segments())
                pinned = self._pin(bufs, pinned, need)
                with nogil:
                    count = self._drain(count, need)
                for attempts in range(8):
                    if count >= n:
                        break
                    with nogil:
                        self._gro_receive(n - count, &r, &err)
                    need = min(n, count + self._pending_segments())
                    pinned = self._pin(bufs, pinned, need)
                    with nogil:
                        count = self._drain(count, need)
                    if r >= 0 or err == EAGAIN or err == EINTR:
                        break
                    self._count("recv:" + _errname(err))
                    if count:
                        break
            else:
                while True:
                    limit = n if limit * 4 >= n or n <= 2 else (2 if limit == 0 else limit * 4)
                    pinned = self._pin(bufs, pinned, limit)
                    for attempts in range(8):
                        with nogil:
                            count = self._recv_plain(count, limit, &r, &err)
                        if r >= 0 or err == EAGAIN or err == EINTR:
                            break
                        self._count("recv:" + _errname(err))
                        if count:
                            break
                    if count < limit or limit == n or r < 0:
                        break
            for i in range(count):
                wgpy_set_length(lengths, i, self._slot_len[i])
                # The slot's own copy: a later recvmmsg of this call may have reused the
                # message (and its source) that held-back segments came from.
                sources[i] = self._source_object(&self._slot_src[i])
            return count
        finally:
            release_views(self._rviews, pinned)
            self._busy = False

    cdef Py_ssize_t _pin(self, bufs, Py_ssize_t pinned, Py_ssize_t upto) except -1:
        """Pin slots pinned..upto-1 (writable); returns the new pinned count."""
        cdef Py_ssize_t i
        for i in range(pinned, upto):
            PyObject_GetBuffer(bufs[i], &self._rviews[i], PyBUF_WRITABLE)
            pinned = i + 1
        return pinned

    cdef Py_ssize_t _pending_segments(self) noexcept:
        """GRO segments received but not handed out yet."""
        cdef int m
        cdef Py_ssize_t total = 0, size, seg, off
        for m in range(self._pend_msg, self._pend_count):
            size = self._rmsgs[m].msg_len
            seg = self._rsrc[m].gro if self._rsrc[m].gro > 0 else (size if size > 0 else 1)
            off = self._pend_off if m == self._pend_msg else 0
            total += 1 if size == 0 else (size - off + seg - 1) // seg
        return total

    cdef Py_ssize_t _recv_plain(self, Py_ssize_t count, Py_ssize_t n, int *result,
                                int *err) noexcept nogil:
        """Without GRO: recvmmsg straight into the pinned slots count..n-1; the new count."""
        cdef Py_ssize_t j
        cdef int r
        result[0] = 0
        for j in range(count, n):
            self._prepare(j, self._rviews[j].buf, self._rviews[j].len)
        r = self._recvmmsg(self._rmsgs + count, n - count)
        result[0] = r
        if r < 0:
            err[0] = errno
            return count
        for j in range(count, count + r):
            wgpy_read_source(&self._rmsgs[j].msg_hdr, &self._rsrc[j])
            self._slot_len[j] = self._rmsgs[j].msg_len
            self._slot_src[j] = self._rsrc[j]
        return count + r

    cdef int _recvmmsg(self, mmsghdr *msgs, Py_ssize_t count) noexcept nogil:
        """recvmmsg without blocking, retried on EINTR; its result (errno set when < 0)."""
        cdef int r
        while True:
            r = recvmmsg(self.fd, msgs, <unsigned int>count, MSG_DONTWAIT, NULL)
            if r < 0 and errno == EINTR:
                continue
            return r

    cdef void _gro_receive(self, Py_ssize_t want, int *result, int *err) noexcept nogil:
        """With GRO (nothing pending): one recvmmsg of up to ``want`` messages into the
        scratch; they become the pending messages."""
        cdef Py_ssize_t j
        cdef int r
        result[0] = 0
        if want > self._scratch_msgs:
            want = self._scratch_msgs
        for j in range(want):
            self._prepare(j, self._scratch + j * WGPY_GRO_MESSAGE, WGPY_GRO_MESSAGE)
        r = self._recvmmsg(self._rmsgs, want)
        result[0] = r
        if r < 0:
            err[0] = errno
            return
        for j in range(r):
            wgpy_read_source(&self._rmsgs[j].msg_hdr, &self._rsrc[j])
        self._pend_msg = 0
        self._pend_off = 0
        self._pend_count = r

    # -- send --------------------------------------------------------------------------------

    cdef int _reserve_send(self, Py_ssize_t n) except -1:
        if n <= self._scap:
            return 0
        PyMem_Free(self._smsgs)
        PyMem_Free(self._siov)
        PyMem_Free(self._sctl)
        PyMem_Free(self._sviews)
        PyMem_Free(self._sptr)
        PyMem_Free(self._slen)
        PyMem_Free(self._sdest)
        PyMem_Free(self._dests)
        PyMem_Free(self._mfirst)
        PyMem_Free(self._mcount)
        self._scap = 0
        self._smsgs = <mmsghdr *>PyMem_Malloc(n * sizeof(mmsghdr))
        self._siov = <iovec *>PyMem_Malloc(n * sizeof(iovec))
        self._sctl = <unsigned char *>PyMem_Malloc(n * WGPY_CONTROL)
        self._sviews = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._sptr = <unsigned char **>PyMem_Malloc(n * sizeof(unsigned char *))
        self._slen = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._sdest = <int *>PyMem_Malloc(n * sizeof(int))
        self._dests = <wgpy_dest *>PyMem_Malloc(n * sizeof(wgpy_dest))
        self._mfirst = <int *>PyMem_Malloc(n * sizeof(int))
        self._mcount = <int *>PyMem_Malloc(n * sizeof(int))
        if (self._smsgs == NULL or self._siov == NULL or self._sctl == NULL or self._sviews == NULL
                or self._sptr == NULL or self._slen == NULL or self._sdest == NULL or self._dests == NULL or self._mfirst == NULL
                or self._mcount == NULL):
            raise MemoryError()
        self._scap = n
        return 0

    cdef int _parse_endpoint(self, endpoint) except -1:
        """Fill self._last_dest from ``endpoint``; sets _last_dest_ok."""
        cdef bytes ip_b, local_b
        if type(endpoint) is tuple:
            ip = endpoint[0]
            port = endpoint[1]
            local = endpoint[2] if len(<tuple>endpoint) > 2 else None
        else:
            ip = endpoint.ip
            port = endpoint.port
            local = endpoint.local
        ip_b = ip.encode("ascii") if isinstance(ip, str) else b""
        local_b = local.encode("ascii") if isinstance(local, str) else b""
        self._last_dest_ok = wgpy_dest_parse(&self._last_dest, ip_b, port, local_b) == 0
        self._last_ep = endpoint
        return 0

    def send(self, datagrams not None) -> int:
        """Send each datagram (GSO runs as one message); returns how many left (see io_ref)."""
        cdef Py_ssize_t n = len(datagrams)
        cdef Py_ssize_t i, pinned = 0
        cdef int ndest = 0
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve_send(n)
            for i in range(n):
                payload, endpoint = datagrams[i]
                PyObject_GetBuffer(payload, &self._sviews[i], PyBUF_SIMPLE)
                pinned = i + 1
                self._sptr[i] = <unsigned char *>self._sviews[i].buf
                self._slen[i] = self._sviews[i].len
                if endpoint is not self._last_ep:
                    self._parse_endpoint(endpoint)
                if not self._last_dest_ok:
                    self._sdest[i] = -1
                elif ndest and memcmp(&self._dests[ndest - 1], &self._last_dest, sizeof(wgpy_dest)) == 0:
                    self._sdest[i] = ndest - 1
                else:
                    memcpy(&self._dests[ndest], &self._last_dest, sizeof(wgpy_dest))
                    self._sdest[i] = ndest
                    ndest += 1
            return self._send_pinned(n, datagrams, None)
        finally:
            release_views(self._sviews, pinned)
            self._busy = False

    def send_slots(self, bufs not None, lengths not None, offset, count, endpoint) -> int:
        """Send ``bufs[i][offset:offset+lengths[i]]`` for ``i < count``, all to ``endpoint``.

        The same sending as :meth:`send` (GSO runs, sticky source, errors counted, lost sources
        noted) without a Python object per datagram; see io_ref for the contract.
        """
        cdef Py_ssize_t i, pinned = 0, size, start, n
        # Range checks on the Python ints (a huge value is a ValueError, not an OverflowError).
        if count < 0 or count > len(bufs) or count > len(lengths) or offset < 0 or offset > PY_SSIZE_T_MAX:
            raise ValueError("count or offset out of range")
        n = count
        start = offset
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve_send(n)
            if endpoint is not self._last_ep:
                self._parse_endpoint(endpoint)
            if self._last_dest_ok:
                memcpy(&self._dests[0], &self._last_dest, sizeof(wgpy_dest))
            for i in range(n):
                length = lengths[i]
                PyObject_GetBuffer(bufs[i], &self._sviews[i], PyBUF_SIMPLE)
                pinned = i + 1
                # Compared without adding (start + size could overflow).
                if length < 0 or length > self._sviews[i].len - start:
                    raise ValueError(f"datagram {i}: length {length} does not fit its buffer")
                size = length
                self._sptr[i] = <unsigned char *>self._sviews[i].buf + start
                self._slen[i] = size
                self._sdest[i] = 0 if self._last_dest_ok else -1
            return self._send_pinned(n, None, endpoint)
        finally:
            release_views(self._sviews, pinned)
            self._busy = False

    cdef Py_ssize_t _send_pinned(self, Py_ssize_t n, object datagrams, object endpoint) except -1:
        """Send the n pinned datagrams (_sptr/_slen/_sdest set); the count that left.

        A lost sticky source is noted as ``datagrams[i][1]``, or ``endpoint`` when that is None.
        """
        cdef Py_ssize_t i, index = 0, sent = 0
        cdef int nmsgs, r, code, code2, group
        cdef bint stop
        while index < n:
            if self._sdest[index] < 0:
                self._count("send:bad_address")
                index += 1
                continue
            with nogil:
                nmsgs = self._build(index, n)
                while True:
                    r = sendmmsg(self.fd, self._smsgs, <unsigned int>nmsgs, MSG_DONTWAIT)
                    if r < 0 and errno == EINTR:
                        continue
                    break
                code = errno if r < 0 else 0
            if r > 0:
                for i in range(r):
                    sent += self._mcount[i]
                index = self._mfirst[r - 1] + self._mcount[r - 1]
                continue
            if code == EAGAIN:
                self._count("send:EAGAIN")
                return sent
            group = self._mcount[0]
            # Retry the first datagram alone without GSO, then decide whose fault it was.
            code2 = self._send_single(index, True)
            stop = False
            if code2 == 0:
                if group > 1 and code in GSO_REFUSED:
                    self.gso = False
                    self.fallbacks.append(
                        f"UDP GSO refused by the kernel ({_errname(code)}): "
                        "sending datagrams one by one")
                sent += 1
            elif code2 == EAGAIN:
                stop = True
                self._count("send:EAGAIN")
            elif code2 in SOURCE_GONE and self._dests[self._sdest[index]].local_family:
                code2 = self._send_single(index, False)
                if code2 == 0:
                    self.lost_sources.append(endpoint if datagrams is None else datagrams[index][1])
                    sent += 1
                elif code2 == EAGAIN:
                    stop = True
                    self._count("send:EAGAIN")
                else:
                    self._count("send:" + _errname(code2))
            else:
                self._count("send:" + _errname(code2))
            if stop:
                return sent
            index += 1
        return sent

    cdef int _build(self, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
        """Fill the messages for datagrams start..n-1 (stops before a bad address)."""
        cdef int nm = 0, count, dest
        cdef Py_ssize_t i = start, k, size, length, total
        cdef mmsghdr *m
        cdef wgpy_dest *d
        while i < n and nm < MAX_BATCH:
            dest = self._sdest[i]
            if dest < 0:
                break
            size = self._slen[i]
            count = 1
            total = size
            k = i + 1
            if self.gso and size > 0:
                while k < n and count < C_MAX_SEGMENTS:
                    length = self._slen[k]
                    if self._sdest[k] != dest or length > size or length == 0:
                        break
                    if total + length > C_MAX_GSO_BYTES:
                        break
                    count += 1
                    total += length
                    k += 1
                    if length < size:
                        break
            for k in range(i, i + count):
                self._siov[k].iov_base = self._sptr[k]
                self._siov[k].iov_len = self._slen[k]
            d = &self._dests[dest]
            m = &self._smsgs[nm]
            m.msg_hdr.msg_name = &d.addr
            m.msg_hdr.msg_namelen = d.addrlen
            m.msg_hdr.msg_iov = &self._siov[i]
            m.msg_hdr.msg_iovlen = count
            m.msg_hdr.msg_control = self._sctl + WGPY_CONTROL * nm
            m.msg_hdr.msg_controllen = wgpy_put_control(self._sctl + WGPY_CONTROL * nm, d,
                                                        self.family, 1,
                                                        <int>size if count > 1 else 0)
            if m.msg_hdr.msg_controllen == 0:
                m.msg_hdr.msg_control = NULL
            m.msg_hdr.msg_flags = 0
            m.msg_len = 0
            self._mfirst[nm] = <int>i
            self._mcount[nm] = count
            nm += 1
            i += count
        return nm

    cdef int _send_single(self, Py_ssize_t index, bint use_local):
        """One datagram, no GSO; returns 0 or the errno."""
        cdef msghdr m
        cdef iovec iov
        cdef unsigned char ctl[WGPY_CONTROL]
        cdef wgpy_dest *d = &self._dests[self._sdest[index]]
        cdef ssize_t r
        cdef int code = 0
        with nogil:
            memset(&m, 0, sizeof(msghdr))
            iov.iov_base = self._sptr[index]
            iov.iov_len = self._slen[index]
            m.msg_name = &d.addr
            m.msg_namelen = d.addrlen
            m.msg_iov = &iov
            m.msg_iovlen = 1
            m.msg_controllen = wgpy_put_control(ctl, d, self.family, use_local, 0)
            m.msg_control = ctl if m.msg_controllen else NULL
            while True:
                r = sendmsg(self.fd, &m, MSG_DONTWAIT)
                if r < 0 and errno == EINTR:
                    continue
                break
            if r < 0:
                code = errno
        return code
