"""The engine's batch loops (tunnel._datapath and tunnel.datapath_ref) against simple references."""

from __future__ import annotations

import ipaddress
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.allowedips import AllowedIPs
from tunnel.datapath import load

from .wgpair import ipv4_packet, ipv6_packet


@pytest.fixture(params=["cython", "pure"])
def dp(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


def table_from(dp: ModuleType, allowed: AllowedIPs[int]) -> object:
    return dp.RouteTable([(addr, cidr, peer) for peer, entries in allowed.owners() for addr, cidr in entries])


prefixes4 = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 5))
prefixes6 = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128), st.integers(0, 5))


@pytest.mark.parametrize("impl", ["cython", "pure"])
@settings(max_examples=150, deadline=None)
@given(st.lists(prefixes4, max_size=40), st.lists(prefixes6, max_size=40), st.data())
def test_route_table_matches_allowed_ips(impl: str, p4: list, p6: list, data: st.DataObject) -> None:
    dp = load(impl)
    allowed: AllowedIPs[int] = AllowedIPs()
    for value, cidr, peer in p4:
        allowed.insert_raw(value.to_bytes(4, "big"), cidr, peer)
    for value, cidr, peer in p6:
        allowed.insert_raw(value.to_bytes(16, "big"), cidr, peer)
    table = table_from(dp, allowed)
    probes4 = [v for v, _, _ in p4] + [(v | ((1 << (32 - c)) - 1)) for v, c, _ in p4]
    probes4 += [max(0, v - 1) for v, _, _ in p4] + data.draw(st.lists(st.integers(0, 2**32 - 1), max_size=20))
    for value in probes4:
        expected = allowed.lookup(value.to_bytes(4, "big"))
        assert table.lookup(value.to_bytes(4, "big")) == (-1 if expected is None else expected)  # type: ignore[attr-defined]
    probes6 = [v for v, _, _ in p6] + [(v | ((1 << (128 - c)) - 1)) for v, c, _ in p6]
    probes6 += data.draw(st.lists(st.integers(0, 2**128 - 1), max_size=20))
    for value in probes6:
        expected = allowed.lookup(value.to_bytes(16, "big"))
        assert table.lookup(value.to_bytes(16, "big")) == (-1 if expected is None else expected)  # type: ignore[attr-defined]


def test_route_table_default_routes_and_empty(dp: ModuleType) -> None:
    empty = dp.RouteTable([])
    assert empty.lookup(bytes(4)) == -1 and empty.lookup(b"\xff" * 16) == -1
    table = dp.RouteTable([(bytes(4), 0, 1), (bytes([10, 0, 0, 0]), 8, 2), (bytes(16), 0, 3)])
    assert table.lookup(bytes([255, 255, 255, 255])) == 1
    assert table.lookup(bytes([10, 255, 0, 1])) == 2
    assert table.lookup(b"\xff" * 16) == 3


def _buf(packet: bytes, headroom: int = 16) -> bytearray:
    return bytearray(headroom) + bytearray(packet) + bytearray(64)


def test_route_batch(dp: ModuleType) -> None:
    table = dp.RouteTable([(bytes([10, 0, 0, 2]), 32, 0), (ipaddress.IPv6Address("fd00::2").packed, 128, 1)])
    packets = [
        ipv4_packet("10.0.0.1", "10.0.0.2"),
        ipv6_packet("fd00::1", "fd00::2"),
        ipv4_packet("10.0.0.1", "10.0.0.9"),
        ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 1500),
        b"",
        b"\x45" + b"\x00" * 10,  # too short to hold a destination
        ipv4_packet("10.0.0.1", "10.0.0.2"),
    ]
    groups, no_route, too_big = dp.route_batch(table, [_buf(p) for p in packets], [len(p) for p in packets], 16, 1420)
    assert groups == {0: [0, 6], 1: [1]}
    assert (no_route, too_big) == (3, 1)


def test_classify_batch(dp: ModuleType) -> None:
    datagrams = [
        b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + bytes(24),
        b"\x01\x00\x00\x00" + bytes(144),
        b"\x02\x00\x00\x00" + bytes(88),
        b"\x03\x00\x00\x00" + bytes(60),
        b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + bytes(40),
        b"\x04\x00\x00\x00" + bytes(20),  # short transport
        b"\x01\x00\x00\x00" + bytes(10),  # short initiation
        b"\x05\x00\x00\x00" + bytes(60),
        b"\x04\x01\x00\x00" + bytes(60),  # non-zero reserved bytes
        b"",
        b"\x04\x00\x00\x00" + (9).to_bytes(4, "little") + bytes(24),
    ]
    bufs = [bytearray(d) + bytearray(8) for d in datagrams]
    transport, handshakes, drops = dp.classify_batch(bufs, [len(d) for d in datagrams])
    assert transport == {7: [0, 4], 9: [10]}
    assert handshakes == [1, 2, 3]
    assert drops == {"invalid_size": 2, "invalid_type": 3}


def test_accept_batch(dp: ModuleType) -> None:
    table = dp.RouteTable([(bytes([10, 0, 0, 1]), 32, 5), (bytes([10, 0, 0, 7]), 32, 6)])
    good = ipv4_packet("10.0.0.1", "10.0.0.2", b"abc")
    spoofed = ipv4_packet("10.0.0.7", "10.0.0.2")
    bad_length = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2"))
    bad_length[2:4] = (999).to_bytes(2, "big")
    padded = good + bytes(16 - len(good) % 16)
    items = [(padded, 0), (b"", 0), (spoofed, 0), (bytes(bad_length), 0), (good, 2), (b"\x00" * 16, 0)]
    bufs = [_buf(p) for p, _ in items]
    packets, keepalives, invalid, disallowed = dp.accept_batch(
        table, 5, bufs, [len(p) for p, _ in items], [r for _, r in items], 16
    )
    assert [bytes(p) for p in packets] == [good]
    assert (keepalives, invalid, disallowed) == (1, 2, 1)


def test_inner_length(dp: ModuleType) -> None:
    packet = ipv6_packet("fd00::1", "fd00::2", b"q" * 5)
    assert dp.inner_length(_buf(packet + bytes(11)), 16, len(packet) + 11) == len(packet)
    assert dp.inner_length(_buf(b"\x60"), 16, 1) == -1


def test_buffers_must_be_bytearrays_and_long_enough() -> None:
    dp = load("cython")
    table = dp.RouteTable([])
    with pytest.raises(TypeError):
        dp.route_batch(table, [b"\x45" * 40], [20], 0, 1420)
    with pytest.raises(ValueError):
        dp.classify_batch([bytearray(4)], [100])
