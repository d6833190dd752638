"""The engine's batch loops (tunnel.wireguard._datapath and tunnel.wireguard.datapath_ref) against simple references."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import keys
from crypto.backend import HEADROOM, TransportCipher
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.allowedips import AllowedIPs
from tunnel.wireguard.constants import REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME
from tunnel.wireguard.datapath import load
from tunnel.wireguard.output import packet_buffer
from tunnel.wireguard.peer import Keypair, Peer

from .wgpair import Pair, Side, ipv4_packet, ipv6_packet


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


def test_accept_slots(dp: ModuleType) -> None:
    """The same checks as accept_batch, as per-slot verdicts and end offsets (what
    TunBatch.write_slots takes): a delivered packet's length becomes where it ends, padding off."""
    table = dp.RouteTable([(bytes([10, 0, 0, 1]), 32, 5), (bytes([10, 0, 0, 7]), 32, 6),
                           (bytes.fromhex("fd00" + "00" * 13 + "01"), 128, 5)])
    good = ipv4_packet("10.0.0.1", "10.0.0.2", b"abc")
    good6 = ipv6_packet("fd00::1", "fd00::2", b"defg")
    spoofed = ipv4_packet("10.0.0.7", "10.0.0.2")
    bad_length = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2"))
    bad_length[2:4] = (999).to_bytes(2, "big")
    padded = good + bytes(16 - len(good) % 16)
    items = [(padded, 0), (b"", 0), (spoofed, 0), (bytes(bad_length), 0), (good, 2), (b"\x00" * 16, 0),
             (good6 + bytes(7), 0)]
    bufs = [_buf(p) for p, _ in items]
    lengths = [len(p) for p, _ in items]
    results = [r for _, r in items]
    verdicts = bytearray(b"\x07" * len(items))
    counts = dp.accept_slots(table, 5, bufs, lengths, results, 16, verdicts)
    assert counts == (2, 1, 2, 1)  # delivered, keepalives, invalid, disallowed
    assert list(verdicts) == [0, 1, 1, 1, 1, 1, 0]
    assert lengths == [16 + len(good), 0, len(spoofed), len(bad_length), len(good), 16, 16 + len(good6)]
    assert [bytes(bufs[i][16 : lengths[i]]) for i in range(len(items)) if not verdicts[i]] == [good, good6]
    # accept_batch is the same decision, as views.
    packets, *rest = dp.accept_batch(table, 5, bufs[:1] + bufs[2:], [len(padded)] + [len(p) for p, _ in items[2:]],
                                     [0] + results[2:], 16)
    assert [bytes(p) for p in packets] == [good, good6] and rest == [0, 2, 1]
    with pytest.raises(ValueError):
        dp.accept_slots(table, 5, bufs, lengths, results, 16, bytearray(len(items) - 1))


def test_inner_length(dp: ModuleType) -> None:
    packet = ipv6_packet("fd00::1", "fd00::2", b"q" * 5)
    assert dp.inner_length(_buf(packet + bytes(11)), 16, len(packet) + 11) == len(packet)
    assert dp.inner_length(_buf(b"\x60"), 16, 1) == -1


def _bad_calls(dp: ModuleType) -> dict[str, tuple[type[Exception], Callable[[], object]]]:
    """Calls that break the argument contract (datapath_ref's docstring), each with the error
    the contract names. Every batch here is otherwise valid (and would be accepted)."""
    table = dp.RouteTable([(bytes([10, 0, 0, 2]), 32, 0)])
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    good = _buf(packet)
    n = len(packet)
    datagram = bytearray(b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + bytes(32))  # a transport message
    device = SimpleNamespace(identity=object(), mtu=1420, routes=lambda: table, peer_slots=[None], receivers={})
    no_table = SimpleNamespace(identity=object(), mtu=1420, routes=lambda: None, peer_slots=[None])

    def rlane(bufs: list[Any], lengths: list[int], sources: Any) -> object:
        return dp.receive_lane(device, bufs, lengths, sources, 0.0)

    def accept(bufs: Any = None, lengths: Any = None, results: Any = None, headroom: int = 16,
               verdicts: Any = None, t: Any = table) -> object:
        return dp.accept_slots(t, 0, [good] if bufs is None else bufs, [n] if lengths is None else lengths,
                               [0] if results is None else results, headroom,
                               bytearray(1) if verdicts is None else verdicts)

    return {
        # buffers: bytearrays only, long enough for headroom + length
        "route-bytes-buffer": (TypeError, lambda: dp.route_batch(table, [bytes(good)], [n], 16, 1420)),
        "route-memoryview-buffer": (TypeError, lambda: dp.route_batch(table, [memoryview(good)], [n], 16, 1420)),
        "route-short-buffer": (ValueError, lambda: dp.route_batch(table, [bytearray(20)], [n], 16, 1420)),
        "route-short-buffer-too-big": (ValueError, lambda: dp.route_batch(table, [bytearray(20)], [n], 16, 10)),
        "classify-short-buffer": (ValueError, lambda: dp.classify_batch([bytearray(4)], [100])),
        "classify-bytes-buffer": (TypeError, lambda: dp.classify_batch([bytes(datagram)], [len(datagram)])),
        "classify-later-bad-buffer": (TypeError, lambda: dp.classify_batch([datagram, b"x"], [40, 1])),
        "lane-bytes-buffer": (TypeError, lambda: dp.lane(device, [bytes(good)], [n], 16, 0.0)),
        "lane-short-buffer": (ValueError, lambda: dp.lane(device, [bytearray(30)], [n], 16, 0.0)),
        "receive-lane-bytes-buffer": (TypeError, lambda: rlane([bytes(datagram)], [40], [None])),
        "receive-lane-short-buffer": (ValueError, lambda: rlane([bytearray(8)], [40], [None])),
        "receive-lane-short-non-transport": (ValueError, lambda: rlane([bytearray(3)], [40], [None])),
        "accept-bytes-buffer": (TypeError, lambda: accept(bufs=[bytes(good)])),
        "accept-short-buffer": (ValueError, lambda: accept(bufs=[bytearray(20)])),
        "accept-short-buffer-failed-open": (ValueError, lambda: accept(bufs=[bytearray(20)], results=[1])),
        "accept-batch-bytes-buffer": (TypeError, lambda: dp.accept_batch(table, 0, [bytes(good)], [n], [0], 16)),
        # batch arguments: lists, lengths (results, sources, verdicts) covering bufs
        "route-tuple-bufs": (TypeError, lambda: dp.route_batch(table, (good,), [n], 16, 1420)),
        "route-tuple-lengths": (TypeError, lambda: dp.route_batch(table, [good], (n,), 16, 1420)),
        "route-none-bufs": (TypeError, lambda: dp.route_batch(table, None, [n], 16, 1420)),
        "route-short-lengths": (ValueError, lambda: dp.route_batch(table, [good, good], [n], 16, 1420)),
        "classify-short-lengths": (ValueError, lambda: dp.classify_batch([datagram, datagram], [40])),
        "classify-tuple-bufs": (TypeError, lambda: dp.classify_batch((datagram,), [40])),
        "lane-short-lengths": (ValueError, lambda: dp.lane(device, [good, good], [n], 16, 0.0)),
        "lane-tuple-bufs": (TypeError, lambda: dp.lane(device, (good,), [n], 16, 0.0)),
        "receive-lane-short-lengths": (ValueError, lambda: rlane([datagram] * 2, [40], [None] * 2)),
        "receive-lane-short-sources": (ValueError, lambda: rlane([datagram] * 2, [40] * 2, [None])),
        "receive-lane-tuple-sources": (TypeError, lambda: rlane([datagram], [40], (None,))),
        "accept-short-lengths": (ValueError, lambda: accept(bufs=[good, good], verdicts=bytearray(2))),
        "accept-short-results": (ValueError, lambda: accept(bufs=[good, good], lengths=[n, n], verdicts=bytearray(2))),
        "accept-short-verdicts": (ValueError, lambda: accept(bufs=[good, good], lengths=[n, n], results=[0, 0])),
        "accept-bytes-verdicts": (TypeError, lambda: accept(verdicts=bytes(1))),
        "accept-memoryview-verdicts": (TypeError, lambda: accept(verdicts=memoryview(bytearray(1)))),
        "accept-tuple-results": (TypeError, lambda: accept(results=(0,))),
        # a negative headroom would read before the buffer
        "route-negative-headroom": (ValueError, lambda: dp.route_batch(table, [good], [n], -16, 1420)),
        "lane-negative-headroom": (ValueError, lambda: dp.lane(device, [good], [n], -16, 0.0)),
        "accept-negative-headroom": (ValueError, lambda: accept(headroom=-16)),
        "accept-batch-negative-headroom": (ValueError, lambda: dp.accept_batch(table, 0, [good], [n], [0], -16)),
        # the table: this module's RouteTable
        "route-no-table": (TypeError, lambda: dp.route_batch(None, [good], [n], 16, 1420)),
        "accept-no-table": (TypeError, lambda: accept(t=None)),
        "accept-batch-no-table": (TypeError, lambda: dp.accept_batch(None, 0, [good], [n], [0], 16)),
        "lane-no-table": (TypeError, lambda: dp.lane(no_table, [good], [n], 16, 0.0)),
        # addresses and single packets: bytes-like objects only
        "lookup-int": (TypeError, lambda: table.lookup(4)),
        "lookup-list": (TypeError, lambda: table.lookup([10, 0, 0, 2])),
        "lookup-str": (TypeError, lambda: table.lookup("abcd")),
        "lookup-packet-list": (TypeError, lambda: table.lookup_packet(list(packet), 0, n, False)),
        "inner-length-int": (TypeError, lambda: dp.inner_length(20, 0, 20)),
    }


BAD_CALLS = sorted(_bad_calls(load("pure")))


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_arguments_are_the_same_error_in_both_twins(dp: ModuleType, case: str) -> None:
    """Same API, same errors: each call that breaks the argument contract raises the error the
    contract names, in both twins (before this test the pure twin took a bytes buffer and a
    buffer shorter than its length; the Cython twin read past a short ``lengths`` list)."""
    error, call = _bad_calls(dp)[case]
    with pytest.raises(error):
        call()


def test_bad_argument_calls_are_valid_once_fixed(dp: ModuleType) -> None:
    """The calls above break one rule each: the same calls with good arguments go through."""
    table = dp.RouteTable([(bytes([10, 0, 0, 2]), 32, 0)])
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    assert dp.route_batch(table, [_buf(packet)], [len(packet)], 16, 1420) == ({0: [0]}, 0, 0)
    assert dp.classify_batch([bytearray(b"\x04\x00\x00\x00" + (7).to_bytes(4, "little") + bytes(32))], [40]) == (
        {7: [0]}, [], {})
    verdicts = bytearray(1)
    assert dp.accept_slots(table, 0, [_buf(packet)], [len(packet)], [0], 16, verdicts) == (0, 0, 0, 1)
    assert table.lookup(bytearray([10, 0, 0, 2])) == 0 and table.lookup(memoryview(bytes([10, 0, 0, 2]))) == 0


@pytest.mark.parametrize(("offset", "size"), [(0, 20), (0, 200), (-3, 20), (2, -1), (5, 0), (0, 3)])
def test_single_packet_helpers_cut_as_a_slice_does(dp: ModuleType, offset: int, size: int) -> None:
    """inner_length and lookup_packet look at ``buf[offset:offset+size]`` as a Python slice cuts
    it (a size past the end is cut short, a negative offset counts from the end), never past it."""
    packet = bytearray(ipv4_packet("10.0.0.1", "10.0.0.2"))
    table = dp.RouteTable([(bytes([10, 0, 0, 2]), 32, 3), (bytes([10, 0, 0, 1]), 32, 4)])
    for buf in (packet, bytes(packet[:10]), bytes(packet) + b"\x00" * 5):
        cut = bytes(buf[offset : offset + size])
        whole = len(cut) >= 20 and cut[0] >> 4 == 4
        expected = len(packet) if whole and len(packet) <= len(cut) else -1
        assert dp.inner_length(buf, offset, size) == expected
        assert table.lookup_packet(buf, offset, size, False) == (3 if whole else -1)
        assert table.lookup_packet(buf, offset, size, True) == (4 if whole else -1)


# ------------------------------------------------------------------------------------ lane (outbound)


def tun_batch(side: Side, *packets: bytes) -> tuple[list[bytearray], list[int]]:
    """A batch as read from the TUN: packet i at bufs[i][HEADROOM:HEADROOM+lengths[i]]."""
    return [packet_buffer(p, side.device.mtu) for p in packets], [len(p) for p in packets]


def a_to_b(count: int = 1, size: int = 20) -> list[bytes]:
    return [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([k]) * size) for k in range(count)]


def counter_setter(pair: Pair, keypair: Keypair) -> Callable[[int], None]:
    """Sets the session's send counter (its cipher rebuilt from the same keys)."""
    send, receive = pair.session_keys[id(keypair.cipher)]
    kind = type(keypair.cipher)

    def set_counter(counter: int) -> None:
        keypair.cipher = kind(send, receive, keypair.remote_index, send_counter=counter)
        assert keypair.cipher.send_counter == counter

    return set_counter


def third_peer(pair: Pair, with_session: bool = True) -> Peer:
    """A second peer of a (10.0.0.3/32, fd00::3/128) with an endpoint and, if asked, a session
    of its own (a real Keypair, as steady as a's session with b)."""
    device = pair.a.device
    peer = device.add_peer(keys.public_from_private(keys.generate_private()))
    device.allowed_ips.insert("10.0.0.3/32", peer)
    device.allowed_ips.insert("fd00::3/128", peer)
    peer.endpoint = Endpoint("192.0.2.3", 51822)
    if with_session:
        cipher = TransportCipher(bytes(range(32)), bytes(range(1, 33)), 777)
        peer.current = Keypair(peer, cipher, pair.now, True, 4242, 777)
    return peer


def test_lane_granted_in_steady_state_and_changes_nothing(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    device, peer = pair.a.device, pair.peer_ab
    keypair = peer.current
    assert keypair is not None and keypair.is_initiator and not peer.staged and peer.endpoint is not None
    packets = a_to_b(3) + [ipv6_packet("fd00::1", "fd00::2")]  # both families, one peer
    bufs, lengths = tun_batch(pair.a, *packets)
    before = [bytes(b) for b in bufs]
    counter = keypair.cipher.send_counter
    lane = dp.lane(device, bufs, lengths, HEADROOM, pair.now)
    assert lane is not None and lane[0] is peer and lane[1] is keypair
    assert [bytes(b) for b in bufs] == before and lengths == [len(p) for p in packets]
    assert keypair.cipher.send_counter == counter and peer.current is keypair and not device.drops
    assert device.lane(bufs, lengths, pair.now) == lane  # Device.lane is this rule
    assert dp.lane(device, [], [], HEADROOM, pair.now) is None  # an empty batch


def test_lane_refused_before_any_session(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    assert pair.peer_ab.endpoint is not None and pair.peer_ab.current is None
    assert dp.lane(pair.a.device, *tun_batch(pair.a, *a_to_b()), HEADROOM, pair.now) is None


def test_lane_mtu_boundary(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    mtu = pair.a.device.mtu
    fits = ipv4_packet("10.0.0.1", "10.0.0.2", b"m" * (mtu - 20))
    over = ipv4_packet("10.0.0.1", "10.0.0.2", b"m" * (mtu - 19))
    assert len(fits) == mtu
    assert dp.lane(pair.a.device, *tun_batch(pair.a, fits, *a_to_b(2)), HEADROOM, pair.now) is not None
    assert dp.lane(pair.a.device, *tun_batch(pair.a, *a_to_b(2), over), HEADROOM, pair.now) is None
    assert dp.lane(pair.a.device, *tun_batch(pair.a, over), HEADROOM, pair.now) is None


def test_lane_one_peer_only_and_every_packet_routed(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    c = third_peer(pair)
    device = pair.a.device
    to_b = a_to_b(2)
    to_c = [ipv4_packet("10.0.0.1", "10.0.0.3"), ipv6_packet("fd00::1", "fd00::3")]
    nowhere = ipv4_packet("10.0.0.1", "10.0.0.99")
    # Each peer alone is granted (so a refusal below is the mix, not the peer)...
    assert dp.lane(device, *tun_batch(pair.a, *to_b), HEADROOM, pair.now)[0] is pair.peer_ab
    lane_c = dp.lane(device, *tun_batch(pair.a, *to_c), HEADROOM, pair.now)
    assert lane_c is not None and lane_c[0] is c and lane_c[1] is c.current
    # ...any mix is not, wherever the odd packet is.
    for batch in ([*to_b, to_c[0]], [to_c[1], *to_b], [to_b[0], to_c[0], to_b[1]]):
        assert dp.lane(device, *tun_batch(pair.a, *batch), HEADROOM, pair.now) is None
    for batch in ([*to_b, nowhere], [nowhere, *to_b], [nowhere]):
        assert dp.lane(device, *tun_batch(pair.a, *batch), HEADROOM, pair.now) is None
    # A packet too short to have a destination routes nowhere.
    assert dp.lane(device, *tun_batch(pair.a, *to_b, to_b[0][:19]), HEADROOM, pair.now) is None


def test_lane_needs_the_identity(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    device = pair.a.device
    batch = tun_batch(pair.a, *a_to_b(2))
    identity = device.identity
    device.identity = None  # the rule alone: the session is still there
    assert dp.lane(device, *batch, HEADROOM, pair.now) is None
    device.identity = identity
    assert dp.lane(device, *batch, HEADROOM, pair.now) is not None
    device.set_private_key(None)  # the real way (it drops the sessions too)
    assert dp.lane(device, *batch, HEADROOM, pair.now) is None


def test_lane_needs_an_endpoint_and_nothing_staged(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    device, peer = pair.a.device, pair.peer_ab
    batch = tun_batch(pair.a, *a_to_b(2))
    assert dp.lane(device, *batch, HEADROOM, pair.now) is not None
    peer.staged.append(a_to_b()[0])
    assert dp.lane(device, *batch, HEADROOM, pair.now) is None
    peer.staged.clear()
    endpoint, peer.endpoint = peer.endpoint, None
    assert dp.lane(device, *batch, HEADROOM, pair.now) is None
    peer.endpoint = endpoint
    current, peer.current = peer.current, None
    assert dp.lane(device, *batch, HEADROOM, pair.now) is None
    peer.current = current
    assert dp.lane(device, *batch, HEADROOM, pair.now) is not None


def test_lane_age_limits_initiator_and_responder(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    mine = pair.peer_ab.current  # a initiated
    theirs = pair.peer_ba.current  # b responded; confirmed by a's first data packet
    assert mine is not None and mine.is_initiator
    assert theirs is not None and not theirs.is_initiator and pair.peer_ba.next is None
    a_batch = tun_batch(pair.a, *a_to_b(2))
    b_batch = tun_batch(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"), ipv6_packet("fd00::2", "fd00::1"))

    def a_lane(age: float) -> object:
        return dp.lane(pair.a.device, *a_batch, HEADROOM, mine.created + age)

    def b_lane(age: float) -> object:
        return dp.lane(pair.b.device, *b_batch, HEADROOM, theirs.created + age)

    assert a_lane(0) is not None and a_lane(REKEY_AFTER_TIME - 0.001) is not None
    assert a_lane(REKEY_AFTER_TIME) is None and a_lane(REKEY_AFTER_TIME + 30) is None
    assert b_lane(0) is not None and b_lane(REKEY_AFTER_TIME) is not None  # the rekey age is the initiator's
    assert b_lane(REJECT_AFTER_TIME - 0.001) is not None
    assert b_lane(REJECT_AFTER_TIME) is None and b_lane(REJECT_AFTER_TIME + 1) is None


def test_lane_counter_limit(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.handshake()
    keypair = pair.peer_ab.current
    assert keypair is not None
    three = tun_batch(pair.a, *a_to_b(3))
    two = tun_batch(pair.a, *a_to_b(2))
    set_counter = counter_setter(pair, keypair)
    # counter + batch size must stay under REKEY_AFTER_MESSAGES
    set_counter(REKEY_AFTER_MESSAGES - 4)
    assert dp.lane(pair.a.device, *three, HEADROOM, pair.now) is not None  # 2^60 - 1 after it
    set_counter(REKEY_AFTER_MESSAGES - 3)
    assert dp.lane(pair.a.device, *three, HEADROOM, pair.now) is None  # would reach 2^60
    assert dp.lane(pair.a.device, *two, HEADROOM, pair.now) is not None
    set_counter(REKEY_AFTER_MESSAGES)
    assert dp.lane(pair.a.device, *tun_batch(pair.a, *a_to_b(1)), HEADROOM, pair.now) is None
    set_counter(0)
    assert dp.lane(pair.a.device, *three, HEADROOM, pair.now) is not None
    # the responder's counter limit is the same
    theirs = pair.peer_ba.current
    assert theirs is not None and not theirs.is_initiator
    b_batch = tun_batch(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    set_theirs = counter_setter(pair, theirs)
    set_theirs(REKEY_AFTER_MESSAGES - 2)
    assert dp.lane(pair.b.device, *b_batch, HEADROOM, pair.now) is not None
    set_theirs(REKEY_AFTER_MESSAGES - 1)
    assert dp.lane(pair.b.device, *b_batch, HEADROOM, pair.now) is None


def test_lane_responder_needs_its_session_confirmed(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    first_data = unconfirmed_handshake(pair)
    b_batch = tun_batch(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    assert pair.peer_ba.next is not None and pair.peer_ba.current is None
    assert dp.lane(pair.b.device, *b_batch, HEADROOM, pair.now) is None
    pair.deliver(pair.b, first_data, pair.a.endpoint)
    assert pair.peer_ba.current is not None and pair.peer_ba.next is None
    assert dp.lane(pair.b.device, *b_batch, HEADROOM, pair.now) == (pair.peer_ba, pair.peer_ba.current)


# ------------------------------------------------------------------------------------ receive_lane


def unconfirmed_handshake(pair: Pair) -> list[bytes]:
    """Run the handshake by hand and keep a's first data datagrams from b: b's keypair is still
    ``peer.next`` (the responder waits for the initiator's first message). Returns them."""
    out = pair.a.device.send_batch(*tun_batch(pair.a, *a_to_b()), pair.now)
    response = pair.deliver(pair.b, [bytes(d) for d, _ in out.datagrams], pair.a.endpoint)
    data = pair.deliver(pair.a, [bytes(d) for d, _ in response.datagrams], pair.b.endpoint)
    datagrams = [bytes(d) for d, _ in data.datagrams]
    assert datagrams and all(d[0] == 4 for d in datagrams)
    return datagrams


def sealed(pair: Pair, side: Side, *packets: bytes) -> list[bytes]:
    """``side``'s transport datagrams for these packets (not delivered)."""
    out = side.device.send_batch(*tun_batch(side, *packets), pair.now)
    datagrams = [bytes(d) for d, _ in out.datagrams]
    assert len(datagrams) == len(packets) and all(d[0] == 4 for d in datagrams)
    return datagrams


def transport(index: int, size: int = 32, head: bytes = b"\x04\x00\x00\x00") -> bytes:
    """A transport-shaped datagram (header only matters to the lane rule)."""
    return head + index.to_bytes(4, "little") + bytes([0xAB]) * (size - 8)


def rx_batch(datagrams: list[bytes], source: object) -> tuple[list[bytearray], list[int], list[Any]]:
    return [bytearray(d) + bytearray(16) for d in datagrams], [len(d) for d in datagrams], [source] * len(datagrams)


def confirmed(dp: ModuleType) -> Pair:
    pair = Pair(datapath=dp)
    pair.handshake()
    assert pair.peer_ba.current is not None and pair.peer_ba.next is None
    assert pair.peer_ba.endpoint is pair.a.endpoint  # b learned a by roaming, this very object
    return pair


def test_receive_lane_granted_for_a_confirmed_session_and_changes_nothing(dp: ModuleType) -> None:
    pair = confirmed(dp)
    device = pair.b.device
    keypair = pair.peer_ba.current
    datagrams = sealed(pair, pair.a, *a_to_b(3), ipv6_packet("fd00::1", "fd00::2"))
    bufs, lengths, sources = rx_batch(datagrams, pair.peer_ba.endpoint)
    before = [bytes(b) for b in bufs]
    assert dp.receive_lane(device, bufs, lengths, sources, pair.now) is keypair
    assert [bytes(b) for b in bufs] == before and not device.drops and pair.peer_ba.current is keypair
    # and the general path agrees that nothing but opening and delivering was needed
    out = device.receive_batch(bufs, lengths, sources, pair.now)
    assert len(out.packets) == 4 and not device.drops
    assert dp.receive_lane(device, [], [], [], pair.now) is None  # an empty batch


def test_receive_lane_refused_until_the_responder_confirms(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    first_data = unconfirmed_handshake(pair)
    peer, device = pair.peer_ba, pair.b.device
    keypair = peer.next
    assert keypair is not None and peer.current is None
    assert device.receivers[keypair.local_index] is keypair
    assert int.from_bytes(first_data[0][4:8], "little") == keypair.local_index
    assert dp.receive_lane(device, *rx_batch(first_data, peer.endpoint), pair.now) is None
    pair.deliver(pair.b, first_data, pair.a.endpoint)  # the general path confirms it
    assert peer.current is keypair and peer.next is None
    more = sealed(pair, pair.a, *a_to_b(2))
    assert dp.receive_lane(device, *rx_batch(more, peer.endpoint), pair.now) is keypair


def test_receive_lane_refused_for_a_handshake_in_progress(dp: ModuleType) -> None:
    pair = Pair(datapath=dp)
    pair.a.device.send_batch(*tun_batch(pair.a, *a_to_b()), pair.now)  # a's initiation, unanswered
    index = pair.peer_ab.handshake.local_index
    assert isinstance(pair.a.device.receivers.get(index), Peer)
    bufs, lengths, sources = rx_batch([transport(index)], pair.peer_ab.endpoint)
    assert dp.receive_lane(pair.a.device, bufs, lengths, sources, pair.now) is None
    # an index nobody has
    unknown = max(pair.a.device.receivers) + 1
    assert dp.receive_lane(pair.a.device, *rx_batch([transport(unknown)], pair.peer_ab.endpoint), pair.now) is None


def test_receive_lane_message_shape(dp: ModuleType) -> None:
    pair = confirmed(dp)
    device, keypair = pair.b.device, pair.peer_ba.current
    assert keypair is not None
    index = keypair.local_index
    assert index.to_bytes(4, "little") != index.to_bytes(4, "big")  # so byte order matters
    source = pair.peer_ba.endpoint

    def lane(*datagrams: bytes) -> object:
        return dp.receive_lane(device, *rx_batch(list(datagrams), source), pair.now)

    good = transport(index, 48)
    assert lane(good, transport(index, 32)) is keypair  # 32 bytes: a keepalive's size, enough
    assert lane(good, transport(index, 31)) is None
    assert lane(transport(index, 31), good) is None
    for head in (b"\x01\x00\x00\x00", b"\x05\x00\x00\x00", b"\x04\x01\x00\x00", b"\x04\x00\x01\x00",
                 b"\x04\x00\x00\x01"):
        assert lane(good, transport(index, 48, head)) is None, head
        assert lane(transport(index, 48, head)) is None, head
    # a real handshake message in the batch
    assert lane(good, b"\x01\x00\x00\x00" + index.to_bytes(4, "little") + bytes(140)) is None
    # one receiver index for the whole batch, wherever the odd one is
    other = index + 1
    assert other not in device.receivers
    assert lane(good, transport(other)) is None and lane(transport(other), good) is None
    assert lane(good, good, transport(other), good) is None
    # the length is lengths[i], not the buffer's: a short datagram in a long buffer is refused
    bufs, lengths, sources = rx_batch([good], source)
    assert dp.receive_lane(device, bufs, [31], sources, pair.now) is None
    assert dp.receive_lane(device, bufs, lengths, sources, pair.now) is keypair


@pytest.mark.parametrize("index", [0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_receive_lane_whole_index_range(dp: ModuleType, index: int) -> None:
    pair = confirmed(dp)
    device, keypair = pair.b.device, pair.peer_ba.current
    assert keypair is not None
    device.receivers[index] = keypair
    source = pair.peer_ba.endpoint
    assert dp.receive_lane(device, *rx_batch([transport(index)] * 2, source), pair.now) is keypair
    neighbour = (index + 1) % (1 << 32)
    assert neighbour not in device.receivers
    assert dp.receive_lane(device, *rx_batch([transport(index), transport(neighbour)], source), pair.now) is None


def test_receive_lane_age_limit(dp: ModuleType) -> None:
    pair = confirmed(dp)
    theirs = pair.peer_ba.current  # b's, the responder's
    mine = pair.peer_ab.current  # a's, the initiator's
    assert theirs is not None and mine is not None and mine.is_initiator
    to_b = rx_batch(sealed(pair, pair.a, *a_to_b(2)), pair.peer_ba.endpoint)
    to_a = rx_batch(sealed(pair, pair.b, ipv4_packet("10.0.0.2", "10.0.0.1")), pair.peer_ab.endpoint)
    assert pair.peer_ab.endpoint is pair.b.endpoint

    def at(side: Side, batch: tuple[Any, ...], when: float) -> object:
        return dp.receive_lane(side.device, *batch, when)

    assert at(pair.b, to_b, theirs.created + REJECT_AFTER_TIME - 0.001) is theirs
    assert at(pair.b, to_b, theirs.created + REJECT_AFTER_TIME) is None
    # inbound there is no rekey age, even for the initiator
    assert at(pair.a, to_a, mine.created + REKEY_AFTER_TIME + 10) is mine
    assert at(pair.a, to_a, mine.created + REJECT_AFTER_TIME - 0.001) is mine
    assert at(pair.a, to_a, mine.created + REJECT_AFTER_TIME) is None


def test_receive_lane_sources_must_be_the_current_endpoint(dp: ModuleType) -> None:
    """Every source is the peer's current endpoint: the same object or an equal one (all of
    ip, port and local); any other source is a roam the general path must record first."""
    pair = confirmed(dp)
    device, peer = pair.b.device, pair.peer_ba
    endpoint = peer.endpoint
    assert endpoint is not None
    twin = Endpoint(endpoint.ip, endpoint.port, endpoint.local)
    assert twin == endpoint and twin is not endpoint
    datagrams = sealed(pair, pair.a, *a_to_b(3))
    bufs, lengths, _ = rx_batch(datagrams, endpoint)
    assert dp.receive_lane(device, bufs, lengths, [endpoint] * 3, pair.now) is peer.current
    assert dp.receive_lane(device, bufs, lengths, [twin, endpoint, twin], pair.now) is peer.current
    others = [
        Endpoint(endpoint.ip, endpoint.port + 1, endpoint.local),
        Endpoint("198.51.100.9", endpoint.port, endpoint.local),
        Endpoint(endpoint.ip, endpoint.port, "192.0.2.200"),  # same remote, another local address
    ]
    for other in others:
        for odd in range(3):
            sources: list[Any] = [endpoint] * 3
            sources[odd] = other
            assert dp.receive_lane(device, bufs, lengths, sources, pair.now) is None, (other, odd)
    # the general path records the roaming; then the new address is the one granted
    roamed = others[1]
    device.receive_batch(bufs, lengths, [roamed] * 3, pair.now)
    assert peer.endpoint is roamed
    more = rx_batch(sealed(pair, pair.a, *a_to_b(2)), roamed)
    assert dp.receive_lane(device, *more, pair.now) is peer.current
    assert dp.receive_lane(device, *rx_batch(sealed(pair, pair.a, *a_to_b(1)), endpoint), pair.now) is None


# ------------------------------------------------------------------------------------ lane rules: property


def lane_oracle(identity: bool, mtu: int, sizes: list[int], slots: list[int], peers: list[dict[str, Any]],
                now: float) -> int | None:
    """The slot the outbound lane should grant, written from the rules as stated."""
    if not identity or not sizes:
        return None
    if any(size > mtu for size in sizes) or any(s < 0 for s in slots) or len(set(slots)) != 1:
        return None
    state = peers[slots[0]]
    if state["staged"] or not state["endpoint"] or not state["keypair"]:
        return None
    age = now - state["created"]
    if age >= REJECT_AFTER_TIME or (state["initiator"] and age >= REKEY_AFTER_TIME):
        return None
    if state["counter"] + len(sizes) >= REKEY_AFTER_MESSAGES:
        return None
    return slots[0]


DESTS = ["10.0.0.2", "10.0.0.3", "10.0.0.99"]  # slot 0, slot 1, no route
AGES = [0.0, REKEY_AFTER_TIME - 1e-6, REKEY_AFTER_TIME, REKEY_AFTER_TIME + 1, REJECT_AFTER_TIME - 1e-6,
        REJECT_AFTER_TIME, 1e9]
peer_states = st.fixed_dictionaries({
    "staged": st.booleans(), "endpoint": st.booleans(), "keypair": st.booleans(), "initiator": st.booleans(),
    "created": st.sampled_from([0.0, 500.0]),
    "counter": st.sampled_from([0, REKEY_AFTER_MESSAGES - 70, REKEY_AFTER_MESSAGES - 3, REKEY_AFTER_MESSAGES - 2,
                                REKEY_AFTER_MESSAGES - 1, REKEY_AFTER_MESSAGES]),
})


@settings(max_examples=300, deadline=None)
@given(identity=st.booleans(), packets=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60)), max_size=6),
       peers=st.lists(peer_states, min_size=2, max_size=2), age=st.sampled_from(AGES))
def test_lane_rules_both_twins_match_the_stated_rules(identity: bool, packets: list[tuple[int, int]],
                                                      peers: list[dict[str, Any]], age: float) -> None:
    """Both twins on stand-in objects (the rule only reads attributes) against the rules."""
    mtu = 80
    datagrams = [ipv4_packet("10.0.0.1", DESTS[dest], b"p" * extra) for dest, extra in packets]
    target = packets[0][0] if packets and packets[0][0] < 2 else 0
    now = peers[target]["created"] + age  # the age of the first packet's peer's keypair
    expected = lane_oracle(identity, mtu, [len(d) for d in datagrams],
                           [dest if dest < 2 else -1 for dest, _ in packets], peers, now)
    for impl in ("cython", "pure"):
        dp = load(impl)
        table = dp.RouteTable([(bytes([10, 0, 0, 2]), 32, 0), (bytes([10, 0, 0, 3]), 32, 1)])
        fakes = []
        for state in peers:
            keypair = SimpleNamespace(created=state["created"], is_initiator=state["initiator"],
                                      cipher=SimpleNamespace(send_counter=state["counter"]))
            fakes.append(SimpleNamespace(staged=[b"s"] if state["staged"] else [],
                                         endpoint=Endpoint("192.0.2.9", 9) if state["endpoint"] else None,
                                         current=keypair if state["keypair"] else None))
        device = SimpleNamespace(identity=object() if identity else None, mtu=mtu, routes=lambda t=table: t,
                                 peer_slots=fakes)
        bufs = [bytearray(8) + bytearray(d) + bytearray(8) for d in datagrams]
        got = dp.lane(device, bufs, [len(d) for d in datagrams], 8, now)
        if expected is None:
            assert got is None, impl
        else:
            assert got is not None and got[0] is fakes[expected] and got[1] is fakes[expected].current, impl


@settings(max_examples=300, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.sampled_from(["ok", "short", "type", "reserved", "other_index"]),
                              st.sampled_from(["same", "twin", "other"])), max_size=5),
    entry=st.sampled_from(["keypair", "peer", "none"]),
    unconfirmed=st.booleans(),
    age=st.sampled_from([0.0, REKEY_AFTER_TIME, REJECT_AFTER_TIME - 1e-6, REJECT_AFTER_TIME, 1e9]),
)
def test_receive_lane_rules_both_twins_match_the_stated_rules(shapes: list[tuple[str, str]], entry: str,
                                                              unconfirmed: bool, age: float) -> None:
    """Both twins on a real Keypair whose peer is a stand-in, against the rules."""
    index = 0x01020304
    endpoint = Endpoint("192.0.2.1", 51820)
    peer = SimpleNamespace(endpoint=endpoint, next=None)
    keypair = Keypair(peer, TransportCipher(bytes(32), bytes(32), 1), 100.0, False, index, 1)  # type: ignore[arg-type]
    if unconfirmed:
        peer.next = keypair
    receivers: dict[int, Any] = {index + 1: keypair}  # the neighbour index names it too
    if entry == "keypair":
        receivers[index] = keypair
    elif entry == "peer":
        receivers[index] = Peer(b"k" * 32, None, None)  # type: ignore[arg-type]
    device = SimpleNamespace(receivers=receivers)
    datagrams: list[bytes] = []
    sources: list[Any] = []
    for shape, source in shapes:
        datagrams.append({
            "ok": transport(index, 40), "short": transport(index, 31), "type": transport(index, 40, b"\x02\0\0\0"),
            "reserved": transport(index, 40, b"\x04\0\0\x80"), "other_index": transport(index + 1, 40),
        }[shape])
        sources.append({"same": endpoint, "twin": Endpoint("192.0.2.1", 51820),
                        "other": Endpoint("192.0.2.1", 51820, "192.0.2.7")}[source])
    # the rules as stated: transport-shaped, one index naming a usable keypair, current sources
    indices = {index + 1 if shape == "other_index" else index for shape, _ in shapes}
    named = receivers.get(indices.pop()) if len(indices) == 1 else None
    expected = (bool(shapes) and all(shape in ("ok", "other_index") for shape, _ in shapes)
                and named is keypair and all(source in ("same", "twin") for _, source in shapes)
                and not unconfirmed and age < REJECT_AFTER_TIME)
    for impl in ("cython", "pure"):
        dp = load(impl)
        bufs = [bytearray(d) + bytearray(4) for d in datagrams]
        got = dp.receive_lane(device, bufs, [len(d) for d in datagrams], sources, 100.0 + age)
        assert got is (keypair if expected else None), impl
