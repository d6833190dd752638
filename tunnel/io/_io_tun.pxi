# The TunBatch class of tunnel/io/_io.pyx (included there: it shares the module's C declarations
# and helpers). Contract: the docstring of tunnel/io/io_ref.py.

cdef class TunBatch:
    """Batch read/write on one TUN fd; see tunnel/io/io_ref.py for the contract."""

    cdef readonly int fd
    cdef readonly bint vnet_hdr
    cdef readonly dict errors
    cdef readonly long super_packets
    cdef readonly bint gro
    cdef readonly long coalesced
    cdef readonly list fallbacks
    cdef int _gro_refused
    cdef unsigned char _shdr[192]
    cdef readonly int l2
    cdef readonly bint verify
    cdef readonly long csum_partial  # partial checksums delivered (verify only; see io_ref)
    cdef readonly long tso_frames    # oversized TCP frames written as GSO or cut (see io_ref)
    cdef Py_ssize_t _mtu             # write side: the IP MTU (0: no limit; see io_ref)
    cdef unsigned char *_wscratch   # write side: a frame whose partial checksum is finished
    cdef unsigned char _svnet[C_VNET]
    cdef bint _busy
    cdef unsigned char *_scratch     # one super-packet: 2 x 64 KiB (slot head + overflow)
    cdef unsigned char _hdr[C_VNET]
    cdef wgpy_super _work
    cdef bint _has_work
    cdef readonly bint hold_oversized
    cdef bint _has_big              # an oversized packet held in the scratch (hold_oversized)
    cdef Py_ssize_t _big_len
    cdef Py_buffer *_views          # the pinned buffers of the call (released at its end)
    cdef Py_ssize_t *_lens          # read: lengths out; write: packet i's length
    cdef unsigned char **_ptrs      # write: packet i's first byte (in a pinned buffer)
    cdef int *_codes
    cdef Py_ssize_t _cap
    # per-call error tallies (read side), turned into ``errors`` entries with the GIL
    cdef int _too_big
    cdef int _short
    cdef int _bad_gso
    cdef int _bad_csum

    def __cinit__(self, int fd, *, bint vnet_hdr=True, bint gro=False,
                  bint hold_oversized=False, int l2=0, bint verify=False) -> None:
        if l2 != 0 and l2 != C_ETH:
            raise ValueError("l2 must be 0 (TUN) or 14 (TAP: Ethernet)")
        self.l2 = l2
        self.verify = verify
        self.fd = fd
        self.hold_oversized = hold_oversized and vnet_hdr
        self._has_big = False
        self._big_len = 0
        self.vnet_hdr = vnet_hdr
        self.gro = gro and vnet_hdr
        self.coalesced = 0
        self.fallbacks = []
        self._gro_refused = 0
        self.errors = {}
        self.super_packets = 0
        self._busy = False
        self._has_work = False
        self._views = NULL
        self._lens = NULL
        self._ptrs = NULL
        self._codes = NULL
        self._cap = 0
        self.csum_partial = 0
        self.tso_frames = 0
        self._mtu = 0
        self._wscratch = NULL
        self._scratch = <unsigned char *>malloc(2 * WGPY_SUPER)
        if self._scratch == NULL:
            raise MemoryError()
        if not vnet_hdr:
            self._wscratch = <unsigned char *>malloc(WGPY_SUPER + C_ETH)
            if self._wscratch == NULL:
                raise MemoryError()

    def __dealloc__(self) -> None:
        free(self._scratch)
        free(self._wscratch)
        PyMem_Free(self._views)
        PyMem_Free(self._lens)
        PyMem_Free(self._ptrs)
        PyMem_Free(self._codes)

    @property
    def pending(self) -> int:
        """Segments of a super-packet cut but not handed out yet (or 1: a held packet)."""
        if self._has_big:
            return 1
        if not self._has_work:
            return 0
        return (self._work.len - self._work.next + self._work.mss - 1) // self._work.mss

    @property
    def needed(self) -> int:
        """Bytes (after the headroom) the held oversized packet needs in a slot; 0 if none."""
        return self._big_len if self._has_big else 0

    @property
    def mtu(self) -> int:
        """The IP MTU frames written to the device must fit (0: no limit; see io_ref)."""
        return self._mtu

    @mtu.setter
    def mtu(self, Py_ssize_t value) -> None:
        if value < 0:
            raise ValueError("mtu must be >= 0")
        self._mtu = value

    cdef int _reserve(self, Py_ssize_t n) except -1:
        if n <= self._cap:
            return 0
        PyMem_Free(self._views)
        PyMem_Free(self._lens)
        PyMem_Free(self._ptrs)
        PyMem_Free(self._codes)
        self._cap = 0
        self._views = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        self._lens = <Py_ssize_t *>PyMem_Malloc(n * sizeof(Py_ssize_t))
        self._ptrs = <unsigned char **>PyMem_Malloc(n * sizeof(unsigned char *))
        self._codes = <int *>PyMem_Malloc(n * sizeof(int))
        if self._views == NULL or self._lens == NULL or self._ptrs == NULL or self._codes == NULL:
            raise MemoryError()
        self._cap = n
        return 0

    cdef int _enter(self) except -1:
        if self._busy:
            raise RuntimeError("TunBatch used from two threads at once")
        self._busy = True
        return 0

    cdef void _tally(self, str key, int amount):
        if amount:
            self.errors[key] = self.errors.get(key, 0) + amount

    def read(self, bufs not None, list lengths not None, Py_ssize_t headroom, Py_ssize_t mtu) -> int:
        """Read packets into ``bufs[i][headroom:]`` until EAGAIN or the batch is full."""
        cdef Py_ssize_t n = len(bufs)
        cdef Py_ssize_t i, pinned = 0, count = 0, limit, want
        cdef int err = 0
        if len(lengths) < n:
            raise ValueError("lengths is shorter than bufs")
        if headroom < 0 or mtu <= 0:
            raise ValueError("headroom must be >= 0 and mtu > 0")
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve(n)
            self._too_big = self._short = self._bad_gso = self._bad_csum = 0
            # Slots are pinned as the batch fills (2, then 8, 32, ...): a lone packet (a ping)
            # touches two buffers, not the whole batch. A super-packet being cut when the pinned
            # slots ran out says how many more it needs: those (and two for what follows) are
            # pinned, not four times the slots so far.
            limit = 0
            while True:
                if self._has_work and limit:
                    want = count + <Py_ssize_t>wgpy_segments_left(&self._work) + 2
                    if want > n:
                        want = n
                else:
                    want = n if limit * 4 >= n or n <= 2 else (2 if limit == 0 else limit * 4)
                for i in range(pinned, want):
                    PyObject_GetBuffer(bufs[i], &self._views[i], PyBUF_WRITABLE)
                    pinned = i + 1
                    if self._views[i].len < headroom:
                        raise ValueError(f"buffer {i} is shorter than the headroom")
                limit = want
                with nogil:
                    count = self._read_nogil(count, limit, headroom, mtu, &err)
                if count < limit or limit == n or err:
                    break
            for i in range(count):
                wgpy_set_length(lengths, i, self._lens[i])
            self._tally("read:too_big", self._too_big)
            self._tally("read:short", self._short)
            self._tally("read:bad_gso", self._bad_gso)
            self._tally("read:bad_csum", self._bad_csum)
            if err and count == 0:
                raise OSError(err, _errname(err))
            return count
        finally:
            release_views(self._views, pinned)
            self._busy = False

    cdef Py_ssize_t _drain(self, Py_ssize_t count, Py_ssize_t n, Py_ssize_t headroom) noexcept nogil:
        cdef size_t size = 0
        cdef size_t l2 = <size_t>self.l2
        cdef unsigned char *slot
        while self._has_work and count < n:
            slot = <unsigned char *>self._views[count].buf + headroom
            if <size_t>(self._views[count].len - headroom) > l2:
                size = wgpy_cut(&self._work, slot + l2, self._views[count].len - headroom - l2)
            else:
                size = 0
            if size == 0:
                self._too_big += 1
                self._has_work = False
                break
            if l2:
                memcpy(slot, self._scratch, l2)   # the link header of the super-frame
            self._lens[count] = size + l2
            count += 1
            if self._work.next >= self._work.len:
                self._has_work = False
        return count

    cdef Py_ssize_t _read_nogil(self, Py_ssize_t count, Py_ssize_t n, Py_ssize_t headroom,
                                Py_ssize_t mtu, int *err) noexcept nogil:
        """Fill slots count..n-1 (pinned); returns the new count. Stops at EAGAIN (count < n),
        an error (``err``), a held oversized packet, or a full batch."""
        cdef iovec iov[3]
        cdef ssize_t got
        cdef Py_ssize_t room, size, head
        cdef unsigned char *slot
        cdef uint16_t csum_start, csum_offset
        if self._has_big and count == 0:
            # The packet held last time: now it fits, or it is dropped (never held twice).
            self._has_big = False
            if self._big_len <= self._views[0].len - headroom:
                memcpy(<unsigned char *>self._views[0].buf + headroom, self._scratch, self._big_len)
                self._lens[0] = self._big_len
                count = 1
            else:
                self._too_big += 1
        count = self._drain(count, n, headroom)
        while count < n and not self._has_work:
            slot = <unsigned char *>self._views[count].buf + headroom
            room = self._views[count].len - headroom
            if not self.vnet_hdr:
                iov[0].iov_base = slot
                iov[0].iov_len = room
                got = readv(self.fd, iov, 1)
            else:
                iov[0].iov_base = self._hdr
                iov[0].iov_len = C_VNET
                iov[1].iov_base = slot
                iov[1].iov_len = room
                iov[2].iov_base = self._scratch + (room if room < WGPY_SUPER else WGPY_SUPER)
                iov[2].iov_len = WGPY_SUPER
                got = readv(self.fd, iov, 3)
            if got < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    err[0] = errno
                break
            if not self.vnet_hdr:
                self._lens[count] = got
                count += 1
                continue
            if got < C_VNET:
                self._short += 1
                continue
            size = got - C_VNET
            if (self._hdr[1] & 0x7F) == 0:
                if size > room:
                    if self.hold_oversized:
                        # Keep it (contiguous in the scratch) for a call with larger slots.
                        memcpy(self._scratch, slot, room)
                        self._big_len = size
                        self._has_big = True
                        break
                    self._too_big += 1
                    continue
                if self._hdr[0] & 1:
                    memcpy(&csum_start, self._hdr + 6, 2)
                    memcpy(&csum_offset, self._hdr + 8, 2)
                    if not wgpy_complete_csum(slot, size, csum_start, csum_offset):
                        self._bad_csum += 1
                        continue
                self._lens[count] = size
                count += 1
                continue
            # A super-packet: make it contiguous in the scratch (the overflow is already there).
            head = size if size < room else room
            memcpy(self._scratch, slot, head)
            if not self._parse(size, mtu):
                self._bad_gso += 1
                continue
            self._has_work = True
            self.super_packets += 1
            count = self._drain(count, n, headroom)
        return count

    cdef int _parse(self, size_t size, size_t mtu) noexcept nogil:
        """Parse the super-packet (frame, with l2) in the scratch into self._work."""
        cdef unsigned char hdr[C_VNET]
        cdef uint16_t start
        cdef size_t l2 = <size_t>self.l2
        if l2 == 0:
            return wgpy_parse_super(&self._work, self._scratch, size, self._hdr, mtu)
        if wgpy_l3(self._scratch, size, l2) == NULL:
            return 0
        memcpy(hdr, self._hdr, C_VNET)
        if hdr[0] & 1:
            memcpy(&start, hdr + 6, 2)
            if start < l2:
                return 0
            start = <uint16_t>(start - l2)   # csum_start counts from the frame's start
            memcpy(hdr + 6, &start, 2)
        return wgpy_parse_super(&self._work, self._scratch + l2, size - l2, hdr, mtu)

    def write(self, packets not None) -> int:
        """Write each packet (behind a zeroed virtio-net header if on); returns how many went.

        With ``gro`` on, runs of consecutive TCP segments of one flow leave as one super-packet
        (one writev: header, then each segment's payload in place; see io_ref.coalesce_run).
        """
        cdef Py_ssize_t n = len(packets)
        cdef Py_ssize_t i, pinned = 0, done = 0
        if n == 0:
            return 0
        self._enter()
        try:
            self._reserve(n)
            for i in range(n):
                PyObject_GetBuffer(packets[i], &self._views[i], PyBUF_SIMPLE)
                pinned = i + 1
                self._ptrs[i] = <unsigned char *>self._views[i].buf
                self._lens[i] = self._views[i].len
            with nogil:
                done = self._write_nogil(n)
            return self._written(done)
        finally:
            release_views(self._views, pinned)
            self._busy = False

    def write_slots(self, bufs not None, lengths not None, Py_ssize_t offset, verdicts not None,
                    Py_ssize_t count) -> int:
        """Write ``bufs[i][offset:lengths[i]]`` for each ``i < count`` with ``verdicts[i] == 0``;
        the same as ``write`` on the list of those slices (see io_ref.TunBatch.write_slots).

        No Python object per packet: each selected buffer is pinned and its packet's address and
        length go into C arrays that the write path reads.
        """
        cdef Py_buffer verdict_view
        cdef bint verdicts_pinned = False
        cdef const unsigned char *verdict
        cdef Py_ssize_t i, end, size, pinned = 0, done = 0
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if count < 0 or count > len(bufs) or count > len(lengths) or count > len(verdicts):
            raise ValueError("count must be >= 0 and at most len(bufs), len(lengths), len(verdicts)")
        if count == 0:
            return 0
        self._enter()
        try:
            PyObject_GetBuffer(verdicts, &verdict_view, PyBUF_SIMPLE)
            verdicts_pinned = True
            if verdict_view.len < count:
                raise ValueError("verdicts is shorter than count")
            verdict = <const unsigned char *>verdict_view.buf
            self._reserve(count)
            for i in range(count):
                if verdict[i]:
                    continue
                end = lengths[i]
                PyObject_GetBuffer(bufs[i], &self._views[pinned], PyBUF_SIMPLE)
                size = self._views[pinned].len
                if end > size:
                    end = size
                self._ptrs[pinned] = <unsigned char *>self._views[pinned].buf + (offset if offset < size else size)
                self._lens[pinned] = end - offset if end > offset else 0
                pinned += 1
            if pinned == 0:
                return 0
            with nogil:
                done = self._write_nogil(pinned)
            return self._written(done)
        finally:
            release_views(self._views, pinned)
            if verdicts_pinned:
                PyBuffer_Release(&verdict_view)
            self._busy = False

    cdef Py_ssize_t _written(self, Py_ssize_t done) except -1:
        """After _write_nogil: note a GRO refusal, tally errors, raise if the device is gone;
        returns how many packets went."""
        cdef Py_ssize_t i, written = 0
        cdef int code
        if self._gro_refused:
            self.fallbacks.append(
                f"TUN GRO (coalesced TCP writes) refused by the kernel "
                f"({_errname(self._gro_refused)}): writing packets one by one")
            self._gro_refused = 0
        for i in range(done):
            code = self._codes[i]
            if code == 0:
                written += 1
            elif code == -1:
                self._tally("write:oversized", 1)
            elif code in TUN_GONE:
                raise OSError(code, _errname(code))
            else:
                self._tally("write:" + _errname(code), 1)
        return written

    cdef Py_ssize_t _run(self, Py_ssize_t i, Py_ssize_t n, wgpy_tcpinfo *tf, size_t *total,
                         Py_ssize_t *partials) noexcept nogil:
        """How many packets from i on coalesce into one TCP super-packet (1: none); with
        ``verify``, ``partials`` gets how many of them carry a partial checksum."""
        cdef wgpy_tcpinfo tp, tq
        cdef size_t l2 = <size_t>self.l2
        cdef const unsigned char *frame = self._ptrs[i]
        cdef const unsigned char *first = wgpy_l3(frame, <size_t>self._lens[i], l2)
        cdef const unsigned char *prev = first
        cdef const unsigned char *q
        cdef const unsigned char *qf
        cdef Py_ssize_t k = i + 1, count = 1
        cdef size_t size = <size_t>self._lens[i] - l2
        cdef bint partial
        partials[0] = 0
        if first == NULL:
            return 1
        wgpy_tcp_info(first, size, tf)
        if tf.version == 0 or first[tf.l4 + 13] & 0x08:
            return 1
        if self.verify:
            # a partial checksum may join: the super-packet's checksum is partial anyway
            partial = wgpy_tcp_csum_partial(first, tf)
            if not partial and not wgpy_tcp_csum_ok(first, tf):
                return 1
            partials[0] = partial
        tp = tf[0]
        while k < n and count < C_GRO_SEGMENTS:
            qf = self._ptrs[k]
            q = wgpy_l3(qf, <size_t>self._lens[k], l2)
            if q == NULL or (l2 and memcmp(qf, frame, l2)):
                break
            wgpy_tcp_info(q, <size_t>self._lens[k] - l2, &tq)
            if tq.version == 0 or not wgpy_tcp_follows(first, tf, prev, &tp, q, &tq):
                break
            if self.verify:
                partial = wgpy_tcp_csum_partial(q, &tq)
                if not partial and not wgpy_tcp_csum_ok(q, &tq):
                    break
            else:
                partial = False
            if size + tq.payload > C_GRO_BYTES:
                break
            partials[0] += partial
            size += tq.payload
            count += 1
            k += 1
            if tq.payload < tf.payload or q[tf.l4 + 13] & 0x08:
                break
            prev = q
            tp = tq
        total[0] = size
        return count

    cdef int _write_big(self, Py_ssize_t i) noexcept nogil:
        """Write frame i, whose IP packet exceeds the MTU: a TCP super-packet goes as a GSO
        super-frame (virtio-net header) or cut into MTU-sized frames (plain device); a TCP packet
        whose checksum is neither right nor partial goes as it is. Returns 0 (written), an
        errno, or -1 (not TCP: dropped, counted as ``write:oversized``)."""
        cdef wgpy_super w
        cdef int partial = 0, kind = 0
        cdef size_t l2 = <size_t>self.l2
        cdef size_t size = <size_t>self._lens[i]
        cdef const unsigned char *frame = self._ptrs[i]
        cdef const unsigned char *l3 = wgpy_l3(frame, size, l2)
        cdef unsigned char zero[C_VNET]
        cdef iovec iov[3]
        cdef ssize_t r
        cdef size_t seg
        if l3 != NULL:
            kind = wgpy_tso_frame(&w, l3, size - l2, <size_t>self._mtu, &partial)
        if kind == 0:
            return -1
        if kind == 2 or self.vnet_hdr:
            if kind == 2:
                memset(zero, 0, C_VNET)
                iov[0].iov_base = zero
                iov[0].iov_len = C_VNET
                iov[1].iov_base = <void *>frame
                iov[1].iov_len = size
                iov[2].iov_len = 0
            else:
                wgpy_tso_header(self._shdr, self._svnet, frame, l2, &w)
                iov[0].iov_base = self._svnet
                iov[0].iov_len = C_VNET
                iov[1].iov_base = self._shdr
                iov[1].iov_len = l2 + w.header
                iov[2].iov_base = <void *>(frame + l2 + w.header)
                iov[2].iov_len = size - l2 - w.header
            while True:
                if self.vnet_hdr:
                    r = writev(self.fd, iov, 3)
                else:
                    r = writev(self.fd, &iov[1], 1)
                if r < 0 and errno == EINTR:
                    continue
                break
            if r < 0:
                return errno
        else:
            # no virtio-net header: cut into MTU-sized frames here (full checksums), each
            # behind a copy of the link header
            while w.next < w.len:
                memcpy(self._wscratch, frame, l2)
                seg = wgpy_cut(&w, self._wscratch + l2, WGPY_SUPER)
                if seg == 0:  # cannot happen (a segment is at most the packet): never loop
                    return -1
                iov[0].iov_base = self._wscratch
                iov[0].iov_len = l2 + seg
                while True:
                    r = writev(self.fd, iov, 1)
                    if r < 0 and errno == EINTR:
                        continue
                    break
                if r < 0:
                    return errno
        if kind == 1:
            self.tso_frames += 1
            if self.verify:
                self.csum_partial += partial
        return 0

    cdef Py_ssize_t _write_nogil(self, Py_ssize_t n) noexcept nogil:
        cdef iovec iov[C_GRO_SEGMENTS + 2]
        cdef unsigned char zero[C_VNET]
        cdef Py_ssize_t i = 0, k, count
        cdef ssize_t r
        cdef int code
        cdef wgpy_tcpinfo tf
        cdef size_t total = 0
        cdef bint partial
        cdef size_t l2 = <size_t>self.l2
        cdef uint16_t v16
        cdef Py_ssize_t partials = 0
        cdef unsigned char partial_hdr[C_VNET]
        cdef size_t start = 0, offset = 0, iplen = 0
        cdef const unsigned char *l3
        memset(zero, 0, C_VNET)
        while i < n:
            if self._mtu and <size_t>self._lens[i] > l2 + <size_t>self._mtu:
                code = self._write_big(i)
                self._codes[i] = code
                i += 1
                if code > 0 and wgpy_tun_gone(code):
                    return i
                continue
            if self.gro and n - i > 1:
                count = self._run(i, n, &tf, &total, &partials)
                if count > 1:
                    wgpy_tcp_super(self._shdr + l2, self._svnet,
                                   self._ptrs[i] + l2, &tf, self._ptrs[i + count - 1] + l2, total)
                    if l2:
                        memcpy(self._shdr, self._ptrs[i], l2)
                        memcpy(&v16, self._svnet + 2, 2)     # hdr_len
                        v16 = <uint16_t>(v16 + l2)
                        memcpy(self._svnet + 2, &v16, 2)
                        memcpy(&v16, self._svnet + 6, 2)     # csum_start
                        v16 = <uint16_t>(v16 + l2)
                        memcpy(self._svnet + 6, &v16, 2)
                    iov[0].iov_base = self._svnet
                    iov[0].iov_len = C_VNET
                    iov[1].iov_base = self._shdr
                    iov[1].iov_len = l2 + tf.header
                    for k in range(count):
                        iov[2 + k].iov_base = self._ptrs[i + k] + l2 + tf.header
                        iov[2 + k].iov_len = <size_t>self._lens[i + k] - l2 - tf.header
                    while True:
                        r = writev(self.fd, iov, <int>(count + 2))
                        if r < 0 and errno == EINTR:
                            continue
                        break
                    code = errno if r < 0 else 0
                    if code == EINVAL:
                        # The kernel does not take our super-packets: write packets one by one.
                        self.gro = False
                        self._gro_refused = code
                        continue
                    for k in range(count):
                        self._codes[i + k] = code
                    i += count
                    if code == 0:
                        self.coalesced += 1
                        self.csum_partial += partials
                    elif wgpy_tun_gone(code):
                        return i
                    continue
            iov[0].iov_base = zero
            iov[0].iov_len = C_VNET
            iov[1].iov_base = self._ptrs[i]
            iov[1].iov_len = <size_t>self._lens[i]
            partial = False
            if self.verify and (self.vnet_hdr or <size_t>self._lens[i] <= WGPY_SUPER + C_ETH):
                l3 = wgpy_l3(self._ptrs[i], <size_t>self._lens[i], l2)
                if l3 != NULL and wgpy_csum_partial(l3, <size_t>self._lens[i] - l2,
                                                    &start, &offset, &iplen):
                    partial = True
                    if self.vnet_hdr:
                        # handed on partial, as the kernel's vxlan would: NEEDS_CSUM
                        memset(partial_hdr, 0, C_VNET)
                        partial_hdr[0] = 1
                        v16 = <uint16_t>(l2 + start + offset + 2)      # hdr_len
                        memcpy(partial_hdr + 2, &v16, 2)
                        v16 = <uint16_t>(l2 + start)                   # csum_start
                        memcpy(partial_hdr + 6, &v16, 2)
                        v16 = <uint16_t>offset                         # csum_offset
                        memcpy(partial_hdr + 8, &v16, 2)
                        iov[0].iov_base = partial_hdr
                    else:
                        # no virtio-net header: finished here, in a copy (the buffer may be
                        # read-only and is the caller's)
                        memcpy(self._wscratch, self._ptrs[i], <size_t>self._lens[i])
                        wgpy_complete_csum(self._wscratch + l2, iplen, start, offset)
                        iov[1].iov_base = self._wscratch
            while True:
                if self.vnet_hdr:
                    r = writev(self.fd, iov, 2)
                else:
                    r = writev(self.fd, &iov[1], 1)
                if r < 0 and errno == EINTR:
                    continue
                break
            code = errno if r < 0 else 0
            self._codes[i] = code
            if code == 0 and partial:
                self.csum_partial += 1
            i += 1
            if code and wgpy_tun_gone(code):
                return i
        return n
