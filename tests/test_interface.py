"""The interface shell's data-path callbacks with stand-in TUN and UDP objects (no devices).

A real engine pair (see :mod:`tests.wgpair`) makes the datagrams; the interface under test wraps
side b's engine, so what its callbacks read, seal, send and write is checked end to end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from crypto.backend import HEADROOM
from tunnel.constants import REKEY_TIMEOUT_JITTER_MAX
from tunnel.device import Device, Output, packet_buffer
from tunnel.endpoint import Endpoint
from tunnel.interface import Interface

from .wgpair import Pair, ipv4_packet


class FakeTun:
    """Duck-typed :class:`tunnel.tun.Tun`: packets queued in ``inbox`` are what reads return."""

    def __init__(self) -> None:
        self.name = "fake0"
        self.fd = -1
        self.mtu = 1420
        self.vnet_hdr = True
        self.pending = 0
        self.needed = 0
        self.io_errors: dict[str, int] = {}
        self.errors = self.io_errors  # what the pump reads through ``io``
        self.inbox: list[bytes] = []
        self.written: list[bytes] = []
        self.reads = 0

    @property
    def io(self) -> FakeTun:
        """The batch I/O the pump reads through: the same queue."""
        return self

    def read(self, bufs: Sequence[bytearray], lengths: list[int], headroom: int, mtu: int) -> int:
        assert headroom == HEADROOM
        return self.read_batch(bufs, lengths, mtu)

    def read_failed(self, exc: OSError) -> None:
        raise exc

    def write(self, views: Sequence[bytes | bytearray | memoryview]) -> int:
        return self.write_batch(views)

    def write_failed(self, exc: OSError) -> None:
        raise exc

    def read_batch(self, bufs: Sequence[bytearray], lengths: list[int], mtu: int | None = None) -> int:
        self.reads += 1
        count = 0
        while self.inbox and count < len(bufs):
            packet = self.inbox.pop(0)
            bufs[count][HEADROOM : HEADROOM + len(packet)] = packet
            lengths[count] = len(packet)
            count += 1
        return count

    def write_batch(self, views: Sequence[bytes | bytearray | memoryview]) -> int:
        self.written.extend(bytes(v) for v in views)
        return len(views)


class FakeSocket:
    """Duck-typed :class:`tunnel.udp.BatchSocket` receiving the datagrams queued in ``inbox``."""

    def __init__(self, source: Endpoint) -> None:
        self.source = source
        self.pending = 0
        self.inbox: list[bytes] = []

    @property
    def io(self) -> FakeSocket:
        """The batch I/O the pump receives through: the same queue."""
        return self

    def recv(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Endpoint]) -> int:
        return self.recv_batch(bufs, lengths, sources)

    def recv_batch(self, bufs: Sequence[bytearray], lengths: list[int], sources: list[Endpoint]) -> int:
        count = 0
        while self.inbox and count < len(bufs):
            datagram = self.inbox.pop(0)
            bufs[count][: len(datagram)] = datagram
            lengths[count] = len(datagram)
            sources[count] = self.source
            count += 1
        return count


class FakeBind:
    """Duck-typed :class:`tunnel.udp.UdpBind` recording what is sent, by either way: its
    ``send_batch`` or the batch I/O's ``send_slots`` (the pump's way; ``v4.io`` is the bind)."""

    def __init__(self) -> None:
        self.gro = True
        self.lost_sources: list[Endpoint] = []
        self.sent: list[tuple[bytes, Endpoint]] = []
        self.v4 = self
        self.v6 = None
        self.slot_sends = 0

    @property
    def io(self) -> FakeBind:
        return self

    def send_batch(self, datagrams: Sequence[tuple[Any, Endpoint]]) -> int:
        self.sent.extend((bytes(d), ep) for d, ep in datagrams)
        return len(datagrams)

    def send_slots(self, bufs: Sequence[bytearray], lengths: Sequence[int], offset: int, count: int,
                   endpoint: Endpoint) -> int:
        self.slot_sends += 1
        return self.send_batch([(memoryview(bufs[i])[offset : offset + lengths[i]], endpoint)
                                for i in range(count)])


def _pair() -> Pair:
    """A pair with a completed handshake on the clock the interface reads (time.monotonic)."""
    pair = Pair()
    pair.now = time.monotonic()
    pair.handshake()
    return pair


def _interface(device: Device) -> tuple[Interface, FakeTun, FakeBind]:
    tun = FakeTun()
    interface = Interface(tun, device)  # type: ignore[arg-type]
    bind = FakeBind()
    interface.bind = bind  # type: ignore[assignment]
    interface._outbound.udp4 = bind.io
    return interface, tun, bind


def _sealed(pair: Pair, packet: bytes) -> bytes:
    """A transport datagram from a to b carrying ``packet``."""
    out: Output = pair.a.device.send_batch([packet_buffer(packet, 1420)], [len(packet)], pair.now)
    assert len(out.datagrams) == 1
    return bytes(out.datagrams[0][0])


def test_answer_queued_by_the_tun_write_leaves_in_the_same_callback() -> None:
    """A packet written to the TUN whose answer the kernel queued at once (an echo reply) gets
    the answer read, sealed and sent before the callback returns, without waiting for the loop
    to report the TUN readable."""
    pair = _pair()
    interface, tun, bind = _interface(pair.b.device)
    sock = FakeSocket(pair.a.endpoint)
    request = ipv4_packet("10.0.0.1", "10.0.0.2", b"ping")
    reply = ipv4_packet("10.0.0.2", "10.0.0.1", b"pong")
    sock.inbox.append(_sealed(pair, request))
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
    pair = _pair()
    interface, tun, bind = _interface(pair.b.device)
    sock = FakeSocket(pair.a.endpoint)
    forged = bytearray(_sealed(pair, ipv4_packet("10.0.0.1", "10.0.0.2")))
    forged[-1] ^= 1
    sock.inbox.append(bytes(forged))
    tun.inbox.append(ipv4_packet("10.0.0.2", "10.0.0.1"))
    interface._inbound.on_readable(sock, sock.io)
    assert tun.written == [] and tun.reads == 0 and bind.sent == []


def test_tun_callback_seals_and_sends() -> None:
    pair = _pair()
    interface, tun, bind = _interface(pair.b.device)
    tun.inbox.extend([ipv4_packet("10.0.0.2", "10.0.0.1", bytes([i]) * 30) for i in range(3)])
    interface._outbound.on_readable()
    assert len(bind.sent) == 3 and tun.inbox == []


def test_jitter_from_system_randomness_is_pooled_and_in_range() -> None:
    """With os.urandom the timer jitter comes from a pool (more draws than one pool holds are
    all in range and not all equal); an injected source is asked for 4 bytes per draw."""
    device = Device()
    draws = [device._jitter() for _ in range(600)]
    assert all(0.0 <= d < REKEY_TIMEOUT_JITTER_MAX for d in draws)
    assert len(set(draws)) > 10
    asked: list[int] = []

    def source(n: int) -> bytes:
        asked.append(n)
        return (999).to_bytes(4, "little") if n == 4 else os.urandom(n)

    device = Device(random=source)
    asked.clear()
    assert device._jitter() == 999 / 1000 * REKEY_TIMEOUT_JITTER_MAX
    assert asked == [4]

