# cython: language_level=3
"""One VXLAN wake-up's work in one native call: TAP -> UDP and UDP -> TAP.

The Cython twin of ``tunnel/vxlan/pump_ref.py``: same API and behaviour; read that module's
docstring for the contract and the reason. Each step is a call into another native object (the
TAP and UDP batch I/O, ``tunnel.vxlan._fast``'s per-frame loops and send batches); what this
saves is the Python frames between them, which cost most on a cold wake-up. The GIL is held
here; the callees release it around their system calls and their per-frame work (segmentation,
coalescing, checksums, sendmmsg). The snapshot, the record application and the journal's
record shapes are shared with the reference (imported from it: they are not per-frame code);
the journal is ``tunnel.io._journal``'s, shared with the WireGuard pumps (cimported: its
``add``/``open`` are C calls).
"""

from tunnel.io._journal cimport Journal, check_headroom as _check_headroom, monotonic as _monotonic

from array import array

from tunnel.io._journal import JOURNAL_LIMIT, RECEIVED, SENT
from tunnel.vxlan.fdb import ZERO_MAC
from tunnel.vxlan.pump_ref import (
    Snapshot,
    apply_record,
    compile_snapshot,
    fdb_version,
)

__all__ = ["JOURNAL_LIMIT", "RECEIVED", "SENT", "Inbound", "Journal", "Outbound", "Snapshot",
           "apply_record", "compile_snapshot", "fdb_version"]

globals()["Journal"] = Journal  # the cimported type is this module's Journal too (shells: pump.Journal)
cdef object _SENT = SENT
cdef object _RECEIVED = RECEIVED
cdef bytes _ZERO = ZERO_MAC
cdef object _MISSING = object()
cdef int _TX_ARP = 2
cdef Py_ssize_t _VXLAN_HLEN = 8
cdef Py_ssize_t _ETH_HLEN = 14


cdef class Outbound:
    """TAP -> UDP; see tunnel/vxlan/pump_ref.py."""

    cdef public object tap
    cdef public object batch
    cdef public object fast
    cdef public Journal journal
    cdef public object after
    cdef Py_ssize_t _headroom
    cdef public object snapshot
    cdef public list tap_bufs
    cdef public list tap_lengths
    cdef public bytearray verdicts
    cdef public object sports
    cdef public double now
    cdef public bint lane
    cdef public Py_ssize_t sent
    cdef public Py_ssize_t full
    cdef public Py_ssize_t errors
    cdef public list macs
    cdef public list remotes
    cdef public object again

    def __init__(self, tap, batch, fast, Journal journal not None, after, Py_ssize_t headroom):
        self._headroom = _check_headroom(headroom)
        self.tap = tap
        self.batch = batch
        self.fast = fast
        self.journal = journal
        self.after = after
        self.snapshot = None
        self.tap_bufs = []
        self.tap_lengths = []
        self.verdicts = bytearray(0)
        self.sports = array("H")
        self.now = 0.0
        self.lane = False
        self.sent = 0
        self.full = 0
        self.errors = 0
        self.macs = []
        self.remotes = []
        self.again = None

    @property
    def headroom(self):
        """Where frames start in a slot (an int >= 0: ValueError if negative)."""
        return self._headroom

    @headroom.setter
    def headroom(self, Py_ssize_t value):
        self._headroom = _check_headroom(value)

    def on_readable(self):
        """The TAP fd's callback: one run; journal it if settled, else ``after(count, error)``."""
        cdef Py_ssize_t count = 0
        error = None
        self.now = _monotonic()
        try:
            count = self.run(self.tap_bufs, self.tap_lengths, self._headroom, self.now)
        except Exception as exc:  # the shell sorts it out (a TAP read error, or a bug)
            error = exc
        if error is None and self.journal.open():
            if self.settled(count):
                self.record(count)
                return
            again = self.again
            if again is not None and self.leftover(count):
                self.record(count)
                if self.tap.pending:
                    again(self.on_readable)
                return
        self.after(count, error)

    cpdef bint settled(self, Py_ssize_t count):
        """Whether the last run left nothing for the shell but the journal record."""
        tap = self.tap
        if count >= len(self.tap_bufs) or tap.pending or tap.errors:
            return False
        return count == 0 or (self.lane and not self.full and not self.errors)

    cpdef bint leftover(self, Py_ssize_t count):
        """Whether the last run sent a lane batch whose only loose end is what is left to read."""
        tap = self.tap
        return (count > 0 and self.lane and not self.full and not self.errors and not tap.errors
                and (count >= len(self.tap_bufs) or bool(tap.pending)))

    cpdef tuple pending_record(self):
        """The SENT record of the last run's lane batch."""
        return (_SENT, tuple(self.macs), tuple(self.remotes), self.now)

    cpdef record(self, Py_ssize_t count):
        """Journal the last run's lane batch (nothing for an empty read)."""
        if count and self.lane:
            self.journal.add(self.pending_record())

    cpdef Py_ssize_t run(self, list bufs, list lengths, Py_ssize_t headroom, double now) except -1:
        """Read one batch and, when the snapshot covers it, send it; returns the count read."""
        cdef Py_ssize_t n, ok, start, end, frames, nbytes
        cdef bytearray verdicts = self.verdicts
        cdef dict entries
        cdef list items, macs, remotes, runs
        cdef bytearray buf
        if bufs is None or lengths is None:
            raise TypeError("bufs and lengths must be lists")
        self.lane = False
        self.sent = 0
        self.full = 0
        self.errors = 0
        snap = self.snapshot
        tap = self.tap
        n = tap.read(bufs, lengths, headroom, tap.mtu)
        if n == 0 or snap is None:
            return n
        runs = []
        ok = self.fast.scan_tx(bufs, lengths, n, headroom, snap.seed, snap.port_min,
                               snap.port_max, snap.proxy, verdicts, self.sports, runs)
        if ok < n:
            return n
        entries = snap.entries
        items = []
        macs = []
        remotes = []
        for run in runs:
            start, end, frames, nbytes = run
            if verdicts[start] == _TX_ARP:
                return n  # proxy ARP: the engine answers or forwards it
            buf = bufs[start]
            mac = bytes(buf[headroom:headroom + 6])
            entry = entries.get(mac, _MISSING)
            if entry is _MISSING:
                entry = entries.get(_ZERO)
            if entry is None:
                return n
            dests, ips = <tuple>entry
            for dest in <tuple>dests:
                items.append((start, end, dest))
            macs.append(mac)
            remotes.append((ips, frames, nbytes))
        self.macs = macs
        self.remotes = remotes
        sent, full, errors = self.batch.send(bufs, lengths, headroom, verdicts, self.sports, items)
        self.sent = sent
        self.full = full
        self.errors = errors
        self.lane = True
        return n


cdef class Inbound:
    """UDP -> TAP; see tunnel/vxlan/pump_ref.py."""

    cdef public object udp
    cdef public object tap
    cdef public object fast
    cdef public Outbound outbound
    cdef public object after
    cdef public list udp_bufs
    cdef public list udp_lengths
    cdef public list udp_sources
    cdef public bytearray verdicts
    cdef public double now
    cdef public bint lane
    cdef public Py_ssize_t accepted
    cdef public Py_ssize_t nbytes
    cdef public object source
    cdef public list macs
    cdef public Py_ssize_t written
    cdef public object write_error
    cdef public bint answered
    cdef public Py_ssize_t replied
    cdef public object reply_error
    cdef public object again

    def __init__(self, udp, tap, fast, Outbound outbound not None, after):
        self.udp = udp
        self.tap = tap
        self.fast = fast
        self.outbound = outbound
        self.after = after
        self.udp_bufs = []
        self.udp_lengths = []
        self.udp_sources = []
        self.verdicts = bytearray(0)
        self.now = 0.0
        self.lane = False
        self.accepted = 0
        self.nbytes = 0
        self.source = None
        self.macs = []
        self.written = 0
        self.write_error = None
        self.answered = False
        self.replied = 0
        self.reply_error = None
        self.again = None

    def on_readable(self):
        """The UDP fd's callback: one run, the outbound run if frames were written, then the
        journal if both are settled, else ``after(count, error)``."""
        cdef Py_ssize_t count = 0
        cdef Outbound outbound = self.outbound
        cdef Journal journal = outbound.journal
        error = None
        self.now = _monotonic()
        self.answered = False
        self.replied = 0
        self.reply_error = None
        try:
            count = self.run(self.udp_bufs, self.udp_lengths, self.udp_sources, self.now)
        except Exception as exc:  # the shell sorts it out
            error = exc
        if self.written and error is None:
            self.answered = True
            outbound.now = self.now
            try:
                self.replied = outbound.run(outbound.tap_bufs, outbound.tap_lengths,
                                            outbound._headroom, self.now)
            except Exception as exc:
                self.reply_error = exc
        again = self.again
        if (error is None
                and (self.settled(count) or (again is not None and self.leftover(count)))
                and journal.open()
                and (not self.answered or (self.reply_error is None and (
                    outbound.settled(self.replied)
                    or (again is not None and outbound.leftover(self.replied)))))):
            if count:
                journal.add(self.pending_record())
            if self.answered:
                outbound.record(self.replied)
            if again is not None:
                if self.udp.pending:
                    again(self.on_readable)
                elif self.answered and self.tap.pending:
                    again(outbound.on_readable)
            return
        self.after(count, error)

    cpdef bint settled(self, Py_ssize_t count):
        """Whether the last run left nothing for the shell but the journal record."""
        udp = self.udp
        if udp.pending or udp.errors:
            return False
        if count == 0:
            return True
        return (count < len(self.udp_bufs) and self.lane and self.write_error is None
                and not self.tap.errors)

    cpdef bint leftover(self, Py_ssize_t count):
        """Whether the last run wrote a lane batch whose only loose end is what is left to read."""
        return (count > 0 and not self.udp.errors and self.lane and self.write_error is None
                and not self.tap.errors
                and (count >= len(self.udp_bufs) or bool(self.udp.pending)))

    cpdef tuple pending_record(self):
        """The RECEIVED record of the last run's lane batch."""
        return (_RECEIVED, tuple(self.macs), self.source, self.accepted, self.nbytes, self.now)

    cpdef Py_ssize_t run(self, list bufs, list lengths, list sources, double now) except -1:
        """Receive one batch and, when the snapshot says the engine would only count it,
        write it to the TAP; returns the count received."""
        cdef Py_ssize_t n, i, size, accepted, nbytes, start
        cdef bytearray verdicts = self.verdicts
        cdef list runs, macs
        cdef dict entries
        cdef bytearray buf
        if bufs is None or lengths is None or sources is None:
            raise TypeError("bufs, lengths and sources must be lists")
        self.lane = False
        self.written = 0
        self.write_error = None
        snap = self.outbound.snapshot
        n = self.udp.recv(bufs, lengths, sources)
        if n == 0 or snap is None or snap.proxy:
            return n
        source = sources[0]
        size = len(<bytearray>bufs[0])
        for i in range(n):
            item = sources[i]
            if <Py_ssize_t>lengths[i] >= size or (item is not source and item != source):
                return n  # a datagram filled its slot, or more than one sender
        runs = []
        accepted, nbytes = self.fast.decap_batch(bufs, lengths, n, snap.vni, snap.own_mac,
                                                 snap.learning, sources, verdicts, runs)
        if accepted < n:
            return n
        macs = []
        if snap.learning:
            entries = snap.entries
            for start in runs:
                buf = bufs[start]
                mac = bytes(buf[_ETH_HLEN:_ETH_HLEN + 6])
                entry = entries.get(mac)
                if entry is None or (<tuple>(<tuple>entry)[1])[0] != source:
                    return n  # learning would change the FDB, or a conflict: Python
                macs.append(mac)
        self.macs = macs
        self.source = source
        self.accepted = accepted
        self.nbytes = nbytes
        self.lane = True
        try:
            self.written = self.tap.write_slots(bufs, lengths, _VXLAN_HLEN, verdicts, n)
        except OSError as exc:
            self.write_error = exc
        return n
