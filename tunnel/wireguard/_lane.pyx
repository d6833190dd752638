# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The steady-state lanes behind a generation counter, in Cython: same API and results as
``tunnel/wireguard/lane_ref.py`` (read its docstring for the contract).

Here the snapshot is C fields: a hit reads the generation, the deadline, the cipher's counter
(``_transport._capi["send_counter"]``: an atomic load, no attribute lookup) and looks each
packet up in the compiled route table (``_datapath._capi["find"]``), touching no Python object
of the engine. Over the pure twins' objects (a ``lane_ref.Generation``, a ``datapath_ref``
route table, a pure cipher) the same snapshot works through their Python attributes
(``value``, ``lookup_packet``, ``send_counter``): the same answers, without the speed-up.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer
from tunnel.wireguard._batchbuf cimport all_from as _all_from, check_batch as _check_batch, data_of as _data
from tunnel.wireguard._batchbuf cimport transport_receiver as _transport_receiver
from libc.stdint cimport uint32_t, uint64_t

from crypto import _transport
from tunnel.wireguard import _datapath
from tunnel.wireguard.constants import REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES
from tunnel.wireguard.lane_ref import INITIATOR_LIMIT, NONE, RESPONDER_LIMIT

__all__ = ["INITIATOR_LIMIT", "NONE", "RESPONDER_LIMIT", "Generation", "ReceiveLane", "SendLane"]

ctypedef uint64_t (*counter_t)(void *) noexcept nogil
ctypedef int (*find_t)(void *, const unsigned char *, Py_ssize_t, bint) noexcept nogil

cdef counter_t _send_counter = <counter_t>PyCapsule_GetPointer(_transport._capi["send_counter"],
                                                               b"wgpy.cipher.send_counter")
cdef find_t _find = <find_t>PyCapsule_GetPointer(_datapath._capi["find"], b"wgpy.datapath.find")
cdef object _Cipher = _transport.TransportCipher
cdef object _Table = _datapath.RouteTable
cdef double _REJECT_AFTER_TIME = REJECT_AFTER_TIME
cdef double _INITIATOR_LIMIT = INITIATOR_LIMIT
cdef double _RESPONDER_LIMIT = RESPONDER_LIMIT
cdef uint64_t _REKEY_AFTER_MESSAGES = REKEY_AFTER_MESSAGES


cdef class Generation:
    """A counter of the engine's lane-relevant state changes; see lane_ref.Generation."""

    def __init__(self):
        self.value = 0

    cpdef bump(self):
        """Record a change: every snapshot taken before it is stale."""
        self.value += 1


cdef class SendLane:
    """The outbound lane snapshot of one pump; see lane_ref.SendLane."""

    def __init__(self, generation):
        self.generation = generation
        self._gen = generation if isinstance(generation, Generation) else None
        self._pygen = generation if self._gen is None else None
        self.valid_for = NONE
        self.lane = None
        self.cipher = self.endpoint = self.table = None
        self._cipher_c = NULL
        self._table_c = NULL
        self.v6 = False
        self.slot = NONE
        self.mtu = 0
        self.created = 0.0
        self.limit = 0.0
        self.hits = 0
        self.misses = 0

    def clear(self):
        """Forget the snapshot (the next batch asks ``datapath.lane``)."""
        self.valid_for = NONE
        self.lane = None
        self.cipher = self.endpoint = self.table = None
        self._cipher_c = NULL
        self._table_c = NULL

    def holds(self):
        """Whether the snapshot is still the engine's state (time and counter not looked at)."""
        return self._holds()

    def check(self, list bufs not None, list lengths not None, Py_ssize_t headroom, double now):
        """The snapshot's lane for the batch, or None (a miss); see lane_ref.SendLane.check."""
        return self._check(bufs, lengths, headroom, now)

    cdef object _check(self, list bufs, list lengths, Py_ssize_t headroom, double now):
        cdef Py_ssize_t i, size, n = len(bufs)
        cdef uint64_t counter
        cdef unsigned char *p
        _check_batch(bufs, lengths, headroom)
        if n == 0 or not self._holds():
            return None
        if now - self.created >= self.limit:
            return None
        if self._cipher_c != NULL:
            counter = _send_counter(self._cipher_c)
        else:
            counter = self.cipher.send_counter
        if counter + <uint64_t>n >= _REKEY_AFTER_MESSAGES:
            return None
        for i in range(n):
            size = lengths[i]
            p = _data(bufs[i], headroom + size)
            if size > self.mtu:
                return None
            if self._table_c != NULL:
                if _find(self._table_c, p + headroom, size, False) != self.slot:
                    return None
            elif self.table.lookup_packet(bufs[i], headroom, size, False) != self.slot:
                return None
        return self.lane

    cpdef fill(self, device, tuple lane, long long valid_for):
        """Keep ``lane`` (``datapath.lane``'s grant, asked at generation ``valid_for``)."""
        peer, keypair = lane
        table = device.routes()
        if self._gen is None and self._pygen is None:
            self.clear()
            return
        cipher = keypair.cipher
        endpoint = peer.endpoint
        self.lane = lane
        self.cipher = cipher
        self._cipher_c = <void *>cipher if type(cipher) is _Cipher else NULL
        self.endpoint = endpoint
        self.v6 = ":" in endpoint.ip
        self.slot = peer.slot
        self.table = table
        self._table_c = <void *>table if type(table) is _Table else NULL
        self.mtu = device.mtu
        self.created = keypair.created
        self.limit = _INITIATOR_LIMIT if keypair.is_initiator else _RESPONDER_LIMIT
        self.valid_for = valid_for

    cpdef object decide(self, device, list bufs, list lengths, Py_ssize_t headroom, double now):
        """``datapath.lane(device, ...)``'s answer: from the snapshot when it holds, else asked
        and kept."""
        cdef long long valid_for
        lane = self._check(bufs, lengths, headroom, now)
        if lane is not None:
            self.hits += 1
            return lane
        self.misses += 1
        if self._gen is not None:
            valid_for = self._gen.value
        else:
            valid_for = self._pygen.value if self._pygen is not None else NONE
        lane = device.datapath.lane(device, bufs, lengths, headroom, now)
        if lane is not None and valid_for != NONE:
            self.fill(device, lane, valid_for)
        return lane


cdef class ReceiveLane:
    """The inbound lane snapshot of one pump; see lane_ref.ReceiveLane."""

    def __init__(self, generation):
        self.generation = generation
        self._gen = generation if isinstance(generation, Generation) else None
        self._pygen = generation if self._gen is None else None
        self.valid_for = NONE
        self.receiver = NONE
        self.keypair = self.cipher = self.endpoint = self.table = None
        self.slot = NONE
        self.created = 0.0
        self.hits = 0
        self.misses = 0

    def clear(self):
        """Forget the snapshot."""
        self.valid_for = NONE
        self.keypair = self.cipher = self.endpoint = self.table = None

    def holds(self):
        """Whether the snapshot is still the engine's state (time not looked at)."""
        return self._holds()

    def check(self, list bufs not None, list lengths not None, list sources not None, double now):
        """The snapshot's keypair for the batch, or None (a miss); see lane_ref.ReceiveLane.check."""
        return self._check(bufs, lengths, sources, now)

    cdef object _check(self, list bufs, list lengths, list sources, double now):
        cdef Py_ssize_t n = len(bufs)
        _check_batch(bufs, lengths, 0)
        if len(sources) < n:
            raise ValueError("sources is shorter than bufs")
        if n == 0 or not self._holds():
            return None
        if _transport_receiver(bufs, lengths, n) != self.receiver:
            return None
        if now - self.created >= _REJECT_AFTER_TIME:
            return None
        return self.keypair if _all_from(sources, n, self.endpoint) else None

    cpdef fill(self, device, keypair, long long valid_for):
        """Keep ``keypair`` (``datapath.receive_lane``'s grant, asked at generation ``valid_for``)."""
        peer = keypair.peer
        table = device.routes()
        if self._gen is None and self._pygen is None:
            self.clear()
            return
        self.keypair = keypair
        self.receiver = keypair.local_index
        self.cipher = keypair.cipher
        self.endpoint = peer.endpoint
        self.slot = peer.slot
        self.table = table
        self.created = keypair.created
        self.valid_for = valid_for

    cpdef object decide(self, device, list bufs, list lengths, list sources, double now):
        """``datapath.receive_lane(device, ...)``'s answer: from the snapshot when it holds, else
        asked and kept."""
        cdef long long valid_for
        keypair = self._check(bufs, lengths, sources, now)
        if keypair is not None:
            self.hits += 1
            return keypair
        self.misses += 1
        if self._gen is not None:
            valid_for = self._gen.value
        else:
            valid_for = self._pygen.value if self._pygen is not None else NONE
        keypair = device.datapath.receive_lane(device, bufs, lengths, sources, now)
        if keypair is not None and valid_for != NONE:
            self.fill(device, keypair, valid_for)
        return keypair
