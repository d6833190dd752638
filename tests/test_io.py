"""Batched UDP I/O (tunnel._io and tunnel.io_ref, same tests): recvmmsg/sendmmsg, IP_PKTINFO,
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
import threading
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import pytest

from tunnel.endpoint import Endpoint

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
    bufs = [bytearray(2000) for _ in range(8)]
    lengths = [0] * 8
    sources: list[Any] = [None] * 8
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
    bufs = [bytearray(200) for _ in range(4)]
    lengths = [0] * 4
    sources: list[Any] = [None] * 4
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


@FAMILIES
@pytest.mark.parametrize("gso", [False, True], ids=["plain", "gso"])
def test_send_batch_received_as_datagrams(io: ModuleType, sockets: Any, family: int, gso: bool) -> None:
    rx = sockets(family, pktinfo=False)
    tx = sockets(family, pktinfo=False)
    host, port = rx.getsockname()[:2]
    sizes = [1200] * 20 + [500] + [7, 7, 1300, 0, 1300]
    bufs = [bytearray(payload(k, s)) for k, s in enumerate(sizes)]
    endpoint = Endpoint(host, port)
    batch = io.UdpBatch(tx.fileno(), gso=gso)
    sent = batch.send([(memoryview(b), endpoint) for b in bufs])
    assert sent == len(sizes)
    got = recv_all(rx)
    assert [d for d, _ in got] == [bytes(b) for b in bufs]
    assert all(a[:2] == tx.getsockname()[:2] for _, a in got)
    assert batch.errors == {}


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


def test_send_gso_reaches_gro_socket_as_one_message(io: ModuleType, sockets: Any) -> None:
    tx = sockets(socket.AF_INET, pktinfo=False)
    if not io.probe_udp_gso(tx.fileno()):
        pytest.skip("no UDP GSO in this kernel")
    rx = sockets(socket.AF_INET, pktinfo=False)
    assert io.enable_udp_gro(rx.fileno())
    batch = io.UdpBatch(tx.fileno(), gso=True)
    assert batch.gso
    data = [payload(k, 1000) for k in range(10)] + [payload(10, 300)]
    assert batch.send([(d, ("127.0.0.1", rx.getsockname()[1], None)) for d in data]) == 11
    assert wait_readable(rx)
    raw = bytearray(70000)
    size, ancdata, _, _ = rx.recvmsg_into([raw], socket.CMSG_SPACE(4))
    segment = [int.from_bytes(d[:4], "little") for lvl, kind, d in ancdata if (lvl, kind) == (SOL_UDP, UDP_GRO)]
    # One message carried all of them: GSO really was used (and GRO kept it whole).
    assert size == sum(map(len, data))
    assert segment == [1000]
    assert bytes(raw[:size]) == b"".join(data)


def test_sticky_source_and_lost_source(io: ModuleType, sockets: Any) -> None:
    rx = sockets(socket.AF_INET, pktinfo=False)
    tx = sockets(socket.AF_INET, pktinfo=False)
    tx_any = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound to 0.0.0.0: any source
    try:
        tx_any.bind(("0.0.0.0", 0))
        tx_any.setblocking(False)
        batch = io.UdpBatch(tx_any.fileno())
        port = rx.getsockname()[1]
        good = Endpoint("127.0.0.1", port, "127.0.0.2")
        gone = Endpoint("127.0.0.1", port, "192.0.2.77")  # not an address of this host
        sent = batch.send([(b"a" * 100, good), (b"b" * 100, good), (b"c" * 100, gone)])
        assert sent == 3
        got = recv_all(rx)
        assert [(d, a[0]) for d, a in got] == [(b"a" * 100, "127.0.0.2"), (b"b" * 100, "127.0.0.2"),
                                                (b"c" * 100, "127.0.0.1")]
        assert batch.lost_sources == [gone]
    finally:
        tx_any.close()
    del tx


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
    rx = sockets(family)
    tx = sockets(family, pktinfo=False)
    if not io.probe_udp_gso(tx.fileno()):
        pytest.skip("no UDP GSO in this kernel")
    assert io.enable_udp_gro(rx.fileno())
    dest = rx.getsockname()[:2]
    first = [payload(k, 1000) for k in range(10)] + [payload(10, 321)]
    second = [payload(20 + k, 500) for k in range(5)]
    gso_burst(tx, dest, first, 1000)
    gso_burst(tx, dest, second, 500)
    tx.sendto(b"single", dest)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bufs = [bytearray(1500) for _ in range(6)]
    lengths = [0] * 6
    sources: list[Any] = [None] * 6
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
            assert sources[i] == (tx.getsockname()[0], tx.getsockname()[1], LOOPBACK[family])
        if count == 6:
            # The batch filled up: whatever is left of a coalesced message comes next time.
            assert batch.pending >= 0
    assert got == first + second + [b"single"]
    assert rounds >= 3  # 17 datagrams cannot come through 6 slots in fewer calls
    assert batch.pending == 0


def test_gro_receive_small_slots_truncate_each_segment(io: ModuleType, sockets: Any) -> None:
    rx = sockets(socket.AF_INET)
    tx = sockets(socket.AF_INET, pktinfo=False)
    if not io.probe_udp_gso(tx.fileno()):
        pytest.skip("no UDP GSO in this kernel")
    assert io.enable_udp_gro(rx.fileno())
    data = [payload(k, 800) for k in range(4)]
    gso_burst(tx, rx.getsockname(), data, 800)
    batch = io.UdpBatch(rx.fileno(), gro=True)
    bufs = [bytearray(300) for _ in range(8)]
    lengths = [0] * 8
    sources: list[Any] = [None] * 8
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
    rx = sockets(socket.AF_INET)
    tx = sockets(socket.AF_INET, pktinfo=False)
    if not io.probe_udp_gso(tx.fileno()):
        pytest.skip("no UDP GSO in this kernel")
    assert io.enable_udp_gro(rx.fileno())
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
    bufs = [bytearray(200) for _ in range(64)]
    lengths = [0] * 64
    sources: list[Any] = [None] * 64
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
