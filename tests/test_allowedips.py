"""Tests for tunnel.wireguard.allowedips: longest-prefix match against a brute-force reference."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.wireguard.allowedips import AllowedIPs, parse_prefix


class Peer:
    """A peer stand-in that compares equal to every other one: the table must use identity."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"Peer({self.name})"


PEERS = [Peer("a"), Peer("b"), Peer("c")]


# --- a brute-force reference --------------------------------------------------------------------


def mask(addr: bytes, cidr: int) -> bytes:
    bits = len(addr) * 8
    value = int.from_bytes(addr, "big")
    value &= ((1 << bits) - 1) ^ ((1 << (bits - cidr)) - 1)
    return value.to_bytes(len(addr), "big")


class Reference:
    """The table's contract, the slow and obvious way."""

    def __init__(self) -> None:
        self.routes: dict[tuple[bytes, int], Peer] = {}
        self.order: dict[int, dict[tuple[bytes, int], None]] = {}

    def insert(self, addr: bytes, cidr: int, peer: Peer) -> None:
        key = (mask(addr, cidr), cidr)
        old = self.routes.get(key)
        if old is peer:
            return
        if old is not None:
            del self.order[id(old)][key]
        self.routes[key] = peer
        self.order.setdefault(id(peer), {})[key] = None

    def remove(self, addr: bytes, cidr: int, peer: Peer) -> bool:
        key = (mask(addr, cidr), cidr)
        if self.routes.get(key) is not peer:
            return False
        del self.routes[key]
        del self.order[id(peer)][key]
        return True

    def remove_peer(self, peer: Peer) -> None:
        for key in list(self.order.get(id(peer), {})):
            del self.routes[key]
        self.order.pop(id(peer), None)

    def lookup(self, addr: bytes) -> Peer | None:
        best: tuple[int, Peer] | None = None
        for (net, cidr), peer in self.routes.items():
            if len(net) == len(addr) and mask(addr, cidr) == net:
                if best is None or cidr > best[0]:
                    best = (cidr, peer)
        return None if best is None else best[1]

    def entries(self, peer: Peer) -> list[tuple[bytes, int]]:
        return list(self.order.get(id(peer), {}))


def assert_trie_empty(table: AllowedIPs[Peer]) -> None:
    """White-box: nothing leaks in the trie once every prefix is gone."""
    for root in (table._root4, table._root6):
        assert not root.children and not root.local and not root.best
    assert not table._hosts and not table._by_peer


def assert_trie_invariants(table: AllowedIPs[Peer]) -> None:
    """White-box: the path-compressed shape holds after any sequence of operations."""
    for root in (table._root4, table._root6):
        assert root.depth == 0 and root.prefix == b""
        stack = [root]
        while stack:
            node = stack.pop()
            if node is not root:  # a node exists only to hold prefixes or to fork
                assert node.local or len(node.children) >= 2
            assert all(256 > index >= 1 or 512 > index >= 256 for index in node.local)
            for byte, child in node.children.items():
                assert child.depth > node.depth
                assert child.prefix[: node.depth] == node.prefix and child.prefix[node.depth] == byte
                assert child.skip == (child.depth != node.depth + 1)
                stack.append(child)
    for addr in table._hosts:
        assert len(addr) in (4, 16)


# --- hypothesis strategies ------------------------------------------------------------------------

# Bytes from a small pool make prefixes overlap and share paths; any byte keeps it honest.
_byte = st.one_of(st.sampled_from([0, 1, 10, 0x7F, 0x80, 0xC0, 0xFF]), st.integers(0, 255))


def _addresses(size: int) -> st.SearchStrategy[bytes]:
    return st.lists(_byte, min_size=size, max_size=size).map(bytes)


def _ops(size: int) -> st.SearchStrategy[list[tuple[str, bytes, int, int]]]:
    op = st.tuples(
        st.sampled_from(["insert", "insert", "insert", "remove", "remove_peer"]),
        _addresses(size),
        st.integers(0, size * 8),
        st.integers(0, len(PEERS) - 1),
    )
    return st.lists(op, max_size=60)


def _probes(ops: list[tuple[str, bytes, int, int]], extra: list[bytes]) -> list[bytes]:
    """Addresses near every prefix boundary: network, last address, and one past either side."""
    out = list(extra)
    for _, addr, cidr, _ in ops:
        size = len(addr)
        bits = size * 8
        net = int.from_bytes(mask(addr, cidr), "big")
        last = net | ((1 << (bits - cidr)) - 1)
        for value in (net, last, net - 1, last + 1, net | (last >> 1 & ~net)):
            out.append((value % (1 << bits)).to_bytes(size, "big"))
        out.append(addr)
    return out


def _run(ops: list[tuple[str, bytes, int, int]], probes: list[bytes]) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    ref = Reference()
    for name, addr, cidr, who in ops:
        peer = PEERS[who]
        if name == "insert":
            table.insert_raw(addr, cidr, peer)
            ref.insert(addr, cidr, peer)
        elif name == "remove":
            assert table.remove_raw(addr, cidr, peer) == ref.remove(addr, cidr, peer)
        else:
            table.remove_peer(peer)
            ref.remove_peer(peer)
    assert len(table) == len(ref.routes)
    assert_trie_invariants(table)
    for peer in PEERS:
        assert table.entries(peer) == ref.entries(peer)
    for probe in _probes(ops, probes):
        assert table.lookup(probe) is ref.lookup(probe), probe.hex()
    for peer in PEERS:
        table.remove_peer(peer)
    assert len(table) == 0
    assert_trie_empty(table)


@settings(max_examples=300, deadline=None)
@given(_ops(4), st.lists(_addresses(4), max_size=20))
def test_lpm_ipv4_matches_reference(ops: list[tuple[str, bytes, int, int]], probes: list[bytes]) -> None:
    _run(ops, probes)


@settings(max_examples=300, deadline=None)
@given(_ops(16), st.lists(_addresses(16), max_size=20))
def test_lpm_ipv6_matches_reference(ops: list[tuple[str, bytes, int, int]], probes: list[bytes]) -> None:
    _run(ops, probes)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_ops(4), _ops(16)), max_size=3))
def test_lpm_mixed_families(op_lists: list[list[tuple[str, bytes, int, int]]]) -> None:
    ops = [op for ops in op_lists for op in ops]
    _run(ops, [bytes(4), bytes(16), b"\xff" * 4, b"\xff" * 16])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_addresses(4), st.integers(0, 32)), max_size=40), st.randoms())
def test_removal_in_any_order_leaves_nothing(prefixes: list[tuple[bytes, int]], rnd: random.Random) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    ref = Reference()
    for addr, cidr in prefixes:
        table.insert_raw(addr, cidr, PEERS[0])
        ref.insert(addr, cidr, PEERS[0])
    keys = table.entries(PEERS[0])
    rnd.shuffle(keys)
    for addr, cidr in keys:
        assert table.remove_raw(addr, cidr, PEERS[0])
        ref.remove(addr, cidr, PEERS[0])
        for probe, _ in keys:
            assert table.lookup(probe) is ref.lookup(probe)
        assert_trie_invariants(table)
    assert_trie_empty(table)


# --- examples ---------------------------------------------------------------------------------------


def test_default_routes_are_per_family() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = PEERS[0], PEERS[1]
    table.insert("0.0.0.0/0", a)
    assert table.lookup(bytes([192, 0, 2, 1])) is a
    assert table.lookup(bytes(16)) is None
    table.insert("::/0", b)
    assert table.lookup(ipaddress.IPv6Address("2001:db8::1").packed) is b
    assert table.lookup(bytes([255] * 4)) is a
    assert table.remove("0.0.0.0/0", a)
    assert table.lookup(bytes([192, 0, 2, 1])) is None
    assert table.lookup(bytes([255] * 16)) is b


def test_overlapping_prefixes_of_different_peers() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b, c = PEERS
    table.insert("10.0.0.0/8", a)
    table.insert("10.1.0.0/16", b)
    table.insert("10.1.2.3/32", c)
    table.insert("10.1.2.0/25", a)

    def at(text: str) -> Peer | None:
        return table.lookup(ipaddress.ip_address(text).packed)

    assert at("10.9.9.9") is a
    assert at("10.1.9.9") is b
    assert at("10.1.2.3") is c
    assert at("10.1.2.4") is a
    assert at("10.1.2.200") is b
    assert at("11.0.0.0") is None
    table.remove_peer(a)
    assert at("10.9.9.9") is None
    assert at("10.1.2.4") is b
    assert at("10.1.2.3") is c
    assert table.networks(b) == ["10.1.0.0/16"]
    assert table.entries(a) == []


def test_remove_only_by_owner() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b, _ = PEERS
    table.insert("192.168.0.0/16", a)
    assert not table.remove("192.168.0.0/16", b)
    assert not table.remove("192.168.0.0/17", a)
    assert not table.remove("fd00::/16", a)
    assert len(table) == 1
    assert table.remove("192.168.255.255/16", a)  # host bits masked here too
    assert len(table) == 0
    assert not table.remove("192.168.0.0/16", a)
    assert_trie_empty(table)


def test_reinsert_moves_owner() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b, _ = PEERS
    table.insert("10.0.0.0/24", a)
    table.insert("10.0.1.0/24", a)
    table.insert("10.0.0.0/24", b)
    assert len(table) == 2
    assert table.lookup(bytes([10, 0, 0, 9])) is b
    assert table.networks(a) == ["10.0.1.0/24"]
    assert table.networks(b) == ["10.0.0.0/24"]
    table.insert("10.0.1.0/24", a)  # same owner again: nothing changes
    assert len(table) == 2 and table.networks(a) == ["10.0.1.0/24"]
    table.insert("10.0.1.7/32", a)
    table.insert("10.0.1.7/32", b)
    assert table.networks(b) == ["10.0.0.0/24", "10.0.1.7/32"]
    assert table.lookup(bytes([10, 0, 1, 7])) is b
    table.remove_peer(b)
    assert table.lookup(bytes([10, 0, 1, 7])) is a
    assert table.lookup(bytes([10, 0, 0, 9])) is None


def test_host_bits_are_masked() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a = PEERS[0]
    table.insert("10.0.0.1/24", a)
    table.insert(ipaddress.ip_network("fd00::1/64", strict=False), a)
    table.insert_raw(bytes([172, 16, 255, 255]), 12, a)
    table.insert("2001:db8:ffff::1/33", a)
    assert table.entries(a) == [
        (bytes([10, 0, 0, 0]), 24),
        (ipaddress.IPv6Address("fd00::").packed, 64),
        (bytes([172, 16, 0, 0]), 12),
        (ipaddress.IPv6Address("2001:db8:8000::").packed, 33),
    ]
    assert table.networks(a) == ["10.0.0.0/24", "fd00::/64", "172.16.0.0/12", "2001:db8:8000::/33"]
    assert table.lookup(bytes([172, 31, 1, 1])) is a
    assert table.lookup(bytes([172, 32, 0, 0])) is None


def test_identity_not_equality() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b, _ = PEERS
    assert a == b  # the stand-ins are all equal...
    table.insert("10.0.0.0/8", a)
    assert not table.remove("10.0.0.0/8", b)  # ...but only identity owns
    assert table.entries(b) == []
    table.remove_peer(b)
    assert table.lookup(bytes([10, 1, 2, 3])) is a


def test_lookup_accepts_any_buffer() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a = PEERS[0]
    table.insert("10.0.0.0/8", a)
    table.insert("10.0.0.1/32", PEERS[1])
    for buf in (bytes([10, 0, 0, 1]), bytearray([10, 0, 0, 1]), memoryview(bytearray([10, 0, 0, 1]))):
        assert table.lookup(buf) is PEERS[1]
    assert table.lookup(bytearray([10, 0, 0, 2])) is a


def test_bad_arguments() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a = PEERS[0]
    with pytest.raises(ValueError):
        table.insert_raw(bytes(5), 8, a)
    with pytest.raises(ValueError):
        table.insert_raw(bytes(4), 33, a)
    with pytest.raises(ValueError):
        table.insert_raw(bytes(16), -1, a)
    with pytest.raises(ValueError):
        table.insert_raw(bytes(4), 8, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.insert("10.0.0.0/33", a)
    with pytest.raises(ValueError):
        table.insert("not an address", a)
    with pytest.raises(ValueError):
        table.lookup(bytes(3))
    assert not table.remove_raw(bytes(5), 8, a)
    assert len(table) == 0


def test_clear() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("10.0.0.0/8", PEERS[0])
    table.insert("fd00::1/128", PEERS[1])
    table.clear()
    assert len(table) == 0
    assert table.lookup(bytes([10, 0, 0, 1])) is None
    assert table.entries(PEERS[0]) == [] and table.entries(PEERS[1]) == []
    assert_trie_empty(table)


# --- packet helpers -----------------------------------------------------------------------------


def _ipv4_packet(src: str, dst: str, payload: int = 8) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[12:16] = ipaddress.IPv4Address(src).packed
    header[16:20] = ipaddress.IPv4Address(dst).packed
    return bytes(header) + bytes(payload)


def _ipv6_packet(src: str, dst: str, payload: int = 8) -> bytes:
    header = bytearray(40)
    header[0] = 0x60
    header[8:24] = ipaddress.IPv6Address(src).packed
    header[24:40] = ipaddress.IPv6Address(dst).packed
    return bytes(header) + bytes(payload)


def _routed_table() -> AllowedIPs[Peer]:
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("10.0.0.0/24", PEERS[0])
    table.insert("10.0.1.0/24", PEERS[1])
    table.insert("fd00:a::/32", PEERS[0])
    table.insert("fd00:b::/32", PEERS[1])
    return table


@pytest.fixture
def routed() -> AllowedIPs[Peer]:
    return _routed_table()


@pytest.mark.parametrize("offset", [0, 16])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_lookup_src_dst(routed: AllowedIPs[Peer], offset: int, kind: type) -> None:
    a, b, _ = PEERS
    for packet in (_ipv4_packet("10.0.0.5", "10.0.1.5"), _ipv6_packet("fd00:a::5", "fd00:b::5")):
        buf = kind(bytearray(offset) + packet)
        assert routed.lookup_src(buf, offset) is a
        assert routed.lookup_dst(buf, offset) is b
    stray = kind(bytearray(offset) + _ipv4_packet("192.0.2.1", "198.51.100.1"))
    assert routed.lookup_src(stray, offset) is None
    assert routed.lookup_dst(stray, offset) is None


def test_packet_helpers_reject_short_and_garbage(routed: AllowedIPs[Peer]) -> None:
    v4 = _ipv4_packet("10.0.0.5", "10.0.1.5", payload=0)
    v6 = _ipv6_packet("fd00:a::5", "fd00:b::5", payload=0)
    for lookup in (routed.lookup_src, routed.lookup_dst):
        assert lookup(b"") is None
        assert lookup(v4[:19]) is None
        assert lookup(v6[:39]) is None  # long enough for IPv4, not for its own header
        assert lookup(v6[:20]) is None
        assert lookup(v4, 1) is None
        assert lookup(v4, 100) is None
        assert lookup(v4, -1) is None
        for version in (0, 1, 5, 7, 15):
            garbage = bytes([version << 4 | 5]) + v6[1:]
            assert lookup(garbage) is None
        assert lookup(v4) is not None and lookup(v6) is not None
        assert lookup(bytes(16) + v4, 16) is not None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 70))
def test_packet_helpers_never_raise(data: bytes, offset: int) -> None:
    routed = _routed_table()
    for lookup in (routed.lookup_src, routed.lookup_dst):
        result = lookup(data, offset)
        assert result is None or result in PEERS


# --- text parsing -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.ip_addresses(v=4).map(lambda a: (a, st.integers(0, 32))),
        st.ip_addresses(v=6).map(lambda a: (a, st.integers(0, 128))),
    ).flatmap(lambda pair: st.tuples(st.just(pair[0]), pair[1], st.booleans(), st.booleans()))
)
def test_parse_prefix_matches_ipaddress(
    case: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, bool, bool],
) -> None:
    address, cidr, exploded, with_length = case
    text = address.exploded if exploded else str(address)
    if with_length:
        text += f"/{cidr}"
    expected = ipaddress.ip_network(text, strict=False)
    assert parse_prefix(text) == (address.packed, expected.prefixlen)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1.2.3",
        "1.2.3.4.5",
        "256.0.0.0",
        "1.2.3.04",
        "1.2.3.4/33",
        "1.2.3.4/",
        "1.2.3.4/-1",
        "1.2.3.4/3 2",
        "::/129",
        ":::",
        "1::2::3",
        "1:2:3:4:5:6:7:8:9",
        "12345::",
        "g::",
        ":1::",
        "1:2:3:4:5:6:7:8::",
        "１.2.3.4",
        "1.2.3.4/１",
    ],
)
def test_parse_prefix_rejects_like_ipaddress(text: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_network(text, strict=False)
    with pytest.raises(ValueError):
        parse_prefix(text)


def test_parse_prefix_rejects_scope_id() -> None:
    with pytest.raises(ValueError):
        parse_prefix("fe80::1%eth0")
    with pytest.raises(ValueError):
        parse_prefix("fe80::1%eth0/64")


@pytest.mark.parametrize("text", ["::", "::1", "1::", "::ffff:1.2.3.4/96", "1:2:3:4:5:6:7::", "0.0.0.0/0"])
def test_parse_prefix_edge_forms(text: str) -> None:
    net = ipaddress.ip_network(text, strict=False)
    addr, cidr = parse_prefix(text)
    assert cidr == net.prefixlen
    assert mask(addr, cidr) == net.network_address.packed


# --- large tables (loaded, listed back; timing is measured in bench/, never asserted) ---------


@pytest.mark.parametrize("family", ["v4", "v6", "mixed"])
def test_large_table_on_one_peer(family: str) -> None:
    n = 130_000
    peer, other = PEERS[0], PEERS[1]
    v6_base = ipaddress.IPv6Address("fd00:1234::").packed[:12]
    keys: list[tuple[bytes, int]] = []
    for i in range(n):
        if family == "v4" or (family == "mixed" and i % 2):
            keys.append(((0x0A000000 + i).to_bytes(4, "big"), 32))
        else:
            keys.append((v6_base + i.to_bytes(4, "big"), 128))
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("10.0.0.0/8", other)
    table.insert("fd00::/8", other)
    for addr, cidr in keys:
        table.insert_raw(addr, cidr, peer)
    assert len(table) == n + 2
    assert table.entries(peer) == keys
    rnd = random.Random(7)
    for addr, _ in rnd.sample(keys, 2000):
        assert table.lookup(addr) is peer
    assert table.lookup(bytes([10, 255, 255, 255])) is other
    table.remove_peer(peer)
    assert len(table) == 2
    assert table.entries(peer) == []
    for addr, _ in rnd.sample(keys, 2000):
        assert table.lookup(addr) is other
