"""One wake-up's work in one call: TUN -> UDP and UDP -> TUN (pure-Python reference).

``tunnel._pump`` is the Cython twin with the same API; ``tunnel.pump.select()`` picks one.

Why it exists: on a lightly loaded host every packet wakes the daemon from idle, with cold CPU
caches, and then each Python frame on the way from the TUN to the socket costs microseconds (see
docs/benchmarks.md, "Latency"). So the steady state, a batch for one peer whose session needs
nothing but sealing, runs here without a Python frame of ours: the event loop calls
:meth:`Outbound.on_readable`, which reads the batch, asks the engine's datapath whether it may
take the fast lane (``datapath.lane``, the rule behind :meth:`tunnel.device.Device.lane`), seals
it in place and sends it. Only then does it call the interface back (``after``), which does the
bookkeeping (:meth:`~tunnel.device.Device.lane_sent`), sends a batch the lane did not take the
general way (:meth:`~tunnel.device.Device.send_batch`) and reads more rounds with :meth:`run`.

The inbound twin, :class:`Inbound`, is the UDP fd's callback: it receives a batch and, when
every datagram is a transport message for one established keypair from the peer's current
endpoint (``datapath.receive_lane``), opens it in place, checks the inner packets
(``datapath.accept_batch``) and writes them to the TUN; then, since the kernel usually queued
its answer (an echo reply, a TCP ACK) during that write, it runs the outbound pump once, so
the answer leaves too before the interface's callback does the bookkeeping of both
(:meth:`~tunnel.device.Device.lane_received`, then ``lane_sent``).

Contract of :meth:`Outbound.run`: ``bufs`` and ``lengths`` are TUN slots (packets at
``bufs[i][headroom:]``, as ``TunBatch.read`` fills them). It returns how many packets were read;
then :attr:`Outbound.bufs` and :attr:`Outbound.lengths` are the batch (the given lists or
prefixes of them), and :attr:`Outbound.lane` is ``(peer, keypair)`` when the batch was sealed
(``lengths`` are now datagram lengths, :attr:`Outbound.sealed` of them) and handed to the UDP
batch I/O, or None when the caller must send it the general way. TUN read errors (OSError)
propagate before anything else happens; UDP send failures are counted by the UDP batch I/O, as
for any send. :meth:`Outbound.on_readable` runs once on :attr:`Outbound.tun_bufs` and
:attr:`Outbound.tun_lengths` at :attr:`Outbound.now` (read from the monotonic clock) and calls
``after(count, error)``, with the exception ``run`` raised (or None). Single-threaded; buffers
are only borrowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tunnel.peer import Keypair, Peer

After = Callable[[int, "Exception | None"], None]


class Outbound:
    """TUN -> UDP for one interface. ``device`` is its engine, ``tun`` its TunBatch, ``udp4``
    and ``udp6`` its sockets' UdpBatch objects (either may be None; set them again after a
    rebind), ``after`` the interface's callback, ``headroom`` where packets start in a slot."""

    def __init__(self, device: Any, tun: Any, udp4: Any, udp6: Any, after: After, headroom: int) -> None:
        self.device = device
        self.tun = tun
        self.udp4 = udp4
        self.udp6 = udp6
        self.after = after
        self.headroom = headroom
        self.tun_bufs: list[bytearray] = []
        self.tun_lengths: list[int] = []
        self.now = 0.0
        self.bufs: list[bytearray] = []
        self.lengths: list[int] = []
        self.lane: tuple[Peer, Keypair] | None = None
        self.sealed = 0

    def on_readable(self) -> None:
        """The event loop's callback for the TUN fd: one :meth:`run`, then ``after``."""
        self.now = now = time.monotonic()
        count = 0
        error: Exception | None = None
        try:
            count = self.run(self.tun_bufs, self.tun_lengths, self.headroom, self.device.mtu, now)
        except Exception as exc:  # the interface sorts it out (a TUN read error, or a bug)
            error = exc
        self.after(count, error)

    def run(self, bufs: list[bytearray], lengths: list[int], headroom: int, mtu: int, now: float) -> int:
        """Read one batch and, when the device grants its fast lane, seal and send it."""
        self.lane = None
        self.sealed = 0
        n: int = self.tun.read(bufs, lengths, headroom, mtu)
        if n < len(bufs):
            bufs, lengths = bufs[:n], lengths[:n]
        self.bufs, self.lengths = bufs, lengths
        if n == 0:
            return 0
        device = self.device
        lane = device.datapath.lane(device, bufs, lengths, headroom, now)
        if lane is None:
            return n
        peer, keypair = lane
        endpoint = peer.endpoint
        udp = self.udp6 if ":" in endpoint.ip and self.udp6 is not None else self.udp4
        if udp is None:
            udp = self.udp6
            if udp is None:  # no socket yet: the general way drops it as it would
                return n
        self.sealed = keypair.cipher.seal_batch(bufs, lengths, mtu)
        self.lane = lane
        udp.send_slots(bufs, lengths, 0, self.sealed, endpoint)
        return n


class Inbound:
    """UDP -> TUN for one interface. ``device`` is its engine, ``tun`` its TunBatch,
    ``outbound`` its :class:`Outbound` (run once after a write), ``after`` the interface's
    callback ``after(sock, count, error)``, ``headroom`` where an opened packet starts (the
    transport header's size).

    :meth:`on_readable` receives into :attr:`udp_bufs`, :attr:`udp_lengths` and
    :attr:`udp_sources`. After it, :attr:`bufs`, :attr:`lengths` and :attr:`sources` are the
    batch. :attr:`keypair` is set when the lane opened it; then :attr:`wire_lengths` are the
    datagram sizes, :attr:`results` and :attr:`opened` the cipher's verdicts, :attr:`accepted`
    the (keepalives, invalid, disallowed) counts, :attr:`written` how many packets the TUN took
    and :attr:`write_error` the OSError the write raised (or None). :attr:`replied` and
    :attr:`reply_error` are the outcome of the outbound run after a write (0/None if none ran).
    With :attr:`keypair` None the caller handles the batch the general way.
    """

    def __init__(self, device: Any, tun: Any, outbound: Outbound,
                 after: Callable[[Any, int, Exception | None], None], headroom: int) -> None:
        self.device = device
        self.tun = tun
        self.outbound = outbound
        self.after = after
        self.headroom = headroom
        self.udp_bufs: list[bytearray] = []
        self.udp_lengths: list[int] = []
        self.udp_sources: list[Any] = []
        self.now = 0.0
        self.bufs: list[bytearray] = []
        self.lengths: list[int] = []
        self.sources: list[Any] = []
        self.keypair: Any = None
        self.wire_lengths: list[int] = []
        self.results: list[int] = []
        self.opened = 0
        self.accepted = (0, 0, 0)
        self.written = 0
        self.write_error: OSError | None = None
        self.replied = 0
        self.reply_error: Exception | None = None

    def on_readable(self, sock: Any, udp: Any) -> None:
        """The event loop's callback for a UDP fd (``sock`` the interface's socket, ``udp`` its
        UdpBatch): one :meth:`run`, the outbound run if packets were written, then ``after``."""
        self.now = now = time.monotonic()
        self.replied = 0
        self.reply_error = None
        count = 0
        error: Exception | None = None
        try:
            count = self.run(udp, self.udp_bufs, self.udp_lengths, self.udp_sources, now)
        except Exception as exc:  # the interface sorts it out
            error = exc
        if self.written and error is None:
            outbound = self.outbound
            try:
                self.replied = outbound.run(outbound.tun_bufs, outbound.tun_lengths, outbound.headroom,
                                            self.device.mtu, now)
            except Exception as exc:
                self.reply_error = exc
        self.after(sock, count, error)

    def run(self, udp: Any, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> int:
        """Receive one batch and, when the device grants the inbound lane, open and deliver it."""
        self.keypair = None
        self.written = 0
        self.write_error = None
        n: int = udp.recv(bufs, lengths, sources)
        if n < len(bufs):
            bufs, lengths, sources = bufs[:n], lengths[:n], sources[:n]
        self.bufs, self.lengths, self.sources = bufs, lengths, sources
        if n == 0:
            return 0
        device = self.device
        datapath = device.datapath
        keypair = datapath.receive_lane(device, bufs, lengths, sources, now)
        if keypair is None:
            return n
        self.wire_lengths = list(lengths)
        self.results = results = [0] * n
        self.opened = opened = keypair.cipher.open_batch(bufs, lengths, results)
        self.keypair = keypair
        self.accepted = (0, 0, 0)
        if opened:
            packets, keepalives, invalid, disallowed = datapath.accept_batch(
                device.routes(), keypair.peer.slot, bufs, lengths, results, self.headroom)
            self.accepted = (keepalives, invalid, disallowed)
            if packets:
                try:
                    self.written = self.tun.write(packets)
                except OSError as exc:
                    self.write_error = exc
        return n
