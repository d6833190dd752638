"""One wake-up's work in one call: TUN -> UDP and UDP -> TUN (pure-Python reference).

``tunnel.wireguard._pump`` is the Cython twin with the same API; ``tunnel.wireguard.pump.select()`` picks one.

Why it exists: on a lightly loaded host every packet wakes the daemon from idle, with cold CPU
caches, and then each Python frame on the way from the TUN to the socket costs microseconds (see
docs/benchmarks.md, "Latency"). So the steady state runs here without a Python frame of ours:

- :class:`Outbound` is the TUN fd's callback. It reads a batch and, when every packet goes to
  one peer whose session needs nothing but sealing (``datapath.lane``, the rule behind
  :meth:`tunnel.wireguard.device.Device.lane`), seals it in place and sends it.
- :class:`Inbound` is the UDP fds' callback. It receives a batch and, when every datagram is a
  transport message for one established keypair from the peer's current endpoint
  (``datapath.receive_lane``), opens it in place, checks the inner packets
  (``datapath.accept_slots``) and writes them to the TUN (``TunBatch.write_slots``): no Python
  object per packet on either lane. The kernel usually queues its answer
  (an echo reply, a TCP ACK) during that write, so it then runs the outbound pump once.

Both ask through their lane snapshot (:attr:`Outbound.send_lane`, :attr:`Inbound.receive_lane`:
``tunnel.wireguard.lane``): while the engine's generation counter has not moved, a batch is
checked against the last lane granted, and sealed or opened with the cipher, endpoint, route
table and slot kept there, without reading the device, peer or keypair objects; otherwise
``datapath.lane``/``receive_lane`` decide as before (the same answers: tunnel/wireguard/lane_ref.py).

**The journal.** What the engine must still do for such a *settled* batch (counters, timers;
:meth:`~tunnel.wireguard.device.Device.lane_sent` and :meth:`~tunnel.wireguard.device.Device.lane_received`) is
appended to a :class:`Journal` instead of being done on the spot, and the interface applies the
journal in order, ``delay`` seconds later (a loop timer) or before any other work on the engine,
whichever comes first. So the datagrams and packets leave first, and the daemon yields the CPU
at once (on a 2-CPU host the other end of a ping often runs on the same CPU and waits for it).
The order of the engine's state changes is kept: records are applied in the order they arose,
and every other entry into the engine applies them first. The lane rules guarantee that a
pending record cannot change a later lane decision (they never stage, confirm a session or
move an endpoint). A batch that is not settled (a lane not taken, a failure, an MTU question,
a full journal; a full batch or leftovers to read, unless :attr:`Outbound.again` is set) goes
to the interface's ``after`` callback at once, which applies the journal and then handles that
batch.

**Leftovers.** A lane batch whose only loose end is what is left to read (a full batch, TSO
segments waiting in the TUN batch, GRO segments waiting in the UDP batch: :meth:`Outbound.leftover`,
:meth:`Inbound.leftover`) is journaled like a settled one when the shell has set ``again``
(``again(callback, *args)``, the event loop's ``call_soon``): the pump then calls it itself
when segments wait (they do not make the fd readable; a full batch without them needs nothing,
the fd stays readable), instead of a Python round through ``after`` per batch. Under one TCP
stream most batches are such (the sender's TUN reads are full batches of TSO segments, the
receiver's UDP reads full batches of GRO segments). With ``again`` None (the default) such a
batch goes to ``after`` as before. The VXLAN pumps do the same (tunnel/vxlan/pump_ref.py).

Contracts. :meth:`Outbound.run` reads into ``bufs``/``lengths`` (packets at
``bufs[i][headroom:]``, as ``TunBatch.read`` fills them) and returns the count; then
:attr:`Outbound.bufs`/:attr:`Outbound.lengths` are the batch (the lists or prefixes of them)
and :attr:`Outbound.lane` is ``(peer, keypair)`` if the batch was sealed (``lengths`` now
datagram lengths, :attr:`Outbound.sealed` of them) and handed to the UDP batch I/O, else None.
:meth:`Inbound.run` likewise; see :class:`Inbound`. TUN read errors (OSError) propagate before
anything else happens; send failures are counted by the UDP batch I/O as for any send.
Single-threaded (the event loop's thread); buffers are only borrowed.

Arguments (both twins, the same errors): ``headroom`` (constructors, and the ``headroom``
attribute) is an int >= 0 (TypeError if not an int, ValueError if negative); ``delay`` and
``now`` are real numbers and ``mtu``/``count`` ints (TypeError); the batch lists given to
``run`` (``bufs``, ``lengths``, ``sources``) are lists (TypeError for any other type, None
included); ``journal`` is this module's :class:`Journal` and ``outbound`` this module's
:class:`Outbound` (TypeError otherwise, None included); a journal record is a tuple (or None).
Short lists and a negative ``headroom`` or ``mtu`` given to ``run`` are refused by the batch
I/O (ValueError) before anything is read.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from typing import Any

from tunnel.io.journal_ref import JOURNAL_LIMIT, RECEIVED, SENT, Journal
from tunnel.io.journal_ref import exact as _exact
from tunnel.io.journal_ref import headroom as _headroom
from tunnel.io.journal_ref import real as _real
from tunnel.wireguard.lane_ref import ReceiveLane, SendLane
from tunnel.wireguard.peer import Keypair, Peer

# The journal's records here: (SENT, peer, keypair, datagram bytes, now) for Device.lane_sent;
# (RECEIVED, keypair, datagram bytes, opened, keepalives, invalid, disallowed, now) for
# Device.lane_received. Journal, SENT, RECEIVED and JOURNAL_LIMIT are tunnel.io.journal_ref's
# (shared with the VXLAN pumps), re-exported.

class Outbound:
    """TUN -> UDP for one interface. ``device`` is its engine, ``tun`` its TunBatch, ``udp4``
    and ``udp6`` its sockets' UdpBatch objects (either may be None; set them again after a
    rebind), ``journal`` the interface's :class:`Journal`, ``after(count, error)`` its callback
    for a batch that is not settled, ``headroom`` where packets start in a slot.

    :meth:`on_readable` reads into :attr:`tun_bufs`/:attr:`tun_lengths` at :attr:`now` (the
    monotonic clock). :attr:`too_big_seen` is the TUN's ``read:too_big`` count the interface
    last looked at: a read that changes it is not settled.
    """

    def __init__(self, device: Any, tun: Any, udp4: Any, udp6: Any, journal: Journal,
                 after: Callable[[int, Exception | None], None], headroom: int) -> None:
        _exact(journal, Journal, "journal")
        self._headroom = _headroom(headroom)
        self.device = device
        self.tun = tun
        self.udp4 = udp4
        self.udp6 = udp6
        self.journal = journal
        self.after = after
        self.tun_bufs: list[bytearray] = []
        self.tun_lengths: list[int] = []
        self.too_big_seen = 0
        self.now = 0.0
        self.bufs: list[bytearray] = []
        self.lengths: list[int] = []
        self.lane: tuple[Peer, Keypair] | None = None
        self.sealed = 0
        #: the thread's fused lane steps (None: separate calls; a worker of ``workers N`` sets
        #: its ``tunnel.wireguard.fused.Fused``): the seal and the send of a lane batch in one
        #: call, the same results (tunnel/wireguard/fused_ref.py)
        self.fused: Any = None
        #: ``again(callback, *args)`` (None: none): run ``callback(*args)`` soon; set by the
        #: shell to take leftovers (see the module docstring), called with :meth:`on_readable`
        self.again: Callable[..., None] | None = None
        self._send = SendLane(getattr(device, "generation", None))

    @property
    def headroom(self) -> int:
        """Where packets start in a slot (an int >= 0: ValueError if negative)."""
        return self._headroom

    @headroom.setter
    def headroom(self, value: int) -> None:
        self._headroom = _headroom(value)

    @property
    def send_lane(self) -> SendLane:
        """The outbound lane snapshot (tunnel.wireguard.lane_ref.SendLane)."""
        return self._send

    def _mtu(self) -> int:
        """The device's MTU: the snapshot's while the generation holds (an MTU change bumps it)."""
        send = self._send
        return send.mtu if send.holds() else int(self.device.mtu)

    def on_readable(self) -> None:
        """The event loop's callback for the TUN fd: one :meth:`run`; journal it if settled,
        else ``after``."""
        self.now = now = time.monotonic()
        count = 0
        error: Exception | None = None
        try:
            count = self.run(self.tun_bufs, self.tun_lengths, self._headroom, self._mtu(), now)
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

    def _clean(self, count: int) -> bool:
        # the lane took the whole batch (or it was empty) and no MTU question arose
        tun = self.tun
        if tun.needed or tun.errors.get("read:too_big", 0) != self.too_big_seen:
            return False
        return count == 0 or (self.lane is not None and self.sealed == count)

    def settled(self, count: int) -> bool:
        """Whether the last :meth:`run` left nothing for the interface but the journal record."""
        count = operator.index(count)
        return count < len(self.tun_bufs) and not self.tun.pending and self._clean(count)

    def leftover(self, count: int) -> bool:
        """Whether the last :meth:`run` sent a lane batch whose only loose end is what is left
        to read: a full batch or TSO segments waiting in the TUN batch."""
        count = operator.index(count)
        return (count > 0 and (count >= len(self.tun_bufs) or bool(self.tun.pending))
                and self._clean(count))

    def record(self, count: int) -> None:
        """Journal the last run's lane batch (nothing for an empty read)."""
        count = operator.index(count)
        if count and self.lane is not None:
            peer, keypair = self.lane
            self.journal.add((SENT, peer, keypair, sum(self.lengths), self.now))

    def socket_for(self, endpoint: Any) -> Any:
        """The UDP socket a lane batch to ``endpoint`` leaves on: its family's, else the other
        one (as ``UdpBind.send_batch`` picks for the general way); None before any is bound.
        Also the L2 overlay pump's choice for its WireGuard lane."""
        udp = self.udp6 if ":" in endpoint.ip and self.udp6 is not None else self.udp4
        return self.udp6 if udp is None else udp

    def run(self, bufs: list[bytearray], lengths: list[int], headroom: int, mtu: int, now: float) -> int:
        """Read one batch and, when the device grants its fast lane, seal and send it."""
        _exact(bufs, list, "bufs")
        _exact(lengths, list, "lengths")
        headroom, mtu, now = operator.index(headroom), operator.index(mtu), _real(now)
        self.lane = None
        self.sealed = 0
        n: int = self.tun.read(bufs, lengths, headroom, mtu)
        if n < len(bufs):
            bufs, lengths = bufs[:n], lengths[:n]
        self.bufs, self.lengths = bufs, lengths
        if n == 0:
            return 0
        send = self._send
        lane = send.decide(self.device, bufs, lengths, headroom, now)
        if lane is None:
            return n
        if send.holds() and send.lane is lane:  # the snapshot's: no engine object touched
            cipher, endpoint = send.cipher, send.endpoint
            udp = self.udp6 if send.v6 and self.udp6 is not None else self.udp4
            if udp is None:
                udp = self.udp6
        else:
            peer, keypair = lane
            cipher, endpoint = keypair.cipher, peer.endpoint
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


class Inbound:
    """UDP -> TUN for one interface. ``device`` is its engine, ``tun`` its TunBatch,
    ``outbound`` its :class:`Outbound` (run once after a write; it shares its journal),
    ``after(sock, count, error)`` the interface's callback for a batch that is not settled,
    ``headroom`` where an opened packet starts (the transport header's size).

    :meth:`on_readable` receives into :attr:`udp_bufs`, :attr:`udp_lengths` and
    :attr:`udp_sources`. After :meth:`run`, :attr:`bufs`, :attr:`lengths` and :attr:`sources`
    are the batch. :attr:`keypair` is set when the lane opened it; then :attr:`wire_lengths` are
    the datagram sizes, :attr:`results` and :attr:`opened` the cipher's verdicts,
    :attr:`accepted` the (keepalives, invalid, disallowed) counts, :attr:`written` how many
    packets the TUN took and :attr:`write_error` the OSError the write raised (or None).
    :attr:`local` (default None) is the interface's local delivery: given the opened batch after
    the allowed-IPs check, it takes the packets addressed to it before the TUN write. After
    :meth:`on_readable`, :attr:`answered` says whether it ran the outbound pump after a write,
    and :attr:`replied`/:attr:`reply_error` are that run's outcome. With :attr:`keypair` None
    the caller handles the batch the general way. :attr:`answer` (default None) is called at
    the end of every :meth:`on_readable`, after the batch's records or ``after`` (the local
    delivery's chance to send the reply to what it wrote, in the same wake-up).
    """

    def __init__(self, device: Any, tun: Any, outbound: Outbound,
                 after: Callable[[Any, int, Exception | None], None], headroom: int) -> None:
        _exact(outbound, Outbound, "outbound")
        self._headroom = _headroom(headroom)
        self.device = device
        self.tun = tun
        self.outbound = outbound
        self.after = after
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
        self.verdicts = bytearray(64)  # accept_slots' per-slot verdicts (grown to the batch)
        self.written = 0
        self.write_error: OSError | None = None
        #: local delivery (None: none): ``local(bufs, lengths, headroom, verdicts, count, now)``
        #: sees the accepted packets before the TUN write, takes those addressed to it (their
        #: verdicts set non-zero) and returns how many it took; it must not raise
        self.local: Callable[..., int] | None = None
        #: ``answer()`` (None: none): called at the end of every :meth:`on_readable`, after the
        #: batch's records or ``after`` (the local delivery's reply read); must not raise
        self.answer: Callable[[], None] | None = None
        #: the thread's fused lane steps (None: separate calls; see :attr:`Outbound.fused`):
        #: the open, the check and the write of a lane batch in one call, when :attr:`local`
        #: is None
        self.fused: Any = None
        #: ``again(callback, *args)`` (None: none): as :attr:`Outbound.again`, called with
        #: ``(on_readable, sock, udp)`` or the outbound pump's ``on_readable``
        self.again: Callable[..., None] | None = None
        self.answered = False
        self.replied = 0
        self.reply_error: Exception | None = None
        self._receive = ReceiveLane(getattr(device, "generation", None))
        self._accept_slots: Any = None

    @property
    def headroom(self) -> int:
        """Where packets start in a slot (an int >= 0: ValueError if negative)."""
        return self._headroom

    @headroom.setter
    def headroom(self, value: int) -> None:
        self._headroom = _headroom(value)

    @property
    def receive_lane(self) -> ReceiveLane:
        """The inbound lane snapshot (tunnel.wireguard.lane_ref.ReceiveLane)."""
        return self._receive

    def on_readable(self, sock: Any, udp: Any) -> None:
        """The event loop's callback for a UDP fd (``sock`` the interface's socket, ``udp`` its
        UdpBatch): one :meth:`run`, the outbound run if packets were written, then the journal
        if both are settled, else ``after``."""
        self.now = now = time.monotonic()
        self.answered = False
        self.replied = 0
        self.reply_error = None
        count = 0
        error: Exception | None = None
        try:
            count = self.run(udp, self.udp_bufs, self.udp_lengths, self.udp_sources, now)
        except Exception as exc:  # the interface sorts it out
            error = exc
        outbound = self.outbound
        if self.written and error is None:
            self.answered = True
            try:
                self.replied = outbound.run(outbound.tun_bufs, outbound.tun_lengths, outbound._headroom,
                                            outbound._mtu(), now)
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
                self.outbound.journal.add((RECEIVED, self.keypair, sum(self.wire_lengths), self.opened,
                                           *self.accepted, now))
            if self.answered:
                outbound.now = now
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

    def _clean(self, count: int) -> bool:
        # (count > 0) the lane opened the whole batch, wrote it, and no datagram filled its slot
        return (self.keypair is not None and self.opened == count and self.write_error is None
                and max(self.wire_lengths) < len(self.bufs[0]))

    def settled(self, count: int, udp: Any) -> bool:
        """Whether the last :meth:`run` left nothing for the interface but the journal record."""
        count = operator.index(count)
        if udp.pending:
            return False
        return count == 0 or (count < len(self.udp_bufs) and self._clean(count))

    def leftover(self, count: int, udp: Any) -> bool:
        """Whether the last :meth:`run` delivered a lane batch whose only loose end is what is
        left to read: a full batch or GRO segments waiting in the UDP batch."""
        count = operator.index(count)
        return (count > 0 and (count >= len(self.udp_bufs) or bool(udp.pending))
                and self._clean(count))

    def run(self, udp: Any, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> int:
        """Receive one batch and, when the device grants the inbound lane, open and deliver it."""
        _exact(bufs, list, "bufs")
        _exact(lengths, list, "lengths")
        _exact(sources, list, "sources")
        now = _real(now)
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
        receive = self._receive
        keypair = receive.decide(device, bufs, lengths, sources, now)
        if keypair is None:
            return n
        if receive.holds() and receive.keypair is keypair:  # the snapshot's: no engine object touched
            cipher, table, slot = receive.cipher, receive.table, receive.slot
        else:
            cipher, table, slot = keypair.cipher, device.routes(), keypair.peer.slot
        accept_slots = self._accept_slots
        if accept_slots is None:
            accept_slots = self._accept_slots = device.datapath.accept_slots
        self.wire_lengths = list(lengths)
        self.results = results = [0] * n
        if self.fused is not None and self.local is None:
            if len(self.verdicts) < n:
                self.verdicts = bytearray(n)
            self.opened, _, self.accepted, self.written, self.write_error = self.fused.open_deliver(
                cipher, accept_slots, table, slot, self.tun, bufs, lengths, results, self._headroom,
                self.verdicts)
            self.keypair = keypair
            return n
        self.opened = opened = cipher.open_batch(bufs, lengths, results)
        self.keypair = keypair
        self.accepted = (0, 0, 0)
        if opened:
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


__all__ = ["JOURNAL_LIMIT", "RECEIVED", "SENT", "Inbound", "Journal", "Outbound"]
