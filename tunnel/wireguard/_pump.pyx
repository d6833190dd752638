# cython: language_level=3
"""One wake-up's work in one native call: TUN -> UDP and UDP -> TUN.

The Cython twin of ``tunnel/wireguard/pump_ref.py``: same API and behaviour; read that module's docstring
for the contract and the reason. Each step is a call into another native object (the TUN and UDP
batch I/O, the datapath's lane rules, the transport cipher); what this saves is the Python
frames between them, which cost most on a cold wake-up. The GIL is held here; the callees
release it around their system calls and crypto. The lanes' journal is ``tunnel.io._journal``'s,
shared with the VXLAN pumps (cimported: its ``add``/``open`` are C calls). The lane decisions go
through the lanes' snapshots (``tunnel.wireguard._lane``, cimported: C fields and calls).
"""

from tunnel.io._journal cimport Journal, check_headroom as _check_headroom, monotonic as _monotonic
from tunnel.wireguard._lane cimport ReceiveLane, SendLane

from tunnel.io._journal import JOURNAL_LIMIT, RECEIVED, SENT

__all__ = ["Journal", "Outbound", "Inbound", "SENT", "RECEIVED", "JOURNAL_LIMIT"]

globals()["Journal"] = Journal  # the cimported type is this module's Journal too (shells: pump.Journal)
cdef object _SENT = SENT
cdef object _RECEIVED = RECEIVED


cdef class Outbound:
    """TUN -> UDP for one interface; see tunnel/wireguard/pump_ref.py."""

    cdef public object device
    cdef public object tun
    cdef public object udp4
    cdef public object udp6
    cdef public Journal journal
    cdef public object after
    cdef Py_ssize_t _headroom
    cdef public list tun_bufs
    cdef public list tun_lengths
    cdef public object too_big_seen
    cdef public double now
    cdef public list bufs
    cdef public list lengths
    cdef public object lane
    cdef public Py_ssize_t sealed
    cdef public object fused
    cdef public object again
    cdef SendLane _send

    def __init__(self, device, tun, udp4, udp6, Journal journal not None, after, Py_ssize_t headroom):
        self._send = SendLane(getattr(device, "generation", None))
        self.device = device
        self.tun = tun
        self.udp4 = udp4
        self.udp6 = udp6
        self.journal = journal
        self.after = after
        self._headroom = _check_headroom(headroom)
        self.tun_bufs = []
        self.tun_lengths = []
        self.too_big_seen = 0
        self.now = 0.0
        self.bufs = []
        self.lengths = []
        self.lane = None
        self.sealed = 0
        self.fused = None
        self.again = None

    @property
    def headroom(self):
        """Where packets start in a slot (an int >= 0: ValueError if negative)."""
        return self._headroom

    @headroom.setter
    def headroom(self, Py_ssize_t value):
        self._headroom = _check_headroom(value)

    @property
    def send_lane(self):
        """The outbound lane snapshot (tunnel.wireguard._lane.SendLane)."""
        return self._send

    cdef inline Py_ssize_t _mtu(self) except? -1:
        # the device's MTU: the snapshot's while the generation holds (an MTU change bumps it)
        if self._send._holds():
            return self._send.mtu
        return self.device.mtu

    def on_readable(self):
        """The event loop's callback for the TUN fd: one run; journal it if settled, else
        ``after(count, error)``."""
        cdef Py_ssize_t count = 0
        error = None
        self.now = _monotonic()
        try:
            count = self.run(self.tun_bufs, self.tun_lengths, self._headroom, self._mtu(), self.now)
        except Exception as exc:  # the interface sorts it out (a TUN read error, or a bug)
            error = exc
        if error is None and self.journal.open():
            again = self.again
            if self.settled(count) or (again is not None and self.leftover(count)):
                self.record(count)
                if again is not None and self.tun.pending:  # (never after a settled run)
                    again(self.on_readable)
                return
        self.after(count, error)

    cdef bint _clean(self, Py_ssize_t count) except -1:
        # the lane took the whole batch (or it was empty) and no MTU question arose
        tun = self.tun
        if tun.needed or tun.errors.get("read:too_big", 0) != self.too_big_seen:
            return False
        return count == 0 or (self.lane is not None and self.sealed == count)

    cpdef bint settled(self, Py_ssize_t count):
        """Whether the last run left nothing for the interface but the journal record."""
        return count < len(self.tun_bufs) and not self.tun.pending and self._clean(count)

    cpdef bint leftover(self, Py_ssize_t count):
        """Whether the last run sent a lane batch whose only loose end is what is left to read:
        a full batch or TSO segments waiting in the TUN batch."""
        return (count > 0 and (count >= len(self.tun_bufs) or bool(self.tun.pending))
                and self._clean(count))

    cpdef record(self, Py_ssize_t count):
        """Journal the last run's lane batch (nothing for an empty read)."""
        if count and self.lane is not None:
            peer, keypair = self.lane
            self.journal.add((_SENT, peer, keypair, sum(self.lengths), self.now))

    cpdef object socket_for(self, endpoint):
        """The UDP socket a lane batch to ``endpoint`` leaves on; see tunnel/wireguard/pump_ref.py."""
        udp = self.udp6 if (":" in endpoint.ip and self.udp6 is not None) else self.udp4
        return self.udp6 if udp is None else udp

    def run(self, list bufs not None, list lengths not None, Py_ssize_t headroom, Py_ssize_t mtu,
            double now):
        """Read one batch and, when the device grants its fast lane, seal and send it."""
        cdef Py_ssize_t n
        self.lane = None
        self.sealed = 0
        n = self.tun.read(bufs, lengths, headroom, mtu)
        if n < len(bufs):
            bufs = bufs[:n]
            lengths = lengths[:n]
        self.bufs = bufs
        self.lengths = lengths
        if n == 0:
            return 0
        cdef SendLane send = self._send
        lane = send.decide(self.device, bufs, lengths, headroom, now)
        if lane is None:
            return n
        if send._holds() and send.lane is lane:  # the snapshot's: no engine object touched
            cipher = send.cipher
            endpoint = send.endpoint
            udp = self.udp6 if (send.v6 and self.udp6 is not None) else self.udp4
            if udp is None:
                udp = self.udp6
        else:
            peer, keypair = lane
            cipher = keypair.cipher
            endpoint = peer.endpoint
            udp = self.socket_for(endpoint)
        if udp is None:  # no socket yet: the general way drops it as it would
            return n
        if self.fused is not None:
            self.sealed = self.fused.seal_send(cipher, udp, bufs, lengths, mtu, endpoint)
            self.lane = lane
            return n
        self.sealed = cipher.seal_batch(bufs, lengths, mtu)
        self.lane = lane
        udp.send_slots(bufs, lengths, 0, self.sealed, endpoint)
        return n


cdef class Inbound:
    """UDP -> TUN for one interface; see tunnel/wireguard/pump_ref.py."""

    cdef public object device
    cdef public object tun
    cdef public Outbound outbound
    cdef public object after
    cdef Py_ssize_t _headroom
    cdef public list udp_bufs
    cdef public list udp_lengths
    cdef public list udp_sources
    cdef public double now
    cdef public list bufs
    cdef public list lengths
    cdef public list sources
    cdef public object keypair
    cdef public list wire_lengths
    cdef public list results
    cdef public Py_ssize_t opened
    cdef public tuple accepted
    cdef public bytearray verdicts
    cdef public Py_ssize_t written
    cdef public object write_error
    cdef public object local
    cdef public object answer
    cdef public bint answered
    cdef public Py_ssize_t replied
    cdef public object reply_error
    cdef public object fused
    cdef public object again
    cdef ReceiveLane _receive
    cdef object _accept_slots

    def __init__(self, device, tun, Outbound outbound not None, after, Py_ssize_t headroom):
        self._receive = ReceiveLane(getattr(device, "generation", None))
        self._accept_slots = None
        self.device = device
        self.tun = tun
        self.outbound = outbound
        self.after = after
        self._headroom = _check_headroom(headroom)
        self.udp_bufs = []
        self.udp_lengths = []
        self.udp_sources = []
        self.now = 0.0
        self.bufs = []
        self.lengths = []
        self.sources = []
        self.keypair = None
        self.wire_lengths = []
        self.results = []
        self.opened = 0
        self.accepted = (0, 0, 0)
        self.verdicts = bytearray(64)  # accept_slots' per-slot verdicts (grown to the batch)
        self.written = 0
        self.write_error = None
        self.local = None
        self.answer = None
        self.answered = False
        self.replied = 0
        self.reply_error = None
        self.fused = None
        self.again = None

    @property
    def headroom(self):
        """Where packets start in a slot (an int >= 0: ValueError if negative)."""
        return self._headroom

    @headroom.setter
    def headroom(self, Py_ssize_t value):
        self._headroom = _check_headroom(value)

    @property
    def receive_lane(self):
        """The inbound lane snapshot (tunnel.wireguard._lane.ReceiveLane)."""
        return self._receive

    def on_readable(self, sock, udp):
        """The event loop's callback for a UDP fd: one run, the outbound run if packets were
        written, then the journal if both are settled, else ``after(sock, count, error)``."""
        cdef Py_ssize_t count = 0
        cdef Outbound outbound = self.outbound
        error = None
        self.now = _monotonic()
        self.answered = False
        self.replied = 0
        self.reply_error = None
        try:
            count = self.run(udp, self.udp_bufs, self.udp_lengths, self.udp_sources, self.now)
        except Exception as exc:  # the interface sorts it out
            error = exc
        if self.written and error is None:
            self.answered = True
            try:
                self.replied = outbound.run(outbound.tun_bufs, outbound.tun_lengths, outbound._headroom,
                                            outbound._mtu(), self.now)
            except Exception as exc:
                self.reply_error = exc
        again = self.again
        if (error is None
                and (self.settled(count, udp) or (again is not None and self.leftover(count, udp)))
                and outbound.journal.open()
                and (not self.answered or (self.reply_error is None and (
                    outbound.settled(self.replied)
                    or (again is not None and outbound.leftover(self.replied)))))):
            if count:
                keepalives, invalid, disallowed = self.accepted
                outbound.journal.add((_RECEIVED, self.keypair, sum(self.wire_lengths), self.opened,
                                      keepalives, invalid, disallowed, self.now))
            if self.answered:
                outbound.now = self.now
                outbound.record(self.replied)
            if again is not None:
                if udp.pending:
                    again(self.on_readable, sock, udp)
                if self.answered and outbound.tun.pending:
                    again(outbound.on_readable)
        else:
            self.after(sock, count, error)
        if self.answer is not None:
            self.answer()

    cdef bint _clean(self, Py_ssize_t count) except -1:
        # (count > 0) the lane opened the whole batch, wrote it, and no datagram filled its slot
        return (self.keypair is not None and self.opened == count and self.write_error is None
                and max(self.wire_lengths) < len(self.bufs[0]))

    cpdef bint settled(self, Py_ssize_t count, udp):
        """Whether the last run left nothing for the interface but the journal record."""
        if udp.pending:
            return False
        return count == 0 or (count < len(self.udp_bufs) and self._clean(count))

    cpdef bint leftover(self, Py_ssize_t count, udp):
        """Whether the last run delivered a lane batch whose only loose end is what is left to
        read: a full batch or GRO segments waiting in the UDP batch."""
        return (count > 0 and (count >= len(self.udp_bufs) or bool(udp.pending))
                and self._clean(count))

    def run(self, udp, list bufs not None, list lengths not None, list sources not None, double now):
        """Receive one batch and, when the device grants the inbound lane, open and deliver it."""
        cdef Py_ssize_t n
        self.keypair = None
        self.written = 0
        self.write_error = None
        n = udp.recv(bufs, lengths, sources)
        if n < len(bufs):
            bufs = bufs[:n]
            lengths = lengths[:n]
            sources = sources[:n]
        self.bufs = bufs
        self.lengths = lengths
        self.sources = sources
        if n == 0:
            return 0
        cdef ReceiveLane receive = self._receive
        device = self.device
        keypair = receive.decide(device, bufs, lengths, sources, now)
        if keypair is None:
            return n
        if receive._holds() and receive.keypair is keypair:  # the snapshot's: no engine object touched
            cipher = receive.cipher
            table = receive.table
            slot = receive.slot
        else:
            cipher = keypair.cipher
            table = device.routes()
            slot = keypair.peer.slot
        accept_slots = self._accept_slots
        if accept_slots is None:
            accept_slots = self._accept_slots = device.datapath.accept_slots
        self.wire_lengths = list(lengths)
        results = [0] * n
        self.results = results
        if self.fused is not None and self.local is None:
            if len(self.verdicts) < n:
                self.verdicts = bytearray(n)
            self.opened, _, self.accepted, self.written, self.write_error = self.fused.open_deliver(
                cipher, accept_slots, table, slot, self.tun, bufs, lengths, results, self._headroom,
                self.verdicts)
            self.keypair = keypair
            return n
        self.opened = cipher.open_batch(bufs, lengths, results)
        self.keypair = keypair
        self.accepted = (0, 0, 0)
        if self.opened:
            if len(self.verdicts) < n:
                self.verdicts = bytearray(n)
            delivered, keepalives, invalid, disallowed = accept_slots(
                table, slot, bufs, lengths, results, self._headroom, self.verdicts)
            self.accepted = (keepalives, invalid, disallowed)
            if delivered and self.local is not None:
                delivered -= self.local(bufs, lengths, self._headroom, self.verdicts, n, now)
            if delivered:
                try:
                    self.written = self.tun.write_slots(bufs, lengths, self._headroom, self.verdicts, n)
                except OSError as exc:
                    self.write_error = exc
        return n
