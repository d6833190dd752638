"""A VXLAN endpoint inside the WireGuard daemon: one TAP, one ``VxlanEngine``, no second process.

``wg-py vxlan add NAME id VNI ... dev WGIFACE`` (``tunnel/overlay/cli.py``) asks WGIFACE's daemon,
over its UAPI socket (``ext=vxlan add NAME ...``), to run the endpoint here; :func:`handle` is
that request's handler (``tunnel/cli.py`` gives it to the daemon's ``main``).

Outbound (TAP readable, :meth:`L2Overlay.on_tap_readable`): ``TunBatch(l2=14).read`` cuts TSO
super-frames natively into frames at ``buf[HEADROOM + hlen:]`` (``hlen`` = inner IP + UDP +
VXLAN = 36 over IPv4, 56 over IPv6) -> the outbound lane (``fast.scan_tx``: checks, flow hash
into the srcport range, runs; ``l2.encap_runs``: the FDB snapshot per run and ``l2.encap``, in
one native call) or, for a batch it does not cover,
``VxlanEngine.transmit_bufs`` (the same checks, FDB lookup per run) -> ``l2.encap`` (native:
VXLAN, UDP and IP headers written in place in front of each frame; a replicated frame copied
for each further remote) -> ``Interface.send_packets`` (the WireGuard lane: route, seal in
place, sendmmsg with UDP GSO; or ``Device.send_batch``). No trip through the kernel's stack
between the two.

Inbound: the interface's local delivery (:meth:`Hub.deliver`, called by the inbound pump with
each opened batch after the allowed-IPs source check) -> ``l2.claim`` (native: UDP to the local
tunnel address and dstport; payload moved to the buffer's start; the inner source address is
the VTEP) -> the inbound lane (``fast.decap_batch`` and the snapshot: one VTEP, every datagram
accepted, every source MAC already at that VTEP) or ``VxlanEngine.receive_bufs`` (the kernel's
receive rules, learning: a MAC is learned at the tunnel address of the peer it came from, since
the allowed-IPs check already tied that source to the sending peer) ->
``TunBatch(l2=14, gro=True, verify=True).write_slots``.

The lanes (as the VXLAN daemon's pumps, ``tunnel/vxlan/pump_ref.py``): they read the FDB
:class:`~tunnel.vxlan.pump_ref.Snapshot` (:meth:`L2Overlay.publish`: each remote's destination
is its header template; a remote of the other family makes its MAC the general way's) and
leave the engine's bookkeeping of a batch (counters, FDB times, learning that changes nothing)
as a ``SENT``/``RECEIVED`` record in the endpoint's journal, applied (:meth:`L2Overlay.flush`)
before any other engine work and by housekeeping once a second; a full journal (``JOURNAL_LIMIT``)
sends the batch the general way, which applies it first. The snapshot is republished after
control requests and whenever ``fdb_version`` moved. ``show`` lists ``lanes``: batches per way.

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
import logging
import os
import random
import socket
import stat
import time
from array import array
from dataclasses import replace
from typing import Any

from crypto.backend import HEADROOM, TAG_SIZE
from tunnel.io.journal_ref import JOURNAL_LIMIT  # a full journal sends the next batch the general way
from tunnel.io.offload import get_hwaddr, get_mtu, open_tun, select_io, set_mtu
from tunnel.vxlan import control
from tunnel.vxlan.cli import UsageError, parse_add
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.control import handle_request, is_alive, socket_path
from tunnel.vxlan.datapath import move_tap_errors, write_tap
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.fast import select as select_fast
from tunnel.vxlan.pump_ref import RECEIVED, SENT, Snapshot, apply_record, compile_snapshot, fdb_version
from tunnel.wireguard.constants import PADDING_MULTIPLE
from tunnel.wireguard.interface import Interface

from .l2 import select as select_l2

log = logging.getLogger("tunnel.overlay")

BATCH = 64  # frames per TAP read (the WireGuard lane's batch)
TAP_ROUNDS = 8
SPARES = 2 * BATCH  # buffers for replicated copies per batch
ETH_HLEN = 14
AGE_INTERVAL = 10.0
DEFAULT_TTL = 64
MIN_MTU = 68  # the smallest IPv4 MTU (RFC 791): a TAP MTU below it is refused
L2_NAME, L2 = select_l2()


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
        return hub

    def add(self, overlay: L2Overlay) -> None:
        self.overlays[overlay.name] = overlay
        self.interface.set_local_delivery(self.deliver)

    def remove(self, overlay: L2Overlay) -> None:
        if self.overlays.get(overlay.name) is overlay:
            del self.overlays[overlay.name]
        if not self.overlays:
            self.interface.set_local_delivery(None)  # the WireGuard path as without an overlay

    def deliver(self, bufs: list[bytearray], lengths: list[int], headroom: int, verdicts: bytearray,
                count: int, now: float) -> int:
        """The interface's local delivery: each endpoint takes its packets; returns how many."""
        taken = 0
        for overlay in list(self.overlays.values()):
            taken += overlay.deliver(bufs, lengths, headroom, verdicts, count, now)
        return taken

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
        self.engine: VxlanEngine | None = None
        self.tap_fd = -1
        self.tap_io: Any = None
        self.tap_index = 0
        self.offloads = "none"
        self.mtu = 0
        self.wg_mtu = 0  # WGIFACE's MTU the TAP's was last derived from
        self.control: socket.socket | None = None
        self.control_path = socket_path(self.name)
        self._control_ino = 0
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._aged = time.monotonic()
        self._templates: dict[tuple[str, int, int], bytes | None] = {}
        self._tx_bufs: list[bytearray] = []
        self._tx_lengths = [0] * BATCH
        self._tx_verdicts = bytearray(BATCH)
        self._tx_sports = array("H", bytes(2 * BATCH))
        self._used = bytearray(BATCH)
        self._spares: list[bytearray] = []
        self._rx_bufs: list[bytearray] = []
        self._rx_lengths: list[int] = []
        self._rx_sources: list[Any] = []
        self._rx_verdicts = bytearray(256)
        self._cache = L2.SourceCache()
        # the lanes (see "The lanes" in the module doc): the FDB snapshot they read, and the
        # journal of their batches' records (applied by flush)
        self.snapshot: Snapshot | None = None
        self._records: list[tuple[Any, ...]] = []
        self.lane_counts = {"tx_lane": 0, "tx_general": 0, "rx_lane": 0, "rx_general": 0}

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
        loop.add_reader(self.tap_fd, self.on_tap_readable)
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
        """When WGIFACE's MTU changed since the TAP's was set from it (``ip link set WGIFACE mtu
        X``: the interface notices that in its own housekeeping, which runs before its
        attachments', or as soon as a larger packet shows up), set the TAP's to the new MTU
        minus the overhead (50 bytes over an IPv4 underlay, 70 over IPv6), as at creation. A
        TAP MTU set by hand in between stays until WGIFACE's changes again. A WGIFACE MTU too
        small for VXLAN leaves the TAP's as it was (logged; frames too large for the tunnel
        are dropped and counted as ``tx_oversized``)."""
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
        self.mtu = mtu
        if self.tap_io is not None:
            self.tap_io.mtu = mtu
        size = self.headroom + ETH_HLEN + mtu + PADDING_MULTIPLE + TAG_SIZE + 64
        if not self._tx_bufs or len(self._tx_bufs[0]) != size:
            self._tx_bufs = [bytearray(size) for _ in range(BATCH)]
            self._spares = [bytearray(size) for _ in range(SPARES)]

    # ---- outbound ------------------------------------------------------------------------

    def on_tap_readable(self) -> None:
        tap_io = self.tap_io
        for _ in range(TAP_ROUNDS):
            if tap_io is None or self._closed:
                return
            try:
                count = tap_io.read(self._tx_bufs, self._tx_lengths, self.headroom, self.mtu)
            except OSError as exc:
                self.close(f"TAP device gone ({exc.strerror})")
                return
            if tap_io.errors:
                self.flush()
                self._tap_errors()
            if count:
                now = time.monotonic()
                if self._transmit_lane(count, now):
                    self.lane_counts["tx_lane"] += 1
                else:
                    self.lane_counts["tx_general"] += 1
                    self.flush()
                    self._transmit(count, now)
                    self.refresh()
            if count < BATCH or not tap_io.pending:
                return
        if self._loop is not None:  # segments of a super-frame still pending: next loop turn
            self._loop.call_soon(self.on_tap_readable)

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
            self.snapshot = compile_snapshot(self.engine, self._dest_of)

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
        """The outbound lane: when the snapshot covers the whole batch (every frame sendable, no
        proxy-ARP frame, every destination MAC (or the flood entry) with remotes of our family),
        encapsulate and send it as :meth:`_transmit` would and journal its counters and FDB
        times (a SENT record, ``tunnel.vxlan.pump_ref.apply_record``). False, with nothing
        sent, otherwise."""
        snap = self.snapshot
        engine = self.engine
        if (snap is None or engine is None or self._loop is None
                or len(self._records) >= JOURNAL_LIMIT):
            return False
        bufs, lengths = self._tx_bufs, self._tx_lengths
        verdicts, sports = self._tx_verdicts, self._tx_sports
        headroom = self.headroom
        runs: list[tuple[int, int, int, int]] = []
        ok = self.fast.scan_tx(bufs, lengths, count, headroom, snap.seed, snap.port_min,
                               snap.port_max, snap.proxy, verdicts, sports, runs)
        if ok < count:
            return False
        out_bufs: list[bytearray] = []
        out_lengths: list[int] = []
        macs: list[bytes] = []
        remotes: list[Any] = []
        used = self._used
        used[:] = bytes(BATCH)
        try:
            counts = L2.encap_runs(bufs, lengths, headroom, verdicts, sports, runs, snap.entries,
                                   self.interface.device.mtu, out_bufs, out_lengths, self._spares, used,
                                   macs, remotes)
            if counts is None:
                return False
            self._send(out_bufs, out_lengths, now, counts[0], counts[1])
        except Exception:
            log.exception("%s: transmit batch failed", self.name)
            engine.drops["tx_exception"] += count
        self._records.append((SENT, tuple(macs), tuple(remotes), now))
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
        verdicts, sports = self._tx_verdicts, self._tx_sports
        out_bufs: list[bytearray] = []
        out_lengths: list[int] = []
        # spares only for a frame sent to more than one remote (head-end replication)
        replicas = not (len(plan) == 1 and len(plan[0][2]) == 1) and (
            len({(start, end) for start, end, _ in plan}) < sum(len(t) for _, _, t in plan))
        spares = list(self._spares) if replicas else []
        used = self._used
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
        verdicts, sports = self._tx_verdicts, self._tx_sports
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
        """Take this endpoint's packets of an opened batch (see module doc); never raises."""
        engine = self.engine
        if engine is None or self._closed:
            return 0
        out_bufs: list[bytearray] = []
        out_lengths: list[int] = []
        sources: list[Any] = []
        try:
            claimed, bad = L2.claim(bufs, lengths, count, headroom, verdicts, self.local_packed,
                                    self.config.dstport, out_bufs, out_lengths, sources, self._cache)
        except Exception:
            log.exception("%s: claim failed", self.name)
            engine.drops["rx_exception"] += 1
            return 0
        if bad:
            engine.drops["rx_bad_udp_csum"] += bad
        if claimed:
            rx_verdicts = self._rx_verdicts
            if len(rx_verdicts) < claimed:
                rx_verdicts = self._rx_verdicts = bytearray(claimed)
            if self._receive_lane(out_bufs, out_lengths, sources, claimed, now, rx_verdicts):
                self.lane_counts["rx_lane"] += 1
                return int(claimed + bad)
            self.lane_counts["rx_general"] += 1
            self.flush()
            try:
                accepted = engine.receive_bufs(out_bufs, out_lengths, sources, claimed, now, rx_verdicts)
                if accepted:
                    self._tap_write(accepted, self.tap_io.write_slots, out_bufs, out_lengths, 8, rx_verdicts,
                                    claimed)
            except Exception:
                log.exception("%s: receive batch failed", self.name)
                engine.drops["rx_exception"] += claimed
            self.refresh()
        return int(claimed + bad)

    def _receive_lane(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], count: int,
                      now: float, verdicts: bytearray) -> bool:
        """The inbound lane: when the snapshot says the engine would only count the claimed
        batch (one VTEP, every datagram accepted, every source MAC already in the FDB at that
        VTEP, no proxy ARP), write it to the TAP and journal a RECEIVED record. False, with
        nothing written, otherwise (``verdicts`` may have been filled)."""
        snap = self.snapshot
        if (snap is None or snap.proxy or self._loop is None or self.tap_io is None
                or len(self._records) >= JOURNAL_LIMIT):
            return False
        source = sources[0]
        for i in range(1, count):
            if sources[i] != source:
                return False
        runs: list[int] = []
        accepted, nbytes = self.fast.decap_batch(bufs, lengths, count, snap.vni, snap.own_mac, snap.learning,
                                                 sources, verdicts, runs)
        if accepted < count:
            return False
        macs = []
        if snap.learning:
            entries = snap.entries
            for start in runs:
                mac = bytes(bufs[start][14:20])
                entry = entries.get(mac)
                if entry is None or entry[1][0] != source:
                    return False  # learning would change the FDB, or a conflict: the engine's
                macs.append(mac)
        self._tap_write(accepted, self.tap_io.write_slots, bufs, lengths, 8, verdicts, count)
        self._records.append((RECEIVED, tuple(macs), source, accepted, nbytes, now))
        return True

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
            writer.write(json_line(answer))
            await asyncio.wait_for(writer.drain(), 5.0)
            if text.split() == ["stop"] and answer.get("ok"):
                self.close("stop request")
        except (TimeoutError, OSError, UnicodeError):
            pass
        except Exception:
            log.exception("%s: control request failed", self.name)
        finally:
            writer.close()


def json_line(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode() + b"\n"


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
