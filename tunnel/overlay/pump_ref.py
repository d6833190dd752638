"""The L2 overlay's per-wake-up work in one call: TAP -> WireGuard and WireGuard -> TAP.

The pure-Python twin of ``tunnel/overlay/_pump.pyx`` (same API, same behaviour); the VXLAN
endpoint inside the WireGuard daemon (``tunnel/overlay/endpoint.py``) is its shell, as the
WireGuard interface is its pumps' (``tunnel/wireguard/pump_ref.py``).

:class:`L2Pump` holds what the endpoint's two lanes need between wake-ups (the TAP batch, the
transmit slots, the FDB :class:`~tunnel.vxlan.pump_ref.Snapshot`, the lanes' journal
:attr:`~L2Pump.records`, the engine's ``drops``) and does a steady-state batch whole:

- Outbound, :meth:`L2Pump.on_readable` (the event loop's callback for the TAP fd): read a batch
  (``TunBatch(l2=14).read``), and when the snapshot covers it (:meth:`L2Pump.tx_lane`:
  ``fast.scan_tx``, ``l2.encap_runs``) and the WireGuard lane takes the encapsulated packets
  (:meth:`L2Pump.send`: ``datapath.lane``, ``seal_batch``, ``send_slots``), journal both
  records: the VXLAN engine's ``SENT`` in :attr:`~L2Pump.records` (applied by the endpoint's
  ``flush``), the WireGuard device's in the interface's journal. A round that is not settled
  (TAP errors, a batch the snapshot does not cover, packets the WireGuard lane did not take,
  more to read) goes to ``after(count, error)``: the shell finishes it the general way (see
  :attr:`L2Pump.stage`) and reads on.
- Inbound, :meth:`L2Pump.deliver` (the interface's local delivery, called by the WireGuard
  inbound pump with each opened batch): ``l2.claim``, and when the snapshot says the engine
  would only count the batch (:meth:`L2Pump.rx_lane`: one VTEP, ``fast.decap_batch`` accepts
  all, every source MAC already at that VTEP), the TAP write and a ``RECEIVED`` record; else
  ``general(bufs, lengths, sources, claimed, now, verdicts)``, the shell's general way.
- The answer, :meth:`L2Pump.answer`: the WireGuard inbound pump calls it at the end of its
  wake-up (after its own records or its general way: order kept); if the delivery wrote to the
  TAP since, it runs :meth:`L2Pump.on_readable` once, so the reply the kernel queued during the
  write (an echo reply, a TCP ACK) leaves in the same wake-up, as the VXLAN pumps' do.

Both lanes refuse a batch while the records are full (``JOURNAL_LIMIT``) or the pump is not
:attr:`~L2Pump.active` (no loop), and never touch the engine: the shell applies the records
before any other engine work. Nothing here raises out of :meth:`deliver`; exceptions of a TAP
round go to ``after``.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, MutableMapping
from typing import Any

from crypto.backend import HEADROOM
from tunnel.io.journal_ref import JOURNAL_LIMIT, RECEIVED, SENT
from tunnel.vxlan.datapath import move_tap_errors, tap_write_failed

__all__ = ["BATCH", "L2Pump"]

BATCH = 64  # frames per TAP read (the WireGuard lane's batch)

#: :attr:`L2Pump.stage` after a run: nothing beyond the read (the general way's: the engine's
#: transmit rules), encapsulated by the lane (:attr:`L2Pump.out_bufs` from
#: :attr:`L2Pump.unsent` on still to send), or sent whole by the WireGuard lane
READ, ENCAPSULATED, SENT_WHOLE = 0, 1, 2


class L2Pump:
    """The endpoint's two lanes (see module doc). ``fast`` is a ``tunnel.vxlan.fast`` twin,
    ``l2`` a ``tunnel.overlay.l2`` twin, ``wg`` the interface's WireGuard outbound pump (its
    ``device``, ``udp4``/``udp6`` and ``journal`` are read at each send), ``headroom`` where a
    frame starts in a transmit slot (HEADROOM + the VXLAN headers), ``local`` the packed local
    tunnel address and ``dstport`` the VXLAN port claimed on receive.

    The shell sets :attr:`tap` (a ``TunBatch``), :attr:`mtu` (the TAP's), the transmit slots
    (:attr:`tx_bufs`, :attr:`spares`), :attr:`snapshot`, :attr:`drops` (the engine's),
    :attr:`active`, :attr:`enabled`, :attr:`after` and :attr:`general`. After a run, :attr:`count` is the
    frames read, :attr:`stage` how far the lane got, :attr:`out_bufs`/:attr:`out_lengths` the
    encapsulated packets and :attr:`unsent` the first the WireGuard lane did not send.
    """

    def __init__(self, fast: Any, l2: Any, wg: Any, headroom: int, local: bytes, dstport: int) -> None:
        if headroom < HEADROOM:
            raise ValueError("headroom must leave room for the WireGuard header")
        if len(local) not in (4, 16):
            raise ValueError("local must be a packed IPv4 or IPv6 address")
        self.fast = fast
        self.l2 = l2
        self.wg = wg
        self.headroom = headroom
        self.local = bytes(local)
        self.dstport = dstport
        self.tap: Any = None
        self.mtu = 0
        self.tx_bufs: list[bytearray] = []
        self.tx_lengths = [0] * BATCH
        self.tx_verdicts = bytearray(BATCH)
        self.tx_sports = array("H", bytes(2 * BATCH))
        self.used = bytearray(BATCH)
        self.spares: list[bytearray] = []
        self.snapshot: Any = None
        self.records: list[tuple[Any, ...]] = []
        self.drops: MutableMapping[str, int] = {}
        self.lanes = {"tx_lane": 0, "tx_general": 0, "rx_lane": 0, "rx_general": 0}
        self.cache = l2.SourceCache()
        self.rx_verdicts = bytearray(256)
        self.active = False  # the lanes may run (the shell has a loop)
        self.enabled = False  # the delivery claims packets (the shell has an engine, is open)
        #: ``after(count, error)``: the shell's end of a TAP round that is not settled
        self.after: Callable[[int, Exception | None], None] | None = None
        #: ``general(bufs, lengths, sources, claimed, now, verdicts)``: the inbound general way
        self.general: Callable[..., None] | None = None
        self.now = 0.0
        self.count = 0
        self.stage = READ
        self.out_bufs: list[bytearray] = []
        self.out_lengths: list[int] = []
        self.unsent = 0
        self.written = False  # the delivery wrote to the TAP since the last answer
        self.answers = 0  # answers that ran a TAP round
        self.tx_whole = 0  # TAP batches sent whole by the lanes (stage SENT_WHOLE)

    # ---- outbound ------------------------------------------------------------------------

    def on_readable(self) -> None:
        """The event loop's callback for the TAP fd: one :meth:`run`; done if settled, else
        ``after(count, error)``."""
        self.now = now = time.monotonic()
        count = 0
        error: Exception | None = None
        try:
            count = self.run(now)
        except Exception as exc:  # the shell counts it
            error = exc
        if error is None and self.settled(count):
            return
        if self.after is not None:
            self.after(count, error)

    def settled(self, count: int) -> bool:
        """Whether the last run left nothing for the shell: no TAP errors to count, the batch
        (if any) sent whole by the lanes, nothing more to read."""
        tap = self.tap
        if tap.errors:
            return False
        if count and self.stage != SENT_WHOLE:
            return False
        return count < len(self.tx_bufs) or not tap.pending

    def run(self, now: float) -> int:
        """Read one TAP batch and, when the lanes cover it, encapsulate, seal and send it
        (see module doc); returns the frames read."""
        self.stage = READ
        self.unsent = 0
        self.out_bufs = []
        self.out_lengths = []
        tap = self.tap
        if tap is None:
            self.count = 0
            return 0
        self.count = count = int(tap.read(self.tx_bufs, self.tx_lengths, self.headroom, self.mtu))
        if count and self.tx_lane(count, now):
            self.lanes["tx_lane"] += 1
            if self.send(self.out_bufs, self.out_lengths, now):
                self.stage = SENT_WHOLE
                self.tx_whole += 1
        return count

    def tx_lane(self, count: int, now: float) -> bool:
        """The outbound lane: when the snapshot covers the whole batch (every frame sendable, no
        proxy-ARP frame, every destination MAC (or the flood entry) with remotes of our family),
        encapsulate it into :attr:`out_bufs` (oversized frames and replicas beyond the spares
        counted in :attr:`drops`) and journal the engine's counters and FDB times (a SENT
        record); :attr:`stage` becomes ENCAPSULATED. False, with nothing changed, otherwise."""
        snap = self.snapshot
        if snap is None or not self.active or len(self.records) >= JOURNAL_LIMIT:
            return False
        bufs, lengths = self.tx_bufs, self.tx_lengths
        verdicts, sports = self.tx_verdicts, self.tx_sports
        headroom = self.headroom
        runs: list[tuple[int, int, int, int]] = []
        ok = self.fast.scan_tx(bufs, lengths, count, headroom, snap.seed, snap.port_min, snap.port_max,
                               snap.proxy, verdicts, sports, runs)
        if ok < count:
            return False
        out_bufs: list[bytearray] = []
        out_lengths: list[int] = []
        macs: list[bytes] = []
        remotes: list[Any] = []
        used = self.used
        used[:] = bytes(len(used))
        counts = self.l2.encap_runs(bufs, lengths, headroom, verdicts, sports, runs, snap.entries,
                                    self.wg.device.mtu, out_bufs, out_lengths, self.spares, used, macs, remotes)
        if counts is None:
            return False
        oversized, no_spare = counts
        if oversized:
            self.drops["tx_oversized"] += oversized
        if no_spare:
            self.drops["tx_no_buffer"] += no_spare
        self.records.append((SENT, tuple(macs), tuple(remotes), now))
        self.out_bufs = out_bufs
        self.out_lengths = out_lengths
        self.stage = ENCAPSULATED
        return True

    def send(self, bufs: list[bytearray], lengths: list[int], now: float) -> bool:
        """The WireGuard lane for encapsulated packets (inner IP packets at ``HEADROOM``), as
        the interface's outbound pump does for a TUN batch: when the interface's journal is
        open and the device grants the lane (one peer, steady state), seal and send them and
        journal the device's record. True if all were sent (or there were none);
        :attr:`unsent` is the first not sent (0: none was)."""
        self.unsent = 0
        count = len(bufs)
        if not count:
            return True
        if count > BATCH:  # replication beyond one batch: the shell sends it in batches
            return False
        wg = self.wg
        journal = wg.journal
        if not journal.open():
            return False
        device = wg.device
        lane = device.datapath.lane(device, bufs, lengths, HEADROOM, now)
        if lane is None:
            return False
        peer, keypair = lane
        endpoint = peer.endpoint
        udp = wg.socket_for(endpoint)  # the interface's own choice (its pump's, the general way's)
        if udp is None:
            return False
        sealed = int(keypair.cipher.seal_batch(bufs, lengths, device.mtu))
        udp.send_slots(bufs, lengths, 0, sealed, endpoint)
        if sealed:
            journal.add((SENT, peer, keypair, sum(lengths[:sealed]), now))
        self.unsent = sealed
        return sealed == count

    # ---- inbound -------------------------------------------------------------------------

    def deliver(self, bufs: list[bytearray], lengths: list[int], headroom: int, verdicts: bytearray,
                count: int, now: float) -> int:
        """The interface's local delivery: take this endpoint's packets of an opened batch
        (``l2.claim``), through the inbound lane or ``general``; returns how many were taken.
        Never raises (an exception counts ``rx_exception``)."""
        if not self.enabled:
            return 0
        out_bufs: list[bytearray] = []
        out_lengths: list[int] = []
        sources: list[Any] = []
        try:
            claimed, bad = self.l2.claim(bufs, lengths, count, headroom, verdicts, self.local, self.dstport,
                                         out_bufs, out_lengths, sources, self.cache)
        except Exception:
            self.drops["rx_exception"] += 1
            return 0
        if bad:
            self.drops["rx_bad_udp_csum"] += bad
        if claimed:
            rx_verdicts = self.rx_verdicts
            if len(rx_verdicts) < claimed:
                rx_verdicts = self.rx_verdicts = bytearray(claimed)
            self.written = True
            try:
                taken = self.rx_lane(out_bufs, out_lengths, sources, claimed, now, rx_verdicts)
            except Exception:
                self.drops["rx_exception"] += claimed
                return int(claimed + bad)
            if taken:
                self.lanes["rx_lane"] += 1
            else:
                self.lanes["rx_general"] += 1
                if self.general is not None:
                    self.general(out_bufs, out_lengths, sources, claimed, now, rx_verdicts)
        return int(claimed + bad)

    def rx_lane(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], count: int,
                now: float, verdicts: bytearray) -> bool:
        """The inbound lane: when the snapshot says the engine would only count the claimed
        batch (one VTEP, every datagram accepted, every source MAC already in the FDB at that
        VTEP, no proxy ARP), write it to the TAP and journal a RECEIVED record. False, with
        nothing written, otherwise (``verdicts`` may have been filled)."""
        snap = self.snapshot
        tap = self.tap
        if snap is None or snap.proxy or not self.active or tap is None or len(self.records) >= JOURNAL_LIMIT:
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
        try:
            tap.write_slots(bufs, lengths, 8, verdicts, count)
        except OSError as exc:
            tap_write_failed(self.drops, exc, accepted)
        else:
            if tap.errors:
                move_tap_errors(tap.errors, self.drops)
        self.records.append((RECEIVED, tuple(macs), source, accepted, nbytes, now))
        return True

    def answer(self) -> None:
        """Called by the WireGuard inbound pump at the end of its wake-up: if the delivery wrote
        to the TAP since the last call, read the TAP once (:meth:`on_readable`) for the reply."""
        if self.written:
            self.written = False
            if self.active and self.tap is not None:
                self.answers += 1
                self.on_readable()
