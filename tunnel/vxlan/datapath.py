"""The VXLAN daemon's data path: one TAP queue and one UDP socket driven by the native pumps,
with the general (Python) way for everything the pumps leave.

A :class:`DataPath` owns a pump pair (``tunnel.vxlan.pump``: Cython or its pure twin), its
buffers, its journal and its native send batch. The daemon has one per worker: with one worker
it runs on the event loop thread (the pumps are the fds' reader callbacks, the journal's timer
is the loop's); with more, each runs on its own thread (``tunnel.vxlan.workers``).

The engine is shared: every call into it (the general way, the journal's records, ageing,
control requests) holds the daemon's ``lock``; the pumps themselves read only the published
:class:`~tunnel.vxlan.pump_ref.Snapshot` and touch the engine through their records. After the
general way ran (which may have learned), the snapshot is republished when
``fdb_version`` says the FDB changed. See ``tunnel/vxlan/pump_ref.py`` for what is settled.

Shell-side drops join the engine's ``drops`` (see ``tunnel/vxlan/daemon.py``): ``tx_error``,
``tx_buffer_full``, ``rx_error``, ``device_down``, ``tap_write_error``, ``tap_*`` read-side
drops, ``rx_exception``/``tx_exception`` for a batch that raised (logged, never fatal).
"""

from __future__ import annotations

import errno
import logging
import time
from array import array
from collections.abc import Callable, MutableMapping
from typing import Any

from tunnel.io.journal_ref import JOURNAL_DELAY  # seconds a settled batch's record may wait (both pumps')

from .header import VXLAN_HLEN
from .pump import select as select_pump

log = logging.getLogger("wg-py.vxlan")

BATCH = 256  # frames per batch: Python's cost is paid per batch, so batches are large
HEADROOM = 8
BUFSIZE = 65536  # the largest UDP payload (and plain-TAP frame) there is
RX_SLOT = 9216 + 64  # a receive slot until a datagram fills one: jumbo frames and VXLAN overhead


class DataPath:
    """One queue's data path (see module doc). ``daemon`` is the VxlanDaemon (engine, sender,
    lock, publishing, stop), ``tap_io``/``udp_io`` this queue's batch I/O, ``batch`` the native
    send batch it owns, ``reschedule(callback)`` runs ``callback`` soon on this data path's
    thread (leftover segments that do not make an fd readable again), ``stop(reason)`` stops
    the daemon from this thread."""

    def __init__(self, daemon: Any, tap_io: Any, udp_io: Any, batch: Any, tx_size: int,
                 reschedule: Callable[[Callable[[], None]], None],
                 stop: Callable[[str], None]) -> None:
        self.daemon = daemon
        self.tap_io = tap_io
        self.udp_io = udp_io
        self.batch = batch
        self.reschedule = reschedule
        self.stop = stop
        self.pump_name, pump = select_pump()
        self.journal = pump.Journal(JOURNAL_DELAY, self.flush)
        self.outbound = out = pump.Outbound(tap_io, batch, daemon.fast, self.journal,
                                            self._tap_after, HEADROOM)
        self.inbound = inb = pump.Inbound(udp_io, tap_io, daemon.fast, out, self._udp_after)
        self.threaded = False  # run by a worker thread (tunnel/vxlan/workers.py)
        self.want_tx_size = 0
        self.apply_record = pump.apply_record
        out.verdicts = bytearray(BATCH)
        out.sports = array("H", bytes(2 * BATCH))
        out.tap_lengths = [0] * BATCH
        self.size_tx(tx_size)
        inb.udp_bufs = [bytearray(RX_SLOT) for _ in range(BATCH)]
        inb.udp_lengths = [0] * BATCH
        inb.udp_sources = [None] * BATCH
        inb.verdicts = bytearray(BATCH)
        # a lane batch with leftovers to read is journaled by the pump, which reschedules itself
        out.again = inb.again = self._again
        # what this data path handled, for show (the engine's counters are the sums)
        self.counters = {"tx_frames": 0, "rx_frames": 0, "pump_tx": 0, "pump_rx": 0,
                         "general_tx": 0, "general_rx": 0}

    def size_tx(self, size: int) -> None:
        """Transmit slots of ``size`` bytes (the daemon's rule, see ``tx_size``). Called from
        another thread than this data path's (a worker's), it only asks: the worker applies
        it between two wake-ups (:meth:`apply_resize`), never under a running batch."""
        if self.threaded:
            self.want_tx_size = size
            return
        self._resize(size)

    def apply_resize(self) -> None:
        """A worker's side of :meth:`size_tx` (its own thread, between wake-ups)."""
        size, self.want_tx_size = self.want_tx_size, 0
        if size:
            self._resize(size)

    def _resize(self, size: int) -> None:
        bufs = self.outbound.tap_bufs
        if not bufs or len(bufs[0]) != size:
            self.outbound.tap_bufs = [bytearray(size) for _ in range(BATCH)]

    def _again(self, callback: Callable[[], None]) -> None:
        """The pumps' ``again``: run ``callback`` soon, through :attr:`reschedule` as it is at
        the call (a worker replaces it after construction)."""
        self.reschedule(callback)

    # ---- the journal -----------------------------------------------------------------------

    def flush(self) -> None:
        """Apply the journal's records in order (under the lock), then republish the snapshot
        if learning changed the FDB."""
        records = self.journal.take()
        if not records:
            return
        daemon = self.daemon
        apply = self.apply_record
        with daemon.lock:
            engine = daemon.engine
            for record in records:
                apply(engine, record)
                self._count(record)
            daemon.refresh_snapshot()

    def _count(self, record: tuple[Any, ...]) -> None:
        counters = self.counters
        if record[0] == 0:  # SENT
            counters["pump_tx"] += 1
            counters["tx_frames"] += sum(frames * len(ips) for ips, frames, _ in record[2])
        else:
            counters["pump_rx"] += 1
            counters["rx_frames"] += record[3]

    # ---- TAP -> UDP ------------------------------------------------------------------------

    def _tap_after(self, count: int, error: Exception | None) -> None:
        """The outbound pump's callback for a batch that is not settled."""
        self.flush()
        if self._tap_done(count, error):
            return
        if self.tap_io.pending:  # cut segments wait in the scratch: the fd may stay quiet
            self.reschedule(self.outbound.on_readable)

    def _tap_done(self, count: int, error: Exception | None) -> bool:
        """Finish an unsettled outbound batch; True if the TAP is gone."""
        if error is not None:
            if isinstance(error, OSError):
                self.stop(f"TAP device gone ({error.strerror})")
                return True
            log.error("%s: transmit batch failed", self.daemon.name, exc_info=error)
            with self.daemon.lock:
                self.daemon.engine.drops["tx_exception"] += max(count, 1)
            return False
        out = self.outbound
        with self.daemon.lock:
            engine = self.daemon.engine
            if self.tap_io.errors:
                self._tap_errors(engine)
            if not count:
                return False
            if out.lane:
                record = out.pending_record()
                self.apply_record(engine, record)
                self._count(record)
                if out.full:
                    engine.drops["tx_buffer_full"] += out.full
                if out.errors:
                    engine.drops["tx_error"] += out.errors
            else:
                self.counters["general_tx"] += 1
                self._transmit(engine, count)
        return False

    def _transmit(self, engine: Any, count: int) -> None:
        """The general way: plan and send the ``count`` frames in the transmit slots."""
        out = self.outbound
        bufs, lengths, verdicts, sports = out.tap_bufs, out.tap_lengths, out.verdicts, out.sports
        before = engine.tx_packets
        try:
            plan = engine.transmit_bufs(bufs, lengths, count, time.monotonic(), HEADROOM,
                                        verdicts, sports)
            self.counters["tx_frames"] += engine.tx_packets - before
            if plan.local:
                frames = list(plan.local)
                self._tap_write(engine, len(frames), self.tap_io.write, frames)
            if not plan.items:
                return
            _sent, full, errors = self.daemon.sender.send_batch(
                bufs, lengths, HEADROOM, verdicts, sports, plan.items, batch=self.batch)
        except Exception:
            log.exception("%s: transmit batch failed", self.daemon.name)
            engine.drops["tx_exception"] += count
            return
        if full:
            engine.drops["tx_buffer_full"] += full
        if errors:
            engine.drops["tx_error"] += errors

    # ---- UDP -> TAP ------------------------------------------------------------------------

    def _udp_after(self, count: int, error: Exception | None) -> None:
        """The inbound pump's callback for a batch that is not settled (and for the outbound
        run it made after a write, if that one is not settled either)."""
        self.flush()
        inb, out = self.inbound, self.outbound
        daemon = self.daemon
        with daemon.lock:
            engine = daemon.engine
            if self.udp_io.errors:
                self._udp_errors(engine)
            if error is not None:
                log.error("%s: receive batch failed", daemon.name, exc_info=error)
                engine.drops["rx_exception"] += max(count, 1)
            elif count:
                if inb.lane:
                    record = inb.pending_record()
                    self.apply_record(engine, record)
                    self._count(record)
                    if inb.write_error is not None:
                        tap_write_failed(engine.drops, inb.write_error, inb.accepted)
                    if self.tap_io.errors:
                        self._tap_errors(engine)
                else:
                    self.counters["general_rx"] += 1
                    self._receive(engine, count)
                daemon.refresh_snapshot()
            replied_settled = (inb.answered and inb.reply_error is None
                               and out.settled(inb.replied))
            if replied_settled and inb.replied and out.lane:
                record = out.pending_record()
                self.apply_record(engine, record)
                self._count(record)
        if inb.answered and not replied_settled:
            if self._tap_done(inb.replied, inb.reply_error):
                return
        if self.udp_io.pending:  # GRO segments left in the scratch do not make it readable
            self.reschedule(self.inbound.on_readable)
        elif inb.answered and self.tap_io.pending:
            self.reschedule(self.outbound.on_readable)

    def _receive(self, engine: Any, count: int) -> None:
        """The general way: the engine's receive rules over the batch, then the TAP write."""
        inb = self.inbound
        bufs, lengths, sources, verdicts = inb.udp_bufs, inb.udp_lengths, inb.udp_sources, inb.verdicts
        if max(lengths[:count]) >= len(bufs[0]):
            self._grow_rx_buffers(count)
        try:
            delivered = engine.receive_bufs(bufs, lengths, sources, count, time.monotonic(),
                                            verdicts)
            self.counters["rx_frames"] += delivered
            if delivered:
                self._tap_write(engine, delivered, self.tap_io.write_slots, bufs, lengths,
                                VXLAN_HLEN, verdicts, count)
        except Exception:
            log.exception("%s: receive batch failed", self.daemon.name)
            engine.drops["rx_exception"] += count

    def _grow_rx_buffers(self, count: int) -> None:
        """A datagram filled its slot, so it may have been cut: drop it (its length becomes 0,
        which the engine counts as ``too_short``) and take 64 KiB slots from now on."""
        inb = self.inbound
        size = len(inb.udp_bufs[0])
        lengths = inb.udp_lengths
        for i in range(count):
            if lengths[i] >= size:
                lengths[i] = 0
        if size < BUFSIZE:
            log.info("%s: a datagram filled a %d-byte slot (dropped): using %d-byte slots",
                     self.daemon.name, size, BUFSIZE)
            inb.udp_bufs = [bytearray(BUFSIZE) for _ in range(BATCH)]

    # ---- errors ----------------------------------------------------------------------------

    def _tap_write(self, engine: Any, frames: int, write: Any, *args: Any) -> None:
        """``write(*args)`` on the TAP batch (``frames`` frames); failures become drops."""
        write_tap(self.tap_io, engine.drops, frames, write, *args)

    def _udp_errors(self, engine: Any) -> None:
        """Move the UdpBatch's error counts (it only receives) into ``drops["rx_error"]``."""
        errors = self.udp_io.errors
        for key in list(errors):
            engine.drops["rx_error"] += errors.pop(key)

    def _tap_errors(self, engine: Any) -> None:
        move_tap_errors(self.tap_io.errors, engine.drops)


def write_tap(tap_io: Any, drops: MutableMapping[str, int], frames: int, write: Any, *args: Any) -> None:
    """Call ``write(*args)``, a write method of ``tap_io`` (a ``TunBatch``) carrying ``frames``
    frames, and count what fails into ``drops``: an OSError for the whole batch
    (:func:`tap_write_failed`), the batch's per-frame errors (:func:`move_tap_errors`)."""
    try:
        write(*args)
    except OSError as exc:
        tap_write_failed(drops, exc, frames)
        return
    if tap_io.errors:
        move_tap_errors(tap_io.errors, drops)


def tap_write_failed(drops: MutableMapping[str, int], exc: OSError, frames: int) -> None:
    """A TAP write of ``frames`` frames raised ``exc``: EIO means the device is down
    (``device_down``); anything else, that it is going away (``tap_write_error``)."""
    drops["device_down" if exc.errno == errno.EIO else "tap_write_error"] += frames


def move_tap_errors(errors: MutableMapping[str, int], drops: MutableMapping[str, int]) -> None:
    """Move a TAP batch's error counts (``TunBatch.errors``) into an engine's ``drops``: write
    errors (EIO: the device is down) and, with offloads, read-side drops (``read:too_big`` ->
    ``tap_too_big``, ...); ``write:oversized`` -> ``tap_oversized``."""
    for name in list(errors):
        if name.startswith("read:"):
            reason = "tap_" + name[5:]
        elif name == "write:oversized":
            reason = "tap_oversized"
        elif name in ("EIO", "write:EIO"):
            reason = "device_down"
        else:
            reason = "tap_write_error"
        drops[reason] += errors.pop(name)


__all__ = ["BATCH", "BUFSIZE", "HEADROOM", "JOURNAL_DELAY", "RX_SLOT", "DataPath", "move_tap_errors",
           "tap_write_failed", "write_tap"]
