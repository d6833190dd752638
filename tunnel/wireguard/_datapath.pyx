# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The engine's per-packet loops in Cython: same API and results as ``tunnel/wireguard/datapath_ref.py``.

Read that module's docstring for the contract. Here the loops read packet bytes through raw
pointers into the batch's bytearrays (the buffers must be ``bytearray``s, as the shell's are) and
the route table is two sorted C arrays per family searched by bisection: no Python object per
packet except the group lists and the views returned for delivery. The GIL stays held: each call
is short, and it builds Python lists.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from tunnel.wireguard._batchbuf cimport all_from as _all_from, check_batch as _check_batch, data_of as _data
from tunnel.wireguard._batchbuf cimport transport_receiver as _transport_receiver
from libc.stdint cimport int32_t, uint32_t, uint64_t
from libc.string cimport memset

from wgpy_ints cimport wgpy_set_length  # include/wgpy_ints.pxd: batch lengths as kept ints

from tunnel.wireguard.constants import REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME
from tunnel.wireguard.peer import Keypair
from tunnel.wireguard.datapath_ref import INVALID_SIZE, INVALID_TYPE, NO_SLOT, compile_intervals

__all__ = [
    "NO_SLOT", "INVALID_SIZE", "INVALID_TYPE", "RouteTable", "route_batch", "lane", "receive_lane", "classify_batch",
    "accept_batch", "accept_slots", "inner_length", "compile_intervals",
]


cdef inline uint32_t load32(const unsigned char *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t load64(const unsigned char *p) noexcept nogil:
    return (<uint64_t>load32(p) << 32) | load32(p + 4)


cdef class RouteTable:
    """A compiled, read-only longest-prefix-match table: address -> peer slot (or -1)."""

    cdef uint32_t *starts4
    cdef int32_t *slots4
    cdef Py_ssize_t n4
    cdef uint64_t *hi6
    cdef uint64_t *lo6
    cdef int32_t *slots6
    cdef Py_ssize_t n6

    def __cinit__(self):
        self.starts4 = NULL
        self.slots4 = NULL
        self.hi6 = NULL
        self.lo6 = NULL
        self.slots6 = NULL

    def __init__(self, entries):
        v4 = []
        v6 = []
        for entry in entries:
            (v4 if len(entry[0]) == 4 else v6).append(entry)
        starts, slots = compile_intervals(v4, 32)
        self.n4 = len(starts)
        self.starts4 = <uint32_t *>PyMem_Malloc(self.n4 * sizeof(uint32_t))
        self.slots4 = <int32_t *>PyMem_Malloc(self.n4 * sizeof(int32_t))
        if self.starts4 == NULL or self.slots4 == NULL:
            raise MemoryError()
        for i in range(self.n4):
            self.starts4[i] = starts[i]
            self.slots4[i] = slots[i]
        starts, slots = compile_intervals(v6, 128)
        self.n6 = len(starts)
        self.hi6 = <uint64_t *>PyMem_Malloc(self.n6 * sizeof(uint64_t))
        self.lo6 = <uint64_t *>PyMem_Malloc(self.n6 * sizeof(uint64_t))
        self.slots6 = <int32_t *>PyMem_Malloc(self.n6 * sizeof(int32_t))
        if self.hi6 == NULL or self.lo6 == NULL or self.slots6 == NULL:
            raise MemoryError()
        mask = (1 << 64) - 1
        for i in range(self.n6):
            self.hi6[i] = starts[i] >> 64
            self.lo6[i] = starts[i] & mask
            self.slots6[i] = slots[i]

    def __dealloc__(self):
        PyMem_Free(self.starts4)
        PyMem_Free(self.slots4)
        PyMem_Free(self.hi6)
        PyMem_Free(self.lo6)
        PyMem_Free(self.slots6)

    cdef inline int find4(self, uint32_t addr) noexcept nogil:
        # greatest i with starts4[i] <= addr; starts4[0] == 0 so it exists
        cdef Py_ssize_t low = 0, high = self.n4
        cdef Py_ssize_t middle
        while high - low > 1:
            middle = (low + high) >> 1
            if self.starts4[middle] <= addr:
                low = middle
            else:
                high = middle
        return self.slots4[low]

    cdef inline int find6(self, uint64_t hi, uint64_t lo) noexcept nogil:
        cdef Py_ssize_t low = 0, high = self.n6
        cdef Py_ssize_t middle
        while high - low > 1:
            middle = (low + high) >> 1
            if self.hi6[middle] < hi or (self.hi6[middle] == hi and self.lo6[middle] <= lo):
                low = middle
            else:
                high = middle
        return self.slots6[low]

    cdef inline int find_packet(self, const unsigned char *p, Py_ssize_t size, bint source) noexcept nogil:
        if size < 1:
            return -1
        cdef int version = p[0] >> 4
        if version == 4 and size >= 20:
            return self.find4(load32(p + (12 if source else 16)))
        if version == 6 and size >= 40:
            p = p + (8 if source else 24)
            return self.find6(load64(p), load64(p + 8))
        return -1

    def lookup(self, addr):
        """The slot of the longest prefix containing ``addr`` (4 or 16 bytes), or -1."""
        cdef bytes raw = bytes(memoryview(addr))  # bytes-like only (bytes(4) would be 4 zeros)
        cdef const unsigned char *p = raw
        if len(raw) == 4:
            return self.find4(load32(p))
        if len(raw) == 16:
            return self.find6(load64(p), load64(p + 8))
        return -1

    def lookup_packet(self, buf, Py_ssize_t offset, Py_ssize_t size, bint source):
        """Slot for the source or destination of the IP packet at buf[offset:offset+size]."""
        cdef bytes raw = bytes(memoryview(buf)[offset:offset + size])
        return self.find_packet(raw, len(raw), source)


def route_batch(RouteTable table not None, list bufs not None, list lengths not None, Py_ssize_t headroom,
                Py_ssize_t mtu):
    """Group packets ``bufs[i][headroom:headroom+lengths[i]]`` by destination peer slot.

    Returns (slot -> indices in batch order, packets with no route, packets over the MTU).
    """
    cdef dict groups = {}
    cdef Py_ssize_t i, size, no_route = 0, too_big = 0
    cdef int slot
    cdef unsigned char *p
    _check_batch(bufs, lengths, headroom)
    for i in range(len(bufs)):
        size = lengths[i]
        p = _data(bufs[i], headroom + size)
        if size > mtu:
            too_big += 1
            continue
        slot = table.find_packet(p + headroom, size, False)
        if slot < 0:
            no_route += 1
            continue
        group = groups.get(slot)
        if group is None:
            groups[slot] = [i]
        else:
            (<list>group).append(i)
    return groups, no_route, too_big


cdef double _REJECT_AFTER_TIME = REJECT_AFTER_TIME
cdef double _REKEY_AFTER_TIME = REKEY_AFTER_TIME
cdef object _REKEY_AFTER_MESSAGES = REKEY_AFTER_MESSAGES


def lane(device, list bufs not None, list lengths not None, Py_ssize_t headroom, double now):
    """``(peer, keypair)`` if the batch may take the fast lane, else None (see datapath_ref.lane)."""
    _check_batch(bufs, lengths, headroom)
    if device.identity is None or not bufs:
        return None
    cdef RouteTable table = <RouteTable?>device.routes()
    if table is None:
        raise TypeError("table must be a RouteTable, not NoneType")
    cdef Py_ssize_t mtu = device.mtu
    cdef Py_ssize_t i, size, n = len(bufs)
    cdef int slot = -1, found
    cdef unsigned char *p
    for i in range(n):
        size = lengths[i]
        p = _data(bufs[i], headroom + size)
        if size > mtu:
            return None
        found = table.find_packet(p + headroom, size, False)
        if found < 0 or (slot >= 0 and found != slot):
            return None
        slot = found
    peer = device.peer_slots[slot]
    if peer is None or peer.staged or peer.endpoint is None:
        return None
    keypair = peer.current
    if keypair is None:
        return None
    cdef double age = now - <double>keypair.created
    if age >= _REJECT_AFTER_TIME or (keypair.is_initiator and age >= _REKEY_AFTER_TIME):
        return None
    if keypair.cipher.send_counter + n >= _REKEY_AFTER_MESSAGES:
        return None
    return peer, keypair


def receive_lane(device, list bufs not None, list lengths not None, list sources not None, double now):
    """The keypair to open the whole batch with in the inbound fast lane, else None (see
    datapath_ref.receive_lane)."""
    cdef Py_ssize_t n = len(bufs)
    cdef long long receiver
    _check_batch(bufs, lengths, 0)
    if len(sources) < n:
        raise ValueError("sources is shorter than bufs")
    if n == 0:
        return None
    receiver = _transport_receiver(bufs, lengths, n)
    if receiver < 0:
        return None
    keypair = device.receivers.get(receiver)
    if not isinstance(keypair, Keypair):  # None, or the peer of a handshake in progress
        return None
    peer = keypair.peer
    if now - <double>keypair.created >= _REJECT_AFTER_TIME or peer.next is keypair:
        return None
    return keypair if _all_from(sources, n, peer.endpoint) else None


def classify_batch(list bufs not None, list lengths not None):
    """Sort datagrams into transport groups by receiver index and handshake messages (types
    1-3 of the exact size, in order); count the rest by reason."""
    cdef dict transport = {}
    cdef list handshakes = []
    cdef Py_ssize_t invalid_type = 0, invalid_size = 0
    cdef Py_ssize_t i, size
    cdef unsigned char *p
    cdef int kind
    cdef uint32_t receiver
    _check_batch(bufs, lengths, 0)
    for i in range(len(bufs)):
        size = lengths[i]
        p = _data(bufs[i], size)
        kind = p[0] if size >= 4 and not (p[1] or p[2] or p[3]) else 0
        if kind == 4:
            if size >= 32:
                receiver = (<uint32_t>p[4]) | (<uint32_t>p[5] << 8) | (<uint32_t>p[6] << 16) | (<uint32_t>p[7] << 24)
                group = transport.get(receiver)
                if group is None:
                    transport[receiver] = [i]
                else:
                    (<list>group).append(i)
                continue
            invalid_size += 1
        elif kind == 1 or kind == 2 or kind == 3:
            if size == (148 if kind == 1 else 92 if kind == 2 else 64):
                handshakes.append(i)
                continue
            invalid_size += 1
        else:
            invalid_type += 1
    cdef dict drops = {}
    if invalid_type:
        drops[INVALID_TYPE] = invalid_type
    if invalid_size:
        drops[INVALID_SIZE] = invalid_size
    return transport, handshakes, drops


cdef inline Py_ssize_t _inner_length(const unsigned char *p, Py_ssize_t size) noexcept nogil:
    if size < 1:
        return -1
    cdef int version = p[0] >> 4
    cdef Py_ssize_t total
    if version == 4 and size >= 20:
        total = (p[2] << 8) | p[3]
        return total if 20 <= total <= size else -1
    if version == 6 and size >= 40:
        total = 40 + ((p[4] << 8) | p[5])
        return total if total <= size else -1
    return -1


def inner_length(buf, Py_ssize_t offset, Py_ssize_t size):
    """Length of the IP packet at buf[offset:offset+size] from its header (padding stripped), or -1."""
    cdef bytes raw = bytes(memoryview(buf)[offset:offset + size])
    return _inner_length(raw, len(raw))


cdef enum:
    A_DELIVERED = 0
    A_KEEPALIVE = 1
    A_INVALID = 2
    A_DISALLOWED = 3


cdef inline int _accept_one(RouteTable table, int slot, const unsigned char *p, Py_ssize_t size,
                            Py_ssize_t *length) noexcept nogil:
    """The verdict on one authentic plaintext of ``size`` bytes at ``p`` from the peer in
    ``slot``: a keepalive (empty), invalid (no IP packet fits), disallowed (its inner source
    is not routed to that peer) or delivered, ``*length`` then the packet's length without
    padding. The one rule of accept_slots and the fused steps' C entry point."""
    if size == 0:
        return A_KEEPALIVE
    length[0] = _inner_length(p, size)
    if length[0] < 0:
        return A_INVALID
    if table.find_packet(p, length[0], True) != slot:
        return A_DISALLOWED
    return A_DELIVERED


def accept_slots(RouteTable table not None, int slot, list bufs not None, list lengths not None,
                 list results not None, Py_ssize_t headroom, verdicts):
    """Check the plaintexts where ``results[i] == 0`` into per-slot verdicts; see
    datapath_ref.accept_slots."""
    cdef Py_ssize_t n = len(bufs)
    cdef Py_ssize_t counts[4]
    cdef Py_ssize_t i, size, length = 0
    cdef int code
    cdef unsigned char *p
    cdef unsigned char *verdict = _data(verdicts, n)
    memset(counts, 0, sizeof(counts))
    _check_batch(bufs, lengths, headroom)
    if len(results) < n:
        raise ValueError("results is shorter than bufs")
    for i in range(n):
        size = lengths[i]
        p = _data(bufs[i], headroom + size) + headroom
        verdict[i] = 1
        if results[i] != 0:
            continue
        code = _accept_one(table, slot, p, size, &length)
        counts[code] += 1
        if code == A_DELIVERED:
            verdict[i] = 0
            wgpy_set_length(lengths, i, headroom + length)
    return counts[A_DELIVERED], counts[A_KEEPALIVE], counts[A_INVALID], counts[A_DISALLOWED]


def accept_batch(RouteTable table not None, int slot, list bufs not None, list lengths not None,
                 list results not None, Py_ssize_t headroom):
    """Check the plaintexts where ``results[i] == 0``; see datapath_ref.accept_batch."""
    cdef list ends = list(lengths)
    cdef bytearray verdicts = bytearray(len(bufs))
    cdef Py_ssize_t i
    _, keepalives, invalid, disallowed = accept_slots(table, slot, bufs, ends, results, headroom, verdicts)
    cdef list packets = [memoryview(bufs[i])[headroom:ends[i]] for i in range(len(bufs)) if not verdicts[i]]
    return packets, keepalives, invalid, disallowed


# --- C entry point for a native caller (tunnel/wireguard/_worker.pyx) ------------------------

cdef Py_ssize_t _capi_accept(void *table, int slot, unsigned char **ptrs, Py_ssize_t *lengths,
                             const int *results, Py_ssize_t n, Py_ssize_t headroom,
                             unsigned char *verdict, Py_ssize_t *counts) noexcept nogil:
    """accept_slots over C arrays, without the GIL: the plaintext of slot i is at
    ``ptrs[i] + headroom``, ``lengths[i]`` bytes. Same verdicts and lengths; ``counts`` gets
    (keepalives, invalid, disallowed); returns how many are delivered. ``table`` is a
    RouteTable the caller keeps alive."""
    cdef Py_ssize_t tally[4]
    cdef Py_ssize_t i, length = 0
    cdef int code
    memset(tally, 0, sizeof(tally))
    for i in range(n):
        verdict[i] = 1
        if results[i] != 0:
            continue
        code = _accept_one(<RouteTable>table, slot, ptrs[i] + headroom, lengths[i], &length)
        tally[code] += 1
        if code == A_DELIVERED:
            verdict[i] = 0
            lengths[i] = headroom + length
    counts[0] = tally[A_KEEPALIVE]
    counts[1] = tally[A_INVALID]
    counts[2] = tally[A_DISALLOWED]
    return tally[A_DELIVERED]


from cpython.pycapsule cimport PyCapsule_New

cdef int _capi_find(void *table, const unsigned char *p, Py_ssize_t size, bint source) noexcept nogil:
    """RouteTable.lookup_packet on a packet known to lie in memory: the slot of its source or
    destination, or -1. ``table`` is a RouteTable the caller keeps alive."""
    return (<RouteTable>table).find_packet(p, size, source)


_capi = {"accept": PyCapsule_New(<void *>_capi_accept, b"wgpy.datapath.accept", NULL),
         "find": PyCapsule_New(<void *>_capi_find, b"wgpy.datapath.find", NULL)}
