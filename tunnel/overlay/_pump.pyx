# cython: language_level=3
"""The L2 overlay's per-wake-up work in one native call: TAP -> WireGuard and WireGuard -> TAP.

The Cython twin of ``tunnel/overlay/pump_ref.py``: same API and behaviour; read that module's
docstring for the contract. Each step is a call into another native object (the TAP batch I/O,
``tunnel.vxlan._fast``, ``tunnel.overlay._l2``, the WireGuard datapath's lane, the transport
cipher, the UDP batch); what this saves is the Python frames between them, which cost most on
a cold wake-up (a ping). The GIL is held here; the callees release it around their system
calls and crypto.
"""

from array import array

from crypto.backend import HEADROOM
from tunnel.io.journal_ref import JOURNAL_LIMIT, RECEIVED, SENT
from tunnel.vxlan.datapath import move_tap_errors, tap_write_failed

from tunnel.io._journal cimport monotonic as _monotonic

__all__ = ["BATCH", "L2Pump"]

BATCH = 64
READ, ENCAPSULATED, SENT_WHOLE = 0, 1, 2

cdef Py_ssize_t _BATCH = BATCH
cdef Py_ssize_t _HEADROOM = HEADROOM
cdef Py_ssize_t _LIMIT = JOURNAL_LIMIT
cdef object _SENT = SENT
cdef object _RECEIVED = RECEIVED
cdef bytes _NO_FRAMES = bytes(BATCH)


cdef class L2Pump:
    """The endpoint's two lanes; see tunnel/overlay/pump_ref.py."""

    cdef public object fast
    cdef public object l2
    cdef public object wg
    cdef public Py_ssize_t headroom
    cdef public bytes local
    cdef public object dstport
    cdef public object tap
    cdef public Py_ssize_t mtu
    cdef public list tx_bufs
    cdef public list tx_lengths
    cdef public bytearray tx_verdicts
    cdef public object tx_sports
    cdef public bytearray used
    cdef public list spares
    cdef public object snapshot
    cdef public list records
    cdef public object drops
    cdef public dict lanes
    cdef public object cache
    cdef public bytearray rx_verdicts
    cdef public bint active
    cdef public bint enabled
    cdef public object after
    cdef public object general
    cdef public double now
    cdef public Py_ssize_t count
    cdef public int stage
    cdef public list out_bufs
    cdef public list out_lengths
    cdef public Py_ssize_t unsent
    cdef public bint written
    cdef public Py_ssize_t answers
    cdef public Py_ssize_t tx_whole

    def __init__(self, fast, l2, wg, Py_ssize_t headroom, local, dstport):
        if headroom < _HEADROOM:
            raise ValueError("headroom must leave room for the WireGuard header")
        if len(local) not in (4, 16):
            raise ValueError("local must be a packed IPv4 or IPv6 address")
        self.fast = fast
        self.l2 = l2
        self.wg = wg
        self.headroom = headroom
        self.local = bytes(local)
        self.dstport = dstport
        self.tap = None
        self.mtu = 0
        self.tx_bufs = []
        self.tx_lengths = [0] * _BATCH
        self.tx_verdicts = bytearray(_BATCH)
        self.tx_sports = array("H", bytes(2 * _BATCH))
        self.used = bytearray(_BATCH)
        self.spares = []
        self.snapshot = None
        self.records = []
        self.drops = {}
        self.lanes = {"tx_lane": 0, "tx_general": 0, "rx_lane": 0, "rx_general": 0}
        self.cache = l2.SourceCache()
        self.rx_verdicts = bytearray(256)
        self.active = False
        self.enabled = False
        self.after = None
        self.general = None
        self.now = 0.0
        self.count = 0
        self.stage = 0
        self.out_bufs = []
        self.out_lengths = []
        self.unsent = 0
        self.written = False
        self.answers = 0
        self.tx_whole = 0

    # ---- outbound ------------------------------------------------------------------------

    def on_readable(self):
        """The event loop's callback for the TAP fd: one run; done if settled, else
        ``after(count, error)``."""
        cdef Py_ssize_t count = 0
        error = None
        self.now = _monotonic()
        try:
            count = self.run(self.now)
        except Exception as exc:  # the shell counts it
            error = exc
        if error is None and self.settled(count):
            return
        if self.after is not None:
            self.after(count, error)

    cpdef bint settled(self, Py_ssize_t count):
        """Whether the last run left nothing for the shell."""
        tap = self.tap
        if tap.errors:
            return False
        if count and self.stage != 2:
            return False
        return count < len(self.tx_bufs) or not tap.pending

    cpdef Py_ssize_t run(self, double now) except -1:
        """Read one TAP batch and, when the lanes cover it, encapsulate, seal and send it."""
        cdef Py_ssize_t count
        self.stage = 0
        self.unsent = 0
        self.out_bufs = []
        self.out_lengths = []
        tap = self.tap
        if tap is None:
            self.count = 0
            return 0
        count = tap.read(self.tx_bufs, self.tx_lengths, self.headroom, self.mtu)
        self.count = count
        if count and self.tx_lane(count, now):
            self.lanes["tx_lane"] += 1
            if self.send(self.out_bufs, self.out_lengths, now):
                self.stage = 2
                self.tx_whole += 1
        return count

    cpdef bint tx_lane(self, Py_ssize_t count, double now) except -1:
        """The outbound lane; see tunnel/overlay/pump_ref.py."""
        cdef Py_ssize_t ok
        snap = self.snapshot
        if snap is None or not self.active or len(self.records) >= _LIMIT:
            return False
        cdef list bufs = self.tx_bufs
        cdef list lengths = self.tx_lengths
        cdef list runs = []
        ok = self.fast.scan_tx(bufs, lengths, count, self.headroom, snap.seed, snap.port_min, snap.port_max,
                               snap.proxy, self.tx_verdicts, self.tx_sports, runs)
        if ok < count:
            return False
        cdef list out_bufs = []
        cdef list out_lengths = []
        cdef list macs = []
        cdef list remotes = []
        cdef bytearray used = self.used
        if len(used) == _BATCH:
            used[:] = _NO_FRAMES
        else:
            used[:] = bytes(len(used))
        counts = self.l2.encap_runs(bufs, lengths, self.headroom, self.tx_verdicts, self.tx_sports, runs,
                                    snap.entries, self.wg.device.mtu, out_bufs, out_lengths, self.spares, used,
                                    macs, remotes)
        if counts is None:
            return False
        oversized, no_spare = counts
        if oversized:
            self.drops["tx_oversized"] += oversized
        if no_spare:
            self.drops["tx_no_buffer"] += no_spare
        self.records.append((_SENT, tuple(macs), tuple(remotes), now))
        self.out_bufs = out_bufs
        self.out_lengths = out_lengths
        self.stage = 1
        return True

    cpdef bint send(self, list bufs, list lengths, double now) except -1:
        """The WireGuard lane for encapsulated packets; see tunnel/overlay/pump_ref.py."""
        cdef Py_ssize_t count, sealed
        self.unsent = 0
        if bufs is None or lengths is None:
            raise TypeError("bufs and lengths must be lists")
        count = len(bufs)
        if not count:
            return True
        if count > _BATCH:
            return False
        wg = self.wg
        journal = wg.journal
        if not journal.open():
            return False
        device = wg.device
        lane = device.datapath.lane(device, bufs, lengths, _HEADROOM, now)
        if lane is None:
            return False
        peer, keypair = lane
        endpoint = peer.endpoint
        udp = wg.socket_for(endpoint)  # the interface's own choice (its pump's, the general way's)
        if udp is None:
            return False
        sealed = keypair.cipher.seal_batch(bufs, lengths, device.mtu)
        udp.send_slots(bufs, lengths, 0, sealed, endpoint)
        if sealed:
            journal.add((_SENT, peer, keypair, sum(lengths[:sealed]), now))
        self.unsent = sealed
        return sealed == count

    # ---- inbound -------------------------------------------------------------------------

    def deliver(self, bufs, lengths, headroom, verdicts, count, now):
        """The interface's local delivery; see tunnel/overlay/pump_ref.py. Never raises."""
        cdef Py_ssize_t claimed, bad
        if not self.enabled:
            return 0
        cdef list out_bufs = []
        cdef list out_lengths = []
        cdef list sources = []
        try:
            claimed, bad = self.l2.claim(bufs, lengths, count, headroom, verdicts, self.local, self.dstport,
                                         out_bufs, out_lengths, sources, self.cache)
        except Exception:
            self.drops["rx_exception"] += 1
            return 0
        if bad:
            self.drops["rx_bad_udp_csum"] += bad
        if claimed:
            rx_verdicts = self.rx_verdicts
            if len(rx_verdicts) < claimed:
                rx_verdicts = self.rx_verdicts = bytearray(claimed)
            self.written = True
            try:
                taken = self.rx_lane(out_bufs, out_lengths, sources, claimed, now, rx_verdicts)
            except Exception:
                self.drops["rx_exception"] += claimed
                return claimed + bad
            if taken:
                self.lanes["rx_lane"] += 1
            else:
                self.lanes["rx_general"] += 1
                if self.general is not None:
                    self.general(out_bufs, out_lengths, sources, claimed, now, rx_verdicts)
        return claimed + bad

    cpdef bint rx_lane(self, list bufs, list lengths, list sources, Py_ssize_t count, double now,
                       bytearray verdicts) except -1:
        """The inbound lane; see tunnel/overlay/pump_ref.py."""
        cdef Py_ssize_t i, accepted
        snap = self.snapshot
        tap = self.tap
        if (snap is None or snap.proxy or not self.active or tap is None
                or len(self.records) >= _LIMIT):
            return False
        if bufs is None or lengths is None or sources is None or verdicts is None:
            raise TypeError("bufs, lengths and sources must be lists, verdicts a bytearray")
        source = sources[0]
        for i in range(1, count):
            if sources[i] != source:
                return False
        cdef list runs = []
        accepted, nbytes = self.fast.decap_batch(bufs, lengths, count, snap.vni, snap.own_mac, snap.learning,
                                                 sources, verdicts, runs)
        if accepted < count:
            return False
        cdef list macs = []
        if snap.learning:
            entries = snap.entries
            for start in runs:
                mac = bytes(bufs[start][14:20])
                entry = entries.get(mac)
                if entry is None or entry[1][0] != source:
                    return False
                macs.append(mac)
        try:
            tap.write_slots(bufs, lengths, 8, verdicts, count)
        except OSError as exc:
            tap_write_failed(self.drops, exc, accepted)
        else:
            if tap.errors:
                move_tap_errors(tap.errors, self.drops)
        self.records.append((_RECEIVED, tuple(macs), source, accepted, nbytes, now))
        return True

    def answer(self):
        """Called by the WireGuard inbound pump at the end of its wake-up: if the delivery wrote
        to the TAP since, one TAP round for the reply."""
        if self.written:
            self.written = False
            if self.active and self.tap is not None:
                self.answers += 1
                self.on_readable()
