"""One wake-up's VXLAN work in one call: TAP -> UDP and UDP -> TAP (pure-Python reference).

``tunnel.vxlan._pump`` is the Cython twin with the same API; ``tunnel.vxlan.pump.select()``
picks one. The design is the WireGuard pumps' (``tunnel/wireguard/pump_ref.py``, docs/design.md
"The pumps"): on a lightly loaded host every frame wakes the daemon from idle, and each Python
frame between the TAP and the socket costs microseconds, so the steady state runs here without
a Python frame of ours, and the engine's bookkeeping is journaled.

- :class:`Outbound` is the TAP fd's callback. It reads a batch (``TunBatch.read``), lets
  ``fast.scan_tx`` check it and hash the outer source ports, looks each run's destination MAC
  up in the FDB :class:`Snapshot` and hands the plan to the sender's native batch
  (``fast.GsoBatch``/``fast.RawBatch``).
- :class:`Inbound` is the UDP socket's callback. It receives a batch (``UdpBatch.recv``), checks
  it with ``fast.decap_batch``, checks that learning would change nothing (every run's
  (source MAC, outer source) is already in the snapshot as such) and writes the frames to the
  TAP (``TunBatch.write_slots``). The kernel usually queues its answer during that write, so it
  then runs the outbound pump once.

**The snapshot.** :func:`compile_snapshot` turns the engine's FDB and settings into a
:class:`Snapshot` (plain dicts and values); the shell publishes a new one whenever the FDB may
have changed (:func:`fdb_version`), by assigning the pumps' ``snapshot`` attribute (one
reference store, so a worker thread sees the old or the new one, never a mix). ``None``: every
batch takes the general way.

**Settled or not.** A batch is *settled* when nothing but counters and FDB times is left to do:
then its :data:`SENT`/:data:`RECEIVED` record goes to the :class:`Journal`, applied by
:func:`apply_record` in order, ``delay`` seconds later or before any other work on the engine.
Anything else goes to the shell's ``after`` callback at once (the journal is applied first):
a read or receive error, a full batch or leftovers to read, a TAP error count, a frame the
checks drop (the engine counts it), an FDB miss with no flood entry or an entry with a remote
the sender cannot reach, an ARP frame with ``proxy``, any receive with ``proxy`` (neighbour
snooping), a batch from more than one outer source, a (MAC, source) the FDB does not hold as
such (learning or a migration: ``Fdb.learn`` runs in Python), a datagram that filled its slot,
a send that dropped datagrams (``full``/``errors``), a failed TAP write. With :attr:`lane`
True the pump already sent/wrote the batch and ``after`` must only account for it
(:func:`apply_record` of :meth:`Outbound.pending_record`/:meth:`Inbound.pending_record`);
with :attr:`lane` False the batch is in the buffers, untouched but for the verdicts, for the
general way (``VxlanEngine.transmit_bufs``/``receive_bufs`` redo the same checks).

**Leftovers.** A lane batch whose only loose end is what is left to read (a full batch, cut
segments waiting in the TAP batch, GRO segments waiting in the UDP batch: :meth:`leftover`) is
journaled like a settled one when the shell has set :attr:`again` (its ``reschedule``): the
pump then calls ``again(callback)`` itself when segments wait (they do not make the fd
readable; a full batch without them needs nothing, the fd stays readable), as the shell's
``after`` would, without the Python round through ``after`` (one TCP stream, counted with
uprobes: about one outbound run in six on the sending daemon, two inbound runs in five on the
receiving one). With :attr:`again` None (the default) such a batch goes to ``after`` as before.

Contracts: single-threaded per pump pair (a worker thread owns its pair); buffers are only
borrowed. Arguments: ``headroom`` an int >= 0 (TypeError/ValueError), ``now`` a real number,
``mtu`` an int, the batch lists given to ``run`` are lists (TypeError otherwise), ``journal``
this module's :class:`Journal` and ``outbound`` this module's :class:`Outbound` (TypeError
otherwise, None included). Errors raised by the batch I/O (short lists, OSError of a read)
propagate from ``run``; ``on_readable`` hands them to ``after``.
"""

from __future__ import annotations

import operator
import time
from array import array
from collections.abc import Callable
from typing import Any

from tunnel.io.journal_ref import JOURNAL_LIMIT, RECEIVED, SENT, Journal, Record
from tunnel.io.journal_ref import exact as _exact
from tunnel.io.journal_ref import headroom as _headroom
from tunnel.io.journal_ref import real as _real

from .fdb import ZERO_MAC

# The journal's records here (Journal, SENT, RECEIVED and JOURNAL_LIMIT are tunnel.io.journal_ref's,
# shared with the WireGuard pumps, re-exported):
# (SENT, macs, remotes, now): remotes ((ip, ...), frames, inner bytes) per run;
# (RECEIVED, macs, source, frames, inner bytes, now): macs to learn from source.
TX_OK = 0  # tunnel.vxlan.fast's verdicts, as both twins define them
TX_ARP = 2
VXLAN_HLEN = 8
ETH_HLEN = 14
_ANY_ADDRESSES = frozenset(("0.0.0.0", "::"))


class Snapshot:
    """What the pumps read of the engine (see module doc; built by :func:`compile_snapshot`).

    ``entries[mac]`` is ``(dests, ips)`` (the sender's ``fast.Dest`` per remote and the
    remotes' addresses, the first being the one learning compares) or None when the general
    way must handle that MAC (a remote the sender cannot reach, or 0.0.0.0/::); the flood
    entry is under the all-zeros MAC. ``vni``, ``own_mac`` (b"" if unknown), ``learning``,
    ``proxy``, ``seed``, ``port_min``, ``port_max`` are the engine's settings."""

    __slots__ = ("entries", "vni", "own_mac", "learning", "proxy", "seed", "port_min",
                 "port_max", "version")

    def __init__(self, entries: dict[bytes, tuple[tuple[Any, ...], tuple[str, ...]] | None],
                 vni: int, own_mac: bytes, learning: bool, proxy: bool, seed: int,
                 port_min: int, port_max: int, version: tuple[Any, ...] = ()) -> None:
        self.entries = entries
        self.vni = vni
        self.own_mac = own_mac
        self.learning = learning
        self.proxy = proxy
        self.seed = seed
        self.port_min = port_min
        self.port_max = port_max
        self.version = version


def fdb_version(engine: Any) -> tuple[Any, ...]:
    """A value that changes whenever the data path's view of the engine may have changed
    through learning or ageing (entry count, learned/migrated/evicted/aged counts, own MAC).
    Administrative changes (control requests) are not covered: the shell republishes after
    each of them."""
    fdb = engine.fdb
    return (len(fdb.entries), fdb.learned_count, fdb.migrated_count, fdb.evicted_count,
            fdb.aged_count, engine.config.own_mac)


def compile_snapshot(engine: Any, dest_of: Callable[[Any], Any]) -> Snapshot:
    """The :class:`Snapshot` of ``engine`` now; ``dest_of(remote)`` is the sender's
    ``fast.Dest`` for an ``fdb.Remote`` (None if it cannot reach it)."""
    entries: dict[bytes, tuple[tuple[Any, ...], tuple[str, ...]] | None] = {}
    for mac, entry in engine.fdb.entries.items():
        dests = []
        ips = []
        usable = bool(entry.remotes)
        for remote in entry.remotes:
            dest = None if remote.ip in _ANY_ADDRESSES else dest_of(remote)
            if dest is None:
                usable = False
                break
            dests.append(dest)
            ips.append(remote.ip)
        entries[mac] = (tuple(dests), tuple(ips)) if usable else None
    cfg = engine.config
    lo, hi = cfg.srcport
    return Snapshot(entries, cfg.vni, cfg.own_mac or b"", cfg.learning, cfg.proxy,
                    cfg.hash_seed & 0xFFFFFFFF, lo, hi, fdb_version(engine))


def apply_record(engine: Any, record: Record) -> None:
    """Do what the engine would have done for a settled batch (counters, FDB times and
    learning), on the thread that owns the engine. A :data:`RECEIVED` record's ``Fdb.learn``
    results are not re-checked: the frames were delivered when the snapshot said learning
    would change nothing (a control request in between can make it differ; that lag is the
    same as for any learned entry)."""
    if record[0] == SENT:
        _, macs, remotes, now = record
        entries = engine.fdb.entries
        flood = entries.get(ZERO_MAC)
        for mac in macs:
            entry = entries.get(mac, flood)
            if entry is not None:
                entry.used = now
        counters = engine.remotes
        for ips, frames, nbytes in remotes:
            for ip in ips:
                engine.tx_packets += frames
                engine.tx_bytes += nbytes
                counters.sent(ip, frames, nbytes)
    else:
        _, macs, source, frames, nbytes, now = record
        learn = engine.fdb.learn
        for mac in macs:
            learn(mac, source, now)
        engine.rx_packets += frames
        engine.rx_bytes += nbytes
        engine.remotes.received(str(source), frames, nbytes)


class Outbound:
    """TAP -> UDP. ``tap`` is the TAP's TunBatch, ``batch`` the sender's native batch
    (``fast.GsoBatch``/``fast.RawBatch``), ``fast`` the per-frame module (``tunnel.vxlan.fast``'s
    pick), ``journal`` the shell's :class:`Journal`, ``after(count, error)`` its callback for a
    batch that is not settled, ``headroom`` where frames start in a slot.

    :meth:`on_readable` reads into :attr:`tap_bufs`/:attr:`tap_lengths` (the shell sizes them;
    :attr:`verdicts` and :attr:`sports` must be at least as long) at :attr:`now`. After
    :meth:`run`: :attr:`lane` says whether the pump sent the batch; then :attr:`sent`,
    :attr:`full` and :attr:`errors` are the send's counts and :meth:`pending_record` its
    record."""

    def __init__(self, tap: Any, batch: Any, fast: Any, journal: Journal,
                 after: Callable[[int, Exception | None], None], headroom: int) -> None:
        _exact(journal, Journal, "journal")
        self._headroom = _headroom(headroom)
        self.tap = tap
        self.batch = batch
        self.fast = fast
        self.journal = journal
        self.after = after
        self.snapshot: Snapshot | None = None
        self.tap_bufs: list[bytearray] = []
        self.tap_lengths: list[int] = []
        self.verdicts = bytearray(0)
        self.sports = array("H")
        self.now = 0.0
        self.lane = False
        self.sent = 0
        self.full = 0
        self.errors = 0
        self.macs: list[bytes] = []
        self.remotes: list[tuple[tuple[str, ...], int, int]] = []
        self.again: Callable[[Callable[[], None]], None] | None = None

    @property
    def headroom(self) -> int:
        """Where frames start in a slot (an int >= 0: ValueError if negative)."""
        return self._headroom

    @headroom.setter
    def headroom(self, value: int) -> None:
        self._headroom = _headroom(value)

    def on_readable(self) -> None:
        """The TAP fd's callback: one :meth:`run`; journal it if settled, else ``after``."""
        self.now = now = time.monotonic()
        count = 0
        error: Exception | None = None
        try:
            count = self.run(self.tap_bufs, self.tap_lengths, self._headroom, now)
        except Exception as exc:  # the shell sorts it out (a TAP read error, or a bug)
            error = exc
        if error is None and self.journal.open():
            if self.settled(count):
                self.record(count)
                return
            again = self.again
            if again is not None and self.leftover(count):
                self.record(count)
                if self.tap.pending:
                    again(self.on_readable)
                return
        self.after(count, error)

    def settled(self, count: int) -> bool:
        """Whether the last :meth:`run` left nothing for the shell but the journal record."""
        count = operator.index(count)
        tap = self.tap
        if count >= len(self.tap_bufs) or tap.pending or tap.errors:
            return False
        return count == 0 or (self.lane and not self.full and not self.errors)

    def leftover(self, count: int) -> bool:
        """Whether the last :meth:`run` sent a lane batch whose only loose end is what is left
        to read: a full batch or cut segments waiting in the TAP batch."""
        count = operator.index(count)
        tap = self.tap
        return (count > 0 and self.lane and not self.full and not self.errors and not tap.errors
                and (count >= len(self.tap_bufs) or bool(tap.pending)))

    def pending_record(self) -> tuple[Any, ...]:
        """The :data:`SENT` record of the last run's lane batch."""
        return (SENT, tuple(self.macs), tuple(self.remotes), self.now)

    def record(self, count: int) -> None:
        """Journal the last run's lane batch (nothing for an empty read)."""
        if operator.index(count) and self.lane:
            self.journal.add(self.pending_record())

    def run(self, bufs: list[bytearray], lengths: list[int], headroom: int, now: float) -> int:
        """Read one batch and, when the snapshot covers it, send it; returns the count read."""
        _exact(bufs, list, "bufs")
        _exact(lengths, list, "lengths")
        headroom, now = operator.index(headroom), _real(now)
        self.lane = False
        self.sent = self.full = self.errors = 0
        snap = self.snapshot
        n: int = self.tap.read(bufs, lengths, headroom, self.tap.mtu)
        if n == 0 or snap is None:
            return n
        runs: list[tuple[int, int, int, int]] = []
        verdicts = self.verdicts
        ok = self.fast.scan_tx(bufs, lengths, n, headroom, snap.seed, snap.port_min,
                               snap.port_max, snap.proxy, verdicts, self.sports, runs)
        if ok < n:
            return n
        entries = snap.entries
        items: list[tuple[int, int, Any]] = []
        macs: list[bytes] = []
        remotes: list[tuple[tuple[str, ...], int, int]] = []
        for start, end, frames, nbytes in runs:
            if verdicts[start] == TX_ARP:
                return n  # proxy ARP: the engine answers or forwards it
            mac = bytes(bufs[start][headroom:headroom + 6])
            entry = entries.get(mac, _MISSING)
            if entry is _MISSING:
                entry = entries.get(ZERO_MAC)
            if entry is None:
                return n
            dests, ips = entry
            for dest in dests:
                items.append((start, end, dest))
            macs.append(mac)
            remotes.append((ips, frames, nbytes))
        self.macs, self.remotes = macs, remotes
        self.sent, self.full, self.errors = self.batch.send(bufs, lengths, headroom, verdicts,
                                                            self.sports, items)
        self.lane = True
        return n


_MISSING: Any = object()


class Inbound:
    """UDP -> TAP. ``udp`` is the socket's UdpBatch, ``tap`` the TAP's TunBatch, ``fast`` the
    per-frame module, ``outbound`` the :class:`Outbound` (run once after a write; it shares its
    journal and snapshot), ``after(count, error)`` the shell's callback for a batch that is not
    settled; frames start at ``VXLAN_HLEN`` in a slot.

    :meth:`on_readable` receives into :attr:`udp_bufs`, :attr:`udp_lengths`,
    :attr:`udp_sources` (:attr:`verdicts` at least as long). After :meth:`run`: :attr:`lane`
    says whether the pump wrote the batch to the TAP; then :attr:`accepted`, :attr:`nbytes`,
    :attr:`written` and :attr:`write_error` tell how, and :meth:`pending_record` is its record.
    After :meth:`on_readable`, :attr:`answered` says whether it ran the outbound pump, and
    :attr:`replied`/:attr:`reply_error` are that run's outcome."""

    def __init__(self, udp: Any, tap: Any, fast: Any, outbound: Outbound,
                 after: Callable[[int, Exception | None], None]) -> None:
        _exact(outbound, Outbound, "outbound")
        self.udp = udp
        self.tap = tap
        self.fast = fast
        self.outbound = outbound
        self.after = after
        self.udp_bufs: list[bytearray] = []
        self.udp_lengths: list[int] = []
        self.udp_sources: list[Any] = []
        self.verdicts = bytearray(0)
        self.now = 0.0
        self.lane = False
        self.accepted = 0
        self.nbytes = 0
        self.source: Any = None
        self.macs: list[bytes] = []
        self.written = 0
        self.write_error: OSError | None = None
        self.answered = False
        self.replied = 0
        self.reply_error: Exception | None = None
        self.again: Callable[[Callable[[], None]], None] | None = None

    def on_readable(self) -> None:
        """The UDP fd's callback: one :meth:`run`, the outbound run if frames were written,
        then the journal if both are settled, else ``after``."""
        self.now = now = time.monotonic()
        self.answered = False
        self.replied = 0
        self.reply_error = None
        count = 0
        error: Exception | None = None
        try:
            count = self.run(self.udp_bufs, self.udp_lengths, self.udp_sources, now)
        except Exception as exc:  # the shell sorts it out
            error = exc
        outbound = self.outbound
        if self.written and error is None:
            self.answered = True
            outbound.now = now
            try:
                self.replied = outbound.run(outbound.tap_bufs, outbound.tap_lengths,
                                            outbound._headroom, now)
            except Exception as exc:
                self.reply_error = exc
        journal = outbound.journal
        again = self.again
        if (error is None
                and (self.settled(count) or (again is not None and self.leftover(count)))
                and journal.open()
                and (not self.answered or (self.reply_error is None and (
                    outbound.settled(self.replied)
                    or (again is not None and outbound.leftover(self.replied)))))):
            if count:
                journal.add(self.pending_record())
            if self.answered:
                outbound.record(self.replied)
            if again is not None:
                if self.udp.pending:
                    again(self.on_readable)
                elif self.answered and self.tap.pending:
                    again(outbound.on_readable)
            return
        self.after(count, error)

    def settled(self, count: int) -> bool:
        """Whether the last :meth:`run` left nothing for the shell but the journal record."""
        count = operator.index(count)
        if self.udp.pending or self.udp.errors:
            return False
        if count == 0:
            return True
        return (count < len(self.udp_bufs) and self.lane and self.write_error is None
                and not self.tap.errors)

    def leftover(self, count: int) -> bool:
        """Whether the last :meth:`run` wrote a lane batch whose only loose end is what is left
        to read: a full batch or GRO segments waiting in the UDP batch."""
        count = operator.index(count)
        return (count > 0 and not self.udp.errors and self.lane and self.write_error is None
                and not self.tap.errors
                and (count >= len(self.udp_bufs) or bool(self.udp.pending)))

    def pending_record(self) -> tuple[Any, ...]:
        """The :data:`RECEIVED` record of the last run's lane batch."""
        return (RECEIVED, tuple(self.macs), self.source, self.accepted, self.nbytes, self.now)

    def run(self, bufs: list[bytearray], lengths: list[int], sources: list[Any], now: float) -> int:
        """Receive one batch and, when the snapshot says the engine would only count it,
        write it to the TAP; returns the count received."""
        _exact(bufs, list, "bufs")
        _exact(lengths, list, "lengths")
        _exact(sources, list, "sources")
        now = _real(now)
        self.lane = False
        self.written = 0
        self.write_error = None
        snap = self.outbound.snapshot
        n: int = self.udp.recv(bufs, lengths, sources)
        if n == 0 or snap is None or snap.proxy:
            return n
        source = sources[0]
        size = len(bufs[0])
        for i in range(n):
            if lengths[i] >= size or sources[i] != source:
                return n  # a datagram filled its slot, or more than one sender
        runs: list[int] = []
        verdicts = self.verdicts
        accepted, nbytes = self.fast.decap_batch(bufs, lengths, n, snap.vni, snap.own_mac,
                                                 snap.learning, sources, verdicts, runs)
        if accepted < n:
            return n
        macs: list[bytes] = []
        if snap.learning:
            entries = snap.entries
            for start in runs:
                mac = bytes(bufs[start][ETH_HLEN:ETH_HLEN + 6])
                entry = entries.get(mac)
                if entry is None or entry[1][0] != source:
                    return n  # learning would change the FDB, or a conflict: Python
                macs.append(mac)
        self.macs = macs
        self.source = source
        self.accepted = accepted
        self.nbytes = nbytes
        self.lane = True
        try:
            self.written = self.tap.write_slots(bufs, lengths, VXLAN_HLEN, verdicts, n)
        except OSError as exc:
            self.write_error = exc
        return n


__all__ = ["JOURNAL_LIMIT", "RECEIVED", "SENT", "Inbound", "Journal", "Outbound", "Snapshot",
           "apply_record", "compile_snapshot", "fdb_version"]
