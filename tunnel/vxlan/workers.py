"""More than one core for the VXLAN daemon: ``workers N`` data path threads (issue 17).

With ``workers 1`` (the default) nothing here runs: the daemon opens one plain TAP fd and one
UDP socket and the pumps are the event loop's reader callbacks (``tunnel/vxlan/daemon.py``).

With ``workers N`` (N > 1) the daemon opens:

- the TAP with ``IFF_MULTI_QUEUE``, once per worker (``open_tun(name, multi_queue=True)`` on
  the same name attaches one more queue; every queue has the same IFF_VNET_HDR and offloads).
  The tun driver picks the queue a frame from the stack is read on by the flow (it remembers
  the queue a flow was last written from, else a hash of the flow), so one inner flow is read
  by one worker;
- N UDP sockets bound to ``dstport`` in one ``SO_REUSEPORT`` group (only the first joins a
  multicast ``group``). The kernel picks the socket by a hash of the outer 4-tuple; the outer
  source port is a hash of the inner flow (``fast.scan_tx``, as the kernel's vxlan does), so
  distinct flows spread and one flow stays on one socket, in order;
- per worker, its own ``TunBatch`` and ``UdpBatch`` on its fds, its own native send batch over
  the sender's shared pool sockets (``Sender.new_batch``), its own buffers and journal: one
  :class:`~tunnel.vxlan.datapath.DataPath` each.

Each worker is a thread (:class:`Worker`) with its own epoll set (its TAP queue, its socket and
a wake-up eventfd): ``epoll.poll`` releases the GIL while it waits, and the pumps' callees
(``TunBatch.read``/``write_slots``: segmentation, coalescing, checksums and the system calls;
``UdpBatch.recv``; the send batch's sendmmsg) release it around their per-frame work, so two
workers overlap everything but the short glue between those calls (which holds the GIL).

Shared state: the engine (FDB, counters) is touched only under the daemon's lock: by a
worker's journal (applied by that worker when its timer is due, see :class:`Timers`) and its
general way (learning, misses, proxy ARP, errors), and by the event loop (ageing, control
requests, metrics). The pumps read the published FDB snapshot, which the lock holder replaces
by one reference store. The counters are the engine's (the sums); ``show`` adds each data
path's own tallies under ``workers``. A control request applies the loop's journal first, not
the workers' (their records are at most ``JOURNAL_DELAY`` old).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from tunnel.io.offload import open_tun
from tunnel.io.threads import Timers

from .datapath import DataPath
from .sockets import open_receiver

log = logging.getLogger("wg-py.vxlan")

POLL_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


class Worker(threading.Thread):
    """One data path on its own thread (see the module doc). ``stop_daemon(reason)`` is safe
    from any thread; :meth:`halt` ends the loop (from any thread)."""

    def __init__(self, index: int, path: DataPath, tap_fd: int, udp_fd: int,
                 stop_daemon: Callable[[str], None]) -> None:
        super().__init__(name=f"vxlan-worker-{index}", daemon=True)
        self.index = index
        self.path = path
        self.tap_fd = tap_fd
        self.udp_fd = udp_fd
        self.stop_daemon = stop_daemon
        self.timers = Timers()
        self.soon: list[Callable[[], None]] = []
        self.stopping = False
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        path.journal.loop = self.timers
        path.reschedule = self.soon.append
        path.stop = self._tap_gone
        path.threaded = True

    def _tap_gone(self, reason: str) -> None:
        self.stopping = True
        self.stop_daemon(reason)

    def halted(self) -> bool:
        return self.stopping

    def halt(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def run(self) -> None:
        path = self.path
        poller = select.epoll()
        try:
            poller.register(self.tap_fd, POLL_EVENTS)
            poller.register(self.udp_fd, POLL_EVENTS)
            poller.register(self._wake, select.EPOLLIN)
            on_tap = path.outbound.on_readable
            on_udp = path.inbound.on_readable
            while not self.stopping:
                timeout = 0.0 if self.soon else self.timers.timeout()
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    continue
                if path.want_tx_size:  # an MTU change: before this wake-up's reads
                    path.apply_resize()
                for fd, _ in events:
                    if fd == self.udp_fd:
                        on_udp()
                    elif fd == self.tap_fd:
                        on_tap()
                    if self.halted():
                        break
                if self.soon:
                    soon, self.soon[:] = list(self.soon), []
                    for callback in soon:
                        callback()
                self.timers.run_due()
        except Exception:  # a bug: log it and stop the daemon rather than lose a queue
            log.exception("%s: worker %d failed", path.daemon.name, self.index)
            self.stop_daemon(f"worker {self.index} failed")
        finally:
            poller.close()
            path.journal.loop = None
            with contextlib.suppress(Exception):
                path.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._wake)


class Workers:
    """The extra queues and the worker threads of one daemon (``config.workers`` > 1)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.count: int = daemon.config.workers
        # queues 1..N-1 (queue 0 is the daemon's own tap_fd/udp)
        self.tap_fds: list[int] = []
        self.udps: list[Any] = []
        self.udp_ios: list[Any] = []
        self.threads: list[Worker] = []

    def open(self, gro: bool) -> None:
        """Attach queues 1..N-1 to the daemon's TAP and open their sockets (OSError)."""
        daemon = self.daemon
        vnet = daemon.offload is not None and daemon.offload.vnet_hdr
        for _ in range(1, self.count):
            fd, _offload = open_tun(daemon.offload.name, tap=True, vnet_hdr=vnet,
                                    multi_queue=True)
            self.tap_fds.append(fd)
            sock = open_receiver(daemon.config, reuseport=True, join=False)
            self.udps.append(sock)
            if gro:
                daemon.io.enable_udp_gro(sock.fileno())
            self.udp_ios.append(daemon.io.UdpBatch(sock.fileno(), gso=False, gro=gro,
                                                   make_source=daemon.make_source))

    def datapaths(self) -> list[DataPath]:
        """A DataPath per extra queue (queue 0's is the daemon's)."""
        daemon = self.daemon
        paths = []
        for fd, udp_io in zip(self.tap_fds, self.udp_ios, strict=True):
            tap_io = daemon.new_tap_io(fd)
            paths.append(DataPath(daemon, tap_io, udp_io, daemon.sender.new_batch(),
                                  daemon.tx_size(), lambda cb: None, daemon.stop_soon))
        return paths

    def start(self) -> None:
        """One thread per data path (queue 0 included)."""
        daemon = self.daemon
        fds = [(daemon.tap_fd, daemon.udp.fileno())] + [
            (t, u.fileno()) for t, u in zip(self.tap_fds, self.udps, strict=True)]
        for i, (path, (tap_fd, udp_fd)) in enumerate(zip(daemon.datapaths, fds, strict=True)):
            worker = Worker(i, path, tap_fd, udp_fd, daemon.stop_soon)
            path.counters["worker"] = i
            self.threads.append(worker)
        for worker in self.threads:
            worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the threads (each applies its journal on the way out) and wait for them."""
        for worker in self.threads:
            worker.halt()
        deadline = time.monotonic() + timeout
        for worker in self.threads:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error("%s: worker %d did not stop", self.daemon.name, worker.index)
        for worker in self.threads:
            worker.close()
        self.threads = []

    def thread_ids(self) -> list[int]:
        """The workers' kernel thread ids (for per-thread CPU in /proc/PID/task/TID/stat)."""
        return [w.native_id or 0 for w in self.threads]

    def close(self) -> None:
        """Close the extra queues and sockets (after :meth:`stop`)."""
        for udp_io in self.udp_ios:
            udp_io.close()
        for sock in self.udps:
            sock.close()
        for fd in self.tap_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.udp_ios, self.udps, self.tap_fds = [], [], []


__all__ = ["Timers", "Worker", "Workers"]
