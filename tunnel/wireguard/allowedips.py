"""Cryptokey routing: the allowed-IPs table, a longest-prefix-match trie for IPv4 and IPv6.

Outbound, the engine asks ``lookup_dst(packet)`` which peer a plaintext IP packet goes to.
Inbound, after decryption, it asks ``lookup_src(packet)`` and drops the packet unless the answer
is the peer that sent it. The UAPI and the configuration loader fill the table with
``insert``/``insert_raw`` and read it back with ``entries``/``networks``.

Peers are opaque objects compared by identity (``is``); ``None`` is not a valid peer, since
``None`` is the "no route" answer.

Data structure: host routes (/32, /128) in a plain dict keyed by the address bytes, and every
shorter prefix in a path-compressed multibit trie, stride 8 (one address byte per level), with
prefix expansion inside each node. A host route is the longest possible match, so a lookup
probes the dict first and walks the trie only on a miss. Large tables are mostly host routes
(one or a few per peer): they load at one dict store each and route with one probe.

* A node at ``depth`` d holds the prefixes whose length lies in ``8d+1 .. 8d+8`` (the root also
  holds ``/0``); ``prefix`` is the d address bytes above it. Inside the node a prefix keeps only
  its last ``L = cidr - 8d`` bits ``v`` and is named by its heap index ``(1 << L) | v`` (1 for
  the zero-length prefix, 256..511 for a full byte), as in the ART scheme: the parent of index
  ``i`` is ``i >> 1``, and of the prefixes covering one byte value the longest is the deepest.
* ``local`` maps heap index -> peer (the prefixes really inserted at this node).
* ``best`` maps a byte value 0..255 to the peer of the longest local prefix covering it, so a
  lookup does one dict probe per level.
* ``children`` maps the byte at ``depth`` to the next node. Nodes exist only where a prefix
  ends or two paths fork, so a child may sit several bytes deeper (``skip`` is then True and a
  lookup compares the skipped bytes once, with a single slice comparison).

Why this layout: in pure Python the cost is the number of interpreted operations, so the trie
consumes a whole byte per step instead of a bit (a binary trie walks up to 32/128 levels). Path
compression keeps the node count at most about twice the number of prefixes even for scattered
IPv6 host routes, where a plain stride-8 trie would allocate up to 15 nodes per /128 (measured:
10x slower to load and over a gigabyte for 130,000 random /128s). A lookup is at most 4 (IPv4)
or 16 (IPv6) pairs of dict probes, usually far fewer. The layout ports directly to Cython: a
node becomes a struct with 256-slot ``best``/``children`` arrays, a depth and a prefix; the
host dict can stay a dict or become the trie's deepest level.

Measured on the 2-core dev VM (CPython 3.11, idle; about 2-3x more while other jobs ran):
130,000 /32 via ``insert_raw`` ~0.2 s, 130,000 /128 (sequential or random) ~0.15-0.25 s,
``remove_peer`` of either ~0.03 s; from text (``insert(str)``) ~0.5 s and ~0.75 s, parsing
dominating. 130,000 random prefixes of random lengths (expansion costs) ~1 s. ``lookup_dst``
~1 us per packet.

Bookkeeping: every peer has an insertion-ordered dict of its ``(network bytes, cidr)`` entries,
so ``entries``/``remove_peer`` cost O(entries of that peer), never a scan of the whole trie.

Nothing here reads a clock or touches I/O; all calls run on the engine's single thread.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Network = str | ipaddress.IPv4Network | ipaddress.IPv6Network
Entry = tuple[bytes, int]
Buffer = bytes | bytearray | memoryview

__all__ = ["AllowedIPs", "parse_prefix"]


# --- text parsing -----------------------------------------------------------------------------

_OCTET = r"(0|[1-9][0-9]{0,2})"
_V4_PREFIX = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(0|[1-9][0-9]?))?", re.ASCII)
_V6_PREFIX = re.compile(r"([0-9A-Fa-f:]{2,39})(?:/(0|[1-9][0-9]{0,2}))?", re.ASCII)


def _fast_v4(text: str) -> Entry | None:
    """``a.b.c.d[/n]`` in canonical decimal; None means "let ipaddress decide"."""
    match = _V4_PREFIX.fullmatch(text)
    if match is None:
        return None
    a, b, c, d, length = match.groups()
    octets = (int(a), int(b), int(c), int(d))
    cidr = 32 if length is None else int(length)
    if max(octets) > 255 or cidr > 32:
        return None
    return bytes(octets), cidr


def _fast_v6(text: str) -> Entry | None:
    """Plain hex IPv6 (no embedded IPv4, no scope) ``[/n]``; None means "let ipaddress decide"."""
    match = _V6_PREFIX.fullmatch(text)
    if match is None:
        return None
    addr, length = match.groups()
    head, double, tail = addr.partition("::")
    if double:
        if "::" in tail:
            return None
        front = head.split(":") if head else []
        back = tail.split(":") if tail else []
        missing = 8 - len(front) - len(back)
        if missing < 1:
            return None
        groups = front + ["0"] * missing + back
    else:
        groups = addr.split(":")
        if len(groups) != 8:
            return None
    for group in groups:  # the pattern admitted only hex digits and colons
        if not 0 < len(group) <= 4:
            return None
    value = int("".join([group.zfill(4) for group in groups]), 16)
    cidr = 128 if length is None else int(length)
    if cidr > 128:
        return None
    return value.to_bytes(16, "big"), cidr


def parse_prefix(network: Network) -> Entry:
    """Turn ``"10.0.0.1/24"``, ``"fd00::/8"``, ``"10.0.0.1"`` or an ``ipaddress`` network into
    ``(address bytes, cidr)``. Host bits are NOT masked here (``insert_raw`` does that).

    Text: surrounding whitespace is stripped, then exactly what
    ``ipaddress.ip_network(text, strict=False)`` accepts is accepted (common forms take a fast
    path), except IPv6 scope ids. Raises ValueError otherwise, TypeError for a non-network.
    """
    if isinstance(network, str):
        text = network.strip()
        fast = _fast_v6(text) if ":" in text else _fast_v4(text)
        if fast is not None:
            return fast
        if "%" in text:  # ipaddress takes a scope id (fe80::1%eth0); a route has none
            raise ValueError(f"scope id in network {text!r}")
        parsed = ipaddress.ip_network(text, strict=False)
        return parsed.network_address.packed, parsed.prefixlen
    if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return network.network_address.packed, network.prefixlen
    raise TypeError(f"not a network: {network!r}")


def _masked(addr: bytes, cidr: int) -> bytes:
    """``addr`` with every bit past ``cidr`` cleared (a fresh immutable ``bytes``)."""
    full, rest = divmod(cidr, 8)
    if full == len(addr):
        return bytes(addr)
    tail = bytes(len(addr) - full - (1 if rest else 0))
    if rest:
        return bytes(addr[:full]) + bytes((addr[full] & (0xFF00 >> rest) & 0xFF,)) + tail
    return bytes(addr[:full]) + tail


def _locate(cidr: int, addr: bytes) -> tuple[int, int]:
    """Where a masked prefix lives: (node depth, heap index inside that node)."""
    depth = (cidr - 1) >> 3 if cidr else 0
    bits = cidr - (depth << 3)  # 0..8 bits of the prefix inside this node's byte
    return depth, (1 << bits) | (addr[depth] >> (8 - bits))


def _byte_range(index: int) -> tuple[int, int]:
    """The byte values [low, high) covered by heap index ``index`` (1..511)."""
    free = 9 - index.bit_length()  # bits of the byte left unspecified by the prefix
    low = (index << free) & 0xFF
    return low, low + (1 << free)


# --- the trie ---------------------------------------------------------------------------------


class _Node(Generic[T]):
    """One byte position of the trie. See the module docstring."""

    __slots__ = ("depth", "prefix", "skip", "children", "local", "best")

    def __init__(self, depth: int, prefix: bytes) -> None:
        self.depth = depth
        self.prefix = prefix  # the `depth` address bytes leading here
        self.skip = False  # True when the parent is not at depth - 1
        self.children: dict[int, _Node[T]] = {}
        self.local: dict[int, T] = {}
        self.best: dict[int, T] = {}

    def link(self, byte: int, child: _Node[T]) -> None:
        self.children[byte] = child
        child.skip = child.depth != self.depth + 1

    def paint(self, index: int, peer: T | None) -> None:
        """Set ``best`` to ``peer`` (None: clear) for every byte whose longest local prefix is
        ``index``: its byte range, minus the ranges of deeper local prefixes inside it."""
        best = self.best
        if index >= 256:
            if peer is None:
                best.pop(index - 256, None)
            else:
                best[index - 256] = peer
            return
        low, high = _byte_range(index)
        if peer is None:
            for byte in range(low, high):
                best.pop(byte, None)
        else:
            best.update(dict.fromkeys(range(low, high), peer))
        # Repaint the deeper local prefixes inside, shallow to deep (heap order), so the
        # longest one wins each byte.
        local = self.local
        if len(local) == (index in local):  # nothing deeper to repaint (the common case)
            return
        bits = index.bit_length()
        inside = [j for j in local if j > index and j >> (j.bit_length() - bits) == index]
        for inner in sorted(inside):
            low, high = _byte_range(inner)
            best.update(dict.fromkeys(range(low, high), local[inner]))


def _lookup(hosts: dict[bytes, T], node: _Node[T], addr: bytes) -> T | None:
    """Longest match for ``addr``: a host route if there is one, else walk the trie, remembering
    the last (hence longest) match on the path."""
    found = hosts.get(addr)
    if found is not None:
        return found
    while True:
        depth = node.depth
        if node.skip and addr[:depth] != node.prefix:
            return found
        byte = addr[depth]
        peer = node.best.get(byte)
        if peer is not None:
            found = peer
        child = node.children.get(byte)
        if child is None:
            return found
        node = child


class AllowedIPs(Generic[T]):
    """The allowed-IPs table of one device: prefix -> peer, longest prefix wins.

    Contract: single-threaded (the engine's loop thread). ``lookup*`` never mutate and never
    keep a reference to the buffer they are given. Inserting a prefix that exists moves it to
    the new peer (as ``wg set ... allowed-ips`` does); ``remove`` only removes a prefix owned by
    the given peer.
    """

    __slots__ = ("_hosts", "_root4", "_root6", "_by_peer", "_count", "version", "generation")

    def __init__(self) -> None:
        # Host routes (/32, /128) by address; 4- and 16-byte keys never collide.
        self._hosts: dict[bytes, T] = {}
        self._root4: _Node[T] = _Node(0, b"")
        self._root6: _Node[T] = _Node(0, b"")
        # id(peer) -> (peer, its entries in insertion order). Holding the peer keeps id() valid.
        self._by_peer: dict[int, tuple[T, dict[Entry, None]]] = {}
        self._count = 0
        # Bumped on every change, so a compiled copy (tunnel.wireguard.datapath.RouteTable) knows it is stale.
        self.version = 0
        # The engine's lane generation (tunnel.wireguard.lane.Generation, or None): bumped after
        # every change is complete, so a lane snapshot taken before it is stale.
        self.generation: Any = None

    # --- mutation ---------------------------------------------------------------------------

    def insert(self, network: Network, peer: T) -> None:
        """Route ``network`` (host bits masked off: 10.0.0.1/24 -> 10.0.0.0/24) to ``peer``."""
        addr, cidr = parse_prefix(network)
        self.insert_raw(addr, cidr, peer)

    def insert_raw(self, addr: bytes, cidr: int, peer: T) -> None:
        """Route ``addr/cidr`` to ``peer``; ``addr`` is 4 or 16 raw bytes. Raises ValueError."""
        try:
            self._insert_raw(addr, cidr, peer)
        finally:
            self._changed()

    def _changed(self) -> None:
        if self.generation is not None:
            self.generation.bump()

    def _insert_raw(self, addr: bytes, cidr: int, peer: T) -> None:
        if peer is None:
            raise ValueError("peer must not be None")
        self.version += 1
        size = len(addr)
        if size == 4:
            node = self._root4
        elif size == 16:
            node = self._root6
        else:
            raise ValueError(f"address must be 4 or 16 bytes, got {size}")
        if not 0 <= cidr <= size * 8:
            raise ValueError(f"prefix length {cidr} out of range for a {size}-byte address")
        if cidr == size << 3:  # a host route: the common case of large tables, kept apart
            self._insert_host(bytes(addr), cidr, peer)
            return
        addr = _masked(addr, cidr)
        target, index = _locate(cidr, addr)
        while node.depth < target:
            byte = addr[node.depth]
            child = node.children.get(byte)
            if child is None:
                child = _Node(target, addr[:target])
                node.link(byte, child)
                node = child
                break
            depth = child.depth
            if depth <= target and (not child.skip or addr[:depth] == child.prefix):
                node = child
                continue
            # `child` is off our path or below our target: fork at the first differing byte.
            limit = min(depth, target)
            prefix = child.prefix
            fork = node.depth + 1
            while fork < limit and addr[fork] == prefix[fork]:
                fork += 1
            middle: _Node[T] = _Node(fork, addr[:fork])
            node.link(byte, middle)
            middle.link(prefix[fork], child)
            node = middle

        key = (addr, cidr)
        old = node.local.get(index)
        if old is not None:
            if old is peer:
                return
            self._forget(old, key)
        else:
            self._count += 1
        node.local[index] = peer
        node.paint(index, peer)
        record = self._by_peer.get(id(peer))
        if record is None:
            self._by_peer[id(peer)] = (peer, {key: None})
        else:
            record[1][key] = None

    def remove(self, network: Network, peer: T) -> bool:
        """Remove ``network`` (host bits masked) if ``peer`` owns it; True if it was removed."""
        addr, cidr = parse_prefix(network)
        return self.remove_raw(addr, cidr, peer)

    def remove_raw(self, addr: bytes, cidr: int, peer: T) -> bool:
        """``remove`` for raw bytes (4 or 16) and a prefix length."""
        size = len(addr)
        if size not in (4, 16) or not 0 <= cidr <= size * 8:
            return False
        key = (_masked(addr, cidr), cidr)
        record = self._by_peer.get(id(peer))
        if record is None or key not in record[1]:
            return False
        self.version += 1
        self._unlink(key)
        self._forget(peer, key)
        self._count -= 1
        self._changed()
        return True

    def remove_peer(self, peer: T) -> None:
        """Remove every prefix owned by ``peer``: O(its entries), not O(table)."""
        # id() is unambiguous: the table holds a reference to every peer it keys by id().
        record = self._by_peer.pop(id(peer), None)
        if record is None:
            return
        self.version += 1
        for key in record[1]:
            self._unlink(key)
        self._count -= len(record[1])
        self._changed()

    def clear(self) -> None:
        """Drop every entry of every peer."""
        self.version += 1
        self._hosts = {}
        self._root4 = _Node(0, b"")
        self._root6 = _Node(0, b"")
        self._by_peer = {}
        self._count = 0
        self._changed()

    # --- lookup (per packet) ----------------------------------------------------------------

    def lookup(self, addr: Buffer) -> T | None:
        """The peer owning the longest prefix containing ``addr`` (4 or 16 raw bytes), or None."""
        size = len(addr)
        if size == 4:
            return _lookup(self._hosts, self._root4, bytes(addr))
        if size == 16:
            return _lookup(self._hosts, self._root6, bytes(addr))
        raise ValueError(f"address must be 4 or 16 bytes, got {size}")

    def lookup_dst(self, packet: Buffer, offset: int = 0) -> T | None:
        """Peer for the destination of the IP packet at ``packet[offset:]`` (outbound routing).

        None if the packet is shorter than its fixed IP header (20 or 40 bytes), its version
        nibble is neither 4 nor 6, or no prefix matches. Reads only; copies at most 16 bytes.
        """
        if offset < 0 or len(packet) - offset < 20:
            return None
        version = packet[offset] >> 4
        if version == 4:
            return _lookup(self._hosts, self._root4, bytes(packet[offset + 16 : offset + 20]))
        if version == 6 and len(packet) - offset >= 40:
            return _lookup(self._hosts, self._root6, bytes(packet[offset + 24 : offset + 40]))
        return None

    def lookup_src(self, packet: Buffer, offset: int = 0) -> T | None:
        """Peer owning the source of the IP packet at ``packet[offset:]`` (inbound filtering).

        Same length and version rules as ``lookup_dst``.
        """
        if offset < 0 or len(packet) - offset < 20:
            return None
        version = packet[offset] >> 4
        if version == 4:
            return _lookup(self._hosts, self._root4, bytes(packet[offset + 12 : offset + 16]))
        if version == 6 and len(packet) - offset >= 40:
            return _lookup(self._hosts, self._root6, bytes(packet[offset + 8 : offset + 24]))
        return None

    # --- listing ----------------------------------------------------------------------------

    def entries(self, peer: T) -> list[Entry]:
        """``(network bytes, cidr)`` of ``peer``, in insertion order (a moved prefix goes last)."""
        record = self._by_peer.get(id(peer))
        if record is None:
            return []
        return list(record[1])

    def owners(self) -> list[tuple[T, list[Entry]]]:
        """Every peer with its entries (for compiling the table into a native lookup)."""
        return [(peer, list(entries)) for peer, entries in self._by_peer.values()]

    def networks(self, peer: T) -> list[str]:
        """``entries(peer)`` as text: ``"10.0.0.0/24"``, ``"fd00::/64"``."""
        out = []
        for addr, cidr in self.entries(peer):
            if len(addr) == 4:
                out.append(f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}/{cidr}")
            else:
                out.append(f"{ipaddress.IPv6Address(addr)}/{cidr}")
        return out

    def __len__(self) -> int:
        return self._count

    # --- internals --------------------------------------------------------------------------

    def _insert_host(self, addr: bytes, cidr: int, peer: T) -> None:
        """``insert_raw`` for a /32 or /128: one dict store, no trie node."""
        hosts = self._hosts
        old = hosts.get(addr)
        key = (addr, cidr)
        if old is not None:
            if old is peer:
                return
            self._forget(old, key)
        else:
            self._count += 1
        hosts[addr] = peer
        record = self._by_peer.get(id(peer))
        if record is None:
            self._by_peer[id(peer)] = (peer, {key: None})
        else:
            record[1][key] = None

    def _forget(self, peer: T, key: Entry) -> None:
        """Drop ``key`` from ``peer``'s bookkeeping (the trie is updated by the caller)."""
        record = self._by_peer.get(id(peer))
        if record is None:
            return
        record[1].pop(key, None)
        if not record[1]:
            del self._by_peer[id(peer)]

    def _unlink(self, key: Entry) -> None:
        """Take ``key`` out of the trie, repaint ``best`` and drop or merge nodes it emptied."""
        addr, cidr = key
        if cidr == len(addr) << 3:
            del self._hosts[addr]
            return
        node = self._root4 if len(addr) == 4 else self._root6
        target, index = _locate(cidr, addr)
        path: list[tuple[_Node[T], int]] = []
        while node.depth < target:
            byte = addr[node.depth]
            path.append((node, byte))
            node = node.children[byte]
        local = node.local
        del local[index]
        # The bytes that matched `index` now fall back to its nearest local ancestor, if any.
        ancestor = index >> 1
        while ancestor and ancestor not in local:
            ancestor >>= 1
        node.paint(index, local[ancestor] if ancestor else None)
        # A node with no prefix of its own is kept only while it forks two or more paths.
        while path and not node.local:
            parent, byte = path.pop()
            children = node.children
            if not children:
                del parent.children[byte]
            elif len(children) == 1:
                parent.link(byte, next(iter(children.values())))
            else:
                break
            node = parent
