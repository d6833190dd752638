"""The VXLAN per-wake-up pumps (``tunnel.vxlan._pump`` / ``tunnel.vxlan.pump_ref``), each test
against both twins (with the matching ``tunnel.vxlan.fast`` and batch I/O twins).

Real parts: the TAP is a datagram socketpair read and written by the real ``TunBatch`` (plain,
l2=14), the underlay is loopback UDP (the real ``UdpBatch`` receiving, the real ``PoolSender``
sockets and native send batch sending). The oracle for what a settled batch's journal record
does to the engine is a second engine fed the same frames through the general way
(``transmit_bufs`` / ``receive_bufs``); the wire bytes are checked against the VXLAN header
written out by hand (RFC 7348: flags 0x08, VNI in bytes 4-6).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tunnel.io.offload import load_io
from tunnel.vxlan import fast as fast_pair
from tunnel.vxlan import pump as pump_pair
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.sockets import PoolSender

OWN_MAC = bytes.fromhex("02000000aa01")
PEER_MAC = bytes.fromhex("02000000bb01")
OTHER_MAC = bytes.fromhex("02000000cc01")
VNI = 42
BATCH = 8


def vxlan_header(vni: int) -> bytes:
    return struct.pack(">BxxxI", 0x08, vni << 8)


def ipv4_udp_frame(dst: bytes, src: bytes, sport: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame (checksum 0: not checked over IPv4 UDP)."""
    udp = struct.pack(">HHHH", sport, 7, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    words = sum(struct.unpack(">10H", bytes(ip)))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    ip[10:12] = struct.pack(">H", ~words & 0xFFFF)
    return dst + src + b"\x08\x00" + bytes(ip) + udp


def arp_request(src: bytes) -> bytes:
    body = struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src, bytes([10, 0, 0, 1]),
                       bytes(6), bytes([10, 0, 0, 9]))
    return b"\xff" * 6 + src + b"\x08\x06" + body


class Loop:
    """Records ``call_later`` (the journal's timer)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.calls.append((delay, callback))


class Rig:
    """One side's pumps over real sockets; ``peer`` is the remote VTEP's socket."""

    def __init__(self, name: str, *, remote: bool = True, proxy: bool = False,
                 learning: bool = True) -> None:
        self.pump = pump_pair.load(name)
        self.fast = fast_pair.load(name)
        self.io = load_io(name)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.settimeout(2.0)
        port = self.peer.getsockname()[1]
        self.config = VxlanConfig(vni=VNI, remote="127.0.0.1" if remote else None, dstport=port,
                                  name="vxp0", proxy=proxy, learning=learning, own_mac=OWN_MAC)
        self.kernel, self.tap_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.tap_sock.setblocking(False)
        self.tap = self.io.TunBatch(self.tap_sock.fileno(), vnet_hdr=False, l2=14, verify=True)
        self.tap.mtu = 1500
        self.udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_sock.bind(("127.0.0.1", 0))
        self.udp_sock.setblocking(False)
        self.udp = self.io.UdpBatch(self.udp_sock.fileno(), gso=False, gro=False,
                                    make_source=lambda ip, port, local: ip)
        self.sender = PoolSender(self.config, self.fast, size=2)
        self.engine = VxlanEngine(self.config, time.monotonic(), self.fast)
        self.oracle = VxlanEngine(self.config, time.monotonic(), self.fast)
        self.loop = Loop()
        self.afters: list[tuple[str, int, Exception | None]] = []
        self.journal = self.pump.Journal(0.002, lambda: None)
        self.journal.loop = self.loop
        self.out = self.pump.Outbound(self.tap, self.sender.batch, self.fast, self.journal,
                                      lambda n, e: self.afters.append(("tx", n, e)), 8)
        self.out.tap_bufs = [bytearray(8 + 14 + 1500 + 64) for _ in range(BATCH)]
        self.out.tap_lengths = [0] * BATCH
        self.out.verdicts = bytearray(BATCH)
        self.out.sports = array("H", bytes(2 * BATCH))
        self.inb = self.pump.Inbound(self.udp, self.tap, self.fast, self.out,
                                     lambda n, e: self.afters.append(("rx", n, e)))
        self.inb.udp_bufs = [bytearray(2048) for _ in range(BATCH)]
        self.inb.udp_lengths = [0] * BATCH
        self.inb.udp_sources = [None] * BATCH
        self.inb.verdicts = bytearray(BATCH)
        self.publish()

    def publish(self) -> None:
        self.out.snapshot = self.pump.compile_snapshot(self.engine, self.sender.dest)

    def learn(self, mac: bytes, ip: str = "127.0.0.1") -> None:
        """Both engines know ``mac`` behind ``ip`` (as if learned earlier)."""
        now = time.monotonic()
        assert self.engine.fdb.learn(mac, ip, now) is None
        assert self.oracle.fdb.learn(mac, ip, now) is None
        self.publish()

    def apply(self) -> None:
        for record in self.journal.take():
            self.pump.apply_record(self.engine, record)

    def oracle_transmit(self, frames: list[bytes]) -> None:
        bufs = [bytearray(8 + len(f)) for f in frames]
        for buf, frame in zip(bufs, frames, strict=True):
            buf[8:] = frame
        n = len(frames)
        self.oracle.transmit_bufs(bufs, [len(f) for f in frames], n, time.monotonic(), 8,
                                  bytearray(n), array("H", bytes(2 * n)))

    def oracle_receive(self, datagrams: list[bytes], source: str = "127.0.0.1") -> None:
        n = len(datagrams)
        self.oracle.receive_bufs([bytearray(d) for d in datagrams], [len(d) for d in datagrams],
                                 [source] * n, n, time.monotonic(), bytearray(n))

    def counters(self, engine: VxlanEngine) -> dict[str, Any]:
        stats = engine.stats()
        return {k: stats[k] for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes",
                                      "fdb_entries", "fdb_learned", "drops", "remotes")}

    def close(self) -> None:
        self.sender.close()
        self.udp.close()
        for sock in (self.peer, self.kernel, self.tap_sock, self.udp_sock):
            sock.close()


@pytest.fixture(params=["cython", "pure"])
def twin(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython twins")
    return name


@pytest.fixture
def rig(twin: str) -> Iterator[Rig]:
    r = Rig(twin)
    yield r
    r.close()


def make_rig(twin: str, **kwargs: Any) -> Rig:
    return Rig(twin, **kwargs)


def send_to(rig: Rig, datagrams: list[bytes], source_ip: str = "127.0.0.1") -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((source_ip, 0))
        for d in datagrams:
            sock.sendto(d, rig.udp_sock.getsockname())
    finally:
        sock.close()
    time.sleep(0.05)  # loopback delivery; the pump reads until EAGAIN


def test_outbound_lane_sends_and_journals(rig: Rig) -> None:
    frames = [ipv4_udp_frame(PEER_MAC, OWN_MAC, 1000 + i, b"x" * (50 + i)) for i in range(3)]
    for f in frames:
        rig.kernel.send(f)
    rig.out.on_readable()
    assert rig.afters == []
    assert rig.out.lane and rig.out.sent == 3
    got = [rig.peer.recv(4096) for _ in frames]
    assert sorted(got) == sorted(vxlan_header(VNI) + f for f in frames)
    assert len(rig.journal.records) == 1 and rig.loop.calls  # the timer is armed once
    rig.apply()
    rig.oracle_transmit(frames)
    assert rig.counters(rig.engine) == rig.counters(rig.oracle)


def test_inbound_lane_delivers_and_journals(rig: Rig) -> None:
    rig.learn(PEER_MAC)
    frames = [ipv4_udp_frame(OWN_MAC, PEER_MAC, 2000 + i, b"y" * (60 + i)) for i in range(4)]
    datagrams = [vxlan_header(VNI) + f for f in frames]
    send_to(rig, datagrams)
    rig.inb.on_readable()
    assert rig.afters == []
    assert rig.inb.lane and rig.inb.accepted == 4 and rig.inb.written == 4
    assert [rig.kernel.recv(4096) for _ in frames] == frames
    assert rig.inb.answered and rig.inb.replied == 0  # the outbound pump ran; nothing to read
    rig.apply()
    rig.oracle_receive(datagrams)
    assert rig.counters(rig.engine) == rig.counters(rig.oracle)
    updated = rig.engine.fdb.entries[PEER_MAC].updated
    assert updated >= rig.inb.now  # the record refreshed the entry, as Fdb.learn does


def test_inbound_write_runs_the_outbound_pump_once(rig: Rig) -> None:
    rig.learn(PEER_MAC)
    reply = ipv4_udp_frame(PEER_MAC, OWN_MAC, 7, b"reply")
    rig.kernel.send(reply)  # the "kernel's answer", queued before the pump runs
    send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 9, b"request")])
    rig.inb.on_readable()
    assert rig.afters == []
    assert rig.inb.answered and rig.inb.replied == 1 and rig.out.lane
    assert rig.peer.recv(4096) == vxlan_header(VNI) + reply
    kinds = [record[0] for record in rig.journal.records]
    assert kinds == [rig.pump.RECEIVED, rig.pump.SENT]


def test_new_source_mac_goes_the_general_way(rig: Rig) -> None:
    datagram = vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, OTHER_MAC, 1, b"z")
    send_to(rig, [datagram])
    rig.inb.on_readable()
    assert rig.afters == [("rx", 1, None)] and not rig.inb.lane
    assert rig.inb.written == 0 and rig.journal.records == []
    # the batch is still in the buffers for the general way, which learns
    delivered = rig.engine.receive_bufs(rig.inb.udp_bufs, rig.inb.udp_lengths,
                                        rig.inb.udp_sources, 1, time.monotonic(),
                                        rig.inb.verdicts)
    assert delivered == 1 and OTHER_MAC in rig.engine.fdb.entries


def test_moved_mac_and_mixed_sources_go_the_general_way(rig: Rig) -> None:
    rig.learn(PEER_MAC, "127.0.0.2")  # known behind another VTEP: a migration
    send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 1, b"m")])
    rig.inb.on_readable()
    assert rig.afters == [("rx", 1, None)] and not rig.inb.lane
    rig.afters.clear()
    rig.learn(PEER_MAC, "127.0.0.1")
    rig.learn(OTHER_MAC, "127.0.0.2")
    send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 1, b"a")])
    send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, OTHER_MAC, 1, b"b")], "127.0.0.2")
    rig.inb.on_readable()
    assert rig.afters == [("rx", 2, None)] and not rig.inb.lane


def test_malformed_datagram_goes_the_general_way(rig: Rig) -> None:
    rig.learn(PEER_MAC)
    good = vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 1, b"ok")
    send_to(rig, [good, vxlan_header(VNI + 1) + good[8:]])
    rig.inb.on_readable()
    assert rig.afters == [("rx", 2, None)] and not rig.inb.lane and rig.inb.written == 0
    delivered = rig.engine.receive_bufs(rig.inb.udp_bufs, rig.inb.udp_lengths,
                                        rig.inb.udp_sources, 2, time.monotonic(),
                                        rig.inb.verdicts)
    assert delivered == 1 and rig.engine.drops["wrong_vni"] == 1


def test_unknown_mac_without_flood_entry_goes_the_general_way(twin: str) -> None:
    rig = make_rig(twin, remote=False)
    try:
        rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 1, b"q"))
        rig.out.on_readable()
        assert rig.afters == [("tx", 1, None)] and not rig.out.lane
        rig.learn(PEER_MAC)  # now the FDB knows it
        rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 1, b"q"))
        rig.out.on_readable()
        assert rig.afters == [("tx", 1, None)] and rig.out.lane
        assert rig.peer.recv(4096)[:8] == vxlan_header(VNI)
    finally:
        rig.close()


def test_proxy_sends_arp_and_every_receive_the_general_way(twin: str) -> None:
    rig = make_rig(twin, proxy=True)
    try:
        rig.kernel.send(arp_request(OWN_MAC))
        rig.out.on_readable()
        assert rig.afters == [("tx", 1, None)] and not rig.out.lane
        rig.learn(PEER_MAC)
        send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 1, b"p")])
        rig.inb.on_readable()
        assert rig.afters[-1] == ("rx", 1, None) and not rig.inb.lane
    finally:
        rig.close()


def test_no_snapshot_and_closed_journal_go_to_after(rig: Rig) -> None:
    rig.out.snapshot = None
    rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 1, b"s"))
    rig.out.on_readable()
    assert rig.afters == [("tx", 1, None)] and not rig.out.lane
    rig.publish()
    rig.journal.loop = None  # not journaling: a sent batch is accounted by ``after``
    rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 1, b"s"))
    rig.out.on_readable()
    assert rig.afters[-1] == ("tx", 1, None) and rig.out.lane
    assert rig.out.pending_record()[0] == rig.pump.SENT


def test_full_journal_goes_to_after(rig: Rig) -> None:
    for _ in range(rig.pump.JOURNAL_LIMIT):
        rig.journal.records.append((rig.pump.SENT, (), (), 0.0))
    rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 1, b"f"))
    rig.out.on_readable()
    assert rig.afters == [("tx", 1, None)] and rig.out.lane


class Leftovers:
    """A batch I/O object whose ``pending`` the test sets (the real one's otherwise): segments
    waiting in a TAP or UDP batch, which the rig's plain TAP and GRO-less socket never have."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.pending = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_full_batch_is_journaled_when_the_pump_may_reschedule(rig: Rig) -> None:
    """A full lane batch: without ``again`` the shell's ``after`` accounts for it; with it, the
    pump journals it like a settled one and asks for nothing (the fd stays readable); the next
    wake-up reads the rest. The records do to the engine what the general way does."""
    frames = [ipv4_udp_frame(PEER_MAC, OWN_MAC, 3000 + i, b"w" * (40 + i)) for i in range(2 * BATCH + 1)]
    for f in frames[:BATCH]:
        rig.kernel.send(f)
    rig.out.on_readable()
    assert rig.afters == [("tx", BATCH, None)] and rig.out.lane and rig.journal.records == []
    accounted = rig.out.pending_record()  # what the shell's after applies
    rig.afters.clear()
    again: list[Callable[[], None]] = []
    rig.out.again = again.append
    for f in frames[BATCH:]:
        rig.kernel.send(f)
    rig.out.on_readable()
    assert rig.afters == [] and again == [] and len(rig.journal.records) == 1
    rig.out.on_readable()  # the one left
    assert rig.afters == [] and len(rig.journal.records) == 2
    got = [rig.peer.recv(4096) for _ in frames]
    assert sorted(got) == sorted(vxlan_header(VNI) + f for f in frames)
    rig.pump.apply_record(rig.engine, accounted)
    rig.apply()
    rig.oracle_transmit(frames)
    assert rig.counters(rig.engine) == rig.counters(rig.oracle)


def test_waiting_segments_make_the_pump_reschedule_itself(rig: Rig) -> None:
    """Segments left in the TAP batch (or the UDP batch) do not make the fd readable: with
    ``again`` the pump journals the lane batch and calls ``again(on_readable)``, as the shell's
    ``after`` would reschedule it; without, ``after`` gets the batch."""
    rig.learn(PEER_MAC)
    tap = Leftovers(rig.tap)
    rig.out.tap = rig.inb.tap = tap
    udp = Leftovers(rig.udp)
    rig.inb.udp = udp
    tap.pending = 1
    rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 1, b"a"))
    rig.out.on_readable()
    assert rig.afters == [("tx", 1, None)]
    rig.afters.clear()
    again: list[Callable[[], None]] = []
    rig.out.again = rig.inb.again = again.append
    rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 2, b"b"))
    rig.out.on_readable()
    assert rig.afters == [] and again == [rig.out.on_readable]
    assert [r[0] for r in rig.journal.records] == [rig.pump.SENT]
    # inbound: GRO segments waiting; its outbound reply also leaves segments: inbound first
    tap.pending = 0
    udp.pending = 2
    again.clear()
    send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 3, b"c")])
    rig.inb.on_readable()
    assert rig.afters == [] and again == [rig.inb.on_readable] and rig.inb.written == 1
    assert rig.kernel.recv(4096)[12:14] == b"\x08\x00"
    udp.pending = 0
    tap.pending = 1
    again.clear()
    rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 4, b"d"))  # the "answer" the write makes
    send_to(rig, [vxlan_header(VNI) + ipv4_udp_frame(OWN_MAC, PEER_MAC, 5, b"e")])
    rig.inb.on_readable()
    assert rig.afters == [] and rig.inb.answered and rig.inb.replied == 1
    assert again == [rig.out.on_readable]
    kinds = [r[0] for r in rig.journal.records]
    assert kinds == [rig.pump.SENT, rig.pump.RECEIVED, rig.pump.RECEIVED, rig.pump.SENT]


def test_leftovers_with_anything_else_still_go_to_after(rig: Rig) -> None:
    """``again`` covers only what is left to read: a full batch that takes the general way
    (no snapshot) or a send with a refused datagram still goes to ``after``."""
    again: list[Callable[[], None]] = []
    rig.out.again = again.append
    rig.out.snapshot = None
    for i in range(BATCH):
        rig.kernel.send(ipv4_udp_frame(PEER_MAC, OWN_MAC, 10 + i, b"g"))
    rig.out.on_readable()
    assert rig.afters == [("tx", BATCH, None)] and not rig.out.lane and again == []
    assert not rig.out.leftover(BATCH) and not rig.out.leftover(0)
    assert not rig.inb.leftover(0)


def test_read_error_goes_to_after(rig: Rig) -> None:
    rig.tap_sock.close()
    rig.out.on_readable()
    assert len(rig.afters) == 1
    kind, count, error = rig.afters[0]
    assert kind == "tx" and count == 0 and isinstance(error, OSError)


def test_argument_errors_are_the_same(twin: str) -> None:
    pump = pump_pair.load(twin)
    journal = pump.Journal(0.001, lambda: None)
    with pytest.raises(TypeError):
        pump.Outbound(None, None, None, None, lambda n, e: None, 8)
    with pytest.raises(ValueError):
        pump.Outbound(None, None, None, journal, lambda n, e: None, -1)
    out = pump.Outbound(None, None, None, journal, lambda n, e: None, 8)
    with pytest.raises(ValueError):
        out.headroom = -1
    with pytest.raises(TypeError):
        pump.Inbound(None, None, None, None, lambda n, e: None)
    with pytest.raises(TypeError):
        out.run((), [], 8, 0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        journal.add([1])  # type: ignore[arg-type]
    assert not journal.open()  # no loop yet: nothing is journaled


class _FakeTap:
    """A TAP batch stand-in: ``errors`` as ``TunBatch.errors`` keeps them."""

    def __init__(self, errors: dict[str, int]) -> None:
        self.errors = errors


def _raise(code: int) -> None:
    raise OSError(code, os.strerror(code))


def test_write_tap_counts_failures_and_batch_errors_as_drops() -> None:
    from collections import Counter

    from tunnel.vxlan.datapath import write_tap

    drops: Counter[str] = Counter()
    tap = _FakeTap({})
    write_tap(tap, drops, 5, _raise, errno.EIO)  # the device is down: every frame
    write_tap(tap, drops, 3, _raise, errno.EBADFD)  # going away
    assert drops == Counter({"device_down": 5, "tap_write_error": 3})

    drops.clear()
    tap.errors.update({"read:too_big": 2, "write:oversized": 1, "write:EIO": 4, "write:EINVAL": 6})
    written: list[int] = []
    write_tap(tap, drops, 9, written.append, 9)
    assert written == [9]
    assert tap.errors == {}  # moved, not copied
    assert drops == Counter({"tap_too_big": 2, "tap_oversized": 1, "device_down": 4, "tap_write_error": 6})
