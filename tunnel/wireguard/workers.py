"""More than one core for the WireGuard daemon: ``workers N`` data path threads (issue 17).

Configured by the daemon option ``--workers N`` or ``WGPY_WORKERS=N`` in its environment (how
it reaches a daemon that wg-quick starts with the interface name alone; ``wg`` has no such
key). The default is 1: the daemon is then today's single loop (:class:`Interface`: a plain
TUN, UDP sockets without SO_REUSEPORT, the pumps as the event loop's fd callbacks) and nothing
here runs.

With N > 1 the daemon runs a :class:`WorkerInterface`:

- the TUN is created with ``IFF_MULTI_QUEUE`` and N-1 more queues are attached
  (``/sys/class/net/IF/queues`` shows N rx/tx pairs). The tun driver picks the queue a packet
  from the stack is read on by its flow (the queue it last wrote that flow on, else a flow
  hash), so one inner flow is read, sealed and sent by one worker, in order;
- each worker has its own UDP socket per family, all bound to the listen port with
  SO_REUSEPORT set before bind (queue 0's are the interface's ``bind``). The kernel picks the
  socket of a datagram by its 4-tuple, so everything one peer sends lands on one worker
  (docs/multicore.md 4.4: the encrypted inner flows cannot be told apart; many peers spread);
- each worker is a thread (:class:`Worker`) with its own epoll set, its own batch I/O objects
  on its fds (``TunBatch``, ``UdpBatch``: they keep per-call scratch), its own buffers, its own
  native pumps (``tunnel.wireguard.pump``) and its own pump ``Journal`` (armed on the worker's
  :class:`~tunnel.io.threads.Timers`).

**Shared keypairs.** Workers seal and open with the engine's ``TransportCipher`` objects
directly: a batch reserves its block of send counters with an atomic compare-and-swap (no
nonce is ever used twice, whichever worker and the control thread seal), checks the replay
window under the keypair's lock once per batch, and uses per-thread scratch when another
thread holds the cipher's own (``crypto/_transport.pyx``).

**The control thread** is the asyncio loop. It alone changes the sans-I/O ``Device``:
handshakes, cookies, timers, UAPI, roaming, staged packets, the bookkeeping of the lanes. A
worker posts, in one FIFO (:meth:`Workers.post`), in the order it produced them: its journal
records (taken when its 2 ms timer is due, when the journal is full, or before a hand-over),
and the batches it hands over (copied, so the worker goes on with its buffers): a TUN batch the
send lane did not take, a UDP batch the receive lane did not take (handshake messages, cookie
replies, a new endpoint, an unknown index...), a received batch with failures, TUN errors.
The control thread applies them in that order (:meth:`Workers.drain`) before any other work on
the engine (:meth:`WorkerInterface._apply_journal` drains first), through the same ``Device``
methods the single loop uses.

**Per-peer order.** While a worker has a hand-over the control thread has not finished, its
lanes are closed (:class:`Lanes`): it hands over every batch, in order, so no later batch of a
peer overtakes one that waits for the engine (a staged packet, a handshake). Today's single
thread gets this for free because the general path runs synchronously.

**What the lanes read.** The workers' lane decisions (``datapath.lane`` / ``receive_lane``)
read the engine's Python state with the GIL held, as the single loop's do; the lane rules make
a stale read harmless: a keypair zeroed under a worker's batch seals nothing (the batch is
handed over) and opens nothing (EXPIRED, counted). This is the intermediate step of
docs/multicore.md section 2 (as VXLAN's ``workers N``): the pumps' glue holds the GIL; a lane
batch's crypto and system calls run in one nogil section (``pump.fused``: fused_ref.py).

Not supported with N > 1: the in-process L2 overlay (local delivery), which runs on the loop.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import Counter
from typing import Any

from crypto.backend import HEADROOM, OK
from tunnel.io.endpoint import Endpoint
from tunnel.io.journal_ref import JOURNAL_DELAY
from tunnel.io.offload import open_tun
from tunnel.io.steering import attach_flow_steering
from tunnel.io.threads import Timers
from tunnel.io.tun import GONE_ERRNOS, Tun, TunGone, _io
from tunnel.io.udp import UdpBind
from tunnel.wireguard import fused
from tunnel.wireguard.device import Device
from tunnel.wireguard.interface import (
    MAX_ROUNDS,
    PUMP,
    TRANSPORT_HEADER,
    TUN_BATCH,
    UDP_BATCH,
    UDP_BUFFER,
    Interface,
    LocalDelivery,
)

log = logging.getLogger(__name__)

ENV = "WGPY_WORKERS"
FUSED_NAME, FUSED = fused.select()
MAX_WORKERS = 64
POLL_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
_PLACEHOLDER = Endpoint("0.0.0.0", 0)

# FIFO item kinds (worker -> control thread)
JOURNAL = "journal"  # (JOURNAL, records)
TUN = "tun"  # (TUN, worker, bufs, lengths, now): a hand-over, Device.send_batch
UDP = "udp"  # (UDP, worker, bufs, lengths, sources, now): a hand-over, Device.receive_batch
RECEIVED = "received"  # (RECEIVED, keypair, nbytes, opened, accepted, now, failures)
TUN_READ_ERROR = "tun_read_error"  # (kind, error)
TUN_WRITE_ERROR = "tun_write_error"  # (kind, error)
MTU = "mtu"  # (MTU,): a packet did not fit: look at the MTU again
COUNTERS = ("tx_lane_batches", "rx_lane_batches", "handed_over", "send_batch_error", "udp_read_error",
            "receive_batch_error")


def parse_workers(value: str | int | None, source: str = "--workers") -> int:
    """The worker count from an option or the environment (None/empty: 1). ValueError with a
    clear message for anything but an integer 1..MAX_WORKERS."""
    if value is None or value == "":
        return 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {value!r} is not a number of workers (1..{MAX_WORKERS})") from None
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"{source}: {count} workers is out of range (1..{MAX_WORKERS})")
    return count


class Lanes:
    """What a worker's pumps see as their ``device``: the engine's MTU, route table and lane
    decisions, except that while the worker has a hand-over in flight the lanes are closed
    (per-peer order, see the module doc). A lane decision that raises is no lane (the control
    thread's general path meets the same batch and counts the problem)."""

    def __init__(self, device: Device, worker: Worker) -> None:
        self._device = device
        self._datapath = device.datapath
        self._worker = worker
        self.datapath = self  # the pumps call device.datapath.lane(device, ...)

    @property
    def mtu(self) -> int:
        return self._device.mtu

    @property
    def generation(self) -> Any:
        """The engine's lane generation: the worker's pumps keep their lane snapshots against it
        (and drop them at each hand-over, which closes the lanes)."""
        return self._device.generation

    def routes(self) -> Any:
        """The engine's route table; while the control thread is changing allowed-IPs (a
        compile that meets the change raises), the table compiled before it."""
        try:
            return self._device.routes()
        except RuntimeError:
            table = self._device._routes[1]
            if table is None:
                raise
            return table

    def lane(self, _device: Any, bufs: list[bytearray], lengths: list[int], headroom: int,
             now: float) -> Any:
        worker = self._worker
        if worker.handed != worker.finished:
            return None
        try:
            return self._datapath.lane(self._device, bufs, lengths, headroom, now)
        except Exception:
            return None

    def receive_lane(self, _device: Any, bufs: list[bytearray], lengths: list[int], sources: list[Any],
                     now: float) -> Any:
        worker = self._worker
        if worker.handed != worker.finished:
            return None
        try:
            return self._datapath.receive_lane(self._device, bufs, lengths, sources, now)
        except Exception:
            return None

    def accept_slots(self, *args: Any) -> Any:
        return self._datapath.accept_slots(*args)


class Worker(threading.Thread):
    """One TUN queue and its UDP sockets on a thread (see the module doc). ``handed`` (written
    by this thread) and ``finished`` (written by the control thread) count hand-overs."""

    def __init__(self, index: int, owner: Workers, tun_fd: int, tun_io: Any,
                 sockets: list[tuple[int, Any, bool]]) -> None:
        """``tun_io`` reads and writes this worker's TUN queue ``tun_fd``; ``sockets`` are its
        ``(fd, UdpBatch, is_ipv6)`` (the batch I/O objects are this worker's alone)."""
        super().__init__(name=f"wg-worker-{index}", daemon=True)
        self.index = index
        self.owner = owner
        iface = owner.iface
        self.tun_fd = tun_fd
        self.tun_io = tun_io
        self.lost: list[Endpoint] = []
        self.udps: dict[int, Any] = {}
        udp4 = udp6 = None
        for fd, udp, v6 in sockets:
            udp.lost_sources = self.lost
            self.udps[fd] = udp
            if v6:
                udp6 = udp
            else:
                udp4 = udp
        self.timers = Timers()
        self.journal = PUMP.Journal(JOURNAL_DELAY, self._post_journal)
        self.journal.loop = self.timers
        self.lanes = Lanes(iface.device, self)
        self.outbound = PUMP.Outbound(self.lanes, self.tun_io, udp4, udp6, self.journal, self._tun_done, HEADROOM)
        self.inbound = PUMP.Inbound(self.lanes, self.tun_io, self.outbound, self._udp_done, TRANSPORT_HEADER)
        self.fused = FUSED.Fused()  # WGPY_FUSED=0 (a measuring hook) keeps the separate calls
        if os.environ.get("WGPY_FUSED") != "0":
            self.outbound.fused = self.inbound.fused = self.fused
        # lane batches with segments left: journaled by the pumps, the rest read next wake-up
        self.outbound.again = self.inbound.again = self._again
        self.tun_lengths = [0] * TUN_BATCH
        self.udp_lengths = [0] * UDP_BATCH
        self.udp_sources = [_PLACEHOLDER] * UDP_BATCH
        self.inbound.udp_lengths = self.udp_lengths
        self.inbound.udp_sources = self.udp_sources
        self.outbound.tun_lengths = self.tun_lengths
        self.udp_full = False
        self._slots_mtu = iface.device.mtu
        self._size_tun()
        self._size_udp()
        self.handed = 0
        self.finished = 0
        self.again = False
        self.stopping = False
        # written by this thread only, with every key present from the start (the control
        # thread reads them for stats while the worker runs)
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.tun_gone = False
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    # ------------------------------------------------------------------ buffers

    def _size_tun(self, packet: int = 0) -> None:
        size = self.owner.iface.tun_slot_size(packet)
        bufs = self.outbound.tun_bufs
        if not bufs or len(bufs[0]) < size or (not packet and len(bufs[0]) != size):
            self.outbound.tun_bufs = [bytearray(size) for _ in range(TUN_BATCH)]

    def _size_udp(self) -> None:
        size = UDP_BUFFER if self.udp_full else self.owner.iface.udp_slot_size()
        bufs = self.inbound.udp_bufs
        if not bufs or len(bufs[0]) != size:
            self.inbound.udp_bufs = [bytearray(size) for _ in range(UDP_BATCH)]

    # ------------------------------------------------------------------ to the control thread

    def _post_journal(self) -> None:
        """The journal's records to the control thread (its timer, a full journal, or before a
        hand-over: the FIFO keeps this worker's order)."""
        records = self.journal.take()
        if records:
            sent = sum(1 for r in records if r[0] == PUMP.SENT)
            self.counters["tx_lane_batches"] += sent
            self.counters["rx_lane_batches"] += len(records) - sent
            self.owner.post((JOURNAL, records))

    def _journal_add(self, record: tuple[Any, ...]) -> None:
        if not self.journal.open():
            self._post_journal()
        self.journal.add(record)

    def _hand_over(self, item: tuple[Any, ...]) -> None:
        self._post_journal()
        self.handed += 1
        # the lanes are closed until the control thread finishes this: no snapshot may grant one
        self.outbound.send_lane.clear()
        self.inbound.receive_lane.clear()
        self.counters["handed_over"] += 1
        self.owner.post(item)

    def _again(self, callback: Any, *args: Any) -> None:
        """The pumps' ``again``: segments wait in a batch; :meth:`run` polls without waiting and
        reads every TUN or UDP batch that has some (the callback is implied)."""
        self.again = True

    # ------------------------------------------------------------------ TUN -> UDP

    def _tun_done(self, count: int, error: Exception | None) -> None:
        """The outbound pump's ``after``: a batch that is not settled (full, segments left, no
        lane, an error): journal what the lane sent, hand the rest over, read more rounds."""
        pump = self.outbound
        for round_ in range(MAX_ROUNDS):
            if round_:
                pump.now = now = time.monotonic()
                try:
                    count, error = pump.run(pump.tun_bufs, self.tun_lengths, HEADROOM, self.lanes.mtu, now), None
                except Exception as exc:
                    count, error = 0, exc
            self._outbound_round(count, error)
            if error is not None or (count < TUN_BATCH and not self.tun_io.pending):
                return
        self.again = True

    def _outbound_round(self, count: int, error: Exception | None) -> None:
        pump = self.outbound
        tun = self.tun_io
        if error is not None:
            if isinstance(error, OSError):
                if error.errno in GONE_ERRNOS:
                    self.tun_gone = True  # stop polling it (the control thread decides)
                self.owner.post((TUN_READ_ERROR, error))
            else:
                self.counters["send_batch_error"] += 1
                log.debug("worker %d: outbound batch failed", self.index, exc_info=error)
            return
        if tun.needed and count < TUN_BATCH:  # a packet larger than the slots is held
            self._size_tun(tun.needed)
        too_big = tun.errors.get("read:too_big", 0)
        if too_big != pump.too_big_seen:
            pump.too_big_seen = too_big
            self.owner.post((MTU,))
        if not count:
            return
        bufs, lengths, lane = pump.bufs, pump.lengths, pump.lane
        if lane is not None:
            sealed = pump.sealed
            if sealed:
                self._journal_add((PUMP.SENT, lane[0], lane[1], sum(lengths[:sealed]), pump.now))
            if sealed < count:  # the session was zeroed meanwhile: the engine stages the rest
                self._hand_over((TUN, self, [bytearray(b) for b in bufs[sealed:count]],
                                 list(lengths[sealed:count]), pump.now))
            return
        self._hand_over((TUN, self, [bytearray(b) for b in bufs[:count]], list(lengths[:count]), pump.now))

    # ------------------------------------------------------------------ UDP -> TUN

    def _udp_done(self, udp: Any, count: int, error: Exception | None) -> None:
        """The inbound pump's ``after``: like :meth:`_tun_done` for a UDP wake-up."""
        pump = self.inbound
        self._inbound_round(count, error, pump.now)
        if pump.answered:
            self._outbound_round(pump.replied, pump.reply_error)
        if error is None and (count >= UDP_BATCH or udp.pending):
            for _ in range(MAX_ROUNDS - 1):
                pump.now = now = time.monotonic()
                try:
                    count, error = pump.run(udp, pump.udp_bufs, self.udp_lengths, self.udp_sources, now), None
                except Exception as exc:
                    count, error = 0, exc
                self._inbound_round(count, error, now)
                if error is not None or (count < UDP_BATCH and not udp.pending):
                    return
            self.again = True

    def _inbound_round(self, count: int, error: Exception | None, now: float) -> None:
        pump = self.inbound
        if error is not None:
            self.counters["udp_read_error" if isinstance(error, OSError) else "receive_batch_error"] += 1
            log.debug("worker %d: inbound batch failed", self.index, exc_info=error)
            return
        if not count:
            return
        keypair = pump.keypair
        if keypair is None:
            copies = [bytearray(memoryview(b)[:n]) for b, n in zip(pump.bufs, pump.lengths, strict=False)]
            self._hand_over((UDP, self, copies, list(pump.lengths), list(pump.sources), now))
            return
        if pump.write_error is not None:
            self.owner.post((TUN_WRITE_ERROR, pump.write_error))
        wire_lengths, results = pump.wire_lengths, pump.results
        nbytes = sum(size for size, code in zip(wire_lengths, results, strict=True) if code == OK)
        failures = [code for code in results if code != OK]
        if failures:
            self._post_journal()
            self.counters["rx_lane_batches"] += 1
            self.owner.post((RECEIVED, keypair, nbytes, pump.opened, pump.accepted, now, failures))
        else:
            self._journal_add((PUMP.RECEIVED, keypair, nbytes, pump.opened, *pump.accepted, now))
        if not self.udp_full and max(wire_lengths) >= len(pump.bufs[0]):
            self.udp_full = True  # a peer sends datagrams larger than our slots
            self._size_udp()

    # ------------------------------------------------------------------ the thread

    def halt(self) -> None:
        """End the loop (from any thread)."""
        self.stopping = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def run(self) -> None:
        poller = select.epoll()
        tun_io, udps = self.tun_io, self.udps
        on_tun = self.outbound.on_readable
        on_udp = self.inbound.on_readable
        try:
            poller.register(self.tun_fd, POLL_EVENTS)
            for fd in udps:
                poller.register(fd, POLL_EVENTS)
            poller.register(self._wake, select.EPOLLIN)
            tun_dropped = False
            while not self.stopping:
                again, self.again = self.again, False
                try:
                    events = poller.poll(0.0 if again else self.timers.timeout())
                except InterruptedError:
                    continue
                if self.tun_gone and not tun_dropped:
                    poller.unregister(self.tun_fd)
                    tun_dropped = True
                self._check_slots()
                seen_tun = False
                for fd, _ in events:
                    if fd == self.tun_fd:
                        seen_tun = True
                        on_tun()
                    elif fd == self._wake:
                        with contextlib.suppress(OSError):
                            os.eventfd_read(self._wake)
                    else:
                        udp = udps[fd]
                        on_udp(udp, udp)
                if again:  # segments left over by the last wake-up do not make an fd readable
                    if tun_io.pending and not seen_tun and not tun_dropped:
                        on_tun()
                    for udp in udps.values():
                        if udp.pending:
                            on_udp(udp, udp)
                self.timers.run_due()
        except Exception:  # a bug: log it and stop the daemon rather than lose a queue
            log.exception("worker %d failed", self.index)
            self.owner.failed(f"worker {self.index} failed")
        finally:
            poller.close()
            self._post_journal()

    def _check_slots(self) -> None:
        """Follow the interface's slot sizes (an MTU change; the bind is fixed for a worker's
        life: a rebind restarts the workers). Two attribute reads when nothing changed."""
        iface = self.owner.iface
        mtu = iface.device.mtu
        if mtu == self._slots_mtu:
            return
        self._slots_mtu = mtu
        if len(self.outbound.tun_bufs[0]) < iface.tun_slot_size():
            self._size_tun()
        if not self.udp_full and len(self.inbound.udp_bufs[0]) != iface.udp_slot_size():
            self._size_udp()

    def close(self) -> None:
        """Release the batch I/O objects and the eventfd (after the thread ended)."""
        for udp in self.udps.values():
            udp.close()
        with contextlib.suppress(OSError):
            os.close(self._wake)

    def stats(self) -> dict[str, Any]:
        errors: Counter[str] = Counter({f"tun:{k}": v for k, v in self.tun_io.errors.items()})
        for udp in self.udps.values():
            errors.update({f"udp:{k}": v for k, v in udp.errors.items()})
        return {"worker": self.index, "tid": self.native_id or 0, **dict(self.counters),
                "fused_batches": self.fused.native_batches,
                "errors": dict(sorted((k, v) for k, v in errors.items() if v))}


class Workers:
    """The extra TUN queues, the per-worker sockets, the worker threads and the FIFO to the
    control thread of one :class:`WorkerInterface`."""

    def __init__(self, iface: Interface, count: int) -> None:
        self.iface = iface
        self.count = count
        self.queue_fds: list[int] = []  # queues 1..N-1 (queue 0 is iface.tun.fd)
        self.binds: list[UdpBind] = []  # the sockets of workers 1..N-1
        self.threads: list[Worker] = []
        self.retired: list[Worker] = []  # stopped by a rebind: their counters still count
        self.fifo: collections.deque[tuple[Any, ...]] = collections.deque()
        self.scheduled = False
        self.loop: Any = None
        self.steering = False

    def open_queues(self) -> None:
        """Attach queues 1..N-1 to the interface's multi-queue TUN and steer it (OSError)."""
        tun = self.iface.tun
        for _ in range(1, self.count):
            fd, _info = open_tun(tun.name, vnet_hdr=tun.vnet_hdr, multi_queue=True)
            self.queue_fds.append(fd)
        # outbound flows to queues by their own hash, not by where their ACKs were written
        self.steering = attach_flow_steering(tun.fd)

    @property
    def running(self) -> bool:
        return bool(self.threads)

    def open_sockets(self, bind: UdpBind, fwmark: int) -> None:
        """Sockets for workers 1..N-1 on ``bind``'s port (the SO_REUSEPORT group). OSError."""
        self.close_sockets()
        for _ in range(1, self.count):
            self.binds.append(UdpBind.open(bind.port, fwmark, reuseport=True))

    def close_sockets(self) -> None:
        for extra in self.binds:
            extra.close()
        self.binds = []

    def start(self, loop: Any) -> None:
        iface = self.iface
        self.loop = loop
        assert iface.bind is not None
        binds = [iface.bind, *self.binds]
        fds = [iface.tun.fd, *self.queue_fds]
        tun: Tun = iface.tun
        for i, (fd, bind) in enumerate(zip(fds, binds, strict=True)):
            tun_io = _io.TunBatch(fd, vnet_hdr=tun.vnet_hdr, gro=tun.gro, hold_oversized=tun.vnet_hdr)
            sockets = [(s.fileno(), _io.UdpBatch(s.fileno(), gso=True, gro=s.gro, make_source=Endpoint),
                        s.family == socket.AF_INET6) for s in bind.sockets]
            self.threads.append(Worker(i, self, fd, tun_io, sockets))
        for worker in self.threads:
            worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the threads (each posts its journal on the way out) and wait for them."""
        for worker in self.threads:
            worker.halt()
        deadline = time.monotonic() + timeout
        for worker in self.threads:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error("worker %d did not stop", worker.index)
        for worker in self.threads:
            worker.close()
        self.retired.extend(self.threads)
        self.threads = []

    def failed(self, reason: str) -> None:
        """A worker died (any thread): stop the daemon from the loop."""
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.iface._stop, reason)

    def post(self, item: tuple[Any, ...]) -> None:
        """Queue ``item`` for the control thread (any worker thread); one wake-up per drain."""
        self.fifo.append(item)
        if not self.scheduled:
            self.scheduled = True
            loop = self.loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(self._drained)

    def _drained(self) -> None:
        self.iface._apply_journal()
        self.iface._rearm()

    def drain(self) -> None:
        """Apply everything the workers posted, in order (the control thread)."""
        self.scheduled = False
        fifo = self.fifo
        iface = self.iface
        device = iface.device
        while fifo:
            item = fifo.popleft()
            kind = item[0]
            try:
                if kind == JOURNAL:
                    self.iface._apply_records(item[1])
                elif kind == TUN:
                    _, worker, bufs, lengths, now = item
                    try:
                        iface._transmit(device.send_batch(bufs, lengths, now))
                    finally:
                        worker.finished += 1
                elif kind == UDP:
                    _, worker, bufs, lengths, sources, now = item
                    try:
                        iface._transmit(device.receive_batch(bufs, lengths, sources, now))
                    finally:
                        worker.finished += 1
                elif kind == RECEIVED:
                    _, keypair, nbytes, opened, accepted, now, failures = item
                    out = device.lane_received(keypair, nbytes, opened, accepted, now, failures)
                    if out is not None:
                        iface._transmit(out)
                elif kind == TUN_READ_ERROR:
                    iface.tun.read_failed(item[1])
                elif kind == TUN_WRITE_ERROR:
                    iface.tun.write_failed(item[1])
                elif kind == MTU:
                    iface._refresh_mtu()
            except TunGone:
                iface._stop("the TUN device was deleted")
            except Exception:
                iface.errors[f"worker_{kind}"] += 1
                log.debug("a worker's %s failed", kind, exc_info=True)
        for worker in self.threads:
            if worker.lost:  # sticky sources found gone by a worker's sends
                lost = worker.lost[:]
                del worker.lost[: len(lost)]
                iface._forget_sources(lost)

    def close(self) -> None:
        """Close the extra queues and sockets (after :meth:`stop`)."""
        self.close_sockets()
        for fd in self.queue_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.queue_fds = []

    def stats(self) -> list[dict[str, Any]]:
        return [w.stats() for w in self.threads or self.retired]

    def thread_ids(self) -> list[int]:
        """The workers' kernel thread ids (per-thread CPU: /proc/PID/task/TID/stat)."""
        return [w.native_id or 0 for w in self.threads]


class WorkerInterface(Interface):
    """An :class:`Interface` whose data path runs on ``count`` (> 1) worker threads; the event
    loop is the control thread (see the module doc). ``tun`` must be multi-queue."""

    def __init__(self, tun: Tun, count: int, device: Device | None = None) -> None:
        if count < 2:
            raise ValueError("a WorkerInterface has at least 2 workers (1 is the plain Interface)")
        if not getattr(tun, "multi_queue", False):
            raise ValueError("workers need a TUN created with multi_queue=True")
        super().__init__(tun, device)
        self.workers = Workers(self, count)
        try:
            self.workers.open_queues()
        except OSError:
            self.workers.close()
            raise

    # The loop watches no data fd: the workers do.
    def _watch(self, bind: UdpBind) -> None:
        pass

    def _unwatch(self, bind: UdpBind) -> None:
        pass

    def _rebind(self, port: int) -> None:
        workers = self.workers
        running = workers.running
        new = UdpBind.open(port, self._fwmark, reuseport=True)  # raises OSError: the old binding stays
        try:
            if running:
                workers.stop()
            workers.open_sockets(new, self._fwmark)
        except OSError:
            new.close()
            if running:  # the old sockets are still there
                workers.start(self._loop)
            raise
        old, self.bind = self.bind, new
        if old is not None:
            old.close()
        self._size_udp_buffers()
        self._outbound.udp4 = new.v4.io if new.v4 is not None else None
        self._outbound.udp6 = new.v6.io if new.v6 is not None else None
        if running:
            workers.start(self._loop)
        log.info("UDP bound to port %d (%d workers, SO_REUSEPORT)", new.port, workers.count)

    @property
    def fwmark(self) -> int:
        return self._fwmark

    @fwmark.setter
    def fwmark(self, mark: int) -> None:
        if mark == self._fwmark:
            return
        if self.bind is not None:
            self.bind.set_mark(mark)  # raises OSError; UAPI rolls back
        for extra in self.workers.binds:
            extra.set_mark(mark)
        self._fwmark = mark

    def start(self, loop: Any) -> None:
        self._loop = loop
        self._journal.loop = loop
        self.workers.start(loop)
        self._rearm()

    def close(self) -> None:
        self.workers.stop()
        super().close()
        self.workers.close()

    def _apply_journal(self) -> None:
        self.workers.drain()
        super()._apply_journal()

    def set_local_delivery(self, deliver: LocalDelivery | None) -> None:
        if deliver is not None:
            raise RuntimeError("local delivery (the in-process L2 overlay) needs workers 1")
        super().set_local_delivery(None)

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        stats["workers"] = self.workers.stats()
        return stats


__all__ = ["ENV", "Lanes", "MAX_WORKERS", "Worker", "WorkerInterface", "Workers", "parse_workers"]
