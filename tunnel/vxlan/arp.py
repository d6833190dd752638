"""Proxy ARP (ARP suppression) for the VXLAN engine: the neighbour table and the reply frame.

With ``proxy`` on, an ARP request from the local side for an IPv4 address whose MAC we know is
answered locally instead of being flooded to every VTEP. What the kernel builds in that case
(``arp_reduce`` -> ``arp_create(ARPOP_REPLY, ...)``), and what ``build_arp_reply`` builds:

- Ethernet: destination = requester's sender MAC, source = the known MAC, type 0x0806;
- ARP: htype 1, ptype 0x0800, hlen 6, plen 4, opcode 2 (reply),
  sender = (known MAC, requested IP), target = (requester's MAC, requester's IP).
- 42 bytes, no padding (the frame goes to the local TAP, not onto a wire).

The kernel consults the device's neighbour table, which a control plane fills. We fill ours
from traffic received over the tunnel (ARP requests and replies: sender IP -> sender MAC;
IPv4 packets: source IP -> inner source MAC) and from static entries (``add``). Learned
bindings age like FDB entries; the table is bounded (oldest learned binding evicted first).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from typing import Final, NamedTuple

from .config import format_mac, parse_mac

ETH_P_ARP: Final = 0x0806
ETH_P_IP: Final = 0x0800
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2
ARP_LEN: Final = 28
ARP_FRAME_LEN: Final = 14 + ARP_LEN

_ARP_FIXED = struct.Struct(">HHBBH")
_REPLY_HEAD = struct.pack(">HHBBH", 1, ETH_P_IP, 6, 4, ARP_REPLY)
_ETH_TYPE_ARP = struct.pack(">H", ETH_P_ARP)


class ArpPacket(NamedTuple):
    """An Ethernet/IPv4 ARP packet's fields (addresses as raw bytes)."""

    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes


def parse_arp(frame: bytes | bytearray | memoryview, offset: int = 0) -> ArpPacket | None:
    """Parse the ARP payload of the Ethernet frame at ``frame[offset:]`` (ethertype not
    checked here). None unless hardware type is Ethernet (1) or IEEE 802 (6), protocol IPv4,
    hlen 6 and plen 4 (the kernel's acceptance test)."""
    p = offset + 14
    if len(frame) < p + ARP_LEN:
        return None
    hrd, pro, hln, pln, op = _ARP_FIXED.unpack_from(frame, p)
    if hrd not in (1, 6) or pro != ETH_P_IP or hln != 6 or pln != 4:
        return None
    b = bytes(frame[p + 8 : p + ARP_LEN])
    return ArpPacket(op, b[0:6], b[6:10], b[10:16], b[16:20])


def build_arp_reply(request: ArpPacket, mac: bytes) -> bytes:
    """The 42-byte reply frame answering ``request`` with ``mac`` for its target IP."""
    return b"".join(
        (
            request.sha,  # Ethernet destination: the requester
            mac,  # Ethernet source: the owner of the address
            _ETH_TYPE_ARP,
            _REPLY_HEAD,
            mac,
            request.tpa,
            request.sha,
            request.spa,
        )
    )


def learnable_ipv4(ip: bytes) -> bool:
    """A unicast host address worth binding: not 0/8, loopback, multicast/class E, broadcast."""
    first = ip[0]
    return first != 0 and first != 127 and first < 224


def answerable_ipv4(ip: bytes) -> bool:
    """The kernel will not answer for loopback or multicast targets."""
    first = ip[0]
    return first != 127 and not 224 <= first <= 239


class NeighEntry:
    __slots__ = ("mac", "updated", "permanent")

    def __init__(self, mac: bytes, updated: float, permanent: bool) -> None:
        self.mac = mac
        self.updated = updated
        self.permanent = permanent


class NeighbourTable:
    """IPv4 address (4 raw bytes) -> MAC, learned or permanent, bounded to ``max_entries``."""

    def __init__(self, max_entries: int = 4096, ageing: float = 300.0) -> None:
        self.max_entries = max_entries
        self.ageing = ageing
        self.entries: dict[bytes, NeighEntry] = {}
        self._learned: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, ip: bytes) -> bytes | None:
        entry = self.entries.get(ip)
        return None if entry is None else entry.mac

    def learn(self, ip: bytes, mac: bytes, now: float) -> None:
        """Bind ``ip`` -> ``mac`` from received traffic (a permanent binding is kept)."""
        entry = self.entries.get(ip)
        if entry is not None:
            if entry.permanent:
                return
            entry.mac = mac
            entry.updated = now
            self._learned.move_to_end(ip)
            return
        if len(self.entries) >= self.max_entries:
            if not self._learned:
                return
            old, _ = self._learned.popitem(last=False)
            del self.entries[old]
        self.entries[ip] = NeighEntry(mac, now, False)
        self._learned[ip] = None

    def add(self, ip: str, mac: bytes | str, *, now: float = 0.0) -> None:
        """Static binding (``ip neigh add IP lladdr MAC dev vxlan0 nud permanent``)."""
        key = ipaddress.IPv4Address(ip).packed
        self._learned.pop(key, None)
        self.entries[key] = NeighEntry(parse_mac(mac), now, True)

    def delete(self, ip: str) -> bool:
        key = ipaddress.IPv4Address(ip).packed
        self._learned.pop(key, None)
        return self.entries.pop(key, None) is not None

    def age(self, now: float) -> int:
        if not self.ageing:
            return 0
        limit = now - self.ageing
        expired = [ip for ip in self._learned if self.entries[ip].updated <= limit]
        for ip in expired:
            del self.entries[ip]
            del self._learned[ip]
        return len(expired)

    def next_timer(self) -> float | None:
        if not self.ageing or not self._learned:
            return None
        return self.entries[next(iter(self._learned))].updated + self.ageing

    def show(self) -> list[str]:
        """``ip neigh show dev vxlan0``-like lines: ``10.0.0.5 lladdr aa:.. PERMANENT``."""
        out = []
        for ip, e in self.entries.items():
            state = "PERMANENT" if e.permanent else "REACHABLE"
            out.append(f"{ipaddress.IPv4Address(ip)} lladdr {format_mac(e.mac)} {state}")
        return out
