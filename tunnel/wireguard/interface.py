"""One WireGuard interface of the daemon: the engine plus its TUN device and UDP sockets.

:class:`Interface` owns a sans-I/O :class:`~tunnel.wireguard.device.Device`, a :class:`~tunnel.io.tun.Tun`
and a :class:`~tunnel.io.udp.UdpBind`, and wires them on the asyncio loop:

Outbound: TUN readable -> the native pump (``tunnel.wireguard.pump``): read a batch (packets at
``buf[HEADROOM:]``); in the steady state (``device.lane``) seal it in place and send it, all in
one call; else :meth:`_tun_batch_done` -> ``device.send_batch`` -> ``bind.send_batch``.
Inbound: UDP readable -> the native pump: receive a batch (datagrams at ``buf[0:]``); in the
steady state (``datapath.receive_lane``) open it in place and write it to the TUN, then read the
TUN once for the answer; else :meth:`_udp_batch_done` -> ``device.receive_batch`` ->
``tun.write_batch`` and replies to ``bind``.
The journal: the bookkeeping of batches the pumps finished alone (``device.lane_sent`` /
``lane_received``) waits in a journal that :meth:`_apply_journal` applies, in order, at most
``JOURNAL_DELAY`` later and before anything else touches the engine (see tunnel/wireguard/pump_ref.py).
Timers: one loop timer, re-armed from ``device.next_timer()`` after every batch handled here,
every journal and every UAPI call.

It also implements the UAPI configuration protocol (:class:`tunnel.wireguard.uapi.UapiTarget`) for the
UAPI server. Time: ``time.monotonic()`` is the engine's ``now``; ``device.wall_offset`` turns it
into Unix time and is refreshed by :meth:`housekeeping`.

Buffers are allocated here per interface and reused for every batch: an Output's views point
into them and are consumed before the next read. TUN slots hold one MTU-sized packet (TSO
super-packets are cut to the MTU by the batch I/O; the slots are reallocated when the MTU
changes, and a packet that did not fit is held by the I/O while we look at the MTU again and
grow the slots); UDP slots hold one datagram of up to ``max(MTU, 9000)`` plus overhead when UDP
GRO coalesces, else 64 KiB, and grow to 64 KiB for good once a datagram fills a slot (a peer
with a larger MTU).
Leftover GRO/TSO segments do not make an fd readable again. A lane batch whose only loose end
is what is left to read is journaled by the pump, which asks :meth:`_again` (the loop's
``call_soon``) to run it again when segments wait; a full batch needs nothing, the fd stays
readable. Any other batch comes here, where the callback reads again (at most ``MAX_ROUNDS``
batches) while a batch came back full or segments are pending, then hands what is still
pending to :meth:`_again`.
A UDP callback that wrote packets to the TUN reads the TUN once more before returning: the
kernel usually queued the answer (echo reply, TCP ACK) during the write, and this saves a trip
through the event loop per answer.
Everything runs on the loop thread; a bad packet or a bug hit by one batch is logged (debug),
counted in :attr:`errors` and the loop goes on.

Hooks for something that runs inside the daemon on top of the tunnel (the L2 overlay: a VXLAN
endpoint whose underlay is this interface; this package knows nothing of it):
- :attr:`extensions` maps a word to a handler ``(interface, words) -> dict``: the UAPI request
  ``ext=WORD ...`` (see tunnel/wireguard/uapi_session.py) calls it; the daemon's ``main`` is
  given them by the command line (``tunnel/cli.py``).
- :meth:`set_local_delivery` installs ``deliver(bufs, lengths, headroom, verdicts, count,
  now) -> taken``: it sees every opened batch after the allowed-IPs source check (verdict 0:
  would go to the TUN), before the TUN write, and takes the packets addressed to it (setting
  their verdicts non-zero); the rest go to the TUN. The inbound pump calls it natively on its
  lane (one Python call per batch); batches handled the general way copy their packets into a
  scratch batch for it. With no delivery installed nothing changes on either path.
  :meth:`set_local_answer` installs ``answer()``, which the inbound pump calls at the end of
  each UDP wake-up (after the batch's records or the general way): the L2 overlay reads its
  TAP then for the reply to what its delivery wrote, in the same wake-up.
  :attr:`outbound_pump` is the outbound pump (its device, sockets and journal), for an
  overlay that sends through the same lane natively; :attr:`journal_hooks` are called each
  time the journal was applied (its timer, a full journal, any entry into the engine), so
  the overlay's own journal is applied in step and does not fill up under steady traffic.
- :meth:`send_packets` injects a batch of inner IP packets (``bufs[i][HEADROOM:HEADROOM +
  lengths[i]]``, room for padding and the tag after them) into the send path: the fast lane
  (route, seal in place, send with GSO) when the batch goes to one peer in the steady state,
  else ``Device.send_batch``.
- :attr:`attachments`: objects with ``close()`` and ``housekeeping()``, closed with the
  interface (before the TUN goes) and called by :meth:`housekeeping`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from crypto.backend import HEADROOM, OK, TAG_SIZE
from crypto.backend import NAME as CIPHER_NAME
from tunnel.io.endpoint import Endpoint
from tunnel.io.journal_ref import JOURNAL_DELAY  # seconds the lanes' bookkeeping may wait (when idle)
from tunnel.io.tun import IO_NAME, Tun, TunGone
from tunnel.io.udp import BatchSocket, UdpBind
from tunnel.runtime import gcpolicy, sched
from tunnel.wireguard import pump
from tunnel.wireguard.constants import PADDING_MULTIPLE
from tunnel.wireguard.device import Device
from tunnel.wireguard.device_config import DeviceConfig
from tunnel.wireguard.output import Output
from tunnel.wireguard.stats import RateMeter, device_stats, peer_counters

log = logging.getLogger(__name__)

# Packets per pump run. 128 rather than 64: a 64 KiB TSO super-packet is ~45 segments, so a
# batch of 64 filled up often under a TCP stream, and a full batch then left the native pump
# for the interface's Python rounds (bookkeeping per batch); 128 halved those rounds (tunnel
# CPU per GB -10%, docs/benchmarks.md) for ~5 MiB more peak RSS. (Since session 7 the pumps
# journal full lane batches themselves; 256 measured within noise of 128.) A lone packet (a
# ping) still touches only the first two slots.
TUN_BATCH = 128
UDP_BATCH = 128
MAX_ROUNDS = 8  # batches per readable callback (leftover segments do not wake the loop)
MAX_PACKET = 65535  # the largest IP packet (and UDP datagram) there is
TUN_BUFFER = HEADROOM + MAX_PACKET + PADDING_MULTIPLE + TAG_SIZE  # a plain TUN: any size
UDP_BUFFER = MAX_PACKET + 1  # without GRO: any datagram
TRANSPORT_HEADER = 16  # type, receiver index, counter: where an opened packet starts
MESSAGE_OVERHEAD = 32  # transport header (16) and tag (16) around a padded packet
PEER_MTU_ROOM = 9000  # with GRO: room for datagrams of peers with an MTU up to this (jumbo)
MTU_RECHECK = 0.1  # at most this often when a packet bigger than the known MTU shows up

PUMP_NAME, PUMP = pump.select()

_PLACEHOLDER = Endpoint("0.0.0.0", 0)

#: ``deliver(bufs, lengths, headroom, verdicts, count, now) -> taken`` (see the module doc)
LocalDelivery = Callable[[list[bytearray], list[int], int, bytearray, int, float], int]
#: ``handler(interface, words) -> JSON-ready answer`` for ``ext=WORD ...`` (see the module doc)
Extension = Callable[["Interface", list[str]], dict[str, Any]]


class Attachment(Protocol):
    """Something running inside the daemon on top of an interface (see the module doc)."""

    def close(self) -> None:
        """Stop and release everything (the interface is closing, or the attachment is done)."""

    def housekeeping(self) -> None:
        """Called about once a second with the interface's own housekeeping."""


class Interface(DeviceConfig):
    """A running WireGuard interface. Create, :meth:`open_bind`, :meth:`start`, :meth:`close`.

    ``stopped`` is set (with ``stop_reason``) when the TUN device disappears; the daemon waits on
    it. ``uapi_lock`` serialises UAPI operations.
    """

    def __init__(self, tun: Tun, device: Device | None = None) -> None:
        self.tun = tun
        if device is None:
            device = Device(mtu=tun.mtu, wall_offset=time.time() - time.monotonic())
        self.device = device
        # The fds' callbacks are native pumps (see tunnel/wireguard/pump_ref.py): a batch in the steady
        # state is read, sealed or opened, and sent or written before any Python frame of ours
        # runs, and its bookkeeping is journaled (applied by _apply_journal). Other batches come
        # to _tun_batch_done / _udp_batch_done.
        self._journal = PUMP.Journal(JOURNAL_DELAY, self._journal_due)
        self._outbound = PUMP.Outbound(self.device, tun.io, None, None, self._journal, self._tun_batch_done, HEADROOM)
        self._inbound = PUMP.Inbound(self.device, tun.io, self._outbound, self._udp_batch_done, TRANSPORT_HEADER)
        self.bind: UdpBind | None = None
        self._fwmark = 0
        self.errors: Counter[str] = Counter()
        self.uapi_lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._mtu_checked = 0.0
        self._tun_bufs: list[bytearray] = []
        self._tun_lengths = [0] * TUN_BATCH
        self._udp_bufs: list[bytearray] = []
        self._udp_full_size = False  # a datagram filled a slot: use 64 KiB slots from now on
        self._udp_lengths = [0] * UDP_BATCH
        self._udp_sources = [_PLACEHOLDER] * UDP_BATCH
        self._inbound.udp_lengths = self._udp_lengths
        self._inbound.udp_sources = self._udp_sources
        self._size_tun_buffers()
        self._size_udp_buffers()
        self.rates: RateMeter[bytes] = RateMeter()  # sampled by housekeeping
        self.extensions: dict[str, Extension] = {}
        #: called (no arguments, must not raise) after :meth:`_apply_journal` applied records:
        #: an overlay applies its own journal in step with the interface's (see the module doc)
        self.journal_hooks: list[Callable[[], None]] = []
        self.attachments: list[Attachment] = []
        self._local: LocalDelivery | None = None
        self._scratch: list[bytearray] = []

    @property
    def name(self) -> str:
        return self.tun.name

    # ------------------------------------------------------------------ buffers

    def tun_slot_size(self, packet: int = 0) -> int:
        """Bytes per TUN slot: headroom, one MTU-sized (or ``packet``-sized) packet, padding, tag."""
        if not self.tun.vnet_hdr:
            return TUN_BUFFER  # a plain read cannot tell a truncated packet: room for any
        return HEADROOM + max(self.device.mtu, packet) + PADDING_MULTIPLE + TAG_SIZE

    def udp_slot_size(self) -> int:
        """Bytes per UDP slot: one datagram (GRO segments are copied in one per slot)."""
        if self.bind is None or not self.bind.gro or self._udp_full_size:
            return UDP_BUFFER
        return min(UDP_BUFFER, max(self.device.mtu, PEER_MTU_ROOM) + PADDING_MULTIPLE + MESSAGE_OVERHEAD)

    def _size_tun_buffers(self, packet: int = 0) -> None:
        size = self.tun_slot_size(packet)
        if not self._tun_bufs or len(self._tun_bufs[0]) != size:
            self._tun_bufs = [bytearray(size) for _ in range(TUN_BATCH)]
            self._outbound.tun_bufs = self._tun_bufs
            self._outbound.tun_lengths = self._tun_lengths

    def _size_udp_buffers(self) -> None:
        size = self.udp_slot_size()
        if not self._udp_bufs or len(self._udp_bufs[0]) != size:
            self._udp_bufs = [bytearray(size) for _ in range(UDP_BATCH)]
            self._inbound.udp_bufs = self._udp_bufs

    # ------------------------------------------------------------------ lifecycle

    def open_bind(self, port: int = 0) -> None:
        """Bind the UDP sockets (before :meth:`start`, e.g. before daemonizing). Raises OSError."""
        self._rebind(port)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading the TUN device and the sockets on ``loop``."""
        self._loop = loop
        self._journal.loop = loop
        self._outbound.again = self._inbound.again = self._again
        loop.add_reader(self.tun.fd, self._outbound.on_readable)
        if self.bind is not None:
            self._watch(self.bind)
        self._rearm()

    def close(self) -> None:
        """Stop everything and close the sockets and the TUN fd (which deletes the device);
        the attachments first."""
        for attachment in list(self.attachments):
            try:
                attachment.close()
            except Exception:
                log.debug("closing an attachment failed", exc_info=True)
        self.attachments.clear()
        self.set_local_delivery(None)
        self._apply_journal()
        self._journal.loop = None
        self._outbound.again = self._inbound.again = None
        loop = self._loop
        if loop is not None:
            loop.remove_reader(self.tun.fd)
            if self.bind is not None:
                self._unwatch(self.bind)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.bind is not None:
            self.bind.close()
            self.bind = None
        self.tun.close()
        self._loop = None

    def statistics(self) -> dict[str, int]:
        """Counters of everything dropped or failed so far (engine drops, TUN and UDP errors)."""
        self._apply_journal()
        stats: Counter[str] = Counter()
        stats.update({f"drop:{k}": v for k, v in self.device.drops.items()})
        stats.update({f"tun:{k}": v for k, v in self.tun.errors.items()})
        if self.bind is not None:
            stats.update({f"udp:{k}": v for k, v in self.bind.errors().items()})
        stats.update({f"loop:{k}": v for k, v in self.errors.items()})
        return dict(stats)

    def stats(self) -> dict[str, Any]:
        """Everything ``wg-py show`` reports (JSON-ready), the journal applied first: the
        engine's counters and rates (:func:`tunnel.wireguard.stats.device_stats`) and the
        shell's facts: the batch I/O, the pumps and cipher in use (``cython`` or ``pure``), the
        TUN and UDP offloads, and the I/O error counters."""
        self._apply_journal()
        device = self.device
        counters = peer_counters(device)
        stats = device_stats(device, self.rates.rates(time.monotonic(), counters))
        bind = self.bind
        errors: Counter[str] = Counter()
        errors.update({f"tun:{k}": v for k, v in self.tun.errors.items()})
        if bind is not None:
            errors.update({f"udp:{k}": v for k, v in bind.errors().items()})
        errors.update({f"loop:{k}": v for k, v in self.errors.items()})
        stats.update({
            "interface": self.name,
            "kind": "wireguard",
            "listen_port": self.listen_port,
            "fwmark": self._fwmark,
            "mtu": device.mtu,
            "rate_window": self.rates.window,
            "implementation": {"pumps": PUMP_NAME, "batch_io": IO_NAME, "cipher": CIPHER_NAME,
                               "datapath": stats.pop("datapath")},
            # the pumps' lane decisions: from their snapshots (hits) or datapath.lane (misses)
            "lane_snapshots": {"send_hits": self._outbound.send_lane.hits,
                               "send_misses": self._outbound.send_lane.misses,
                               "receive_hits": self._inbound.receive_lane.hits,
                               "receive_misses": self._inbound.receive_lane.misses},
            "offloads": {"tun": self.tun.offloads, "tun_vnet_hdr": self.tun.vnet_hdr,
                         "tun_gro": self.tun.gro,
                         "udp_gso": bind.gso if bind is not None else False,
                         "udp_gro": bind.gro if bind is not None else False},
            "errors": dict(sorted((k, v) for k, v in errors.items() if v)),
            "gc": gcpolicy.state(),
            "sched": sched.state(),
        })
        return stats

    def _stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            self.stopped.set()
            if self._loop is not None:
                self._loop.remove_reader(self.tun.fd)

    def housekeeping(self) -> None:
        """Called about once a second: notice a deleted device, MTU changes, clock steps."""
        self._apply_journal()
        if self.stopped.is_set():
            return
        if not self.tun.alive():
            self._stop("the TUN device was deleted")
            return
        self._refresh_mtu()
        for attachment in list(self.attachments):
            try:
                attachment.housekeeping()
            except Exception:
                self.errors["attachment"] += 1
                log.debug("attachment housekeeping failed", exc_info=True)
        self.device.wall_offset = time.time() - time.monotonic()
        self.rates.sample(time.monotonic(), peer_counters(self.device))
        self.tun.log_fallbacks()  # the pumps' writes and sends do not log them as they happen
        if self.bind is not None:
            self.bind.log_fallbacks()

    def _refresh_mtu(self) -> None:
        self._mtu_checked = time.monotonic()
        try:
            mtu = self.tun.refresh_mtu()
        except TunGone:
            self._stop("the TUN device was deleted")
            return
        if mtu != self.device.mtu:
            log.info("MTU of %s is now %d", self.name, mtu)
            self.device.mtu = min(mtu, MAX_PACKET)
            self._size_tun_buffers()  # the caller's batch still holds the old list: fine
            self._size_udp_buffers()

    # ------------------------------------------------------------------ sockets

    def _watch(self, bind: UdpBind) -> None:
        if self._loop is not None:
            for sock in bind.sockets:
                self._loop.add_reader(sock.fileno(), self._inbound.on_readable, sock, sock.io)

    def _unwatch(self, bind: UdpBind) -> None:
        if self._loop is not None:
            for sock in bind.sockets:
                self._loop.remove_reader(sock.fileno())

    def _rebind(self, port: int) -> None:
        new = UdpBind.open(port, self._fwmark)  # raises OSError: the old binding stays
        old, self.bind = self.bind, new
        if old is not None:
            self._unwatch(old)
            old.close()
        self._watch(new)
        self._size_udp_buffers()
        self._outbound.udp4 = new.v4.io if new.v4 is not None else None
        self._outbound.udp6 = new.v6.io if new.v6 is not None else None
        log.info("UDP bound to port %d", new.port)

    @property
    def listen_port(self) -> int:
        return self.bind.port if self.bind is not None else 0

    @listen_port.setter
    def listen_port(self, port: int) -> None:
        if self.bind is not None and port == self.bind.port:
            return
        self._rebind(port)

    @property
    def fwmark(self) -> int:
        return self._fwmark

    @fwmark.setter
    def fwmark(self, mark: int) -> None:
        if mark == self._fwmark:
            return
        if self.bind is not None:
            self.bind.set_mark(mark)  # raises OSError; UAPI rolls back
        self._fwmark = mark

    # ------------------------------------------------------------------ data path

    def _apply_journal(self) -> None:
        """Apply the lanes' journaled bookkeeping, oldest first: before any other engine work."""
        records = self._journal.take()
        if not records:
            return
        self._apply_records(records)
        if self.bind is not None and self.bind.lost_sources:  # noted by the pumps' sends
            self._forget_sources(self.bind.take_lost_sources())
        for hook in self.journal_hooks:
            hook()

    def _apply_records(self, records: list[tuple[Any, ...]]) -> None:
        """Apply journal records (SENT/RECEIVED, oldest first) to the engine and transmit what
        it answers; a record that fails is counted (``errors["journal"]``), never raised.
        Control thread only (the workers hand theirs over)."""
        device = self.device
        for record in records:
            try:
                if record[0] == PUMP.SENT:
                    _, peer, keypair, nbytes, now = record
                    out = device.lane_sent(peer, keypair, nbytes, now)
                else:
                    _, keypair, nbytes, opened, keepalives, invalid, disallowed, now = record
                    out = device.lane_received(keypair, nbytes, opened, (keepalives, invalid, disallowed), now)
                if out is not None:
                    self._transmit(out)
            except Exception:
                self.errors["journal"] += 1
                log.debug("journaled bookkeeping failed", exc_info=True)

    def _again(self, callback: Callable[..., None], *args: Any) -> None:
        """The pumps' ``again``: run ``callback(*args)`` (a pump's ``on_readable``) soon, for
        segments left in a TUN or UDP batch (they do not make the fd readable again)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon(self._again_due, callback, args)

    def _again_due(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        # Not after close, nor for a socket a rebind closed meanwhile (its fd may be reused).
        if self._loop is None or self.stopped.is_set():
            return
        if args and (self.bind is None or args[0] not in self.bind.sockets):
            return
        callback(*args)

    def _journal_due(self) -> None:
        """The journal's timer: nothing else touched the engine for JOURNAL_DELAY."""
        self._apply_journal()
        self._rearm()

    def _tun_batch_done(self, count: int, error: Exception | None) -> None:
        """The pump's callback for a TUN batch that is not settled (sent if it could be)."""
        self._apply_journal()
        self._read_tun((count, error, self._outbound.now))
        self._rearm()

    def _read_tun(self, first: tuple[int, Exception | None, float] | None = None) -> None:
        """Read, seal and send TUN batches until the device has nothing more (MAX_ROUNDS).

        The pump reads each batch and, in the steady state, seals and sends it in the same
        native call; the engine's bookkeeping for it (:meth:`Device.lane_sent`) comes after.
        ``first`` is the outcome of a round the pump already ran (count, error, its ``now``).
        """
        tun = self.tun
        device = self.device
        pump = self._outbound
        io_errors = tun.io_errors
        for _ in range(MAX_ROUNDS):
            error: Exception | None
            if first is not None:
                n, error, now = first
                first = None
            else:
                now = time.monotonic()
                try:
                    n, error = pump.run(self._tun_bufs, self._tun_lengths, HEADROOM, device.mtu, now), None
                except Exception as exc:
                    n, error = 0, exc
            if isinstance(error, OSError):  # only the TUN read raises it
                try:
                    tun.read_failed(error)
                except TunGone:
                    self._stop("the TUN device was deleted")
                    return
            elif error is not None:
                self.errors["send_batch"] += 1
                log.debug("outbound batch failed", exc_info=error)
                break
            if n < TUN_BATCH and tun.needed:
                # A packet larger than the slots is held (the MTU was raised, most likely):
                # grow the slots now; the next round delivers it.
                self._refresh_mtu()
                self._size_tun_buffers(tun.needed)
            too_big = io_errors.get("read:too_big", 0) if io_errors else 0
            if too_big != pump.too_big_seen:  # a packet did not fit: the MTU may have grown
                pump.too_big_seen = too_big
                if time.monotonic() - self._mtu_checked >= MTU_RECHECK:
                    self._refresh_mtu()
            if not n:
                if tun.pending:
                    continue
                break
            bufs, lengths, lane = pump.bufs, pump.lengths, pump.lane
            try:
                if lane is not None:
                    sealed = pump.sealed
                    out = device.lane_sent(lane[0], lane[1], sum(lengths[:sealed]), now) if sealed else None
                    if self.bind is not None and self.bind.lost_sources:
                        self._forget_sources(self.bind.take_lost_sources())
                    if out is not None:
                        self._transmit(out)
                    if sealed < n:  # the session was zeroed meanwhile: stage the rest
                        self._transmit(device.send_batch(bufs[sealed:], lengths[sealed:], now))
                else:
                    if max(lengths) > device.mtu and now - self._mtu_checked >= MTU_RECHECK:
                        self._refresh_mtu()  # the MTU may have been raised since we last looked
                    self._transmit(device.send_batch(bufs, lengths, now))
            except Exception:
                self.errors["send_batch"] += 1
                log.debug("outbound batch failed", exc_info=True)
            if n < TUN_BATCH and not tun.pending:
                break
        else:
            if tun.pending:  # MAX_ROUNDS used up: the segments left do not make the fd readable
                self._again(pump.on_readable)

    def _udp_batch_done(self, sock: BatchSocket, count: int, error: Exception | None) -> None:
        """The pump's callback after the first batch of a UDP wake-up (delivered if it could
        be, and the TUN read once after a write); then more rounds while batches come full."""
        self._apply_journal()
        pump = self._inbound
        delivered = self._udp_round(count, error, pump.now)
        if pump.answered:  # the pump read the TUN after its write
            self._read_tun((pump.replied, pump.reply_error, pump.now))
            delivered = False
        if count == UDP_BATCH or sock.pending:
            for _ in range(MAX_ROUNDS - 1):
                now = time.monotonic()
                try:
                    count, error = pump.run(sock.io, self._udp_bufs, self._udp_lengths, self._udp_sources, now), None
                except Exception as exc:
                    count, error = 0, exc
                delivered = self._udp_round(count, error, now) or delivered
                if count < UDP_BATCH and not sock.pending:
                    break
            else:
                if sock.pending:  # as in _read_tun
                    self._again(pump.on_readable, sock, sock.io)
        if delivered and not self.stopped.is_set():
            # What we just wrote usually makes the kernel answer through the TUN at once (an
            # echo reply, a TCP ACK), queued before the write returned: read it now rather
            # than after another trip through the event loop.
            self._read_tun()
        self._rearm()

    def _udp_round(self, count: int, error: Exception | None, now: float) -> bool:
        """Finish one received batch (the pump's :attr:`bufs` ...): the lane's bookkeeping, or
        the general way for a batch the lane did not take. True if packets went to the TUN."""
        if error is not None:
            self.errors["udp_read" if isinstance(error, OSError) else "receive_batch"] += 1
            log.debug("inbound batch failed", exc_info=error)
            return False
        if not count:
            return False
        pump = self._inbound
        keypair = pump.keypair
        delivered = False
        try:
            if keypair is not None:
                wire_lengths = pump.wire_lengths
                if pump.write_error is not None:
                    self.tun.write_failed(pump.write_error)
                results = pump.results
                if pump.opened == len(results):  # the steady state: every packet opened
                    nbytes, failures = sum(wire_lengths), []
                else:
                    nbytes = sum(size for size, code in zip(wire_lengths, results, strict=True) if code == OK)
                    failures = [code for code in results if code != OK]
                out = self.device.lane_received(keypair, nbytes, pump.opened, pump.accepted, now, failures)
                if out is not None:
                    self._transmit(out)
                delivered = pump.written > 0
            else:
                wire_lengths = pump.lengths
                out = self.device.receive_batch(pump.bufs, wire_lengths, pump.sources, now)
                if out.packets and self._local is not None:
                    out.packets = self._deliver_locally(out.packets, now)
                delivered = bool(out.packets)
                self._transmit(out)
        except TunGone:
            self._stop("the TUN device was deleted")
            return False
        except Exception:
            self.errors["receive_batch"] += 1
            log.debug("inbound batch failed", exc_info=True)
            return False
        if not self._udp_full_size and max(wire_lengths) >= len(pump.bufs[0]):
            # Possibly truncated: a peer sends datagrams larger than our slots.
            log.info("a datagram filled a %d-byte slot: using 64 KiB slots", len(pump.bufs[0]))
            self._udp_full_size = True
            self._size_udp_buffers()
        return delivered

    # ------------------------------------------------------------------ hooks

    def extension(self, words: str) -> dict[str, Any]:
        """The UAPI ``ext=WORDS`` request: the handler registered for the first word."""
        parts = words.split()
        handler = self.extensions.get(parts[0]) if parts else None
        if handler is None:
            return {"ok": False, "error": f"unknown request {words.strip()[:64]!r}"}
        return handler(self, parts[1:])

    def set_local_delivery(self, deliver: LocalDelivery | None) -> None:
        """Install (or with None remove) the local delivery (see the module doc)."""
        self._local = deliver
        self._inbound.local = deliver

    def set_local_answer(self, answer: Callable[[], None] | None) -> None:
        """Install (or with None remove) the local delivery's answer (see the module doc)."""
        self._inbound.answer = answer

    @property
    def outbound_pump(self) -> Any:
        """The outbound pump (``device``, ``udp4``/``udp6``, ``journal``; see the module doc)."""
        return self._outbound

    def _deliver_locally(self, packets: list[memoryview], now: float) -> list[memoryview]:
        """The general inbound path's packets through the local delivery: each is copied into
        a scratch slot (at HEADROOM); those it does not take are returned."""
        deliver = self._local
        assert deliver is not None
        count = len(packets)
        size = HEADROOM + max(len(p) for p in packets)
        scratch = self._scratch
        if len(scratch) < count or len(scratch[0]) < size:
            slot = max(size, HEADROOM + MAX_PACKET)
            scratch = self._scratch = [bytearray(slot) for _ in range(max(count, UDP_BATCH))]
        bufs = scratch[:count]
        lengths = []
        for buf, packet in zip(bufs, packets, strict=False):
            buf[HEADROOM : HEADROOM + len(packet)] = packet
            lengths.append(HEADROOM + len(packet))
        verdicts = bytearray(count)
        try:
            taken = deliver(bufs, lengths, HEADROOM, verdicts, count, now)
        except Exception:
            self.errors["local_delivery"] += 1
            log.debug("local delivery failed", exc_info=True)
            return packets
        if not taken:
            return packets
        return [packet for packet, verdict in zip(packets, verdicts, strict=False) if verdict == 0]

    def send_packets(self, bufs: list[bytearray], lengths: list[int], now: float) -> None:
        """Route, seal and send a batch of inner IP packets (see the module doc). The buffers
        are borrowed for the call (sealed in place); ``lengths`` become datagram lengths."""
        if not bufs:
            return
        device = self.device
        try:
            # As the outbound pump: the lane is asked with the journal pending, and a batch
            # sent whole leaves only its record (Device.lane_sent) to the journal, so the
            # caller (the L2 overlay's TAP callback) yields right after the send.
            lane = device.datapath.lane(device, bufs, lengths, HEADROOM, now)
            if lane is not None:
                peer, keypair = lane
                endpoint = peer.endpoint
                udp = self._outbound.udp6 if ":" in endpoint.ip else self._outbound.udp4
                if udp is not None:
                    sealed = keypair.cipher.seal_batch(bufs, lengths, device.mtu)
                    udp.send_slots(bufs, lengths, 0, sealed, endpoint)
                    journal = self._journal
                    if (sealed == len(bufs) and journal.open()
                            and (self.bind is None or not self.bind.lost_sources)):
                        journal.add((PUMP.SENT, peer, keypair, sum(lengths), now))
                        return
                    self._apply_journal()
                    out = device.lane_sent(peer, keypair, sum(lengths[:sealed]), now) if sealed else None
                    if self.bind is not None and self.bind.lost_sources:
                        self._forget_sources(self.bind.take_lost_sources())
                    if out is not None:
                        self._transmit(out)
                    if sealed < len(bufs):
                        self._transmit(device.send_batch(bufs[sealed:], lengths[sealed:], now))
                    self._rearm()
                    return
            self._apply_journal()
            self._transmit(device.send_batch(bufs, lengths, now))
        except Exception:
            self.errors["send_packets"] += 1
            log.debug("injected batch failed", exc_info=True)
        self._rearm()

    def _transmit(self, out: Output) -> None:
        """Send out's datagrams and write its packets, then release nothing (views die here)."""
        if out.datagrams and self.bind is not None:
            bind = self.bind
            bind.send_batch(out.datagrams)
            if bind.lost_sources:
                self._forget_sources(bind.take_lost_sources())
        if out.packets:
            try:
                self.tun.write_batch(out.packets)
            except TunGone:
                self._stop("the TUN device was deleted")

    def _forget_sources(self, lost: list[Endpoint]) -> None:
        gone = set(lost)
        for peer in self.device.peers.values():
            endpoint = peer.endpoint
            if endpoint is not None and endpoint in gone:
                log.info("source address %s is gone; replying from any address", endpoint.local)
                peer.endpoint = Endpoint(endpoint.ip, endpoint.port)

    # ------------------------------------------------------------------ timers

    def _rearm(self) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self.device.next_timer()
        if deadline == self._timer_deadline and (deadline is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self._apply_journal()
        try:
            self._transmit(self.device.update_timers(time.monotonic()))
        except Exception:
            self.errors["timers"] += 1
            log.debug("timer work failed", exc_info=True)
        self._rearm()

    # ------------------------------------------------------------------ UAPI target

    def uapi_begin(self) -> None:
        self._apply_journal()

    def uapi_applied(self) -> None:
        self._rearm()

    def send_keepalives(self, public_keys: list[bytes]) -> None:
        self._apply_journal()
        now = time.monotonic()
        for pk in public_keys:
            peer = self.device.peers.get(pk)
            if peer is None or not peer.persistent_keepalive:
                continue
            try:
                self._transmit(self.device.send_keepalive(peer, now))
            except Exception:
                self.errors["keepalive"] += 1
                log.debug("keepalive failed", exc_info=True)
        self._rearm()
