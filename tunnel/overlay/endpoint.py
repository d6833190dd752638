"""A VXLAN endpoint inside the WireGuard daemon: one TAP, one ``VxlanEngine``, no second process.

``wg-py vxlan add NAME id VNI ... dev WGIFACE`` (``tunnel/overlay/cli.py``) asks WGIFACE's daemon,
over its UAPI socket (``ext=vxlan add NAME ...``), to run the endpoint here; :func:`handle` is
that request's handler (``tunnel/cli.py`` gives it to the daemon's ``main``).

The per-wake-up work is the pump's (:class:`tunnel.overlay.pump_ref.L2Pump`, native twin
``_pump.pyx``): the steps below that a steady-state batch takes run in one call of it, and this
module is its shell (the general ways, setup, control).

Outbound (TAP readable, the pump's ``on_readable``): ``TunBatch(l2=14).read`` cuts TSO
super-frames natively into frames at ``buf[HEADROOM + hlen:]`` (``hlen`` = inner IP + UDP +
VXLAN = 36 over IPv4, 56 over IPv6) -> the outbound lane (``fast.scan_tx``: checks, flow hash
into the srcport range, runs; ``l2.encap_runs``: the FDB snapshot per run and ``l2.encap``, in
one native call) or, for a batch it does not cover,
``VxlanEngine.transmit_bufs`` (the same checks, FDB lookup per run) -> ``l2.encap`` (native:
VXLAN, UDP and IP headers written in place in front of each frame; a replicated frame copied
for each further remote) -> the WireGuard lane (the pump's ``send``, else
``Interface.send_packets``: route, seal in place, sendmmsg with UDP GSO; or
``Device.send_batch``). No trip through the kernel's stack between the two.

Inbound: the interface's local delivery (the pump's ``deliver``, called by the inbound pump with
each opened batch after the allowed-IPs source check) -> ``l2.claim`` (native: UDP to the local
tunnel address and dstport; payload moved to the buffer's start; the inner source address is
the VTEP) -> the inbound lane (``fast.decap_batch`` and the snapshot: one VTEP, every datagram
accepted, every source MAC already at that VTEP) or ``VxlanEngine.receive_bufs`` (the kernel's
receive rules, learning: a MAC is learned at the tunnel address of the peer it came from, since
the allowed-IPs check already tied that source to the sending peer) ->
``TunBatch(l2=14, gro=True, verify=True).write_slots``; at the end of that UDP wake-up the
pump's ``answer`` reads the TAP once for the reply (``set_local_answer``).

The lanes (as the VXLAN daemon's pumps, ``tunnel/vxlan/pump_ref.py``): they read the FDB
:class:`~tunnel.vxlan.pump_ref.Snapshot` (:meth:`L2Overlay.publish`: each remote's destination
is its header template; a remote of the other family makes its MAC the general way's) and
leave the engine's bookkeeping of a batch (counters, FDB times, learning that changes nothing)
as a ``SENT``/``RECEIVED`` record in the endpoint's journal, applied (:meth:`L2Overlay.flush`)
before any other engine work, whenever the interface applies its journal (``journal_hooks``)
and by housekeeping; a full journal (``JOURNAL_LIMIT``) sends the batch the general way, which
applies it first. The snapshot is republished after control requests and whenever
``fdb_version`` moved. ``show`` lists ``lanes`` (batches per way) and ``pump``.

Control: the usual VXLAN control socket (``tunnel.vxlan.control``) for NAME, served on the
daemon's loop, so ``wg-py vxlan show|fdb|del NAME`` work unchanged; ``stop`` (``del``) closes
the endpoint. Closing the WireGuard interface closes its endpoints (:class:`Hub` is an
attachment of the interface). Drops (``engine.drops``) besides the engine's: ``tx_oversized``
(a frame whose inner packet would exceed WGIFACE's MTU: dropped, never fragmented),
``tx_no_buffer`` (replication beyond the spare buffers), ``remote_family`` (a remote of the
other address family than ``local``), ``rx_bad_udp_csum``, and the TAP's as in
``tunnel.vxlan.daemon``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import socket
import stat
import time
from dataclasses import replace
from typing import Any

from crypto.backend import HEADROOM, TAG_SIZE
from tunnel.io.offload import get_hwaddr, get_mtu, open_tun, select_io, set_mtu
from tunnel.vxlan import control
from tunnel.vxlan.cli import UsageError, parse_add
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.control import handle_request, is_alive, socket_path
from tunnel.vxlan.datapath import move_tap_errors, write_tap
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.fast import select as select_fast
from tunnel.vxlan.pump_ref import Snapshot, apply_record, compile_snapshot, fdb_version
from tunnel.wireguard.constants import PADDING_MULTIPLE
from tunnel.wireguard.interface import Interface

from .l2 import select as select_l2
from .pump import select as select_pump
from .pump_ref import ENCAPSULATED, READ

log = logging.getLogger("tunnel.overlay")

BATCH = 64  # frames per TAP read (the WireGuard lane's batch)
TAP_ROUNDS = 8
SPARES = 2 * BATCH  # buffers for replicated copies per batch
ETH_HLEN = 14
AGE_INTERVAL = 10.0
DEFAULT_TTL = 64
MIN_MTU = 68  # the smallest IPv4 MTU (RFC 791): a TAP MTU below it is refused
L2_NAME, L2 = select_l2()
L2PUMP_NAME, L2PUMP = select_pump()


class OverlayError(Exception):
    """Why an endpoint could not be created (shown to the user as is)."""


def overhead(ipv6: bool) -> int:
    """Bytes a frame's payload gains inside the tunnel: inner IP + UDP + VXLAN + Ethernet."""
    return int((L2.HLEN6 if ipv6 else L2.HLEN4) + ETH_HLEN)


class Hub:
    """The endpoints of one interface: its local delivery and one of its attachments."""

    def __init__(self, interface: Interface) -> None:
        self.interface = interface
        self.overlays: dict[str, L2Overlay] = {}

    @classmethod
    def of(cls, interface: Interface) -> Hub:
        for attachment in interface.attachments:
            if isinstance(attachment, Hub):
                return attachment
        hub = cls(interface)
        interface.attachments.append(hub)
        interface.journal_hooks.append(hub.flush)
        return hub

    def add(self, overlay: L2Overlay) -> None:
        self.overlays[overlay.name] = overlay
        self._install()

    def remove(self, overlay: L2Overlay) -> None:
        if self.overlays.get(overlay.name) is overlay:
            del self.overlays[overlay.name]
        self._install()

    def _install(self) -> None:
        """The interface's local delivery and answer: one endpoint's pump's (no Python frame on
        the way), else :meth:`deliver`/:meth:`answer`, or none (the plain WireGuard path)."""
        overlays = list(self.overlays.values())
        if not overlays:
            self.interface.set_local_delivery(None)
            self.interface.set_local_answer(None)
        elif len(overlays) == 1:
            self.interface.set_local_delivery(overlays[0].pump.deliver)
            self.interface.set_local_answer(overlays[0].pump.answer)
        else:
            self.interface.set_local_delivery(self.deliver)
            self.interface.set_local_answer(self.answer)

    def deliver(self, bufs: list[bytearray], lengths: list[int], headroom: int, verdicts: bytearray,
                count: int, now: float) -> int:
        """The interface's local delivery: each endpoint takes its packets; returns how many."""
        taken = 0
        for overlay in list(self.overlays.values()):
            taken += overlay.deliver(bufs, lengths, headroom, verdicts, count, now)
        return taken

    def flush(self) -> None:
        """The interface applied its journal: each endpoint applies its own (never raises)."""
        for overlay in list(self.overlays.values()):
            try:
                overlay.flush()
            except Exception:
                log.exception("%s: applying the journal failed", overlay.name)

    def answer(self) -> None:
        """The interface's answer after a wake-up: each endpoint reads its TAP if written."""
        for overlay in list(self.overlays.values()):
            overlay.pump.answer()

    def close(self) -> None:
        for overlay in list(self.overlays.values()):
            overlay.close("the WireGuard interface is closing")

    def housekeeping(self) -> None:
        for overlay in list(self.overlays.values()):
            overlay.housekeeping()


class L2Overlay:
    """One VXLAN device NAME whose underlay is ``interface`` (see module doc)."""

    def __init__(self, interface: Interface, config: VxlanConfig) -> None:
        if config.local is None:
            raise OverlayError("local ADDR is needed")
        self.interface = interface
        local = ipaddress.ip_address(config.local)
        self.ipv6 = local.version == 6
        # IPv4: UDP checksum 0 (the kernel's noudpcsum default); IPv6: always a full checksum
        self.config = replace(config, hash_seed=random.getrandbits(32), dev=interface.name, udpcsum=self.ipv6)
        self.name = config.name
        self.local_packed = local.packed
        self.hlen = L2.HLEN6 if self.ipv6 else L2.HLEN4
        self.headroom = HEADROOM + self.hlen  # the frame's place in a slot
        self.ttl = config.ttl or DEFAULT_TTL
        self.fast_name, self.fast = select_fast()
        self.io_name, self.io = select_io()
        # the lanes (see "The lanes" in the module doc and tunnel/overlay/pump_ref.py): the pump
        # holds the TAP batch, the transmit slots, the FDB snapshot and the journal's records
        self.pump: Any = L2PUMP.L2Pump(self.fast, L2, interface.outbound_pump, self.headroom, self.local_packed,
                                       self.config.dstport)
        self.pump.after = self._tap_round_done
        self.pump.general = self._receive_general
        self._closed = False
        self._engine: VxlanEngine | None = None
        self.tap_fd = -1
        self._tap_io: Any = None
        self.tap_index = 0
        self.offloads = "none"
        self.mtu = 0
        self.wg_mtu = 0  # WGIFACE's MTU the TAP's was last derived from
        self.control: socket.socket | None = None
        self.control_path = socket_path(self.name)
        self._control_ino = 0
        self._server: asyncio.AbstractServer | None = None
        self.__loop: asyncio.AbstractEventLoop | None = None
        self._aged = time.monotonic()
        self._templates: dict[tuple[str, int, int], bytes | None] = {}

    # ---- the state the pump holds ----------------------------------------------------------

    @property
    def engine(self) -> VxlanEngine | None:
        return self._engine

    @engine.setter
    def engine(self, engine: VxlanEngine | None) -> None:
        self._engine = engine
        self.pump.drops = engine.drops if engine is not None else {}
        self.pump.enabled = engine is not None and not self._closed

    @property
    def tap_io(self) -> Any:
        return self._tap_io

    @tap_io.setter
    def tap_io(self, tap_io: Any) -> None:
        self._tap_io = self.pump.tap = tap_io

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        return self.__loop

    @_loop.setter
    def _loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.__loop = loop
        self.pump.active = loop is not None and not self._closed

    @property
    def snapshot(self) -> Snapshot | None:
        """The FDB snapshot the lanes read."""
        return self.pump.snapshot  # type: ignore[no-any-return]

    @property
    def _records(self) -> list[tuple[Any, ...]]:
        """The lanes' journal: records applied by :meth:`flush`."""
        return self.pump.records  # type: ignore[no-any-return]

    @_records.setter
    def _records(self, records: list[tuple[Any, ...]]) -> None:
        self.pump.records = records

    @property
    def lane_counts(self) -> dict[str, int]:
        return self.pump.lanes  # type: ignore[no-any-return]

    @property
    def _tx_bufs(self) -> list[bytearray]:
        return self.pump.tx_bufs  # type: ignore[no-any-return]

    @property
    def _tx_lengths(self) -> list[int]:
        return self.pump.tx_lengths  # type: ignore[no-any-return]

    # ---- setup / teardown ----------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the TAP (MTU: the interface's minus the overhead), the engine and the control
        socket, and start serving on ``loop``. OverlayError with the reason; nothing left."""
        try:
            self._open(loop)
        except BaseException:
            self.close("open failed")
            raise

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        name = self.name
        if is_alive(self.control_path):
            raise OverlayError(f"{name}: a wg-py vxlan device of this name already runs")
        try:
            self.tap_fd, offload = open_tun(name, tap=True, vnet_hdr=os.environ.get("WGPY_NO_OFFLOAD") != "1")
        except OSError as exc:
            raise OverlayError(f"{name}: cannot create TAP device: {exc.strerror or exc}") from None
        self.tap_index = socket.if_nametoindex(offload.name)
        if offload.vnet_hdr:
            self.tap_io = self.io.TunBatch(self.tap_fd, vnet_hdr=True, gro=True, l2=ETH_HLEN, verify=True)
            self.offloads = offload.describe().split("offloads=", 1)[1] + ",gro"
        else:
            self.tap_io = self.io.TunBatch(self.tap_fd, vnet_hdr=False, l2=ETH_HLEN, verify=True)
            self.offloads = "none"
        try:
            self.wg_mtu = self.interface.device.mtu
            mtu = self.wg_mtu - overhead(self.ipv6)
            if mtu < MIN_MTU:
                raise OverlayError(f"{self.interface.name}: MTU {self.wg_mtu} too small for VXLAN")
            set_mtu(name, mtu)
            self._set_mtu(get_mtu(name))
            own_mac = get_hwaddr(name)
        except OSError as exc:
            raise OverlayError(f"{name}: cannot configure TAP device: {exc}") from None
        self.engine = VxlanEngine(self.config, time.monotonic(), self.fast)
        self.engine.set_own_mac(own_mac)
        self._open_control()
        self._loop = loop
        self.publish()
        loop.add_reader(self.tap_fd, self.pump.on_readable)
        assert self.control is not None
        task = loop.create_task(asyncio.start_unix_server(self._on_control, sock=self.control))
        task.add_done_callback(self._served)
        Hub.of(self.interface).add(self)
        log.info("%s: vni %d dstport %d inside %s (local %s, mtu %d, l2 %s, offloads %s)", name,
                 self.config.vni, self.config.dstport, self.interface.name, self.config.local, self.mtu,
                 L2_NAME, self.offloads)

    def _served(self, task: asyncio.Task[asyncio.AbstractServer]) -> None:
        if task.cancelled() or task.exception() is not None:
            log.error("%s: control socket failed: %s", self.name, None if task.cancelled() else task.exception())
            return
        self._server = task.result()
        if self._closed:
            self._server.close()

    def _open_control(self) -> None:
        path = self.control_path
        try:
            self.control, self._control_ino = control.listen(path)
        except OSError as exc:
            raise OverlayError(f"control socket {path}: {exc.strerror}") from None

    def close(self, reason: str = "stop") -> None:
        """Stop and release everything (idempotent); the TAP device goes with its fd."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self.pump.active = self.pump.enabled = False
        log.info("%s: stopping (%s)", self.name, reason)
        Hub.of(self.interface).remove(self)
        if self._loop is not None and self.tap_fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.tap_fd)
        if self._server is not None:
            self._server.close()
        if self.control is not None:
            self.control.close()
            self.control = None
            with contextlib.suppress(OSError):
                st = os.stat(self.control_path)
                if stat.S_ISSOCK(st.st_mode) and st.st_ino == self._control_ino:
                    os.unlink(self.control_path)
        self.tap_io = None
        if self.tap_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.tap_fd)
            self.tap_fd = -1

    def housekeeping(self) -> None:
        """Once a second: the lanes' journal applied, the TAP still there (else close), its
        MTU (following WGIFACE's), FDB ageing."""
        self.flush()
        try:
            name = socket.if_indextoname(self.tap_index)
        except OSError:
            self.close("TAP device deleted")
            return
        self._follow_interface_mtu(name)
        with contextlib.suppress(OSError, ValueError):
            mtu = get_mtu(name)
            if mtu != self.mtu:
                self._set_mtu(mtu)
        now = time.monotonic()
        if now - self._aged >= AGE_INTERVAL and self.engine is not None:
            self._aged = now
            self.flush()
            self.engine.age(now)
            self.refresh()

    def _follow_interface_mtu(self, name: str) -> None:
        """When WGIFACE's MTU changed since the TAP's was set from it (the interface notices in
        its housekeeping, which runs before its attachments'), set the TAP's to it minus the
        overhead (50 / 70), as at creation; a TAP MTU set by hand stays until WGIFACE's next
        change. Too small for VXLAN: the TAP's stays (logged; ``tx_oversized`` counts)."""
        wg_mtu = self.interface.device.mtu
        if wg_mtu == self.wg_mtu:
            return
        self.wg_mtu = wg_mtu
        mtu = wg_mtu - overhead(self.ipv6)
        if mtu < MIN_MTU:
            log.warning("%s: MTU %d of %s is too small for VXLAN; the TAP keeps MTU %d",
                        self.name, wg_mtu, self.interface.name, self.mtu)
            return
        try:
            set_mtu(name, mtu)
        except OSError as exc:
            log.warning("%s: cannot follow %s's MTU %d: %s", self.name, self.interface.name, wg_mtu, exc)
            return
        log.info("%s: MTU %d, following %s's %d", self.name, mtu, self.interface.name, wg_mtu)

    def _set_mtu(self, mtu: int) -> None:
        """The TAP's MTU: the TAP batch's cut and write size, and the transmit slots."""
        self.mtu = self.pump.mtu = mtu
        if self.tap_io is not None:
            self.tap_io.mtu = mtu
        size = self.headroom + ETH_HLEN + mtu + PADDING_MULTIPLE + TAG_SIZE + 64
        if not self._tx_bufs or len(self._tx_bufs[0]) != size:
            self.pump.tx_bufs = [bytearray(size) for _ in range(BATCH)]
            self.pump.spares = [bytearray(size) for _ in range(SPARES)]

    # ---- outbound ------------------------------------------------------------------------

    def _tap_round_done(self, count: int, error: Exception | None) -> None:
        """The pump's ``after``: finish the round it ran the general way, then read on (at
        most TAP_ROUNDS rounds; then the loop's next turn)."""
        tap_io = self.tap_io
        pump = self.pump
        for _ in range(TAP_ROUNDS):
            if not self._finish_round(count, error) or tap_io is None or self._closed:
                return
            if count < BATCH or not tap_io.pending:
                return
            count, error = 0, None
            try:
                count = pump.run(time.monotonic())
            except Exception as exc:
                error = exc
        if self._loop is not None:  # segments of a super-frame still pending: next loop turn
            self._loop.call_soon(pump.on_readable)

    def _finish_round(self, count: int, error: Exception | None) -> bool:
        """What the pump's last run left: TAP errors counted, a batch the lanes did not take
        through the general way, encapsulated packets the WireGuard lane did not send through
        ``Interface.send_packets``. False when the TAP is gone."""
        pump = self.pump
        if isinstance(error, OSError):  # only the TAP read raises it
            self.close(f"TAP device gone ({error.strerror})")
            return False
        if self.tap_io is None or self.engine is None:
            return False
        if error is not None:
            log.error("%s: transmit batch failed", self.name, exc_info=error)
            self.engine.drops["tx_exception"] += count
            return True
        if self.tap_io.errors:
            self.flush()
            self._tap_errors()
        if count:
            if pump.stage == READ:
                self.lane_counts["tx_general"] += 1
                self.flush()
                self._transmit(count, pump.now)
                self.refresh()
            elif pump.stage == ENCAPSULATED:
                unsent = pump.unsent
                self._send(pump.out_bufs[unsent:], pump.out_lengths[unsent:], pump.now, 0, 0)
        return True

    def _template(self, ip: str, port: int, vni: int) -> bytes | None:
        key = (ip, port, vni)
        tmpl = self._templates.get(key, b"")
        if tmpl == b"":
            try:
                remote = ipaddress.ip_address(ip).packed
                tmpl = L2.template(self.local_packed, remote, port, vni, self.ttl)
            except ValueError:
                tmpl = None  # the other family than local
            if len(self._templates) > 4096:
                self._templates.clear()
            self._templates[key] = tmpl
        return tmpl

    # ---- the lanes: snapshot and journal ---------------------------------------------------

    def publish(self) -> None:
        """Compile the FDB snapshot the lanes read (after any change the journal did not make:
        control requests, ageing, the general ways' learning)."""
        if self.engine is not None:
            self.pump.snapshot = compile_snapshot(self.engine, self._dest_of)

    def refresh(self) -> None:
        """Republish the snapshot if learning or ageing changed the FDB since it was compiled."""
        engine = self.engine
        if engine is not None and (self.snapshot is None or self.snapshot.version != fdb_version(engine)):
            self.publish()

    def _dest_of(self, remote: Any) -> bytes | None:
        """The snapshot's destination of a remote: its header template (None: the other address
        family than ``local``, for the general way to count)."""
        return self._template(remote.ip, remote.port, remote.vni)

    def flush(self) -> None:
        """Apply the lanes' records to the engine, oldest first (before any other engine work),
        then republish the snapshot if learning changed the FDB."""
        records = self._records
        engine = self.engine
        if not records or engine is None:
            return
        self._records = []
        for record in records:
            apply_record(engine, record)
        self.refresh()

    def _transmit_lane(self, count: int, now: float) -> bool:
        """The outbound lane over the batch in the transmit slots (the pump's ``tx_lane`` and
        ``send``; what the WireGuard lane does not send goes through ``send_packets``). False,
        with nothing sent, when the snapshot does not cover it."""
        pump = self.pump
        if not pump.tx_lane(count, now):
            return False
        self.lane_counts["tx_lane"] += 1
        if not pump.send(pump.out_bufs, pump.out_lengths, now):
            unsent = pump.unsent
            self._send(pump.out_bufs[unsent:], pump.out_lengths[unsent:], now, 0, 0)
        return True

    def _send(self, out_bufs: list[bytearray], out_lengths: list[int], now: float, oversized: int,
              no_spare: int) -> None:
        """Count what ``encap`` dropped, then send the packets through the interface."""
        engine = self.engine
        assert engine is not None
        if oversized:
            engine.drops["tx_oversized"] += oversized
        if no_spare:
            engine.drops["tx_no_buffer"] += no_spare
        if len(out_bufs) <= BATCH:
            self.interface.send_packets(out_bufs, out_lengths, now)
        else:
            for k in range(0, len(out_bufs), BATCH):
                self.interface.send_packets(out_bufs[k : k + BATCH], out_lengths[k : k + BATCH], now)

    def _encap_send(self, plan: list[tuple[int, int, Any]], count: int, now: float) -> None:
        """Encapsulate each ``(start, end, templates)`` range for each template and send the
        packets through the interface; oversized frames and replicas beyond the spares are
        dropped and counted."""
        engine = self.engine
        assert engine is not None
        bufs, lengths = self._tx_bufs, self._tx_lengths
        verdicts, sports = self.pump.tx_verdicts, self.pump.tx_sports
        out_bufs: list[bytearray] = []
        out_lengths: list[int] = []
        # spares only for a frame sent to more than one remote (head-end replication)
        replicas = not (len(plan) == 1 and len(plan[0][2]) == 1) and (
            len({(start, end) for start, end, _ in plan}) < sum(len(t) for _, _, t in plan))
        spares = list(self.pump.spares) if replicas else []
        used = self.pump.used
        used[:] = bytes(BATCH)
        mtu = self.interface.device.mtu
        oversized = no_spare = 0
        try:
            for start, end, templates in plan:
                for tmpl in templates:
                    _n, big, short = L2.encap(bufs, lengths, start, end, self.headroom, verdicts,
                                              sports, tmpl, mtu, out_bufs, out_lengths, spares, used)
                    oversized += big
                    no_spare += short
            self._send(out_bufs, out_lengths, now, oversized, no_spare)
        except Exception:
            log.exception("%s: transmit batch failed", self.name)
            engine.drops["tx_exception"] += count

    def _transmit(self, count: int, now: float) -> None:
        """The general way: the engine's transmit rules over the batch, then encapsulate and
        send."""
        engine = self.engine
        assert engine is not None
        bufs, lengths = self._tx_bufs, self._tx_lengths
        verdicts, sports = self.pump.tx_verdicts, self.pump.tx_sports
        try:
            plan = engine.transmit_bufs(bufs, lengths, count, now, self.headroom, verdicts, sports)
            if plan.local:
                self._tap_write(len(plan.local), self.tap_io.write, list(plan.local))
            if not plan.items:
                return
            steps = []
            for start, end, remote in plan.items:
                tmpl = self._template(remote.ip, remote.port, remote.vni)
                if tmpl is None:
                    engine.drops["remote_family"] += end - start
                    continue
                steps.append((start, end, (tmpl,)))
        except Exception:
            log.exception("%s: transmit batch failed", self.name)
            engine.drops["tx_exception"] += count
            return
        self._encap_send(steps, count, now)

    # ---- inbound -------------------------------------------------------------------------

    def deliver(self, bufs: list[bytearray], lengths: list[int], headroom: int, verdicts: bytearray,
                count: int, now: float) -> int:
        """Take this endpoint's packets of an opened batch (the pump's ``deliver``, see module
        doc); never raises."""
        if self.engine is None or self._closed:
            return 0
        return int(self.pump.deliver(bufs, lengths, headroom, verdicts, count, now))

    def _receive_general(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], claimed: int,
                         now: float, verdicts: bytearray) -> None:
        """The pump's ``general``: a claimed batch the inbound lane did not take, through the
        engine (the journal applied first), to the TAP."""
        engine = self.engine
        if engine is None:
            return
        self.flush()
        try:
            accepted = engine.receive_bufs(bufs, lengths, sources, claimed, now, verdicts)
            if accepted:
                self._tap_write(accepted, self.tap_io.write_slots, bufs, lengths, 8, verdicts, claimed)
        except Exception:
            log.exception("%s: receive batch failed", self.name)
            engine.drops["rx_exception"] += claimed
        self.refresh()

    def _tap_write(self, frames: int, write: Any, *args: Any) -> None:
        assert self.engine is not None
        if self.tap_io is None:
            return
        write_tap(self.tap_io, self.engine.drops, frames, write, *args)

    def _tap_errors(self) -> None:
        """The TAP batch's error counts into the drops (as tunnel.vxlan.daemon names them)."""
        assert self.engine is not None
        move_tap_errors(self.tap_io.errors, self.engine.drops)

    # ---- control -------------------------------------------------------------------------

    def extra(self) -> dict[str, Any]:
        """Shell facts added to ``show``."""
        return {
            "pid": os.getpid(),
            "ifindex": self.tap_index,
            "mtu": self.mtu,
            "sender": f"in-process ({self.interface.name})",
            "underlay": self.interface.name,
            "lanes": dict(self.lane_counts),
            "pump": {"name": L2PUMP_NAME, "tx_whole": self.pump.tx_whole, "answers": self.pump.answers},
            "datapath": f"{self.fast_name}+l2 {L2_NAME}",
            "io": self.io_name,
            "offloads": self.offloads,
            "source_port": None,
            "rx_csum_partial": self.tap_io.csum_partial if self.tap_io is not None else 0,
            "rx_tso_frames": self.tap_io.tso_frames if self.tap_io is not None else 0,
        }

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            text = line.decode(errors="replace")
            if self.engine is None:
                return
            self.flush()
            answer = handle_request(self.engine, text, time.monotonic(), self.extra)
            self.publish()
            if answer.get("show"):
                answer["show"]["config"]["hash_seed"] = None
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), 5.0)
            if text.split() == ["stop"] and answer.get("ok"):
                self.close("stop request")
        except (TimeoutError, OSError, UnicodeError):
            pass
        except Exception:
            log.exception("%s: control request failed", self.name)
        finally:
            writer.close()


def handle(interface: Interface, words: list[str]) -> dict[str, Any]:
    """The daemon's ``ext=vxlan add NAME id VNI ... local ADDR [dev IFACE]`` request: run the
    endpoint in this process. Answers ``{"ok": true, "name", "mtu", "local"}`` or
    ``{"ok": false, "error"}``."""
    if not words or words[0] != "add":
        return {"ok": False, "error": "usage: vxlan add NAME id VNI ... local ADDR"}
    try:
        config, _foreground = parse_add(words[1:])
    except UsageError as exc:
        return {"ok": False, "error": str(exc)}
    if config.dev not in (None, interface.name):
        return {"ok": False, "error": f"dev {config.dev} is not this interface ({interface.name})"}
    if config.group is not None:
        return {"ok": False, "error": "group (multicast) cannot run over WireGuard; use remote or fdb append"}
    if config.workers != 1:
        return {"ok": False, "error": "workers is for a separate VXLAN daemon (this one runs on the WireGuard loop)"}
    if config.local is None:
        return {"ok": False, "error": "local ADDR is needed"}
    for other in Hub.of(interface).overlays.values():
        if other.config.dstport == config.dstport:
            return {"ok": False, "error": f"{other.name} already uses dstport {config.dstport} on {interface.name}"}
    loop = asyncio.get_running_loop()
    overlay = L2Overlay(interface, config)
    try:
        overlay.open(loop)
    except OverlayError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "name": overlay.name, "mtu": overlay.mtu, "local": config.local}
