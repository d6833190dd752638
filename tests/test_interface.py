"""The interface shell's data-path callbacks with stand-in TUN and UDP objects (no devices).

A real engine pair (see :mod:`tests.wgpair`) makes the datagrams; the interface under test wraps
side b's engine, so what its callbacks read, seal, send and write is checked end to end. The
fakes are in :mod:`tests.shellfakes`; the pumps and their journal in tests/test_pump.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from .shellfakes import FakeSocket, make_interface, make_pair, sealed
from .wgpair import ipv4_packet


def test_answer_queued_by_the_tun_write_leaves_in_the_same_callback() -> None:
    """A packet written to the TUN whose answer the kernel queued at once (an echo reply) gets
    the answer read, sealed and sent before the callback returns, without waiting for the loop
    to report the TUN readable."""
    pair = make_pair()
    interface, tun, bind = make_interface(pair.b.device)
    sock = FakeSocket(pair.a.endpoint)
    request = ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")
    reply = ipv4_packet("10.0.0.2", "10.0.0.1", b"pong")
    sock.inbox.append(sealed(pair, request))
    original = tun.write_batch

    def write_and_answer(views: Sequence[bytes | bytearray | memoryview]) -> int:
        tun.inbox.append(reply)  # the kernel answers while handling the write
        return original(views)

    tun.write_batch = write_and_answer  # type: ignore[method-assign]
    interface._inbound.on_readable(sock, sock.io)
    assert tun.written == [request]
    assert len(bind.sent) == 1
    datagram, endpoint = bind.sent[0]
    assert endpoint == pair.a.endpoint
    opened = pair.a.device.receive_batch([bytearray(datagram)], [len(datagram)], [pair.b.endpoint], pair.now)
    assert [bytes(p) for p in opened.packets] == [reply]


def test_nothing_delivered_reads_no_tun() -> None:
    """A datagram that delivers nothing (a forged one) does not make the callback read the TUN."""
    pair = make_pair()
    interface, tun, bind = make_interface(pair.b.device)
    sock = FakeSocket(pair.a.endpoint)
    forged = bytearray(sealed(pair, ipv4_packet("10.0.0.1", "10.0.0.2")))
    forged[-1] ^= 1
    sock.inbox.append(bytes(forged))
    tun.inbox.append(ipv4_packet("10.0.0.2", "10.0.0.1"))
    interface._inbound.on_readable(sock, sock.io)
    assert tun.written == [] and tun.reads == 0 and bind.sent == []


def test_tun_callback_seals_and_sends() -> None:
    pair = make_pair()
    interface, tun, bind = make_interface(pair.b.device)
    packets = [ipv4_packet("10.0.0.2", "10.0.0.1", bytes([i]) * 30) for i in range(3)]
    tun.inbox.extend(packets)
    interface._outbound.on_readable()
    assert len(bind.sent) == 3 and tun.inbox == []
    # What was sent is what was read: the peer's engine opens each datagram to its packet.
    assert all(endpoint == pair.a.endpoint for _, endpoint in bind.sent)
    datagrams = [bytearray(d) for d, _ in bind.sent]
    opened = pair.a.device.receive_batch(datagrams, [len(d) for d in datagrams], [pair.b.endpoint] * 3, pair.now)
    assert [bytes(p) for p in opened.packets] == packets
    assert not pair.a.device.drops
