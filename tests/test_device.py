"""Two WireGuard engines in memory with a fake clock: the protocol in depth.

Every test runs against both transport implementations (Cython and the pure-Python reference).
"""

from __future__ import annotations

from types import ModuleType

import pytest

from crypto.backend import load as load_backend
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.constants import (
    INITIATION_SIZE,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_HANDSHAKES_PER_SECOND,
)
from tunnel.wireguard.datapath import load as load_datapath
from tunnel.wireguard.messages import Drop
from tunnel.wireguard.output import packet_buffer

from .wgpair import Pair, ipv4_packet, ipv6_packet


@pytest.fixture
def pair(backend: ModuleType) -> Pair:
    """Two engines using the implementation under test (see conftest ``backend``): the Cython
    transport with the Cython batch loops, or the pure-Python references of both."""
    native = backend.__name__ == "crypto._transport"
    return Pair(cipher=backend.TransportCipher, datapath=load_datapath("cython" if native else "pure"))


def kinds(sent: list[tuple[bytes, Endpoint]]) -> list[int]:
    return [d[0] for d, _ in sent]


def test_handshake_then_data_both_ways_ipv4_and_ipv6(pair: Pair) -> None:
    p4 = ipv4_packet("10.0.0.1", "10.0.0.2", b"hello over v4")
    pair.send(pair.a, p4)
    assert kinds(pair.a.sent)[:2] == [1, 4]  # initiation, then the staged packet
    assert kinds(pair.b.sent) == [2]
    assert pair.b.delivered == [p4]
    # b learned a's endpoint from the initiation (roaming) and now replies over v6.
    assert pair.peer_ba.endpoint == pair.a.endpoint
    p6 = ipv6_packet("fd00::2", "fd00::1", b"hello over v6")
    pair.send(pair.b, p6)
    assert pair.a.delivered == [p6]
    p6b = ipv6_packet("fd00::1", "fd00::2", b"v6 the other way")
    p4b = ipv4_packet("10.0.0.2", "10.0.0.1", b"v4 the other way")
    pair.send(pair.a, p6b)
    pair.send(pair.b, p4b)
    assert pair.b.delivered[-1] == p6b and pair.a.delivered[-1] == p4b
    assert pair.peer_ab.last_handshake_wall == pytest.approx(1_700_000_000.0)
    assert pair.peer_ab.tx_bytes == sum(len(d) for d, _ in pair.a.sent)
    assert pair.peer_ba.rx_bytes == pair.peer_ab.tx_bytes
    assert not pair.a.device.drops and not pair.b.device.drops


def test_padding_is_stripped_and_wire_sizes_are_padded(pair: Pair) -> None:
    pair.handshake()
    packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * 13)  # 33 bytes -> padded to 48
    pair.send(pair.a, packet)
    assert len(pair.a.sent[-1][0]) == 16 + 48 + 16
    assert pair.b.delivered[-1] == packet


def test_passive_keepalive_after_data_received(pair: Pair) -> None:
    pair.handshake()
    sent_before = len(pair.b.sent)
    pair.advance(10.5)
    # b received data and sent nothing back for 10 s: one keepalive (32 bytes).
    keepalives = [d for d, _ in pair.b.sent[sent_before:] if len(d) == 32]
    assert len(keepalives) == 1
    assert pair.a.delivered == []  # keepalives are not delivered


def test_persistent_keepalive(pair: Pair) -> None:
    pair.handshake()
    out = pair.a.device.set_persistent_keepalive(pair.peer_ab, 25, pair.now)
    assert len(out.datagrams) == 1 and len(bytes(out.datagrams[0][0])) == 32  # at once on 0 -> 25
    pair.pump(pair.a, out)
    before = len(pair.a.sent)
    pair.advance(100)
    keepalives = [d for d, _ in pair.a.sent[before:] if len(d) == 32]
    assert 3 <= len(keepalives) <= 4


def test_rekey_after_time_on_send(pair: Pair) -> None:
    pair.handshake()
    first = pair.peer_ab.current
    pair.advance(REKEY_AFTER_TIME + 1)
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert pair.peer_ab.current is not first  # a new session took over
    assert pair.peer_ab.previous is first
    assert pair.b.delivered[-1] == ipv4_packet("10.0.0.1", "10.0.0.2")


def test_refusal_after_reject_after_time(pair: Pair) -> None:
    pair.handshake()
    old = pair.peer_ab.current
    assert old is not None
    pair.b.lossy = True  # b's answers are lost: a cannot rekey
    pair.advance(REJECT_AFTER_TIME + 1)
    before = len(pair.a.sent)
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    sent = kinds(pair.a.sent[before:])
    assert 4 not in sent  # nothing is sent on a keypair older than 180 s
    assert pair.peer_ab.staged  # it waits for a new handshake
    # And a receiver refuses transport packets on an expired keypair.
    buf = packet_buffer(ipv4_packet("10.0.0.2", "10.0.0.1"), 1420)
    lengths = [40]
    old.cipher.seal_batch([buf], lengths, 1420)
    out = pair.a.device.receive_batch([buf], lengths, [pair.b.endpoint], pair.now)
    assert not out.packets


def test_handshake_retries_then_gives_up(pair: Pair) -> None:
    pair.b.lossy = True
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    times = [pair.now]  # when each initiation left, on the fake clock
    end = pair.now + 200
    for _ in range(1000):  # timer by timer, so each send time is exact
        deadlines = [d for d in (pair.a.device.next_timer(), pair.b.device.next_timer()) if d is not None]
        if not deadlines or min(deadlines) > end:
            break
        before = sum(1 for d, _ in pair.a.sent if d[0] == 1)
        pair.advance(max(0.0, min(deadlines) - pair.now))
        after = sum(1 for d, _ in pair.a.sent if d[0] == 1)
        times.extend([pair.now] * (after - before))
    initiations = [d for d, _ in pair.a.sent if d[0] == 1]
    assert len(initiations) == len(times) == 20  # first try + 19 retries, as the kernel and wireguard-go
    assert not pair.peer_ab.staged  # given up: staged packets dropped
    # Retries are REKEY_TIMEOUT (5 s) + a jitter of up to 1/3 s apart; the jitter varies.
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert all(REKEY_TIMEOUT <= gap <= REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for gap in gaps), gaps
    assert len({round(gap, 6) for gap in gaps}) > 1, gaps
    assert pair.peer_ab.timers.retransmit_handshake is None


def test_zero_key_material_after_540_s(pair: Pair) -> None:
    pair.handshake()
    assert pair.a.device.keypair_count() == 1
    pair.a.lossy = pair.b.lossy = True
    pair.advance(539)
    assert pair.a.device.keypair_count() >= 1
    pair.advance(2)
    assert pair.a.device.keypair_count() == 0 and pair.peer_ab.current is None


def test_roaming_follows_authenticated_packets(pair: Pair) -> None:
    pair.handshake()
    new = Endpoint("198.51.100.7", 40000)
    buf = packet_buffer(ipv4_packet("10.0.0.2", "10.0.0.1"), 1420)
    lengths = [40]
    # b's packet arrives at a from a new address: a must follow it.
    pair.peer_ba.current = pair.peer_ba.current or pair.peer_ba.next
    assert pair.peer_ba.current is not None
    pair.peer_ba.current.cipher.seal_batch([buf], lengths, 1420)
    out = pair.a.device.receive_batch([buf], lengths, [new], pair.now)
    assert len(out.packets) == 1
    assert pair.peer_ab.endpoint == new
    # A forged packet from yet another address does not move it.
    forged = bytearray(buf[: lengths[0]])
    forged[-1] ^= 1
    pair.a.device.receive_batch([forged], [len(forged)], [Endpoint("203.0.113.9", 1)], pair.now)
    assert pair.peer_ab.endpoint == new


def test_replayed_old_and_reordered_counters(pair: Pair) -> None:
    pair.handshake()
    keypair = pair.peer_ab.current
    assert keypair is not None
    datagrams = []
    for i in range(5):
        buf = packet_buffer(ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * 20), 1420)
        lengths = [40]
        keypair.cipher.seal_batch([buf], lengths, 1420)
        datagrams.append(bytes(buf[: lengths[0]]))
    order = [datagrams[i] for i in (3, 1, 0, 4, 2)]  # reordered within the window: all accepted
    out = pair.deliver(pair.b, order, pair.a.endpoint)
    assert len(out.packets) == 5
    again = pair.deliver(pair.b, [datagrams[1], datagrams[4]], pair.a.endpoint)
    assert not again.packets
    assert pair.b.device.drops["replay"] == 2
    # Old: push the window forward by more than 8128 and replay an unseen early counter.
    early = bytearray(packet_buffer(ipv4_packet("10.0.0.1", "10.0.0.2"), 1420))
    early_len = [40]
    keypair.cipher.seal_batch([early], early_len, 1420)
    bulk = [packet_buffer(ipv4_packet("10.0.0.1", "10.0.0.2"), 1420) for _ in range(8200)]
    bulk_len = [40] * len(bulk)
    keypair.cipher.seal_batch(bulk, bulk_len, 1420)
    pair.b.device.receive_batch(bulk, bulk_len, [pair.a.endpoint] * len(bulk), pair.now)
    late = pair.deliver(pair.b, [bytes(early[: early_len[0]])], pair.a.endpoint)
    assert not late.packets and pair.b.device.drops["replay"] == 3


def test_inner_source_outside_allowed_ips_is_dropped(pair: Pair) -> None:
    pair.handshake()
    spoofed = ipv4_packet("10.9.9.9", "10.0.0.2")
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    count = len(pair.b.delivered)
    # a routes by destination, so seal by hand with a's keypair.
    keypair = pair.peer_ab.current
    assert keypair is not None
    buf = packet_buffer(spoofed, 1420)
    lengths = [len(spoofed)]
    keypair.cipher.seal_batch([buf], lengths, 1420)
    pair.deliver(pair.b, [bytes(buf[: lengths[0]])], pair.a.endpoint)
    assert len(pair.b.delivered) == count
    assert pair.b.device.drops[Drop.DISALLOWED_SOURCE] == 1


def test_no_route_and_too_big_are_counted(pair: Pair) -> None:
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.7.7.7"), ipv4_packet("10.0.0.1", "10.0.0.2", b"q" * 1500))
    assert pair.a.device.drops[Drop.NO_ROUTE] == 1
    assert pair.a.device.drops[Drop.TOO_BIG] == 1


def test_cookie_reply_under_load(pair: Pair) -> None:
    pair.handshake()
    b = pair.b.device
    # Flood b with (valid-mac1) initiations from an attacker address until it is under load.
    attacker = Endpoint("203.0.113.5", 9999)
    replies = []
    for _ in range(UNDER_LOAD_HANDSHAKES_PER_SECOND + 5):
        pair.peer_ab.last_initiation_sent = None
        out = pair.a.device.initiate(pair.peer_ab, pair.now)
        msg = bytes(out.datagrams[0][0])
        assert len(msg) == INITIATION_SIZE
        replies = b.receive_batch([bytearray(msg)], [len(msg)], [attacker], pair.now).datagrams
    assert b.drops[Drop.COOKIE_SENT] >= 1
    assert len(bytes(replies[0][0])) == 64  # the cookie reply
    # a consumes the cookie; its next initiation carries mac2 and is answered with a response.
    pair.a.device.receive_batch([bytearray(replies[0][0])], [64], [pair.b.endpoint], pair.now)
    assert pair.peer_ab.cookies.cookie is not None
    pair.now += 0.1
    pair.peer_ab.last_initiation_sent = None
    out = pair.a.device.initiate(pair.peer_ab, pair.now)
    msg = bytes(out.datagrams[0][0])
    assert msg[-16:] != bytes(16)
    answer = b.receive_batch([bytearray(msg)], [len(msg)], [attacker], pair.now)
    assert [bytes(d)[0] for d, _ in answer.datagrams] == [2]


def test_replayed_initiation_and_flood_limit(pair: Pair) -> None:
    out = pair.a.device.initiate(pair.peer_ab, pair.now)
    msg = bytearray(out.datagrams[0][0])
    b = pair.b.device
    assert b.receive_batch([bytearray(msg)], [148], [pair.a.endpoint], pair.now).datagrams
    assert not b.receive_batch([bytearray(msg)], [148], [pair.a.endpoint], pair.now + 1).datagrams
    assert b.drops[Drop.REPLAYED_INITIATION] == 1
    # A fresh initiation within 20 ms of the last consumed one is a flood.
    pair.peer_ab.last_initiation_sent = None
    pair.a.device.wall_offset += 1  # a later timestamp
    fresh = pair.a.device.initiate(pair.peer_ab, pair.now).datagrams[0][0]
    assert not b.receive_batch([bytearray(fresh)], [148], [pair.a.endpoint], pair.now + 0.01).datagrams
    assert b.drops[Drop.INITIATION_FLOOD] == 1


def test_unknown_peer_and_bad_mac1(pair: Pair) -> None:
    b = pair.b.device
    stranger = Pair()  # a device b has never heard of, built with b's public key as its peer
    stranger_peer = stranger.a.device.add_peer(b.public_key)  # type: ignore[arg-type]
    stranger_peer.endpoint = pair.b.endpoint
    msg = bytearray(stranger.a.device.initiate(stranger_peer, 0).datagrams[0][0])
    b.receive_batch([bytearray(msg)], [148], [pair.a.endpoint], pair.now)
    assert b.drops[Drop.UNKNOWN_PEER] == 1
    msg[100] ^= 1
    b.receive_batch([msg], [148], [pair.a.endpoint], pair.now)
    assert b.drops[Drop.INVALID_MAC1] == 1


def test_cipher_interop_between_backends() -> None:
    pure = load_backend("pure").TransportCipher
    fast = load_backend("cython").TransportCipher
    mixed = Pair()
    mixed.a.device._cipher = pure
    mixed.b.device._cipher = fast
    mixed.handshake()
    mixed.send(mixed.b, ipv6_packet("fd00::2", "fd00::1"))
    assert mixed.a.delivered == [ipv6_packet("fd00::2", "fd00::1")]


def test_responder_session_confirmed_by_first_data(pair: Pair) -> None:
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    # b answered the initiation; its keypair became current only when a's data arrived under it
    assert pair.peer_ba.next is None and pair.peer_ba.current is not None
    assert not pair.peer_ba.current.is_initiator


def test_initiator_rekeys_on_receive_after_165_s(pair: Pair) -> None:
    pair.handshake()
    first = pair.peer_ab.current
    pair.now += 166  # no timers: only b's packet arrives now
    before = len(pair.a.sent)
    pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    assert 1 in kinds(pair.a.sent[before:])  # a's new initiation
    assert pair.peer_ab.current is not first


def test_rekey_after_messages(pair: Pair, backend: ModuleType) -> None:
    pair.handshake()
    keypair = pair.peer_ab.current
    assert keypair is not None
    send, receive = pair.session_keys[id(keypair.cipher)]
    # The same session, with the send counter just below REKEY_AFTER_MESSAGES (2^60).
    keypair.cipher = backend.TransportCipher(send, receive, keypair.remote_index, send_counter=(1 << 60) - 1)
    pair.now += 6  # past the REKEY_TIMEOUT rate limit on initiations
    before = len(pair.a.sent)
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"), ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert kinds(pair.a.sent[before:])[:3] == [4, 4, 1]  # both sent, then a new handshake begins
    assert pair.peer_ab.current is not keypair  # and completed


def test_rekey_after_messages_applies_to_the_responder_too(pair: Pair, backend: ModuleType) -> None:
    """wireguard-go's keepKeyFreshSending: past REKEY_AFTER_MESSAGES either side initiates (only
    the age rule is the initiator's alone)."""
    pair.handshake()  # a initiated: b is the responder
    keypair = pair.peer_ba.current
    assert keypair is not None and not keypair.is_initiator
    send, receive = pair.session_keys[id(keypair.cipher)]
    keypair.cipher = backend.TransportCipher(send, receive, keypair.remote_index, send_counter=(1 << 60) - 1)
    pair.now += 6
    before = len(pair.b.sent)
    pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"), ipv4_packet("10.0.0.2", "10.0.0.1"))
    assert kinds(pair.b.sent[before:])[:3] == [4, 4, 1]
    assert pair.peer_ba.current is not keypair


def test_reject_after_messages(pair: Pair, backend: ModuleType) -> None:
    pair.handshake()
    keypair = pair.peer_ab.current
    assert keypair is not None
    send, receive = pair.session_keys[id(keypair.cipher)]
    limit = (1 << 64) - (1 << 13) - 1
    keypair.cipher = backend.TransportCipher(send, receive, keypair.remote_index, send_counter=limit)
    pair.b.lossy = True
    before = len(pair.a.sent)
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
    assert 4 not in kinds(pair.a.sent[before:])  # never sent at or past the limit: staged instead
    assert pair.peer_ab.staged
