"""VXLAN forwarding database: inner MAC -> remote VTEPs, as the Linux driver keeps it.

Facts followed (drivers/net/vxlan/vxlan_core.c):

- An entry holds a list of remotes ``(ip, port, vni, via)``, a state (learned or permanent),
  and ``used`` (last transmit lookup) / ``updated`` (last learn or change) times.
- The all-zeros MAC is the flood list: BUM frames and unknown unicast go to each of its
  remotes (head-end replication) or to the multicast group placed there.
- Learning (``learn``): an unknown MAC is created learned towards ``(outer source IP, the
  device's dstport)``; a known one gets ``updated`` refreshed; a learned one seen from another
  VTEP moves at once (the kernel logs "migrated"); a permanent one claimed from another VTEP is
  a drop (``static_entry_conflict``).
- Ageing: a learned entry expires when ``now >= updated + ageing``; permanent ones never.
  ``ageing == 0`` disables ageing (the kernel then never arms its timer).
- ``maxaddress`` counts every entry, as the kernel's ``addrcnt`` does. Where the kernel refuses
  a new entry when full (ENOSPC), we evict the least recently updated *learned* entry (a MAC
  flood then cannot freeze the table); only when every entry is permanent is the new one
  refused (``fdb_full``; ``FdbFullError`` for administrative adds).

Who calls what: the engine calls ``lookup``/``learn`` on the data path and ``age`` from its
timer; the CLI/UAPI calls ``add``/``append``/``delete``/``show``. All single-threaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from .config import format_mac, normalize_ip, parse_mac

ZERO_MAC = bytes(6)

LEARN_OK = None
DROP_STATIC_CONFLICT = "static_entry_conflict"
DROP_FDB_FULL = "fdb_full"


class FdbFullError(Exception):
    """An administrative add found the table full of permanent entries (kernel: ENOSPC)."""


class Remote(NamedTuple):
    """One destination VTEP of an entry. ``via`` is the lower device name, shown only."""

    ip: str
    port: int
    vni: int
    via: str | None = None


class FdbEntry:
    """One MAC's forwarding state. ``remotes`` is never empty while the entry is in a table."""

    __slots__ = ("mac", "remotes", "permanent", "updated", "used")

    def __init__(
        self, mac: bytes, remotes: list[Remote], permanent: bool, now: float
    ) -> None:
        self.mac = mac
        self.remotes = remotes
        self.permanent = permanent
        self.updated = now
        self.used = now

    def __repr__(self) -> str:
        state = "permanent" if self.permanent else "learned"
        return f"FdbEntry({format_mac(self.mac)}, {self.remotes!r}, {state})"


def is_unicast_mac(mac: bytes) -> bool:
    """Valid unicast: multicast bit clear and not all zeros (kernel ``is_valid_ether_addr``)."""
    return not mac[0] & 1 and mac != ZERO_MAC


class Fdb:
    """The table. ``vni``/``dstport`` are the device defaults a remote falls back to."""

    def __init__(
        self, vni: int, dstport: int, ageing: float = 300.0, maxaddress: int = 0
    ) -> None:
        self.vni = vni
        self.dstport = dstport
        self.ageing = ageing
        self.maxaddress = maxaddress
        self.entries: dict[bytes, FdbEntry] = {}
        # learned MACs, least recently updated first (eviction order under maxaddress)
        self._learned: OrderedDict[bytes, None] = OrderedDict()
        self.learned_count = 0
        self.migrated_count = 0
        self.evicted_count = 0
        self.aged_count = 0

    # ---- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, mac: object) -> bool:
        return mac in self.entries

    def __iter__(self) -> Iterator[FdbEntry]:
        return iter(list(self.entries.values()))

    def get(self, mac: bytes | str) -> FdbEntry | None:
        """The entry for ``mac`` without touching ``used`` (for inspection and tests)."""
        return self.entries.get(parse_mac(mac))

    def lookup(self, mac: bytes, now: float) -> FdbEntry | None:
        """Transmit lookup: the entry for ``mac``, else the all-zeros flood entry, else None.
        Marks the entry found as used at ``now``. ``mac`` must be ``bytes`` of length 6."""
        entry = self.entries.get(mac)
        if entry is None:
            entry = self.entries.get(ZERO_MAC)
            if entry is None:
                return None
        entry.used = now
        return entry

    # ---- learning (data path) ------------------------------------------------------------

    def learn(self, mac: bytes, ip: str, now: float) -> str | None:
        """Snoop one received frame: inner source ``mac`` (valid unicast, checked by the
        caller) came from outer source ``ip``. Returns None, or a drop reason when the frame
        must be dropped (``static_entry_conflict``) or the table could not take the MAC
        (``fdb_full``: the kernel still delivers the frame in that case)."""
        entry = self.entries.get(mac)
        if entry is not None:
            entry.updated = now
            first = entry.remotes[0]
            if entry.permanent:
                if first.ip == ip:
                    return None
                return DROP_STATIC_CONFLICT
            self._learned.move_to_end(mac)
            if first.ip != ip:
                entry.remotes[0] = first._replace(ip=ip)
                self.migrated_count += 1
            return None
        if self.maxaddress and len(self.entries) >= self.maxaddress and not self._evict():
            return DROP_FDB_FULL
        self.entries[mac] = FdbEntry(mac, [Remote(ip, self.dstport, self.vni)], False, now)
        self._learned[mac] = None
        self.learned_count += 1
        return None

    def _evict(self) -> bool:
        """Drop the least recently updated learned entry; False if there is none."""
        if not self._learned:
            return False
        mac, _ = self._learned.popitem(last=False)
        del self.entries[mac]
        self.evicted_count += 1
        return True

    # ---- administration (bridge fdb add / append / replace / del) -------------------------

    def _remote(
        self, ip: str, port: int | None, vni: int | None, via: str | None
    ) -> Remote:
        return Remote(
            normalize_ip(ip),
            self.dstport if port is None else port,
            self.vni if vni is None else vni,
            via,
        )

    def _admit(self, mac: bytes) -> None:
        if self.maxaddress and len(self.entries) >= self.maxaddress and not self._evict():
            raise FdbFullError(f"FDB full ({self.maxaddress} permanent entries)")

    def add(
        self,
        mac: bytes | str,
        ip: str,
        *,
        now: float,
        port: int | None = None,
        vni: int | None = None,
        via: str | None = None,
        permanent: bool = True,
    ) -> FdbEntry:
        """Create or replace ``mac`` -> ``[remote]`` (``bridge fdb replace`` semantics: the
        entry ends with exactly this one remote and the given state)."""
        key = parse_mac(mac)
        remote = self._remote(ip, port, vni, via)
        entry = self.entries.get(key)
        if entry is None:
            self._admit(key)
            entry = FdbEntry(key, [remote], permanent, now)
            self.entries[key] = entry
        else:
            entry.remotes = [remote]
            entry.updated = now
            self._learned.pop(key, None)
            entry.permanent = permanent
        if not permanent:
            self._learned[key] = None
        return entry

    def append(
        self,
        mac: bytes | str,
        ip: str,
        *,
        now: float,
        port: int | None = None,
        vni: int | None = None,
        via: str | None = None,
    ) -> FdbEntry:
        """``bridge fdb append``: add a remote to the all-zeros (flood) or a multicast MAC's
        list, creating the entry (permanent) if needed. A remote already present is kept once.
        Unicast MACs have one remote only (``ValueError``; use ``add``)."""
        key = parse_mac(mac)
        if is_unicast_mac(key):
            raise ValueError("append is for the all-zeros or multicast MACs; use add")
        remote = self._remote(ip, port, vni, via)
        entry = self.entries.get(key)
        if entry is None:
            self._admit(key)
            entry = FdbEntry(key, [remote], True, now)
            self.entries[key] = entry
        elif remote not in entry.remotes:
            entry.remotes.append(remote)
            entry.updated = now
        return entry

    def delete(
        self,
        mac: bytes | str,
        ip: str | None = None,
        *,
        port: int | None = None,
        vni: int | None = None,
        via: str | None = None,
    ) -> bool:
        """``bridge fdb del``: without ``ip`` remove the entry; with ``ip`` remove that remote
        (the entry goes with its last remote). Returns False if nothing matched."""
        key = parse_mac(mac)
        entry = self.entries.get(key)
        if entry is None:
            return False
        if ip is not None:
            remote = self._remote(ip, port, vni, via)
            if remote not in entry.remotes:
                return False
            if len(entry.remotes) > 1:
                entry.remotes.remove(remote)
                return True
        del self.entries[key]
        self._learned.pop(key, None)
        return True

    def flush(self, learned_only: bool = True) -> int:
        """Remove learned entries (or all); returns how many were removed."""
        macs = list(self._learned) if learned_only else list(self.entries)
        for mac in macs:
            del self.entries[mac]
            self._learned.pop(mac, None)
        return len(macs)

    # ---- ageing --------------------------------------------------------------------------

    def age(self, now: float) -> int:
        """Remove learned entries with ``now >= updated + ageing``; returns how many."""
        if not self.ageing:
            return 0
        limit = now - self.ageing
        expired = [m for m in self._learned if self.entries[m].updated <= limit]
        for mac in expired:
            del self.entries[mac]
            del self._learned[mac]
        self.aged_count += len(expired)
        return len(expired)

    def next_timer(self) -> float | None:
        """The earliest time a learned entry expires, or None (nothing can expire)."""
        if not self.ageing or not self._learned:
            return None
        # _learned is ordered by update, so its first entry expires first
        first = next(iter(self._learned))
        return self.entries[first].updated + self.ageing

    # ---- rendering -----------------------------------------------------------------------

    def show(
        self, now: float | None = None, dev: str | None = None, stats: bool = False
    ) -> list[str]:
        """Lines as ``bridge fdb show`` prints a vxlan device's table, one per remote::

            00:00:00:00:00:00 dst 10.0.0.2 self permanent
            aa:bb:cc:dd:ee:ff dst 10.0.0.2 self

        ``dev`` adds ``dev NAME`` (as an unfiltered ``bridge fdb show``); ``port``/``vni`` only
        appear when they differ from the device's; ``via`` names the lower device; ``stats``
        (with ``now``) adds ``used U/T`` in whole seconds, like ``bridge -s``."""
        lines = []
        for entry in self.entries.values():
            for r in entry.remotes:
                parts = [format_mac(entry.mac)]
                if dev:
                    parts += ["dev", dev]
                parts += ["dst", r.ip]
                if r.port != self.dstport:
                    parts += ["port", str(r.port)]
                if r.vni != self.vni:
                    parts += ["vni", str(r.vni)]
                if r.via:
                    parts += ["via", r.via]
                if stats and now is not None:
                    parts.append(f"used {int(now - entry.used)}/{int(now - entry.updated)}")
                parts.append("self")
                if entry.permanent:
                    parts.append("permanent")
                lines.append(" ".join(parts))
        return lines

    def as_list(self, now: float | None = None) -> list[dict[str, object]]:
        """JSON-ready rows, one per remote (keys as ``bridge -j fdb show`` uses)."""
        rows: list[dict[str, object]] = []
        for entry in self.entries.values():
            for r in entry.remotes:
                row: dict[str, object] = {
                    "mac": format_mac(entry.mac),
                    "dst": r.ip,
                    "port": r.port,
                    "vni": r.vni,
                    "flags": ["self"],
                    "state": "permanent" if entry.permanent else "",
                }
                if r.via:
                    row["viaIf"] = r.via
                if now is not None:
                    row["used"] = int(now - entry.used)
                    row["updated"] = int(now - entry.updated)
                rows.append(row)
        return rows
