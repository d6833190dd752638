"""The fused lane steps (tunnel/wireguard/fused_ref.py, _fused.pyx): the same results as the
separate calls they stand for, on real sockets.

Each case runs with the Cython ``Fused`` over the native cipher, batch I/O and route table (the
one-nogil path: checked by ``native_batches``), with the pure ``Fused`` over the pure twins, and
with the Cython ``Fused`` over the pure objects (its plain-calls path). The oracle is the
separate calls (``seal_batch`` + ``send_slots``; ``open_batch`` + ``accept_slots`` +
``write_slots``) on a second, identical set of objects, and every sealed datagram is opened by
the pure-Python cipher (``cryptography``).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from crypto import backend as crypto_backend
from tunnel.io.offload import load_io
from tunnel.wireguard import datapath as datapath_pair
from tunnel.wireguard import fused as fused_pair

from .wgpair import ipv4_packet

HEADROOM = 16
TAG = 16
SEND_KEY = bytes(range(32))
RECEIVE_KEY = bytes(range(32, 64))
# (fused twin, the twin of the objects it gets)
KINDS = [("cython", "cython"), ("pure", "pure"), ("cython", "pure")]


class Kit:
    """The modules of one case."""

    def __init__(self, fused: str, objects: str) -> None:
        if "cython" in (fused, objects) and os.environ.get("WGPY_PURE") == "1":
            pytest.skip("WGPY_PURE=1 disables the Cython twins")
        self.native = fused == objects == "cython"
        self.fused = fused_pair.load(fused)
        self.cipher = crypto_backend.load(objects)
        self.io = load_io(objects)
        self.datapath = datapath_pair.load(objects)


@pytest.fixture(params=KINDS, ids=lambda k: f"{k[0]}-over-{k[1]}")
def kit(request: pytest.FixtureRequest) -> Kit:
    return Kit(*request.param)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` datagrams (the test fails on a timeout: nothing may be missing)."""
    return [sock.recv(65536) for _ in range(count)]


def slots(payloads: list[bytes], size: int = 2048) -> tuple[list[bytearray], list[int]]:
    bufs = []
    for payload in payloads:
        buf = bytearray(size)
        buf[HEADROOM : HEADROOM + len(payload)] = payload
        bufs.append(buf)
    return bufs, [len(p) for p in payloads]


def opened_by_reference(datagrams: list[bytes]) -> list[bytes]:
    """Open with the pure cipher (a fresh window): every datagram must be authentic."""
    ref = crypto_backend.load("pure").TransportCipher(RECEIVE_KEY, SEND_KEY, 1)
    bufs = [bytearray(d) for d in datagrams]
    lengths = [len(d) for d in datagrams]
    results = [9] * len(bufs)
    assert ref.open_batch(bufs, lengths, results) == len(bufs), results
    return [bytes(b[HEADROOM : HEADROOM + n]) for b, n in zip(bufs, lengths, strict=True)]


def counters(datagrams: list[bytes]) -> list[int]:
    return [int.from_bytes(d[8:16], "little") for d in datagrams]


# ---------------------------------------------------------------------------- seal + send

def test_seal_send_is_seal_then_send(kit: Kit, receiver: socket.socket) -> None:
    payloads = [ipv4_packet("10.0.0.1", "10.0.0.2", bytes([i]) * (40 + 37 * i)) for i in range(20)]
    dest = receiver.getsockname()
    fused = kit.fused.Fused()
    results: list[tuple[list[int], list[bytes]]] = []
    for use_fused in (True, False):
        cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 7, send_counter=100)
        sock = udp_socket()
        udp = kit.io.UdpBatch(sock.fileno(), gso=True)
        bufs, lengths = slots(payloads)
        try:
            if use_fused:
                sealed = fused.seal_send(cipher, udp, bufs, lengths, 1420, dest)
            else:
                sealed = cipher.seal_batch(bufs, lengths, 1420)
                udp.send_slots(bufs, lengths, 0, sealed, dest)
            assert sealed == len(payloads)
            assert cipher.send_counter == 100 + sealed
            results.append((list(lengths), drain(receiver, sealed)))
        finally:
            udp.close()
            sock.close()
    (fused_lengths, fused_sent), (plain_lengths, plain_sent) = results
    assert fused_lengths == plain_lengths
    assert fused_sent == plain_sent  # the same bytes: same counters, padding, tags
    assert counters(fused_sent) == list(range(100, 120))
    assert [p[:n] for p, n in zip(opened_by_reference(fused_sent), map(len, payloads), strict=True)] == payloads
    assert fused.native_batches == (1 if kit.native else 0)


def test_seal_send_stops_at_the_counter_limit(kit: Kit, receiver: socket.socket) -> None:
    limit = kit.cipher.REJECT_AFTER_MESSAGES
    cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 7, send_counter=limit - 3)
    sock = udp_socket()
    udp = kit.io.UdpBatch(sock.fileno(), gso=True)
    try:
        bufs, lengths = slots([ipv4_packet("10.0.0.1", "10.0.0.2")] * 5)
        fused = kit.fused.Fused()
        assert fused.seal_send(cipher, udp, bufs, lengths, 1420, receiver.getsockname()) == 3
        assert counters(drain(receiver, 3)) == [limit - 3, limit - 2, limit - 1]
        assert fused.seal_send(cipher, udp, bufs, lengths, 1420, receiver.getsockname()) == 0
        cipher.zero()
        assert fused.seal_send(cipher, udp, bufs, lengths, 1420, receiver.getsockname()) == 0
    finally:
        udp.close()
        sock.close()


def test_seal_send_errors_are_seal_batchs(kit: Kit, receiver: socket.socket) -> None:
    """A packet that does not fit: the same ValueError, no counter used, nothing sent."""
    sock = udp_socket()
    udp = kit.io.UdpBatch(sock.fileno(), gso=True)
    fused = kit.fused.Fused()
    dest = receiver.getsockname()
    try:
        for use_fused in (True, False):
            cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 7)
            bufs, lengths = slots([b"x" * 100, b"y" * 100])
            bufs[1] = bytearray(120)  # cannot hold 16 + 112 + 16
            with pytest.raises(ValueError, match="packet 1: buffer of 120 bytes cannot hold 144 sealed bytes"):
                if use_fused:
                    fused.seal_send(cipher, udp, bufs, lengths, 1420, dest)
                else:
                    cipher.seal_batch(bufs, lengths, 1420)
            assert cipher.send_counter == 0
            assert lengths == [100, 100]
            with pytest.raises(TypeError):
                fused.seal_send(cipher, udp, tuple(bufs), lengths, 1420, dest)
        receiver.settimeout(0.05)
        with pytest.raises(TimeoutError):
            receiver.recv(65536)
    finally:
        udp.close()
        sock.close()


def test_two_threads_seal_send_with_one_keypair(kit: Kit, receiver: socket.socket) -> None:
    """Two threads, each with its own Fused and socket, one shared cipher: every counter once."""
    cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 7)
    rounds, batch = 30, 64
    dest = receiver.getsockname()
    errors: list[BaseException] = []
    fuseds = [kit.fused.Fused() for _ in range(2)]

    def run(fused: Any) -> None:
        sock = udp_socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        udp = kit.io.UdpBatch(sock.fileno(), gso=True)
        try:
            for _ in range(rounds):
                bufs, lengths = slots([ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * 64)] * batch, 256)
                assert fused.seal_send(cipher, udp, bufs, lengths, 1420, dest) == batch
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            udp.close()
            sock.close()

    threads = [threading.Thread(target=run, args=(f,)) for f in fuseds]
    for t in threads:
        t.start()
    received = drain(receiver, 2 * rounds * batch)
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert sorted(counters(received)) == list(range(2 * rounds * batch))
    assert cipher.send_counter == 2 * rounds * batch
    assert len(opened_by_reference(received)) == 2 * rounds * batch
    assert [f.native_batches for f in fuseds] == ([rounds, rounds] if kit.native else [0, 0])


# ---------------------------------------------------------------------------- open + check + write

def sealed_batch(kit: Kit, payloads: list[bytes]) -> list[bytes]:
    """Datagrams from the peer (sealed with the reference cipher, the peer's keys)."""
    peer = crypto_backend.load("pure").TransportCipher(RECEIVE_KEY, SEND_KEY, 1)
    bufs, lengths = slots(payloads)
    assert peer.seal_batch(bufs, lengths, 1420) == len(payloads)
    return [bytes(b[:n]) for b, n in zip(bufs, lengths, strict=True)]


def hostile_batch(kit: Kit) -> tuple[list[bytes], list[bytes]]:
    """A batch with the cases the lane meets: good packets, a keepalive, a replay, a forgery,
    a packet from a source outside the peer's allowed IPs, a truncated inner packet, a
    datagram too short; returns (datagrams, the good inner packets in order)."""
    good = [ipv4_packet("10.0.0.2", "10.0.0.1", bytes([i]) * (30 + 50 * i)) for i in range(5)]
    outsider = ipv4_packet("10.9.9.9", "10.0.0.1", b"spoof" * 10)
    truncated = ipv4_packet("10.0.0.2", "10.0.0.1", b"t" * 40)[:30]
    datagrams = sealed_batch(kit, [good[0], b"", good[1], outsider, good[2], truncated, good[3], good[4]])
    forged = bytearray(datagrams[6])
    forged[-1] ^= 1
    batch = [datagrams[0], datagrams[1], datagrams[2], datagrams[0], datagrams[3], datagrams[4],
             datagrams[5], bytes(forged), b"\x04\0\0\0" + bytes(20), datagrams[7]]
    return batch, [good[0], good[1], good[2], good[4]]


def test_open_deliver_is_open_accept_write(kit: Kit, device_pair: tuple[socket.socket, socket.socket]) -> None:
    kernel, ours = device_pair
    table = kit.datapath.RouteTable([(bytes([10, 0, 0, 0]), 24, 3), (bytes([10, 9, 0, 0]), 16, 4)])
    batch, good = hostile_batch(kit)
    fused = kit.fused.Fused()
    outcomes = []
    for use_fused in (True, False):
        cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 1)
        tun = kit.io.TunBatch(ours.fileno(), vnet_hdr=False)
        bufs = [bytearray(d) + bytearray(64) for d in batch]
        lengths = [len(d) for d in batch]
        results = [0] * len(bufs)
        verdicts = bytearray(len(bufs) + 3)
        if use_fused:
            out = fused.open_deliver(cipher, kit.datapath.accept_slots, table, 3, tun, bufs, lengths, results,
                                     HEADROOM, verdicts)
        else:
            opened = cipher.open_batch(bufs, lengths, results)
            delivered, keepalives, invalid, disallowed = kit.datapath.accept_slots(
                table, 3, bufs, lengths, results, HEADROOM, verdicts)
            written = tun.write_slots(bufs, lengths, HEADROOM, verdicts, len(bufs))
            out = (opened, delivered, (keepalives, invalid, disallowed), written, None)
        packets = [kernel.recv(65536) for _ in range(out[3])]
        outcomes.append((out, list(results), list(lengths), bytes(verdicts), packets))
    assert outcomes[0] == outcomes[1]
    (opened, delivered, accepted, written, error), results, _, _, packets = outcomes[0]
    ok, auth, replay, too_short = (kit.cipher.OK, kit.cipher.AUTH, kit.cipher.REPLAY, kit.cipher.TOO_SHORT)
    assert results == [ok, ok, ok, replay, ok, ok, ok, auth, too_short, ok]
    assert (opened, delivered, accepted, written, error) == (7, 4, (1, 1, 1), 4, None)
    assert packets == good
    assert fused.native_batches == (1 if kit.native else 0)


def test_open_deliver_expired_and_nothing_opened(kit: Kit, device_pair: tuple[socket.socket, socket.socket]) -> None:
    _, ours = device_pair
    table = kit.datapath.RouteTable([(bytes([10, 0, 0, 0]), 24, 3)])
    batch, _ = hostile_batch(kit)
    cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 1)
    cipher.zero()
    tun = kit.io.TunBatch(ours.fileno(), vnet_hdr=False)
    bufs = [bytearray(d) for d in batch]
    lengths = [len(d) for d in batch]
    results = [0] * len(bufs)
    out = kit.fused.Fused().open_deliver(cipher, kit.datapath.accept_slots, table, 3, tun, bufs, lengths, results,
                                         HEADROOM, bytearray(len(bufs)))
    assert out == (0, 0, (0, 0, 0), 0, None)
    assert results == [kit.cipher.EXPIRED] * len(bufs)
    assert lengths == [len(d) for d in batch]


def test_open_deliver_returns_the_write_error(kit: Kit, device_pair: tuple[socket.socket, socket.socket]) -> None:
    """The TUN gone (EBADF: its fd closed under the pump): the OSError is returned, as the
    pump records it, after the batch was opened (the window moved)."""
    kernel, ours = device_pair
    table = kit.datapath.RouteTable([(bytes([10, 0, 0, 0]), 24, 3)])
    payloads = [ipv4_packet("10.0.0.2", "10.0.0.1", b"w" * 99)] * 3
    datagrams = sealed_batch(kit, payloads)
    cipher = kit.cipher.TransportCipher(SEND_KEY, RECEIVE_KEY, 1)
    dead = os.dup(ours.fileno())
    tun = kit.io.TunBatch(dead, vnet_hdr=False)
    os.close(dead)
    bufs = [bytearray(d) for d in datagrams]
    lengths = [len(d) for d in datagrams]
    results = [0] * 3
    opened, delivered, accepted, written, error = kit.fused.Fused().open_deliver(
        cipher, kit.datapath.accept_slots, table, 3, tun, bufs, lengths, results, HEADROOM, bytearray(3))
    assert (opened, delivered, accepted, written) == (3, 3, (0, 0, 0), 0)
    assert isinstance(error, OSError)
    # the same datagrams again are replays: the window took them
    bufs = [bytearray(d) for d in datagrams]
    lengths = [len(d) for d in datagrams]
    assert cipher.open_batch(bufs, lengths, results) == 0
    assert results == [kit.cipher.REPLAY] * 3


def test_modules_have_the_same_api() -> None:
    names = {name for name in dir(fused_pair.load("pure").Fused()) if not name.startswith("_")}
    if os.environ.get("WGPY_PURE") != "1":
        native = {name for name in dir(fused_pair.load("cython").Fused()) if not name.startswith("_")}
        assert names == native
    assert names == {"seal_send", "open_deliver", "native_batches"}
