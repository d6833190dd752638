# cython: language_level=3
"""One wake-up's work in one native call: TUN -> UDP and UDP -> TUN.

The Cython twin of ``tunnel/pump_ref.py``: same API and behaviour; read that module's docstring
for the contract and the reason. Each step is a call into another native object (the TUN and UDP
batch I/O, the datapath's lane rule, the transport cipher); what this saves is the Python frames
between them, which cost most on a cold wake-up. The GIL is held here; the callees release it
around their system calls and crypto.
"""

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

__all__ = ["Outbound", "Inbound"]


cdef inline double _monotonic() noexcept nogil:
    # The clock of Python's time.monotonic(), which the rest of the shell reads.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class Outbound:
    """TUN -> UDP for one interface; see tunnel/pump_ref.py."""

    cdef public object device
    cdef public object tun
    cdef public object udp4
    cdef public object udp6
    cdef public object after
    cdef public Py_ssize_t headroom
    cdef public list tun_bufs
    cdef public list tun_lengths
    cdef public double now
    cdef public list bufs
    cdef public list lengths
    cdef public object lane
    cdef public Py_ssize_t sealed

    def __init__(self, device, tun, udp4, udp6, after, Py_ssize_t headroom):
        self.device = device
        self.tun = tun
        self.udp4 = udp4
        self.udp6 = udp6
        self.after = after
        self.headroom = headroom
        self.tun_bufs = []
        self.tun_lengths = []
        self.now = 0.0
        self.bufs = []
        self.lengths = []
        self.lane = None
        self.sealed = 0

    def on_readable(self):
        """The event loop's callback for the TUN fd: one run, then ``after(count, error)``."""
        cdef Py_ssize_t count = 0
        error = None
        self.now = _monotonic()
        try:
            count = self.run(self.tun_bufs, self.tun_lengths, self.headroom, self.device.mtu, self.now)
        except Exception as exc:  # the interface sorts it out (a TUN read error, or a bug)
            error = exc
        self.after(count, error)

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
        device = self.device
        lane = device.datapath.lane(device, bufs, lengths, headroom, now)
        if lane is None:
            return n
        peer, keypair = lane
        endpoint = peer.endpoint
        udp = self.udp6 if (":" in endpoint.ip and self.udp6 is not None) else self.udp4
        if udp is None:
            udp = self.udp6
            if udp is None:  # no socket yet: the general way drops it as it would
                return n
        self.sealed = keypair.cipher.seal_batch(bufs, lengths, mtu)
        self.lane = lane
        udp.send_slots(bufs, lengths, 0, self.sealed, endpoint)
        return n


cdef class Inbound:
    """UDP -> TUN for one interface; see tunnel/pump_ref.py."""

    cdef public object device
    cdef public object tun
    cdef public Outbound outbound
    cdef public object after
    cdef public Py_ssize_t headroom
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
    cdef public Py_ssize_t written
    cdef public object write_error
    cdef public Py_ssize_t replied
    cdef public object reply_error

    def __init__(self, device, tun, Outbound outbound not None, after, Py_ssize_t headroom):
        self.device = device
        self.tun = tun
        self.outbound = outbound
        self.after = after
        self.headroom = headroom
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
        self.written = 0
        self.write_error = None
        self.replied = 0
        self.reply_error = None

    def on_readable(self, sock, udp):
        """The event loop's callback for a UDP fd: one run, the outbound run if packets were
        written, then ``after(sock, count, error)``."""
        cdef Py_ssize_t count = 0
        cdef Outbound outbound
        error = None
        self.now = _monotonic()
        self.replied = 0
        self.reply_error = None
        try:
            count = self.run(udp, self.udp_bufs, self.udp_lengths, self.udp_sources, self.now)
        except Exception as exc:  # the interface sorts it out
            error = exc
        if self.written and error is None:
            outbound = self.outbound
            try:
                self.replied = outbound.run(outbound.tun_bufs, outbound.tun_lengths, outbound.headroom,
                                            self.device.mtu, self.now)
            except Exception as exc:
                self.reply_error = exc
        self.after(sock, count, error)

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
        device = self.device
        datapath = device.datapath
        keypair = datapath.receive_lane(device, bufs, lengths, sources, now)
        if keypair is None:
            return n
        self.wire_lengths = list(lengths)
        results = [0] * n
        self.results = results
        self.opened = keypair.cipher.open_batch(bufs, lengths, results)
        self.keypair = keypair
        self.accepted = (0, 0, 0)
        if self.opened:
            packets, keepalives, invalid, disallowed = datapath.accept_batch(
                device.routes(), keypair.peer.slot, bufs, lengths, results, self.headroom)
            self.accepted = (keepalives, invalid, disallowed)
            if packets:
                try:
                    self.written = self.tun.write(packets)
                except OSError as exc:
                    self.write_error = exc
        return n
