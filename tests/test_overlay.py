"""L2 over WireGuard in memory: a real engine pair, the interface around b with the fakes of
tests/shellfakes.py, and b's VXLAN endpoint (tunnel.overlay.endpoint) with a fake TAP.

Every pump twin and every l2 twin: the inbound lane (the pump's local delivery) and the general
way (``Device.receive_batch`` then the interface's local delivery) take the VXLAN packets to
the endpoint, leave the rest to the TUN, and cryptokey routing decides: a VXLAN packet whose
inner source is another site's VTEP address (not in the sending peer's allowed IPs) is dropped
and counted by the engine, and the FDB is unchanged. Outbound, frames read from the TAP leave
through ``Interface.send_packets`` sealed for the peer, and a decrypts them into the packets a
kernel vxlan would send.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from types import ModuleType
from typing import Any

import pytest

from crypto import keys
from crypto.backend import HEADROOM
from tests.shellfakes import FakeLoop, FakeSocket, make_interface, make_pair, sealed
from tests.vxlan_wire import ones_sum
from tests.wgpair import Pair, ipv4_packet
from tunnel.io.endpoint import Endpoint
from tunnel.io.journal_ref import JOURNAL_LIMIT
from tunnel.overlay import endpoint as ep
from tunnel.overlay import l2 as l2_pair
from tunnel.overlay import pump as l2pump_pair
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.fast import load as load_fast
from tunnel.wireguard import pump as pump_pair
from tunnel.wireguard.interface import Interface

MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")
MAC_C = bytes.fromhex("02000000000c")
VNI = 42


@pytest.fixture(params=["cython", "pure"])
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType, ModuleType]:
    """(pump, l2, vxlan fast) of one twin; the endpoint module uses that l2."""
    l2 = l2_pair.load(request.param)
    monkeypatch.setattr(ep, "L2", l2)
    monkeypatch.setattr(ep, "L2PUMP", l2pump_pair.load(request.param))
    return pump_pair.load(request.param), l2, load_fast(request.param)


class FakeTap:
    """The TAP batch of the endpoint: records the frames written, reads those in :attr:`inbox`
    (one batch per read, as ``TunBatch.read``: frame at ``headroom``, its length in ``lengths``)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.inbox: list[bytes] = []
        self.reads = 0
        self.pending = 0
        self.errors: dict[str, int] = {}
        self.csum_partial = 0
        self.tso_frames = 0

    def read(self, bufs: list[bytearray], lengths: list[int], headroom: int, mtu: int) -> int:
        self.reads += 1
        n = min(len(self.inbox), len(bufs))
        for i in range(n):
            frame = self.inbox.pop(0)
            bufs[i][headroom : headroom + len(frame)] = frame
            lengths[i] = len(frame)
        return n

    def write_slots(self, bufs: list[bytearray], lengths: list[int], offset: int, verdicts: bytearray,
                    count: int) -> int:
        for i in range(count):
            if verdicts[i] == 0:
                self.frames.append(bytes(bufs[i][offset : lengths[i]]))
        return count

    def write(self, frames: list[Any]) -> int:
        self.frames.extend(bytes(f) for f in frames)
        return len(frames)


def vxlan_packet(src: str, dst: str, smac: bytes, dmac: bytes = MAC_B, body: bytes = b"hello" * 10) -> bytes:
    frame = dmac + smac + b"\x08\x00" + body
    payload = struct.pack(">II", 0x08000000, VNI << 8) + frame
    udp = struct.pack(">HHHH", 49152, 4789, 8 + len(payload), 0) + payload
    return ipv4_packet(src, dst, udp)


def b_endpoint(pump: ModuleType, fast: ModuleType) -> tuple[Pair, Interface, Any, ep.L2Overlay, FakeTap, FakeSocket]:
    pair = make_pair()  # a = 10.0.0.1 (site A's VTEP), b = 10.0.0.2 (ours)
    interface, tun, bind = make_interface(pair.b.device, pump, FakeLoop())
    # site C: another peer of b, whose VTEP is 10.0.0.3
    peer_c = pair.b.device.add_peer(keys.public_from_private(keys.generate_private()))
    pair.b.device.allowed_ips.insert("10.0.0.3/32", peer_c)
    overlay = ep.L2Overlay(interface, VxlanConfig(vni=VNI, local="10.0.0.2", remote="10.0.0.1", name="vx0"))
    overlay.engine = VxlanEngine(overlay.config, time.monotonic(), fast)
    overlay.engine.set_own_mac(MAC_B)
    tap = FakeTap()
    overlay.tap_io = tap
    overlay._set_mtu(1370)
    ep.Hub.of(interface).add(overlay)
    return pair, interface, tun, overlay, tap, FakeSocket(pair.a.endpoint)


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "general"])
def test_vxlan_to_the_tap_rest_to_the_tun_forged_vtep_dropped(twin: Any, lane: bool) -> None:
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    engine = overlay.engine
    assert engine is not None
    now = time.monotonic()
    engine.fdb.learn(MAC_C, "10.0.0.3", now)  # C's MAC, learned from C earlier
    if lane:
        pair.peer_ba.endpoint = sock.source  # the inbound lane wants the current endpoint
    else:  # from another port: a roam the engine must record, so the general way
        sock = FakeSocket(Endpoint(pair.a.endpoint.ip, pair.a.endpoint.port + 1))
    came_back: list[int] = []
    after = interface._inbound.after
    interface._inbound.after = lambda s, count, error: (came_back.append(count), after(s, count, error))
    plain = ipv4_packet("10.0.0.1", "10.0.0.2", b"not vxlan" * 4)
    good = vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A)
    forged = vxlan_packet("10.0.0.3", "10.0.0.2", MAC_C)  # a claims C's VTEP address and MAC
    other_port = bytearray(good)
    other_port[22:24] = struct.pack(">H", 4790)  # UDP to another port: the TUN's
    sock.inbox.extend(sealed(pair, p) for p in (good, plain, forged, bytes(other_port)))
    disallowed = pair.b.device.drops.get("disallowed_source", 0)
    interface._inbound.on_readable(sock, sock.io)
    interface._apply_journal()
    assert (came_back == []) == lane  # the lane took it (and journaled), or the general way did
    assert tap.frames == [good[20 + 8 + 8 :]]
    assert tun.written == [plain, bytes(other_port)]
    assert pair.b.device.drops["disallowed_source"] == disallowed + 1
    lines = engine.fdb.show(now)
    assert any(line.startswith("02:00:00:00:00:0c dst 10.0.0.3 ") for line in lines), lines
    assert any(line.startswith("02:00:00:00:00:0a dst 10.0.0.1 ") for line in lines), lines
    assert engine.fdb.migrated_count == 0
    assert engine.rx_packets == 1


def test_bad_udp_checksum_is_dropped_and_counted(twin: Any) -> None:
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    pair.peer_ba.endpoint = sock.source
    bad = bytearray(vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A))
    bad[26:28] = b"\x12\x34"  # a wrong, non-zero UDP checksum
    sock.inbox.append(sealed(pair, bytes(bad)))
    interface._inbound.on_readable(sock, sock.io)
    assert tap.frames == [] and tun.written == []
    assert overlay.engine is not None and overlay.engine.drops["rx_bad_udp_csum"] == 1


def test_outbound_frames_are_sealed_for_the_peer(twin: Any) -> None:
    """Frames as the TAP batch reads them -> transmit_bufs -> encap -> send_packets; a opens the
    datagrams and finds the IPv4/UDP/VXLAN packets a kernel vxlan would send."""
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    bind = interface.bind
    frames = [MAC_A + MAC_B + b"\x08\x00" + bytes([i]) * (100 + i) for i in range(3)]
    big = MAC_A + MAC_B + b"\x08\x00" + b"x" * (1420 - 36 - 14 + 1)  # its packet: 1421 bytes
    for i, frame in enumerate([*frames, big]):
        overlay._tx_bufs[i][overlay.headroom : overlay.headroom + len(frame)] = frame
        overlay._tx_lengths[i] = len(frame)
    overlay._transmit(4, time.monotonic())
    engine = overlay.engine
    assert engine is not None and engine.drops["tx_oversized"] == 1
    sent = [bytes(d) for d, _ in bind.sent]  # type: ignore[attr-defined]
    assert len(sent) == 3
    out = pair.a.device.receive_batch([bytearray(d) for d in sent], [len(d) for d in sent],
                                      [pair.b.endpoint] * 3, pair.now)
    packets = [bytes(p) for p in out.packets]
    assert len(packets) == 3
    for packet, frame in zip(packets, frames, strict=True):
        assert packet[12:16] == ipaddress.IPv4Address("10.0.0.2").packed
        assert packet[16:20] == ipaddress.IPv4Address("10.0.0.1").packed
        assert ones_sum(packet[:20]) == 0xFFFF
        sport, dport, ulen, csum = struct.unpack(">HHHH", packet[20:28])
        assert dport == 4789 and ulen == len(packet) - 20 and csum == 0
        lo, hi = overlay.config.srcport
        assert lo <= sport <= hi
        assert packet[28:36] == struct.pack(">II", 0x08000000, VNI << 8)
        assert packet[36:] == frame


def test_interface_close_closes_the_endpoint(twin: Any) -> None:
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    assert interface._inbound.local is not None
    ep.Hub.of(interface).close()
    assert overlay._closed and interface._inbound.local is None


def test_extension_request_errors() -> None:
    pair = make_pair()
    interface, _, _ = make_interface(pair.b.device)
    interface.extensions.update({"vxlan": ep.handle})
    assert interface.extension("frob")["ok"] is False
    assert "usage" in interface.extension("vxlan del vx0")["error"]
    assert "local" in interface.extension("vxlan add vx0 id 5 remote 10.0.0.1")["error"]
    assert "not this interface" in interface.extension("vxlan add vx0 id 5 local 10.0.0.2 dev eth9")["error"]
    assert "group" in interface.extension("vxlan add vx0 id 5 group 239.1.1.1 dev fake0 local 10.0.0.2")["error"]
    assert "workers" in interface.extension("vxlan add vx0 id 5 remote 10.0.0.1 workers 2 local 10.0.0.2")["error"]
    assert interface.extension("vxlan add vx0 id x")["ok"] is False


def test_one_endpoint_per_dstport(twin: Any) -> None:
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    answer = ep.handle(interface, "add vx1 id 43 dstport 4789 local 10.0.0.2 remote 10.0.0.1".split())
    assert answer == {"ok": False, "error": "vx0 already uses dstport 4789 on fake0"}


def test_uapi_ext_request_framing() -> None:
    """``ext=WORDS\\n\\n`` reaches the session's extension and is answered like ``stats=1``;
    without an extension it is an unknown operation (EINVAL, closed), as wireguard-go answers."""
    from tests.test_uapi import FakeTarget, _typed
    from tunnel.wireguard.uapi_session import UapiSession

    seen: list[str] = []
    session = UapiSession(_typed(FakeTarget()), extension=lambda words: (seen.append(words), {"ok": True})[1])
    replies = session.feed(b"ext=vxlan add vx0 id 5\n\nget=1\n\n")
    assert seen == ["vxlan add vx0 id 5"]
    assert replies[0] == b'json={"ok":true}\nerrno=0\n\n'
    assert replies[1].endswith(b"errno=0\n\n") and not session.closed
    plain = UapiSession(_typed(FakeTarget()))
    assert plain.feed(b"ext=vxlan add vx0\n\n") == [b"errno=-22\n\n"] and plain.closed


# ---- the lanes (snapshot + journal) against the general way --------------------------------


def _engine_state(overlay: ep.L2Overlay) -> tuple[Any, ...]:
    engine = overlay.engine
    assert engine is not None
    fdb = {mac: ([r.ip for r in e.remotes], e.used) for mac, e in engine.fdb.entries.items()}
    return (engine.tx_packets, engine.tx_bytes, engine.rx_packets, engine.rx_bytes, dict(engine.drops),
            {ip: list(row) for ip, row in engine.remotes.table.items()}, fdb)


def _fill(overlay: ep.L2Overlay, frames: list[bytes]) -> None:
    for i, frame in enumerate(frames):
        overlay._tx_bufs[i][overlay.headroom : overlay.headroom + len(frame)] = frame
        overlay._tx_lengths[i] = len(frame)


def _opened(pair: Pair, bind: Any) -> list[bytes]:
    """The packets the peer opens, the UDP source port (each endpoint's own flow-hash seed)
    left out."""
    sent = [bytes(d) for d, _ in bind.sent]
    out = pair.a.device.receive_batch([bytearray(d) for d in sent], [len(d) for d in sent],
                                      [pair.b.endpoint] * len(sent), pair.now)
    return [bytes(p[:20]) + bytes(p[22:]) for p in out.packets]


def test_outbound_lane_sends_and_counts_as_the_general_way(twin: Any) -> None:
    """The same batch (two runs: a known MAC and a flood; one oversized frame) through the lane
    of one endpoint and the general way of another: the same packets reach the peer, and once
    the journals are applied the engines, the FDB times and the WireGuard peers agree."""
    pump, _l2, fast = twin
    now = time.monotonic()
    frames = [MAC_A + MAC_B + b"\x08\x00" + bytes([i]) * (100 + i) for i in range(3)]
    frames.append(MAC_A + MAC_B + b"\x08\x00" + b"x" * (1420 - 36 - 14 + 1))  # oversized
    frames.append(MAC_C + MAC_B + b"\x08\x00" + b"flooded" * 9)  # unknown MAC: the flood entry
    results = []
    for lane in (True, False):
        pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
        engine = overlay.engine
        assert engine is not None
        engine.fdb.learn(MAC_A, "10.0.0.1", now - 1.0)
        loop = FakeLoop()
        interface._journal.loop = loop
        overlay._loop = loop  # type: ignore[assignment]
        overlay.publish()
        _fill(overlay, frames)
        before = pair.peer_ba.tx_bytes
        if lane:
            assert overlay._transmit_lane(len(frames), now)
            assert overlay._records and interface._journal.records  # both journaled, not yet applied
            assert engine.tx_packets == 0 and pair.peer_ba.tx_bytes == before
            assert loop.fire() == 1  # the interface's journal timer: the endpoint's is applied with it
            assert not overlay._records and not interface._journal.records
        else:
            overlay._transmit(len(frames), now)
            interface._apply_journal()
        results.append((_opened(pair, interface.bind), _engine_state(overlay), pair.peer_ba.tx_bytes - before))
    assert results[0][0] == results[1][0] and len(results[0][0]) == 4
    assert results[0][1] == results[1][1]
    assert results[0][2] == results[1][2] > 0
    assert results[0][1][4]["tx_oversized"] == 1


@pytest.mark.parametrize("case", ["too_short", "no_flood", "proxy_arp", "journal_full", "other_family"])
def test_outbound_lane_leaves_what_it_does_not_cover(twin: Any, case: str) -> None:
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    engine = overlay.engine
    assert engine is not None
    now = time.monotonic()
    overlay._loop = FakeLoop()  # type: ignore[assignment]
    frames = [MAC_A + MAC_B + b"\x08\x00" + b"data" * 20]
    if case == "too_short":
        frames.append(MAC_A + MAC_B)
    elif case == "no_flood":
        engine.fdb.delete(b"\x00" * 6)
    elif case == "proxy_arp":
        engine._proxy = True
        frames.append(b"\xff" * 6 + MAC_B + b"\x08\x06" + bytes(28))
    elif case == "journal_full":
        overlay._records = [(0, (), (), now)] * JOURNAL_LIMIT  # SENT records
    else:
        engine.fdb.append(b"\x00" * 6, "fd00::1", now=now)
    overlay.publish()
    if case == "proxy_arp":
        overlay.snapshot.proxy = True  # type: ignore[union-attr]
    _fill(overlay, frames)
    records = len(overlay._records)
    assert not overlay._transmit_lane(len(frames), now)
    bind: Any = interface.bind
    assert bind.sent == [] and len(overlay._records) == records


def test_inbound_lane_learns_nothing_new_and_counts_as_the_general_way(twin: Any) -> None:
    """A's first frame (a new MAC) goes the general way, which learns it; the snapshot is then
    republished, so the second takes the lane; its journaled record brings the engine to where
    the general way alone leaves another endpoint fed the same packets."""
    pump, _l2, fast = twin
    states = []
    for lane in (True, False):
        pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
        pair.peer_ba.endpoint = sock.source
        loop = FakeLoop()
        interface._journal.loop = loop
        if lane:
            overlay._loop = loop  # type: ignore[assignment]
            overlay.publish()
        for body in (b"first" * 10, b"second" * 10):
            sock.inbox.append(sealed(pair, vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A, body=body)))
            interface._inbound.on_readable(sock, sock.io)
            interface._apply_journal()
        if lane:
            assert overlay.lane_counts["rx_general"] == 1 and overlay.lane_counts["rx_lane"] == 1
            assert not overlay._records  # applied with the interface's journal (journal_hooks)
        else:
            assert overlay.lane_counts["rx_lane"] == 0
        assert [f[12:] for f in tap.frames] == [b"\x08\x00" + b"first" * 10, b"\x08\x00" + b"second" * 10]
        state = _engine_state(overlay)
        states.append(state[:6] + ({mac: ips for mac, (ips, _used) in state[6].items()},))
    assert states[0] == states[1]
    assert states[0][2] == 2


def test_inbound_lane_leaves_a_migration_to_the_engine(twin: Any) -> None:
    """A MAC the FDB holds at another VTEP: the lane refuses it, the engine migrates it."""
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    pair.peer_ba.endpoint = sock.source
    engine = overlay.engine
    assert engine is not None
    engine.fdb.learn(MAC_A, "10.0.0.3", time.monotonic())
    loop = FakeLoop()
    interface._journal.loop = loop
    overlay._loop = loop  # type: ignore[assignment]
    overlay.publish()
    sock.inbox.append(sealed(pair, vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A)))
    interface._inbound.on_readable(sock, sock.io)
    assert overlay.lane_counts == {"tx_lane": 0, "tx_general": 0, "rx_lane": 0, "rx_general": 1}
    assert engine.fdb.migrated_count == 1 and len(tap.frames) == 1
    assert overlay.snapshot is not None and overlay.snapshot.entries[MAC_A][1] == ("10.0.0.1",)  # type: ignore[index]


@pytest.mark.parametrize("journaled", [True, False], ids=["journal", "no-journal"])
def test_send_packets_journals_a_whole_lane_batch(twin: Any, journaled: bool) -> None:
    """``Interface.send_packets`` on its lane: with the journal open (a loop), the batch is sent
    and only its Device.lane_sent waits in the journal; without, it is applied at once. The
    peer's counters end the same either way."""
    pump, _l2, fast = twin
    pair, interface, tun, overlay, tap, sock = b_endpoint(pump, fast)
    if not journaled:
        interface._journal.loop = None
    packet = ipv4_packet("10.0.0.2", "10.0.0.1", b"x" * 100)
    buf = bytearray(HEADROOM + len(packet) + 64)
    buf[HEADROOM : HEADROOM + len(packet)] = packet
    before = pair.peer_ba.tx_bytes
    interface.send_packets([buf], [len(packet)], pair.now)
    bind: Any = interface.bind
    assert len(bind.sent) == 1
    assert bool(interface._journal.records) == journaled
    assert (pair.peer_ba.tx_bytes == before) == journaled
    interface._apply_journal()
    assert pair.peer_ba.tx_bytes == before + len(bind.sent[0][0])
