"""The VXLAN endpoint (VTEP), sans-I/O: receive and transmit decisions, counters, timers.

The shell (TAP device + UDP socket bound to ``dstport``) drives it:

- a datagram read from the socket -> ``receive(datagram, src, now)`` -> the inner Ethernet
  frame to write to the TAP, or None (dropped and counted in ``drops``);
- a frame read from the TAP -> ``transmit(frame, now, headroom)`` -> a ``TxResult``:
  ``datagrams`` to send (payload, (dst_ip, dst_port), src_port) and ``local`` frames to write
  back to the TAP (proxy-ARP replies);
- every ~10 s (or at ``next_timer()``) -> ``age(now)``.

Batch forms (``receive_batch``, ``transmit_batch``) do the same over many packets per call.

The shell's data path uses the buffer-batch forms instead (``receive_bufs``, ``transmit_bufs``):
they take the shell's preallocated ``bytearray``s with lengths and a verdict byte per packet,
and hand the per-packet loops to ``tunnel.vxlan.fast`` (Cython, or its pure twin with
``WGPY_PURE=1``): the header checks, the source-port hash and the run detection are native; the
engine learns once per run of frames from one (source MAC, outer source) and looks the FDB up
once per destination MAC per batch. Same rules, drops and counters as the per-packet forms.

Buffer contract (docs/design.md; outer IP/UDP are the kernel socket's, so the VXLAN headroom
is ``VXLAN_HLEN`` = 8 bytes):

- Transmit: the inner frame is ``frame[headroom:]``; pass exactly the filled part (e.g.
  ``memoryview(buf)[:8 + n]``). When ``headroom >= 8`` and ``frame`` is writable
  (``bytearray`` or writable ``memoryview``) the header is written in place at
  ``frame[headroom-8:headroom]`` and the payload returned is a ``memoryview`` of
  ``frame[headroom-8:]``: no copy. Otherwise a new ``bytes`` is built. When one frame goes to
  several remotes (flood list), every datagram shares that one payload, which the caller must
  treat as read-only until all of them are sent; only a remote with a different VNI gets its
  own copy. The caller owns the buffer again once it has sent the datagrams; views keep a
  ``bytearray`` from being resized while they live.
- Receive: the frame returned is a ``memoryview`` of ``datagram[8:]``, aliasing the caller's
  buffer (valid until the caller reuses it). The engine keeps no reference to any buffer
  after a call returns (it copies the few bytes it learns: MACs, IPs).

Receive rules (the Linux driver's, in its order; each a drop counted by reason):
``too_short``, ``no_i_flag``, ``wrong_vni``, ``reserved_bits``, ``own_source_mac``; then, only
when learning is on (the kernel checks these inside its snooping step), ``invalid_source_mac``
and ``static_entry_conflict``. ``fdb_full`` counts a MAC that could not be learned (the frame
is still delivered, as in the kernel). Transmit drops: ``tx_too_short``, ``no_tx_target`` (no
entry and no flood list), ``no_remote_address`` (a remote of 0.0.0.0 / ::).

Counters: ``rx_packets``/``rx_bytes`` count frames delivered (bytes = inner frame length);
``tx_packets``/``tx_bytes`` count datagrams handed out (bytes = inner frame length, once per
remote, as the kernel counts per copy). ``remotes`` splits both per remote VTEP (outer IP,
bounded: ``tunnel.vxlan.counters``).

Divergence from the kernel, on purpose: with ``proxy`` the kernel swallows every ARP frame from
the local side, answering only from its neighbour table (filled by a control plane). We answer
what we know and forward everything else (requests we cannot answer, gratuitous ARP, replies)
like any frame, since our table is learned from traffic.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeAlias

from .arp import (
    ARP_REQUEST,
    NeighbourTable,
    answerable_ipv4,
    build_arp_reply,
    learnable_ipv4,
    parse_arp,
)
from .config import VxlanConfig, format_mac, parse_mac
from .counters import RemoteCounters
from .fast import select as select_fast
from .fdb import DROP_STATIC_CONFLICT, ZERO_MAC, Fdb, FdbEntry, Remote
from .flow import flow_hash, scale_port
from .header import ETH_HLEN, MIN_DATAGRAM, VXLAN_HLEN, check_header, encode_header

Buffer: TypeAlias = bytes | bytearray | memoryview
#: one datagram to send: (payload, (dst_ip, dst_port), udp_src_port)
Datagram: TypeAlias = tuple[Buffer, tuple[str, int], int]

DROP_OWN_SOURCE_MAC = "own_source_mac"
DROP_INVALID_SOURCE_MAC = "invalid_source_mac"
DROP_TX_TOO_SHORT = "tx_too_short"
DROP_NO_TX_TARGET = "no_tx_target"
DROP_NO_REMOTE_ADDRESS = "no_remote_address"

_ETH_ARP = b"\x08\x06"
_ETH_IP = b"\x08\x00"
_ANY_ADDRESSES = frozenset(("0.0.0.0", "::"))


@dataclass(slots=True)
class TxResult:
    """What one transmit call produced: datagrams for the network, frames for the TAP."""

    datagrams: list[Datagram] = field(default_factory=list)
    local: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class TxPlan:
    """What ``transmit_bufs`` decided for a batch: ``items`` ``(start, end, remote)`` send the
    sendable frames of ``bufs[start:end]`` (verdict ``TX_OK``/``TX_ARP``) to ``remote`` (one
    item per remote of a run's FDB entry); ``local`` are frames for the TAP (proxy-ARP
    replies, new bytes)."""

    items: list[tuple[int, int, Remote]] = field(default_factory=list)
    local: list[bytes] = field(default_factory=list)


class VxlanEngine:
    """One VXLAN device's data path. Single-threaded; every method takes ``now`` explicitly
    (a monotonic clock in seconds) and never reads a clock itself."""

    def __init__(
        self, config: VxlanConfig, now: float = 0.0, fast: ModuleType | None = None
    ) -> None:
        #: the per-packet loops of the buffer-batch forms (tunnel.vxlan._fast or fast_ref)
        self.fast = fast if fast is not None else select_fast()[1]
        self.fdb = Fdb(config.vni, config.dstport, config.ageing, config.maxaddress)
        self.neigh = NeighbourTable(config.neigh_max, config.ageing)
        self.drops: Counter[str] = Counter()
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.arp_proxied = 0
        #: frames and bytes per remote VTEP (outer IP), bounded (tunnel.vxlan.counters)
        self.remotes = RemoteCounters()
        self._apply(config)
        flood_ip = config.remote or config.group
        if flood_ip is not None:
            self.fdb.add(ZERO_MAC, flood_ip, now=now, via=config.dev, permanent=True)

    def _apply(self, config: VxlanConfig) -> None:
        self.config = config
        self._vni = config.vni
        self._hdr = encode_header(config.vni)
        self._headers: dict[int, bytes] = {config.vni: self._hdr}
        self._own_mac = config.own_mac or None
        self._learning = config.learning
        self._proxy = config.proxy
        self._port_min, self._port_max = config.srcport
        self._seed = config.hash_seed & 0xFFFFFFFF

    def set_own_mac(self, mac: bytes | str) -> None:
        """Set the TAP device's MAC once the shell knows it (or after it changes)."""
        self._apply(dataclasses.replace(self.config, own_mac=parse_mac(mac)))

    # ---- receive -------------------------------------------------------------------------

    def receive(self, datagram: Buffer, src: tuple[Any, ...], now: float) -> memoryview | None:
        """One UDP payload from ``src`` (``(ip, port, ...)`` as ``recvfrom`` gives it; ``ip``
        must be canonical text, as ``recvfrom`` returns it, since it is learned as is).
        Returns the inner Ethernet frame (a view into ``datagram``) or None if dropped."""
        n = len(datagram)
        if n < MIN_DATAGRAM or datagram[:VXLAN_HLEN] != self._hdr:
            reason = check_header(datagram, self._vni)
            if reason is not None:
                self.drops[reason] += 1
                return None
        view = memoryview(datagram)
        smac = bytes(view[14:20])
        if smac == self._own_mac:
            self.drops[DROP_OWN_SOURCE_MAC] += 1
            return None
        if self._learning:
            if smac[0] & 1 or smac == ZERO_MAC:
                self.drops[DROP_INVALID_SOURCE_MAC] += 1
                return None
            reason = self.fdb.learn(smac, src[0], now)
            if reason is not None:
                self.drops[reason] += 1
                if reason == DROP_STATIC_CONFLICT:
                    return None
        if self._proxy:
            self._snoop_neighbour(view, smac, now)
        self.rx_packets += 1
        self.rx_bytes += n - VXLAN_HLEN
        self.remotes.received(str(src[0]), 1, n - VXLAN_HLEN)
        return view[VXLAN_HLEN:]

    def receive_batch(
        self, items: Iterable[tuple[Buffer, tuple[Any, ...]]], now: float
    ) -> list[memoryview]:
        """``receive`` over ``(datagram, src)`` pairs; returns the delivered frames in order."""
        out = []
        receive = self.receive
        for datagram, src in items:
            frame = receive(datagram, src, now)
            if frame is not None:
                out.append(frame)
        return out

    def receive_bufs(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], sources: Sequence[Any],
        count: int, now: float, verdicts: bytearray,
    ) -> int:
        """``receive`` over the shell's batch: datagram ``i`` is ``bufs[i][:lengths[i]]`` from
        outer source address ``sources[i]`` (canonical IP text, learned as is). Sets
        ``verdicts[i]`` to 0 (deliver ``bufs[i][8:lengths[i]]``) or an ``RX_*`` drop code;
        returns how many are delivered. Drops and counters as ``receive``."""
        fast = self.fast
        runs: list[int] = []
        accepted: int
        nbytes: int
        accepted, nbytes = fast.decap_batch(
            bufs, lengths, count, self._vni, self._own_mac or b"", self._learning, sources,
            verdicts, runs)
        if accepted < count:
            reasons = fast.RX_REASONS
            for code in range(1, len(reasons)):
                dropped = verdicts.count(code, 0, count)
                if dropped:
                    self.drops[reasons[code]] += dropped
        if runs:
            learn = self.fdb.learn
            runs.append(count)
            for k in range(len(runs) - 1):
                start = runs[k]
                reason = learn(bytes(bufs[start][14:20]), sources[start], now)
                if reason is None:
                    continue
                end = runs[k + 1]
                frames = [i for i in range(start, end) if verdicts[i] == 0]
                self.drops[reason] += len(frames)
                if reason == DROP_STATIC_CONFLICT:
                    conflict = fast.RX_STATIC_CONFLICT
                    for i in frames:
                        verdicts[i] = conflict
                        accepted -= 1
                        nbytes -= lengths[i] - VXLAN_HLEN
        if self._proxy:
            for i in range(count):
                if verdicts[i] == 0:
                    view = memoryview(bufs[i])[: lengths[i]]
                    self._snoop_neighbour(view, bytes(view[14:20]), now)
        self.rx_packets += accepted
        self.rx_bytes += nbytes
        self.remotes.received_bufs(lengths, sources, verdicts, count, accepted, nbytes, VXLAN_HLEN)
        return accepted

    def _snoop_neighbour(self, view: memoryview, smac: bytes, now: float) -> None:
        """Learn IPv4 -> MAC bindings for proxy ARP from a received inner frame."""
        ethertype = view[20:22]
        if ethertype == _ETH_ARP:
            arp = parse_arp(view, VXLAN_HLEN)
            if arp is not None and learnable_ipv4(arp.spa) and not arp.sha[0] & 1:
                if arp.sha != ZERO_MAC:
                    self.neigh.learn(arp.spa, arp.sha, now)
        elif ethertype == _ETH_IP and len(view) >= VXLAN_HLEN + ETH_HLEN + 20:
            sip = bytes(view[34:38])
            if learnable_ipv4(sip):
                self.neigh.learn(sip, smac, now)

    # ---- transmit ------------------------------------------------------------------------

    def transmit(self, frame: Buffer, now: float, headroom: int = 0) -> TxResult:
        """One frame from the TAP at ``frame[headroom:]`` (see the buffer contract)."""
        result = TxResult()
        self._transmit_into(frame, headroom, now, result.datagrams, result.local)
        return result

    def transmit_batch(
        self, frames: Iterable[Buffer], now: float, headroom: int = 0
    ) -> TxResult:
        """``transmit`` over many frames (same headroom); one result for the whole batch."""
        result = TxResult()
        out, local = result.datagrams, result.local
        for frame in frames:
            self._transmit_into(frame, headroom, now, out, local)
        return result

    def transmit_bufs(
        self, bufs: Sequence[bytearray], lengths: Sequence[int], count: int, now: float,
        headroom: int, verdicts: bytearray, sports: array[int],
    ) -> TxPlan:
        """``transmit`` over the shell's batch: frame ``i`` is
        ``bufs[i][headroom:headroom+lengths[i]]``. Fills ``verdicts[i]`` (``TX_OK``/``TX_ARP``:
        sendable; ``TX_TOO_SHORT``; ``TX_DONE``: answered by proxy ARP) and ``sports[i]`` (the
        hashed outer source port), and returns the plan. Nothing is written into ``bufs``: the
        sender builds the headers (see ``tunnel.vxlan.fast_ref``). Drops and counters as
        ``transmit``."""
        fast = self.fast
        runs: list[tuple[int, int, int, int]] = []
        ok: int = fast.scan_tx(bufs, lengths, count, headroom, self._seed, self._port_min,
                          self._port_max, self._proxy, verdicts, sports, runs)
        if ok < count:
            self.drops[DROP_TX_TOO_SHORT] += count - ok
        plan = TxPlan()
        items = plan.items
        lookup = self.fdb.lookup
        tx_arp = fast.TX_ARP
        memo: dict[bytes, FdbEntry | None] = {}
        for start, end, frames, nbytes in runs:
            buf = bufs[start]
            if verdicts[start] == tx_arp and self._proxy_arp(
                memoryview(buf)[: headroom + lengths[start]], headroom, plan.local
            ):
                verdicts[start] = fast.TX_DONE
                continue
            mac = bytes(buf[headroom : headroom + 6])
            if mac in memo:
                entry = memo[mac]
            else:
                entry = memo[mac] = lookup(mac, now)
            if entry is None:
                self.drops[DROP_NO_TX_TARGET] += frames
                continue
            for remote in entry.remotes:
                if remote.ip in _ANY_ADDRESSES:
                    self.drops[DROP_NO_REMOTE_ADDRESS] += frames
                    continue
                items.append((start, end, remote))
                self.tx_packets += frames
                self.tx_bytes += nbytes
                self.remotes.sent(remote.ip, frames, nbytes)
        return plan

    def _transmit_into(
        self, frame: Buffer, h: int, now: float, out: list[Datagram], local: list[bytes]
    ) -> None:
        inner_len = len(frame) - h
        if inner_len < ETH_HLEN:
            self.drops[DROP_TX_TOO_SHORT] += 1
            return
        if self._proxy and frame[h + 12 : h + 14] == _ETH_ARP and self._proxy_arp(frame, h, local):
            return
        entry = self.fdb.lookup(bytes(frame[h : h + 6]), now)
        if entry is None:
            self.drops[DROP_NO_TX_TARGET] += 1
            return
        sport = scale_port(flow_hash(frame, h, self._seed), self._port_min, self._port_max)
        payload: Buffer | None = None
        payload_vni = -1
        for remote in entry.remotes:
            if remote.ip in _ANY_ADDRESSES:
                self.drops[DROP_NO_REMOTE_ADDRESS] += 1
                continue
            if remote.vni == payload_vni:
                assert payload is not None
                p = payload
            elif payload is None:
                p = payload = self._encapsulate(frame, h, remote.vni, True)
                payload_vni = remote.vni
            else:
                p = self._encapsulate(frame, h, remote.vni, False)
            out.append((p, (remote.ip, remote.port), sport))
            self.tx_packets += 1
            self.tx_bytes += inner_len
            self.remotes.sent(remote.ip, 1, inner_len)

    def _header(self, vni: int) -> bytes:
        hdr = self._headers.get(vni)
        if hdr is None:
            hdr = self._headers[vni] = encode_header(vni)
        return hdr

    def _encapsulate(self, frame: Buffer, h: int, vni: int, in_place: bool) -> Buffer:
        hdr = self._header(vni)
        if in_place and h >= VXLAN_HLEN:
            if isinstance(frame, bytearray):
                frame[h - VXLAN_HLEN : h] = hdr
                return memoryview(frame)[h - VXLAN_HLEN :]
            if isinstance(frame, memoryview) and not frame.readonly:
                frame[h - VXLAN_HLEN : h] = hdr
                return frame[h - VXLAN_HLEN :]
        return hdr + bytes(frame[h:])

    def _proxy_arp(self, frame: Buffer, h: int, local: list[bytes]) -> bool:
        """Answer an ARP request locally if the target's MAC is known; True if answered."""
        arp = parse_arp(frame, h)
        if arp is None or arp.op != ARP_REQUEST:
            return False
        if arp.spa == arp.tpa or not answerable_ipv4(arp.tpa):
            return False  # gratuitous ARP must reach everyone; no answer for lo/multicast
        mac = self.neigh.lookup(arp.tpa)
        if mac is None or mac == arp.sha:
            return False
        local.append(build_arp_reply(arp, mac))
        self.arp_proxied += 1
        return True

    # ---- timers --------------------------------------------------------------------------

    def age(self, now: float) -> int:
        """Expire learned FDB entries and neighbour bindings; returns FDB entries removed."""
        self.neigh.age(now)
        return self.fdb.age(now)

    def next_timer(self) -> float | None:
        """When ``age`` next has work (None: nothing can expire). The shell may also just call
        ``age`` every 10 s, as the kernel does."""
        times = [t for t in (self.fdb.next_timer(), self.neigh.next_timer()) if t is not None]
        return min(times) if times else None

    # ---- inspection ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and drops by reason (JSON-ready)."""
        fdb = self.fdb
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "arp_proxied": self.arp_proxied,
            "fdb_entries": len(fdb),
            "fdb_learned": fdb.learned_count,
            "fdb_migrated": fdb.migrated_count,
            "fdb_evicted": fdb.evicted_count,
            "fdb_aged": fdb.aged_count,
            "neighbours": len(self.neigh),
            "drops": dict(sorted(self.drops.items())),
            "remotes": self.remotes.as_dict(),
        }

    def show(self, now: float | None = None) -> dict[str, Any]:
        """Everything ``wg-py vxlan show NAME --json`` prints: config, counters, drops, FDB."""
        cfg = self.config
        return {
            "name": cfg.name,
            "config": cfg.as_dict(),
            "own_mac": format_mac(cfg.own_mac) if cfg.own_mac else None,
            "stats": self.stats(),
            "drops": dict(sorted(self.drops.items())),
            "fdb": self.fdb.as_list(now),
            "fdb_lines": self.fdb.show(now),
            "neighbours": self.neigh.show(),
        }
