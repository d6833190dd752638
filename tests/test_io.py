"""Batched UDP I/O (tunnel.io._io and tunnel.io.io_ref, same tests): recvmmsg/sendmmsg, IP_PKTINFO,
UDP GSO send and UDP GRO receive over loopback, and the GSO fallback in a namespace.

The peers on the other side are plain Python sockets (``sendmsg`` with a hand-made UDP_SEGMENT
control message, ``recvmsg`` with the UDP_GRO one), so each side is checked independently.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.io.endpoint import Endpoint
from tunnel.io.offload import load_io

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49

LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
T = TypeVar("T")


def udp_socket(family: int, pktinfo: bool = True) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if pktinfo:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    elif pktinfo:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind((LOOPBACK[family], 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    made: list[socket.socket] = []

    def make(family: int, pktinfo: bool = True) -> socket.socket:
        sock = udp_socket(family, pktinfo)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def wait_readable(sock: socket.socket, timeout: float = 2.0) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def gro_sockets(io: ModuleType, sockets: Callable[..., socket.socket], family: int,
                senders: int = 1) -> list[socket.socket]:
    """``[rx, tx...]``: a receiving socket with UDP GRO on and ``senders`` plain sending sockets
    of ``family`` (skips the test where the kernel has no UDP GSO)."""
    rx = sockets(family)
    txs = [sockets(family, pktinfo=False) for _ in range(senders)]
    if not io.probe_udp_gso(txs[0].fileno()):
        pytest.skip("no UDP GSO in this kernel")
    assert io.enable_udp_gro(rx.fileno())
    return [rx, *txs]


def sender(tx: socket.socket, family: int) -> tuple[str, int, str]:
    """The source a batch reports for datagrams from ``tx`` (to a loopback receiver)."""
    return (tx.getsockname()[0], tx.getsockname()[1], LOOPBACK[family])


def slots(count: int, size: int = 1500) -> tuple[list[bytearray], list[int], list[Any]]:
    """``count`` receive slots of ``size`` bytes: (bufs, lengths, sources)."""
    return [bytearray(size) for _ in range(count)], [0] * count, [None] * count


def payload(index: int, size: int) -> bytes:
    return bytes((index * 7 + k) & 0xFF for k in range(size))


def recv_all(sock: socket.socket, limit: int = 1000) -> list[tuple[bytes, Any]]:
    """Every datagram waiting on a plain socket (bounded)."""
    out: list[tuple[bytes, Any]] = []
    wait_readable(sock)
    for _ in range(limit):
        try:
            out.append(sock.recvfrom(70000))
        except BlockingIOError:
            if not wait_readable(sock, 0.2):
                break
    return out


FAMILIES = pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])


# ------------------------------------------------------------------------------------ receive


@FAMILIES
def test_recv_batch_lengths_sources_and_local(io: ModuleType, sockets: Any, family: int) -> None:
    rx = sockets(family)
    tx = sockets(family, pktinfo=False)
    sizes = [1, 100, 1420, 0, 65]
    for k, size in enumerate(sizes):
        tx.sendto(payload(k, size), rx.getsockname()[:2])
    batch = io.UdpBatch(rx.fileno())
    bufs, lengths, sources = slots(8, 2000)
    assert wait_readable(rx)
    count = batch.recv(bufs, lengths, sources)
    assert count == len(sizes)
    host, port = tx.getsockname()[:2]
    for k, size in enumerate(sizes):
        assert lengths[k] == size
        assert bytes(bufs[k][:size]) == payload(k, size)
        assert sources[k] == (host, port, LOOPBACK[family])
    assert batch.recv(bufs, lengths, sources) == 0  # EAGAIN: nothing more


def test_recv_more_than_batch_and_endpoint_factory(io: ModuleType, sockets: Any) -> None:
    rx = sockets(socket.AF_INET)
    tx = sockets(socket.AF_INET, pktinfo=False)
    for k in range(10):
        tx.sendto(payload(k, 50 + k), rx.getsockname())
    batch = io.UdpBatch(rx.fileno(), make_source=Endpoint)
    bufs, lengths, sources = slots(4, 200)
    got: list[bytes] = []
    for expected in (4, 4, 2):
        assert batch.recv(bufs, lengths, sources) == expected
        got.extend(bytes(bufs[i][: lengths[i]]) for i in range(expected))
        assert all(s == Endpoint("127.0.0.1", tx.getsockname()[1], "127.0.0.1") for s in sources[:expected])
    assert got == [payload(k, 50 + k) for k in range(10)]


def test_recv_truncates_to_buffer(io: ModuleType, sockets: Any) -> None:
    rx = sockets(socket.AF_INET)
    tx = sockets(socket.AF_INET, pktinfo=False)
    tx.sendto(payload(1, 300), rx.getsockname())
    tx.sendto(payload(2, 33), rx.getsockname())
    batch = io.UdpBatch(rx.fileno())
    bufs = [bytearray(100), bytearray(100)]
    lengths = [0, 0]
    sources: list[Any] = [None, None]
    assert batch.recv(bufs, lengths, sources) == 2
    assert lengths == [100, 33]
    assert bytes(bufs[0]) == payload(1, 300)[:100]
    assert bytes(bufs[1][:33]) == payload(2, 33)


def test_recv_rejects_short_lists(io: ModuleType, sockets: Any) -> None:
    rx = sockets(socket.AF_INET)
    batch = io.UdpBatch(rx.fileno())
    with pytest.raises(ValueError):
        batch.recv([bytearray(10)] * 2, [0], [None, None])


# ------------------------------------------------------------------------------------ send


# Zero-length first (a GSO run never starts with it), a long run, a smaller one closing it, equal
# small ones, a zero-length one in the middle, more than 64 equal segments and more than 65,000
# bytes of equal segments (both split into several messages), a larger one after smaller ones.
SLOT_SIZES = [0] + [1200] * 20 + [500] + [7, 7, 1300, 0, 1300, 1300] + [100] * 70 + [1400] * 50 + [9, 1000]


@FAMILIES
@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
@pytest.mark.parametrize("way", ["send", "send_slots"])
def test_send_received_as_datagrams(io: ModuleType, sockets: Any, family: int, gso: bool, way: str) -> None:
    rx = sockets(family, pktinfo=False)
    tx = sockets(family, pktinfo=False)
    host, port = rx.getsockname()[:2]
    data = [payload(k, s) for k, s in enumerate(SLOT_SIZES)]
    batch = io.UdpBatch(tx.fileno(), gso=gso)
    assert send_way(batch, way, data, Endpoint(host, port)) == len(data)
    got = recv_all(rx)
    assert [d for d, _ in got] == data
    assert all(a[:2] == tx.getsockname()[:2] for _, a in got)
    assert batch.errors == {} and batch.lost_sources == []


def test_send_many_peers_and_tuple_endpoints(io: ModuleType, sockets: Any) -> None:
    receivers = [sockets(socket.AF_INET, pktinfo=False) for _ in range(3)]
    tx = sockets(socket.AF_INET, pktinfo=False)
    datagrams: list[tuple[bytes, Any]] = []
    for k in range(30):
        rx = receivers[(k // 4) % 3]
        ep: Any = ("127.0.0.1", rx.getsockname()[1], None) if k % 2 else Endpoint("127.0.0.1", rx.getsockname()[1])
        datagrams.append((payload(k, 1000), ep))
    batch = io.UdpBatch(tx.fileno())
    assert batch.send(datagrams) == 30
    for index, rx in enumerate(receivers):
        expected = [d for d, ep in datagrams if (ep[1] if isinstance(ep, tuple) else ep.port) == rx.getsockname()[1]]
        assert [d for d, _ in recv_all(rx)] == expected, index


@pytest.mark.parametrize("way", ["send", "send_slots"])
def test_send_gso_reaches_gro_socket_as_one_message(io: ModuleType, sockets: Any, way: str) -> None:
    tx = sockets(socket.AF_INET, pktinfo=False)
    if not io.probe_udp_gso(tx.fileno()):
        pytest.skip("no UDP GSO in this kernel")
    rx = sockets(socket.AF_INET, pktinfo=False)
    assert io.enable_udp_gro(rx.fileno())
    batch = io.UdpBatch(tx.fileno(), gso=True)
    assert batch.gso
    data = [payload(k, 1000) for k in range(10)] + [payload(10, 300)]
    assert send_way(batch, way, data, ("127.0.0.1", rx.getsockname()[1], None)) == 11
    # One message carried all of them: GSO really was used (and GRO kept it whole).
    assert recv_messages(rx, len(data)) == [(b"".join(data), 1000)]


@pytest.mark.parametrize("way", ["send", "send_slots"])
def test_sticky_source_and_lost_source(io: ModuleType, sockets: Any, way: str) -> None:
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx_any = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound to 0.0.0.0: any source
    try:
        tx_any.bind(("0.0.0.0", 0))
        tx_any.setblocking(False)
        batch = io.UdpBatch(tx_any.fileno())
        port = rx.getsockname()[1]
        good = Endpoint("127.0.0.1", port, "127.0.0.2")
        gone = Endpoint("127.0.0.1", port, "192.0.2.77")  # not an address of this host
        assert send_way(batch, way, [b"a" * 100, b"b" * 100], good) == 2
        assert batch.lost_sources == []
        assert send_way(batch, way, [b"c" * 100], gone) == 1
        got = recv_all(rx)
        assert [(d, a[0]) for d, a in got] == [(b"a" * 100, "127.0.0.2"), (b"b" * 100, "127.0.0.2"),
                                                (b"c" * 100, "127.0.0.1")]
        assert len(batch.lost_sources) == 1 and batch.lost_sources[0] is gone
        assert batch.errors == {}
    finally:
        tx_any.close()


def test_send_bad_address_is_counted_not_raised(io: ModuleType, sockets: Any) -> None:
    tx = sockets(socket.AF_INET, pktinfo=False)
    rx = sockets(socket.AF_INET, pktinfo=False)
    batch = io.UdpBatch(tx.fileno())
    # An IPv6 destination on an IPv4 socket: the kernel refuses it, the rest still goes.
    sent = batch.send([(b"x", ("::1", 9, None)), (b"y", ("127.0.0.1", rx.getsockname()[1], None))])
    assert sent == 1
    assert sum(batch.errors.values()) == 1
    assert [d for d, _ in recv_all(rx)] == [b"y"]


# ------------------------------------------------------------------------------------ GRO receive


def gso_burst(tx: socket.socket, dest: Any, data: list[bytes], segment: int) -> None:
    """Send ``data`` as ONE GSO message with a hand-made UDP_SEGMENT control message."""
    tx.sendmsg(data, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))], 0, dest)


@FAMILIES
def test_gro_receive_split_into_slots(io: ModuleType, sockets: Any, family: int) -> None:
    rx, tx = gro_sockets(io, sockets, family)
    dest = rx.getsockname()[:2]
    first = [payload(k, 1000) for k in range(10)] + [payload(10, 321)]
    second = [payload(20 + k, 500) for k in range(5)]
    gso_burst(tx, dest, first, 1000)
    gso_burst(tx, dest, second, 500)
    tx.sendto(b"single", dest)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bufs, lengths, sources = slots(6)
    got: list[bytes] = []
    rounds = 0
    assert wait_readable(rx)
    while rounds < 10:
        count = batch.recv(bufs, lengths, sources)
        if count == 0:
            break
        rounds += 1
        for i in range(count):
            got.append(bytes(bufs[i][: lengths[i]]))
            assert sources[i] == sender(tx, family)
        # Handed out and held together never exceed what was sent (exactly what they hold is
        # test_gro_pending_is_exactly_what_the_batch_holds).
        assert len(got) + batch.pending <= 17
        if count < 6:
            assert batch.pending == 0  # a batch that did not fill up holds nothing back
    assert got == first + second + [b"single"]
    assert rounds >= 3  # 17 datagrams cannot come through 6 slots in fewer calls
    assert batch.pending == 0


@FAMILIES
def test_gro_one_sender_one_source_object(io: ModuleType, sockets: Any, family: int) -> None:
    """A sender's datagrams carry the same source object whether they came coalesced (a GRO
    segment size) or alone: the lanes compare sources with the peer's endpoint by identity."""
    rx, tx = gro_sockets(io, sockets, family)
    made: list[tuple[str, int, str | None]] = []

    def make(ip: str, port: int, local: str | None) -> tuple[str, int, str | None]:
        made.append((ip, port, local))
        return made[-1]

    dest = rx.getsockname()[:2]
    batch = io.UdpBatch(rx.fileno(), gro=True, make_source=make)
    bufs, lengths, sources = slots(8)
    seen: list[Any] = []
    for burst in ([b"alone"], [payload(k, 600) for k in range(4)], [b"again"], [payload(9, 300)] * 3):
        if len(burst) > 1:
            gso_burst(tx, dest, burst, len(burst[0]))
        else:
            tx.sendto(burst[0], dest)
        assert wait_readable(rx)
        count = batch.recv(bufs, lengths, sources)
        assert count == len(burst)
        seen.extend(sources[:count])
    assert len(seen) == 9
    assert made == [sender(tx, family)]
    assert all(source is made[0] for source in seen)


@FAMILIES
def test_gro_pending_keeps_its_source_across_calls(io: ModuleType, sockets: Any, family: int) -> None:
    """Segments held back by one call (the slots were full) come out of the next call with
    their own sender, also when that call receives a datagram from another sender."""
    rx, tx_a, tx_b = gro_sockets(io, sockets, family, senders=2)
    dest = rx.getsockname()[:2]
    a, b = sender(tx_a, family), sender(tx_b, family)
    burst = [payload(k, 400) for k in range(6)]
    gso_burst(tx_a, dest, burst, 400)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bufs, lengths, sources = slots(8)
    assert wait_readable(rx)
    assert batch.recv(bufs[:4], lengths, sources) == 4  # 2 segments of a's burst held back
    assert sources[:4] == [a] * 4 and batch.pending == 2
    tx_b.sendto(b"from b", dest)
    assert wait_readable(rx)
    count = batch.recv(bufs, lengths, sources)
    got = [(bytes(bufs[i][: lengths[i]]), sources[i]) for i in range(count)]
    assert got == [(burst[4], a), (burst[5], a), (b"from b", b)]


@FAMILIES
def test_gro_pending_is_exactly_what_the_batch_holds(io: ModuleType, sockets: Any, family: int) -> None:
    """``pending`` counts the datagrams the batch received but did not hand out: with the
    socket emptied behind its back (by us, with plain recv), the batch hands out exactly
    ``pending`` more datagrams, the next ones in order, and we hold the rest."""
    rx, tx = gro_sockets(io, sockets, family)
    dest = rx.getsockname()[:2]
    first = [payload(k, 1000) for k in range(10)] + [payload(10, 321)]
    second = [payload(20 + k, 500) for k in range(5)]
    gso_burst(tx, dest, first, 1000)
    gso_burst(tx, dest, second, 500)
    tx.sendto(b"single", dest)
    sent = first + second + [b"single"]
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bufs, lengths, sources = slots(6)
    assert wait_readable(rx)
    assert batch.recv(bufs, lengths, sources) == 6
    got = [bytes(bufs[i][: lengths[i]]) for i in range(6)]
    held = batch.pending
    assert held >= 5  # at least the rest of the first message (GRO hands it over whole)
    behind = b""
    for _ in range(100):
        try:
            behind += rx.recv(70000)
        except BlockingIOError:
            break
    later: list[bytes] = []
    for _ in range(20):
        count = batch.recv(bufs, lengths, sources)
        if count == 0:
            break
        later.extend(bytes(bufs[i][: lengths[i]]) for i in range(count))
    assert len(later) == held and batch.pending == 0
    assert got + later == sent[: 6 + held]
    assert behind == b"".join(sent[6 + held :])


def test_gro_receive_small_slots_truncate_each_segment(io: ModuleType, sockets: Any) -> None:
    rx, tx = gro_sockets(io, sockets, socket.AF_INET)
    data = [payload(k, 800) for k in range(4)]
    gso_burst(tx, rx.getsockname(), data, 800)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bufs, lengths, sources = slots(8, 300)
    assert wait_readable(rx)
    assert batch.recv(bufs, lengths, sources) == 4
    assert lengths[:4] == [300] * 4
    assert [bytes(b) for b in bufs[:4]] == [d[:300] for d in data]


# ------------------------------------------------------------------------------------ GSO fallback

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns: str, func: Callable[[], T]) -> T:
    """Run ``func`` on a helper thread that entered namespace ``ns`` (sockets stay there)."""
    result: list[Any] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            result.append(func())
        except BaseException as exc:  # handed back to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if not result:
        raise TimeoutError("netns helper thread did not finish")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"wgpyio{os.getpid()}{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10, capture_output=True, check=False)


SO_NO_CHECK = 11


def test_gso_refused_falls_back_and_says_so(io: ModuleType, sockets: Any) -> None:
    """A socket with SO_NO_CHECK cannot use UDP GSO (the kernel says EINVAL, EIO on older
    ones) while single datagrams still go: GSO is turned off, reported once, nothing is lost."""
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx = sockets(socket.AF_INET, pktinfo=False)
    if not io.probe_udp_gso(tx.fileno()):
        pytest.skip("no UDP GSO in this kernel")
    tx.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    batch = io.UdpBatch(tx.fileno(), gso=True)
    assert batch.gso and batch.fallbacks == []
    data = [payload(k, 1000) for k in range(6)]
    dest = ("127.0.0.1", rx.getsockname()[1], None)
    assert batch.send([(d, dest) for d in data]) == 6
    assert not batch.gso
    assert len(batch.fallbacks) == 1 and "GSO" in batch.fallbacks[0]
    assert [d for d, _ in recv_all(rx)] == data
    # Later batches go datagram by datagram without another fallback.
    assert batch.send([(d, dest) for d in data]) == 6
    assert len(batch.fallbacks) == 1
    assert [d for d, _ in recv_all(rx)] == data
    assert batch.errors == {}


@pytest.mark.netns
def test_gso_segment_over_mtu_is_sent_one_by_one(io: ModuleType) -> None:
    """With lo's MTU below the segment size the kernel refuses the GSO message (EMSGSIZE)
    while single datagrams go (fragmented): every datagram arrives and GSO stays on (a path MTU
    problem, not a missing offload)."""
    with namespace() as ns:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "mtu", "1280"], check=True, timeout=10)
        rx = in_netns(ns, lambda: udp_socket(socket.AF_INET, pktinfo=False))
        tx = in_netns(ns, lambda: udp_socket(socket.AF_INET, pktinfo=False))
        try:
            if not io.probe_udp_gso(tx.fileno()):
                pytest.skip("no UDP GSO in this kernel")
            batch = io.UdpBatch(tx.fileno(), gso=True)
            data = [payload(k, 1400) for k in range(6)]
            dest = ("127.0.0.1", rx.getsockname()[1], None)
            assert batch.send([(d, dest) for d in data]) == 6
            assert batch.gso and batch.fallbacks == []
            assert [d for d, _ in recv_all(rx)] == data
        finally:
            rx.close()
            tx.close()


def test_gro_pending_survives_a_larger_batch(io: ModuleType, sockets: Any) -> None:
    rx, tx = gro_sockets(io, sockets, socket.AF_INET)
    data = [payload(k, 600) for k in range(12)]
    gso_burst(tx, rx.getsockname(), data, 600)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    got: list[bytes] = []
    assert wait_readable(rx)
    for slots in (2, 3, 100):
        bufs = [bytearray(1500) for _ in range(slots)]
        lengths = [0] * slots
        sources: list[Any] = [None] * slots
        count = batch.recv(bufs, lengths, sources)
        got.extend(bytes(bufs[i][: lengths[i]]) for i in range(count))
        assert batch.pending == len(data) - len(got)
    assert got == data


def test_recv_fills_a_large_batch_in_one_call(io: ModuleType, sockets: Any) -> None:
    """Without GRO the slots are pinned as the batch fills (2, 8, 32, ...): one call still
    takes every queued datagram up to the batch size, in order."""
    rx = sockets(socket.AF_INET)
    tx = sockets(socket.AF_INET, pktinfo=False)
    for k in range(50):
        tx.sendto(payload(k, 20 + k), rx.getsockname())
    assert wait_readable(rx)
    batch = io.UdpBatch(rx.fileno())
    bufs, lengths, sources = slots(64, 200)
    assert batch.recv(bufs, lengths, sources) == 50
    assert [bytes(bufs[i][: lengths[i]]) for i in range(50)] == [payload(k, 20 + k) for k in range(50)]
    assert batch.recv(bufs, lengths, sources) == 0


@pytest.mark.parametrize("gro", [False, True])
def test_recv_one_slot_batches(io: ModuleType, sockets: Any, gro: bool) -> None:
    rx = sockets(socket.AF_INET)
    tx = sockets(socket.AF_INET, pktinfo=False)
    if gro:
        assert io.enable_udp_gro(rx.fileno())
    for k in range(3):
        tx.sendto(payload(k, 30), rx.getsockname())
    assert wait_readable(rx)
    batch = io.UdpBatch(rx.fileno(), gro=gro)
    got = []
    for _ in range(3):
        bufs, lengths, sources = [bytearray(100)], [0], [None]
        assert batch.recv(bufs, lengths, sources) == 1
        got.append(bytes(bufs[0][: lengths[0]]))
    assert got == [payload(k, 30) for k in range(3)]


# ------------------------------------------------------------------------------------ send_slots


def slots_of(data: list[bytes], offset: int = 0, tail: int = 0) -> tuple[list[bytearray], list[int]]:
    """Batch slots holding ``data[i]`` at ``offset``, with garbage before it and ``tail`` garbage
    bytes after it (so a slice taken at the wrong place shows)."""
    bufs = [bytearray(b"\xee" * offset) + bytearray(d) + bytearray(b"\xdd" * tail) for d in data]
    return bufs, [len(d) for d in data]


def send_way(batch: Any, way: str, data: list[bytes], endpoint: Any) -> int:
    """Send ``data`` to ``endpoint`` with ``send`` or, from slots at offset 8, ``send_slots``."""
    if way == "send":
        return int(batch.send([(d, endpoint) for d in data]))
    bufs, lengths = slots_of(data, offset=8, tail=8)
    return int(batch.send_slots(bufs, lengths, 8, len(bufs), endpoint))


def recv_n(sock: socket.socket, count: int, timeout: float = 2.0) -> list[bytes]:
    """The next ``count`` datagrams on a plain socket, plus any extra already queued (bounded by
    ``timeout`` while fewer than ``count`` came: a correctness bound, not a timing assertion)."""
    out: list[bytes] = []
    while len(out) < count:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            if not wait_readable(sock, timeout):
                return out
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def split_message(message: bytes, segment: int) -> list[bytes]:
    """The datagrams of one UDP_GRO message (``segment`` 0: not coalesced)."""
    if not message or not segment:
        return [message]
    return [message[k : k + segment] for k in range(0, len(message), segment)]


def recv_messages(sock: socket.socket, count: int, timeout: float = 2.0) -> list[tuple[bytes, int]]:
    """Messages on a UDP_GRO socket as (bytes, segment size or 0) until they carried ``count``
    datagrams, plus any extra already queued."""
    out: list[tuple[bytes, int]] = []
    got = 0
    raw = bytearray(70000)
    while True:
        try:
            size, ancdata, _, _ = sock.recvmsg_into([raw], socket.CMSG_SPACE(4))
        except BlockingIOError:
            if got >= count or not wait_readable(sock, timeout):
                return out
            continue
        segment = [int.from_bytes(d[:4], "little") for lvl, kind, d in ancdata if (lvl, kind) == (SOL_UDP, UDP_GRO)]
        out.append((bytes(raw[:size]), segment[0] if segment else 0))
        got += len(split_message(*out[-1]))


@FAMILIES
@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
def test_send_slots_offset_skips_what_comes_before(io: ModuleType, sockets: Any, family: int, gso: bool) -> None:
    rx = sockets(family, pktinfo=False)
    tx = sockets(family, pktinfo=False)
    host, port = rx.getsockname()[:2]
    data = [payload(k, s) for k, s in enumerate([1000] * 8 + [333, 0, 64, 64])]
    bufs, lengths = slots_of(data, offset=16, tail=32)
    batch = io.UdpBatch(tx.fileno(), gso=gso)
    assert batch.send_slots(bufs, lengths, 16, len(bufs), (host, port, None)) == len(data)
    assert [d for d, _ in recv_all(rx)] == data
    assert batch.errors == {}
    assert (bufs, lengths) == slots_of(data, offset=16, tail=32)  # the slots are only read


def test_send_slots_count_sends_only_the_prefix(io: ModuleType, sockets: Any) -> None:
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx = sockets(socket.AF_INET, pktinfo=False)
    endpoint = Endpoint("127.0.0.1", rx.getsockname()[1])
    data = [payload(k, 500) for k in range(10)]
    bufs, lengths = slots_of(data, offset=4)
    batch = io.UdpBatch(tx.fileno())
    assert batch.send_slots(bufs, lengths, 4, 0, endpoint) == 0
    assert batch.send_slots(bufs, lengths, 4, 4, endpoint) == 4
    # lengths may be longer than the batch (the slot arrays of a fixed-size batch)
    assert batch.send_slots(bufs[:6], lengths + [7] * 5, 4, 6, endpoint) == 6
    assert recv_n(rx, 10) == data[:4] + data[:6]


def _out_of_range_cases() -> list[Any]:
    return [
        pytest.param(lambda b, n: (b, n, 0, -1), id="negative-count"),
        pytest.param(lambda b, n: (b, n, 0, len(b) + 1), id="count-over-bufs"),
        pytest.param(lambda b, n: (b, n[:-1], 0, len(b)), id="count-over-lengths"),
        pytest.param(lambda b, n: (b, n, -1, len(b)), id="negative-offset"),
        pytest.param(lambda b, n: (b, n[:-1] + [-1], 0, len(b)), id="negative-length"),
        pytest.param(lambda b, n: (b, n[:-1] + [n[-1] + 1], 0, len(b)), id="length-past-buffer"),
        pytest.param(lambda b, n: (b, n, 1, len(b)), id="offset-pushes-slots-past-buffer"),
        pytest.param(lambda b, n: (b, n, len(b[0]) + 1, len(b)), id="offset-past-every-buffer"),
    ]


@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
@pytest.mark.parametrize("make_args", _out_of_range_cases())
def test_send_slots_out_of_range_raises_and_sends_nothing(io: ModuleType, sockets: Any, gso: bool,
                                                          make_args: Callable[..., tuple[Any, ...]]) -> None:
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx = sockets(socket.AF_INET, pktinfo=False)
    endpoint = Endpoint("127.0.0.1", rx.getsockname()[1])
    # The earlier slots are valid (and would form a GSO run): the bad one is the last.
    data = [payload(k, 200) for k in range(5)]
    bufs = [bytearray(d) for d in data]
    lengths = [len(d) for d in data]
    batch = io.UdpBatch(tx.fileno(), gso=gso)
    with pytest.raises(ValueError):
        batch.send_slots(*make_args(bufs, lengths), endpoint)
    assert batch.errors == {} and batch.lost_sources == []
    # Nothing left: the next datagram on the wire is a marker the (still usable) batch sends.
    assert batch.send_slots([bytearray(b"marker")], [6], 0, 1, endpoint) == 1
    assert recv_n(rx, 1) == [b"marker"]


@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
def test_lost_source_of_a_run_and_a_shared_list(io: ModuleType, sockets: Any, gso: bool) -> None:
    """Every datagram of a batch to a gone source still leaves (from any address), each loss is
    noted as the endpoint given, and two batches given one list both append to it."""
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx_any = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx_other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (tx_any, tx_other):
            sock.bind(("0.0.0.0", 0))
            sock.setblocking(False)
        shared: list[Any] = []
        first = io.UdpBatch(tx_any.fileno(), gso=gso)
        second = io.UdpBatch(tx_other.fileno(), gso=gso)
        first.lost_sources = shared
        second.lost_sources = shared
        assert first.lost_sources is shared and second.lost_sources is shared
        port = rx.getsockname()[1]
        gone1 = Endpoint("127.0.0.1", port, "192.0.2.77")
        gone2 = ("127.0.0.1", port, "192.0.2.78")
        data = [payload(k, 300) for k in range(4)]
        bufs, lengths = slots_of(data)
        assert first.send_slots(bufs, lengths, 0, 4, gone1) == 4
        assert second.send_slots(bufs, lengths, 0, 1, gone2) == 1
        got = recv_all(rx)
        assert [d for d, _ in got] == data + data[:1]
        assert all(a[0] == "127.0.0.1" for _, a in got)
        # At least one loss per batch, each noted as the very endpoint object it was sent to.
        assert shared and shared[0] is gone1 and shared[-1] is gone2
        assert all(ep is gone1 for ep in shared[:-1])
        assert first.errors == {} and second.errors == {}
        # send (the sibling) appends to the same shared list
        count = len(shared)
        assert first.send([(b"x" * 10, gone1)]) == 1
        assert len(shared) == count + 1 and shared[-1] is gone1
    finally:
        tx_any.close()
        tx_other.close()


@FAMILIES
@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
def test_send_slots_bad_address_is_counted_not_raised(io: ModuleType, sockets: Any, family: int,
                                                      gso: bool) -> None:
    tx = sockets(family, pktinfo=False)
    rx = sockets(family, pktinfo=False)
    batch = io.UdpBatch(tx.fileno(), gso=gso)
    # The other family's address: the kernel (or the resolver) refuses every datagram.
    wrong = ("::1", 9, None) if family == socket.AF_INET else ("127.0.0.1", 9, None)
    bufs, lengths = slots_of([payload(k, 100) for k in range(3)])
    assert batch.send_slots(bufs, lengths, 0, 3, wrong) == 0
    assert sum(batch.errors.values()) == 3
    assert batch.lost_sources == []
    # The batch goes on working.
    host, port = rx.getsockname()[:2]
    assert batch.send_slots(bufs, lengths, 0, 3, Endpoint(host, port)) == 3
    assert recv_n(rx, 3) == [payload(k, 100) for k in range(3)]


def _send_both_ways(io: ModuleType, family: int, data: list[bytes], offset: int, count: int,
                    gso: bool, gro: bool) -> tuple[list[Any], list[Any], int, int]:
    """(what arrived from send, what arrived from send_slots, their two counts)."""
    with contextlib.ExitStack() as stack:
        rx = stack.enter_context(udp_socket(family, pktinfo=False))
        if gro:
            assert io.enable_udp_gro(rx.fileno())
        arrived: list[list[Any]] = []
        counts: list[int] = []
        host, port = rx.getsockname()[:2]
        endpoint = Endpoint(host, port)
        bufs, lengths = slots_of(data, offset=offset, tail=5)
        expected = data[:count]
        for use_slots in (False, True):
            tx = stack.enter_context(udp_socket(family, pktinfo=False))
            batch = io.UdpBatch(tx.fileno(), gso=gso)
            if use_slots:
                counts.append(batch.send_slots(bufs, lengths, offset, count, endpoint))
            else:
                views = [memoryview(bufs[i])[offset:offset + lengths[i]] for i in range(count)]
                counts.append(batch.send([(v, endpoint) for v in views]))
            assert batch.errors == {}
            if gro:
                arrived.append(recv_messages(rx, len(expected)))
            else:
                arrived.append(recv_n(rx, len(expected)))
        return arrived[0], arrived[1], counts[0], counts[1]


sizes_strategy = st.lists(
    st.one_of(st.sampled_from([0, 1, 64, 1000, 1400]), st.integers(0, 1500)), min_size=1, max_size=90
)


@pytest.mark.parametrize("impl", ["cython", "pure"])
@settings(max_examples=25, deadline=None)
@given(sizes=sizes_strategy, offset=st.integers(0, 24), cut=st.integers(0, 5),
       gso=st.booleans(), v6=st.booleans())
def test_send_slots_same_wire_as_send(impl: str, sizes: list[int], offset: int, cut: int, gso: bool,
                                      v6: bool) -> None:
    """send_slots and send of the same slices: the same datagrams, and with GSO on the same
    messages (a UDP_GRO receiver on loopback sees each GSO message whole, with its segment)."""
    if impl == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    io = load_io(impl)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    data = [payload(k, s) for k, s in enumerate(sizes)]
    count = max(0, len(data) - cut)
    plain_send, plain_slots, n1, n2 = _send_both_ways(io, family, data, offset, count, gso, gro=False)
    assert n1 == n2 == count
    assert plain_send == plain_slots == data[:count]
    if gso:
        with udp_socket(family, pktinfo=False) as probe:
            if not io.probe_udp_gso(probe.fileno()):
                pytest.skip("no UDP GSO in this kernel: the GRO half cannot run")
        gro_send, gro_slots, n1, n2 = _send_both_ways(io, family, data, offset, count, gso, gro=True)
        assert n1 == n2 == count
        assert gro_send == gro_slots
        # and each message is a run of the slices: split by its segment size, in order
        assert [d for m, segment in gro_slots for d in split_message(m, segment)] == data[:count]


# ------------------------------------------------------------------------------------ send_slots: bugs


@pytest.mark.parametrize(("offset", "length"), [(sys.maxsize, 1), (1, sys.maxsize), (sys.maxsize - 4, 10)],
                         ids=["huge-offset", "huge-length", "sum-just-past-max"])
def test_send_slots_offset_plus_length_overflow_is_value_error(io: ModuleType, sockets: Any, offset: int,
                                                               length: int) -> None:
    """``offset + lengths[i]`` past the buffer is a ValueError however large the two are: their
    sum must not wrap around (Py_ssize_t) and pass the bounds check, sending from a pointer
    outside the buffer or an iovec longer than it."""
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx = sockets(socket.AF_INET, pktinfo=False)
    endpoint = Endpoint("127.0.0.1", rx.getsockname()[1])
    batch = io.UdpBatch(tx.fileno())
    with pytest.raises(ValueError):
        batch.send_slots([bytearray(64)], [length], offset, 1, endpoint)
    assert batch.errors == {}
    assert batch.send_slots([bytearray(b"marker")], [6], 0, 1, endpoint) == 1
    assert recv_n(rx, 1) == [b"marker"]


@pytest.mark.parametrize(("offset", "length"), [(1 << 64, 0), (0, 1 << 64)], ids=["offset", "length"])
def test_send_slots_beyond_ssize_t_is_value_error_too(io: ModuleType, sockets: Any, offset: int,
                                                      length: int) -> None:
    """The twins agree on the exception for an offset or length no buffer can reach."""
    tx = sockets(socket.AF_INET, pktinfo=False)
    batch = io.UdpBatch(tx.fileno())
    with pytest.raises(ValueError):
        batch.send_slots([bytearray(64)], [length], offset, 1, ("127.0.0.1", 9, None))
    assert batch.errors == {}


@pytest.mark.parametrize("port", [70000, -1])
def test_send_slots_port_out_of_range_is_counted_not_raised(io: ModuleType, sockets: Any, port: int) -> None:
    """An endpoint whose port no socket can use is a bad address like any other: counted, the
    rest of the batch goes (``send`` and ``send_slots`` alike: "nothing raises for a
    per-datagram error")."""
    tx = sockets(socket.AF_INET, pktinfo=False)
    rx = sockets(socket.AF_INET, pktinfo=False)
    batch = io.UdpBatch(tx.fileno())
    assert batch.send_slots([bytearray(b"x")], [1], 0, 1, ("127.0.0.1", port, None)) == 0
    good = ("127.0.0.1", rx.getsockname()[1], None)
    assert batch.send([(b"y", ("127.0.0.1", port, None)), (b"z", good)]) == 1
    assert sum(batch.errors.values()) == 2
    assert recv_n(rx, 1) == [b"z"]


# ------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("case", ["recv-read-only", "send-generator", "send-slots-none-endpoint",
                                  "send-none-endpoint", "read-negative-headroom", "read-zero-mtu",
                                  "read-slot-shorter-than-headroom"])
def test_bad_arguments_are_the_same_error_in_both_twins(io: ModuleType, sockets: Any,
                                                        device_pair: Any, case: str) -> None:
    """Same API, same errors (before: the pure twin raised TypeError for a read-only receive
    slot, iterated a generator, and read with a negative headroom or mtu; the native twin
    counted a None endpoint as a bad address on a fresh batch but raised after any send)."""
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx = sockets(socket.AF_INET, pktinfo=False)
    endpoint = Endpoint("127.0.0.1", rx.getsockname()[1])
    tx.sendto(b"hello", rx.getsockname())
    assert wait_readable(rx)
    kernel, ours = device_pair
    kernel.send(bytes(10) + b"\x45" + bytes(39))
    tun = io.TunBatch(ours.fileno())
    calls: dict[str, tuple[type[Exception], Callable[[], object]]] = {
        "recv-read-only": (BufferError, lambda: io.UdpBatch(rx.fileno()).recv([bytes(100)], [0], [None])),
        "send-generator": (TypeError, lambda: io.UdpBatch(tx.fileno()).send(d for d in [(b"x", endpoint)])),
        "send-slots-none-endpoint": (AttributeError, lambda: io.UdpBatch(tx.fileno()).send_slots(
            [bytearray(10)], [5], 0, 1, None)),
        "send-none-endpoint": (AttributeError, lambda: io.UdpBatch(tx.fileno()).send([(b"x", None)])),
        "read-negative-headroom": (ValueError, lambda: tun.read([bytearray(100)], [0], -10, 1500)),
        "read-zero-mtu": (ValueError, lambda: tun.read([bytearray(100)], [0], 0, 0)),
        "read-slot-shorter-than-headroom": (ValueError, lambda: tun.read([bytearray(100)], [0], 200, 1500)),
    }
    error, call = calls[case]
    with pytest.raises(error):
        call()
    # nothing was taken: the datagram and the packet are still there for a good call
    batch = io.UdpBatch(rx.fileno())
    bufs, lengths, sources = [bytearray(100)], [0], [None]
    assert batch.recv(bufs, lengths, sources) == 1 and bytes(bufs[0][:lengths[0]]) == b"hello"
    assert tun.read([bytearray(100)], [0], 0, 1500) == 1


def test_probes_on_a_bad_fd_say_no(io: ModuleType) -> None:
    """enable_udp_gro and probe_udp_gso answer False for what is not a UDP socket (the pure twin
    raised OSError for a closed fd)."""
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    assert io.enable_udp_gro(fd) is False and io.probe_udp_gso(fd) is False
    with open("/dev/null", "rb") as f:
        assert io.enable_udp_gro(f.fileno()) is False and io.probe_udp_gso(f.fileno()) is False
