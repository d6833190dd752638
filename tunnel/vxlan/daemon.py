"""The VXLAN daemon: a TAP device, the underlay sockets and the control socket around one
``VxlanEngine``, on an asyncio (uvloop when installed) event loop.

Lifecycle. :meth:`VxlanDaemon.open` creates everything synchronously (the TAP device NAME,
IFF_TAP|IFF_NO_PI, non-blocking; its MTU from ``dev``; the UDP socket on ``dstport``; the
sender's sockets; the control socket) and raises :class:`DaemonError` with a user-facing
reason, leaving nothing behind. :meth:`VxlanDaemon.run` serves until ``stop`` (control request),
SIGTERM/SIGINT, or the TAP device disappearing (``ip link del NAME``: a read error on the TAP
fd, or the periodic ifindex check), then closes everything: the TAP goes with its fd, and the
control socket file is removed. :func:`start` adds the daemonizing double fork: the parent
exits 0 only once ``open`` succeeded in the daemon, else prints the reason and exits 1.
Runtime policies (``tunnel/runtime``, as the WireGuard daemon): ``WGPY_SLICE`` (the EEVDF slice
every thread asks for once set up; ``auto``, the default: 100 us while the machine's CPUs are
busy; ``off``: the kernel's default; or microseconds) and ``WGPY_GC``
(``freeze``, the default: collect and freeze what the start-up left, refreeze from a 1 s timer;
``default``: CPython's collector as is). A bad value of either fails ``open``; ``show`` reports
both (``gc``, ``sched``).
With ``--metrics ADDR:PORT`` (or ``WGPY_METRICS``) ``open`` also binds a Prometheus endpoint,
served from ``run`` on (``tunnel.metrics``; scrapes read the engine on the loop).

TAP offloads. The TAP is opened by ``tunnel.io.offload.open_tun(name, tap=True)`` with
IFF_VNET_HDR and TUNSETOFFLOAD (CSUM, TSO4, TSO6): the local stack then hands us TCP
super-frames of up to 64 KiB and leaves checksums partial. ``TunBatch(fd, l2=14)`` (the same
native splitter as the WireGuard TUN, behind the Ethernet header) cuts each super-frame into
MTU-sized frames with their IP/TCP headers and checksums fixed and completes partial checksums;
on the way in it coalesces runs of TCP segments of one flow (identical Ethernet headers, see
``tunnel/io/io_ref.py``) into one super-frame written with a GSO virtio-net header, each segment's
TCP checksum verified first (``verify=True``: nothing vouches for a VXLAN payload but its own
checksum). Partial inner checksums: a sender's kernel that relied on checksum offload (veth,
virtio) leaves the inner TCP/UDP checksum holding only the pseudo-header sum
(CHECKSUM_PARTIAL), and our UDP socket reads it so; ``verify=True`` recognizes exactly that
value and hands the frame on partial (VIRTIO_NET_HDR_F_NEEDS_CSUM, or as part of a coalesced
super-frame), or on the plain TAP finishes it in software; a checksum that is simply wrong is
written as it is and the stack drops it. ``show`` counts them as ``rx_csum_partial``.
Oversized inner frames: a kernel peer relying on TSO can send a whole TCP super-packet (up to
64 KiB) in one VXLAN datagram; ``TunBatch.mtu`` (kept equal to the TAP's MTU) makes the TAP
batch write such a frame as a GSO super-frame (or, on a plain TAP, cut it to the MTU), so that
a bridge behind the TAP forwards it; ``show`` counts them as ``rx_tso_frames``, and oversized
frames that are not TCP are dropped as ``tap_oversized``. On the
way out every inner checksum is complete: the TAP batch finishes NEEDS_CSUM frames and cuts
super-frames with full checksums, and a plain TAP gets complete ones from the kernel (no
checksum offload offered). What the kernel refused is logged and shown as ``offloads`` in ``show``;
``WGPY_NO_OFFLOAD=1`` opens a plain TAP, read and written frame by frame by the same
``TunBatch`` without the virtio-net header.

Data path (``tunnel/vxlan/datapath.py``; one batch of up to ``BATCH`` (256) frames per step, no
Python object per packet; with ``workers 1`` all on the loop thread, with ``workers N`` on N
threads, see ``tunnel/vxlan/workers.py``). The fds' reader callbacks are the native pumps
(``tunnel/vxlan/pump_ref.py`` / ``_pump.pyx``), which do a wake-up's steady state in one call
and journal the engine's bookkeeping; everything else takes the general way described here.
The TAP reader reads until EAGAIN or the batch is full (cutting super-frames; segments that do
not fit the batch wait in the TAP batch's scratch and are read on the next loop turn) into
preallocated ``bytearray`` slots of ``HEADROOM`` (8) + 14 + MTU bytes (the MTU is re-read every
second with the link check, and the slots follow it); ``VxlanEngine.transmit_bufs`` checks them,
hashes the source ports and plans the sends (one FDB lookup per destination MAC per batch); the
sender sends the whole plan (``PoolSender``: ``fast.GsoBatch``, one sendmmsg per pool socket,
runs of equal-sized datagrams to one remote as one UDP GSO message, the VXLAN header as its own
iovec; ``RawSender``: one sendmmsg on the raw socket with natively built UDP/VXLAN headers and
IPv4 checksums; see ``tunnel/vxlan/sockets.py``). The UDP reader receives with
``UdpBatch.recv`` (recvmmsg; UDP GRO when the kernel has it, so a GSO train from a peer arrives
as one message and is split into slots), ``VxlanEngine.receive_bufs`` applies the receive rules
natively and learns once per run, and ``TunBatch.write_slots`` writes the accepted frames
(``bufs[i][8:lengths[i]]``) to the TAP in one C loop, coalesced into super-frames with
offloads. GRO segments left over after a full batch do not make the socket readable again, so
the reader reschedules itself on the next loop turn. Receive slots hold 9 KiB (jumbo frames)
and grow to 64 KiB for good when a datagram fills one (that datagram, possibly cut, is dropped
as ``too_short``).
``tunnel.vxlan.fast`` and ``tunnel.io.offload.select_io`` pick the Cython modules or their pure
twins (``WGPY_PURE=1``). Buffers are reused once the batch is sent (the engine keeps no
references). An exception in a batch is logged and counted (``rx_exception``/``tx_exception``)
and never stops the daemon. Shell-side drops join the engine's ``drops`` counter: ``tx_error``,
``tx_buffer_full``, ``rx_error``, ``device_down`` (TAP written while down), ``tap_write_error``,
and with offloads ``tap_too_big``, ``tap_bad_gso``, ``tap_bad_csum``, ``tap_short`` (frames the
TAP batch could not cut), ``tap_oversized`` (received frames larger than the MTU that are not
TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import select
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from tunnel.io.offload import TunOffload, get_hwaddr, get_mtu, open_tun, select_io, set_mtu
from tunnel.runtime import gcpolicy, sched

from . import control
from .config import VxlanConfig
from .control import handle_request, is_alive, socket_path
from .datapath import BUFSIZE, HEADROOM, DataPath
from .engine import VxlanEngine
from .fast import select as select_fast
from .header import tap_mtu
from .pump_ref import compile_snapshot, fdb_version
from .sockets import Sender, ifindex, make_sender, open_receiver
from .workers import Workers

log = logging.getLogger("wg-py.vxlan")

TX_SLACK = 64  # room past ``HEADROOM + 14 + mtu`` in a transmit slot
AGE_INTERVAL = 10.0
LINK_CHECK_INTERVAL = 1.0
RUNTIME_INTERVAL = 1.0  # the slice and GC policies' housekeeping (tunnel/runtime)
READY_TIMEOUT = 30.0
ETH_HLEN = 14


class DaemonError(Exception):
    """Why the daemon could not start (shown to the user as is)."""


class VxlanDaemon:
    """One VXLAN device. The engine is touched only under :attr:`lock` (the data paths' general
    way and journals, ageing, control requests, metrics)."""

    def __init__(self, config: VxlanConfig, metrics: str | None = None) -> None:
        self.config = replace(config, hash_seed=random.getrandbits(32))
        self.metrics_address = metrics  # --metrics ADDR:PORT (else WGPY_METRICS, see open)
        self.metrics: Any = None  # a tunnel.metrics.MetricsServer while serving
        self.name = config.name
        self.engine: VxlanEngine | None = None
        self.tap_fd = -1
        self.offload: TunOffload | None = None
        self.offloads = "none"
        self.tap_index = 0
        self.mtu = 0
        self.udp: socket.socket | None = None
        self.sender: Sender | None = None
        self.control: socket.socket | None = None
        self.control_path = socket_path(self.name)
        self._control_ino = 0
        self._stopping: asyncio.Event | None = None
        self.stop_reason = ""
        self.fast_name, self.fast = select_fast()
        self.io_name, self.io = select_io()
        self.tap_io: Any = None
        self.udp_io: Any = None
        self.lock = threading.Lock()  # the engine's (see the class doc)
        self.datapaths: list[DataPath] = []  # one per worker (tunnel/vxlan/datapath.py)
        self.snapshot_version: tuple[Any, ...] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.workers: Workers | None = None  # config.workers > 1 (tunnel/vxlan/workers.py)
        # WGPY_SLICE and WGPY_GC (tunnel/runtime), read by open, started by serve once set up
        self.runtime: list[sched.SlicePolicy | gcpolicy.GcPolicy] = []

    # ---- setup / teardown ----------------------------------------------------------------

    def open(self) -> None:
        """Create the TAP, the sockets and the control socket (see module doc)."""
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        cfg = self.config
        name = self.name
        try:  # the runtime policies, applied by serve once set up (as the WireGuard daemon does)
            self.runtime = [sched.SlicePolicy(sched.parse_slice(os.environ.get(sched.ENV)),
                                              log=lambda msg: log.info("%s: %s", name, msg)),
                            gcpolicy.GcPolicy(gcpolicy.parse_mode(os.environ.get(gcpolicy.ENV)))]
        except ValueError as exc:
            raise DaemonError(str(exc)) from None
        lower_mtu = 0
        if cfg.dev:
            try:
                ifindex(cfg.dev)
                with open(f"/sys/class/net/{cfg.dev}/mtu") as f:
                    lower_mtu = int(f.read())
            except (OSError, ValueError):
                raise DaemonError(f"dev {cfg.dev}: no such device") from None
        path = self.control_path
        if is_alive(path):
            raise DaemonError(f"{name}: a wg-py vxlan daemon already runs ({path})")
        self._open_tap(name)
        try:
            if lower_mtu:
                set_mtu(name, tap_mtu(lower_mtu, cfg.ipv6))
            self.mtu = get_mtu(name)
            self._set_tap_mtu()
            own_mac = get_hwaddr(name)
        except (OSError, ValueError) as exc:
            raise DaemonError(f"{name}: cannot configure TAP device: {exc}") from None
        try:
            self.udp = open_receiver(cfg, reuseport=cfg.workers > 1)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (a kernel vxlan device with this dstport in this namespace?)"
            raise DaemonError(f"cannot bind UDP port {cfg.dstport}: {exc.strerror}{hint}") from None
        gro = bool(self.io.enable_udp_gro(self.udp.fileno()))
        self.udp_io = self.io.UdpBatch(self.udp.fileno(), gso=False, gro=gro,
                                       make_source=self.make_source)
        for note in self.udp_io.fallbacks:
            log.debug("%s: %s", name, note)
        try:
            self.sender = make_sender(cfg, self.fast)
        except OSError as exc:
            raise DaemonError(f"cannot open the sending sockets: {exc.strerror or exc}") from None
        self.engine = VxlanEngine(self.config, time.monotonic(), self.fast)
        self.engine.set_own_mac(own_mac)
        self.datapaths = [DataPath(self, self.tap_io, self.udp_io, self.sender.batch,
                                   self.tx_size(), self._call_soon, self.stop_soon)]
        if cfg.workers > 1:
            self.workers = Workers(self)
            try:
                self.workers.open(gro)
            except OSError as exc:
                raise DaemonError(f"{name}: cannot open {cfg.workers} queues: "
                                  f"{exc.strerror or exc}") from None
            self.datapaths += self.workers.datapaths()
        self.publish()
        self._open_metrics()
        self._open_control(path)

    def _open_metrics(self) -> None:
        """Bind the Prometheus endpoint if ``--metrics``/``WGPY_METRICS`` asks for one."""
        from tunnel.metrics import MetricsError, open_server

        try:
            self.metrics = open_server(self.metrics_address)
        except MetricsError as exc:
            raise DaemonError(str(exc)) from None

    def metrics_snapshot(self) -> dict[str, Any]:
        """The engine's counters and the shell's facts (for ``tunnel.metrics.vxlan``; on the loop)."""
        assert self.engine is not None
        with self.lock:
            stats = self.engine.stats()
        stats.update({
            "interface": self.name,
            "kind": "vxlan",
            "implementation": {"datapath": self.fast_name, "batch_io": self.io_name,
                               "sender": self.sender.mode if self.sender else ""},
            "offloads": {"tap": self.offloads},
        })
        return stats

    def _open_tap(self, name: str) -> None:
        """The TAP device, with offloads unless WGPY_NO_OFFLOAD=1 (see module doc)."""
        plain = os.environ.get("WGPY_NO_OFFLOAD") == "1"
        try:
            self.tap_fd, self.offload = open_tun(name, tap=True, vnet_hdr=not plain,
                                                 multi_queue=self.config.workers > 1)
        except OSError as exc:
            raise DaemonError(f"{name}: cannot create TAP device: {exc.strerror or exc}") from None
        self.tap_index = socket.if_nametoindex(self.offload.name)
        for note in self.offload.notes:
            log.info("%s: offload fallback: %s", name, note)
        self.tap_io = self.new_tap_io(self.tap_fd)
        if self.offload.vnet_hdr:
            self.offloads = self.offload.describe().split("offloads=", 1)[1] + ",gro"
        else:
            self.offloads = "none (WGPY_NO_OFFLOAD=1)" if plain else "none (no IFF_VNET_HDR)"
        log.info("%s: TAP offloads: %s", name, self.offloads)

    def new_tap_io(self, fd: int) -> Any:
        """The TAP batch I/O of queue ``fd``: with the virtio-net header (GRO on writes) when
        the TAP has offloads, else frame by frame without it; its MTU the TAP's."""
        assert self.offload is not None
        if self.offload.vnet_hdr:
            tap_io = self.io.TunBatch(fd, vnet_hdr=True, gro=True, l2=ETH_HLEN, verify=True)
        else:
            tap_io = self.io.TunBatch(fd, vnet_hdr=False, l2=ETH_HLEN, verify=True)
        if self.mtu:
            tap_io.mtu = self.mtu
        return tap_io

    @staticmethod
    def make_source(ip: str, port: int, local: str | None) -> str:
        """UdpBatch's ``make_source``: the engine learns the outer source address only."""
        return ip

    def _open_control(self, path: Any) -> None:
        try:
            self.control, self._control_ino = control.listen(path)
        except OSError as exc:
            raise DaemonError(f"control socket {path}: {exc.strerror}") from None

    def close(self) -> None:
        """Release everything (idempotent). The TAP device disappears with its fd."""
        if self.workers is not None:
            self.workers.stop()
            self.workers.close()
            self.workers = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.control is not None:
            self.control.close()
            self.control = None
            with contextlib.suppress(OSError):
                st = os.stat(self.control_path)
                if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._control_ino:
                    os.unlink(self.control_path)
            if self.control_path.parent.name.startswith("netns-"):
                with contextlib.suppress(OSError):
                    self.control_path.parent.rmdir()  # only if empty
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.udp_io is not None:
            self.udp_io.close()
            self.udp_io = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        self.tap_io = None
        if self.tap_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.tap_fd)
            self.tap_fd = -1

    # ---- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped, then close (blocking; builds its own event loop)."""
        loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a dependency
            loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.serve())
        finally:
            self.close()
            loop.close()

    async def serve(self) -> None:
        assert self.udp is not None and self.control is not None
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._loop = loop
        path = self.datapaths[0]
        if self.workers is not None:
            self.workers.start()
        else:
            path.journal.loop = loop
            loop.add_reader(self.tap_fd, path.outbound.on_readable)
            loop.add_reader(self.udp.fileno(), path.inbound.on_readable)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, f"signal {sig.name}")
        server = await asyncio.start_unix_server(self._on_control, sock=self.control)
        if self.metrics is not None:
            from tunnel.metrics import LoopCollector
            from tunnel.metrics.vxlan import families

            self.metrics.start(loop, LoopCollector(self.metrics_snapshot, families))
        timers = [
            asyncio.ensure_future(self._every(AGE_INTERVAL, self._age)),
            asyncio.ensure_future(self._every(LINK_CHECK_INTERVAL, self._check_link)),
        ]
        # Once set up (the workers' threads started): the slice of every thread (auto: as the
        # machine's idle share goes, from then on) and the GC freeze of everything so far.
        for policy in self.runtime:
            policy.start()
        timers.append(asyncio.ensure_future(self._every(RUNTIME_INTERVAL, self._runtime_housekeeping)))
        log.info("%s: vni %d dstport %d up (sender %s, mtu %d, datapath %s, io %s, "
                 "offloads %s)", self.name, self.config.vni, self.config.dstport,
                 self.sender.mode if self.sender else "?", self.mtu, self.fast_name, self.io_name,
                 self.offloads)
        try:
            await self._stopping.wait()
        finally:
            log.info("%s: stopping (%s)", self.name, self.stop_reason)
            for t in timers:
                t.cancel()
            if self.workers is not None:
                self.workers.stop()
            else:
                path.journal.loop = None
                path.flush()
                loop.remove_reader(self.tap_fd)
                loop.remove_reader(self.udp.fileno())
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            server.close()
            self.close()  # before awaiting: the socket file goes now

    def _runtime_housekeeping(self) -> None:
        for policy in self.runtime:
            policy.housekeeping()

    def stop(self, reason: str = "stop") -> None:
        if self._stopping is not None and not self._stopping.is_set():
            self.stop_reason = reason
            self._stopping.set()

    async def _every(self, interval: float, action: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                action()
            except Exception:  # a timer bug must not kill the daemon
                log.exception("%s: timer failed", self.name)

    def _age(self) -> None:
        assert self.engine is not None
        with self.lock:
            self.engine.age(time.monotonic())
            self.refresh_snapshot()

    # ---- the pumps' snapshot (tunnel/vxlan/pump_ref.py) ----------------------------------

    def publish(self) -> None:
        """Compile the engine's FDB and settings into a snapshot and hand it to every data
        path's pumps (the caller holds :attr:`lock`, or no data path runs yet). Nothing to do
        before the data paths exist."""
        if self.engine is None or self.sender is None or not self.datapaths:
            return
        snapshot = compile_snapshot(self.engine, self.sender.dest)
        self.snapshot_version = snapshot.version
        for path in self.datapaths:
            path.outbound.snapshot = snapshot

    def refresh_snapshot(self) -> None:
        """:meth:`publish` if learning or ageing changed the FDB (caller holds the lock)."""
        assert self.engine is not None
        if fdb_version(self.engine) != self.snapshot_version:
            self.publish()

    def _call_soon(self, callback: Any) -> None:
        """A data path's ``reschedule`` on the loop thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(callback)

    def stop_soon(self, reason: str) -> None:
        """A data path's ``stop``: safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self.stop, reason)

    def _check_link(self) -> None:
        try:
            name = socket.if_indextoname(self.tap_index)
        except OSError:
            self.stop("TAP device deleted")
            return
        with contextlib.suppress(OSError, ValueError):
            mtu = get_mtu(name)
            if mtu != self.mtu:
                log.info("%s: MTU %d -> %d", self.name, self.mtu, mtu)
                self.mtu = mtu
                self._set_tap_mtu()
                for path in self.datapaths:
                    path.size_tx(self.tx_size())

    def _set_tap_mtu(self) -> None:
        """Tell the TAP batch the MTU: a received frame larger than it (a kernel peer's TSO
        super-packet in one VXLAN datagram) is written as a GSO super-frame or cut to the MTU
        (``TunBatch.mtu``), so that a bridge behind the TAP does not drop it."""
        for path in self.datapaths:
            path.tap_io.mtu = self.mtu
        if self.tap_io is not None:
            self.tap_io.mtu = self.mtu

    def tx_size(self) -> int:
        """Transmit slot size: one frame of the TAP's MTU behind the headroom (super-frames are
        cut to the MTU; a larger frame, between an MTU change and the next check, is dropped
        and counted); a plain TAP reads whole frames, so its slots take any frame."""
        vnet = self.offload is not None and self.offload.vnet_hdr
        return HEADROOM + (ETH_HLEN + self.mtu + TX_SLACK if vnet else BUFSIZE)

    # ---- control -------------------------------------------------------------------------

    def extra(self) -> dict[str, Any]:
        """Shell facts added to ``show``."""
        sender = self.sender.mode if self.sender else None
        paths = self.datapaths
        return {
            "pid": os.getpid(),
            "ifindex": self.tap_index,
            "mtu": self.mtu,
            "sender": sender,
            "datapath": self.fast_name,
            "io": self.io_name,
            "offloads": self.offloads,
            "source_port": self.sender.source_port if self.sender else None,
            "pump": paths[0].pump_name if paths else None,
            "workers": [dict(p.counters) for p in paths],
            "worker_tids": self.workers.thread_ids() if self.workers is not None else [],
            "rx_csum_partial": sum(p.tap_io.csum_partial for p in paths),
            "rx_tso_frames": sum(p.tap_io.tso_frames for p in paths),
            "gc": gcpolicy.state(),
            "sched": sched.state(),
        }

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            text = line.decode(errors="replace")
            assert self.engine is not None
            for path in self.datapaths:
                if path.journal.loop is self._loop:
                    path.flush()  # this thread's records first, as for any engine work
            with self.lock:
                answer = handle_request(self.engine, text, time.monotonic(), self.extra)
                self.publish()  # an FDB or setting change takes effect in the pumps now
            if answer.get("show"):
                answer["show"]["config"]["hash_seed"] = None  # keep the seed private
            writer.write(_json_line(answer))
            await asyncio.wait_for(writer.drain(), 5.0)
            if text.split() == ["stop"] and answer.get("ok"):
                self.stop("stop request")
        except (TimeoutError, OSError, UnicodeError):
            pass
        except Exception:
            log.exception("%s: control request failed", self.name)
        finally:
            writer.close()


def _json_line(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode() + b"\n"


# ---- starting ----------------------------------------------------------------------------


def _setup_logging(foreground: bool) -> None:
    target = os.environ.get("WGPY_VXLAN_LOG")
    handler: logging.Handler
    if foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif target:
        handler = logging.FileHandler(target)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if os.environ.get("WGPY_VXLAN_DEBUG") else logging.INFO)


def start(config: VxlanConfig, foreground: bool, metrics: str | None = None) -> int:
    """Run the daemon for ``config``: in the foreground (returns when it stops), or daemonized
    (returns 0 once the device and control socket exist, 1 with a message otherwise)."""
    if foreground:
        _setup_logging(True)
        daemon = VxlanDaemon(config, metrics)
        try:
            daemon.open()
        except DaemonError as exc:
            print(f"wg-py vxlan: {exc}", file=sys.stderr)
            return 1
        daemon.run()
        return 0
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        status = _read_status(r)
        os.close(r)
        os.waitpid(pid, 0)
        if status == "ok":
            return 0
        print(f"wg-py vxlan: {status or 'the daemon died while starting'}", file=sys.stderr)
        return 1
    # first child: new session, then fork again so the daemon is not a session leader
    try:
        os.close(r)
        os.setsid()
        if os.fork():
            os._exit(0)
        _daemon_main(config, w, metrics)
    finally:
        os._exit(1)


def _read_status(fd: int) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timed out waiting for the daemon"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace").strip()
        data += chunk


def _daemon_main(config: VxlanConfig, status_fd: int, metrics: str | None) -> None:
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _setup_logging(False)
    daemon = VxlanDaemon(config, metrics)
    try:
        daemon.open()
    except Exception as exc:
        os.write(status_fd, str(exc).encode())
        os.close(status_fd)
        os._exit(1)
    os.write(status_fd, b"ok")
    os.close(status_fd)
    try:
        daemon.run()
    except Exception:
        log.exception("%s: daemon failed", config.name)
        os._exit(1)
    os._exit(0)


__all__ = ["DaemonError", "VxlanDaemon", "start"]
