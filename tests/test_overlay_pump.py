"""The L2 overlay's pump (tunnel/overlay/_pump.pyx and pump_ref.py) in memory: the engine pair,
the interface and b's endpoint of tests/test_overlay.py, a fake TAP that reads what the test
queues (and, as the kernel does, can queue a reply while a frame is written).

Both twins: a steady-state TAP round is sealed and sent whole by the pump, leaving only the two
journals' records, which bring the engines where the general way leaves them; a round the pump
does not settle goes the general way after the journal is applied (order kept); a reply to what
the local delivery wrote leaves in the WireGuard inbound wake-up that delivered the request; and
the native and pure pumps give the same packets, counters, FDB times and records.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.shellfakes import FakeLoop, sealed
from tests.test_overlay import MAC_A, MAC_B, MAC_C, FakeTap, _engine_state, _opened, b_endpoint, vxlan_packet
from tunnel.overlay import endpoint as ep
from tunnel.overlay import l2 as l2_pair
from tunnel.overlay import pump as l2pump_pair
from tunnel.overlay.pump_ref import ENCAPSULATED, READ, SENT_WHOLE
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.fast import load as load_fast
from tunnel.vxlan.pump_ref import RECEIVED as VX_RECEIVED
from tunnel.vxlan.pump_ref import SENT as VX_SENT
from tunnel.wireguard import pump as pump_pair

TWINS = ["cython", "pure"]


def use_twin(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """The endpoint module on one twin (l2 and the overlay pump); returns (WireGuard pump, fast).
    A missing native build is an error, never a skip."""
    monkeypatch.setattr(ep, "L2", l2_pair.load(name))
    monkeypatch.setattr(ep, "L2PUMP", l2pump_pair.load(name))
    return pump_pair.load(name), load_fast(name)


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    return use_twin(request.param, monkeypatch)


class EchoTap(FakeTap):
    """A TAP whose kernel answers each frame written to it (source and destination MACs swapped,
    ``reply`` appended to the payload) by queueing the answer to be read, as an echo reply or a
    TCP ACK is queued during the write."""

    def write_slots(self, bufs: list[bytearray], lengths: list[int], offset: int, verdicts: bytearray,
                    count: int) -> int:
        before = len(self.frames)
        written = super().write_slots(bufs, lengths, offset, verdicts, count)
        for frame in self.frames[before:]:
            self.inbox.append(frame[6:12] + frame[0:6] + frame[12:] + b"reply")
        return written


def endpoint(pump: ModuleType, fast: ModuleType, tap: FakeTap | None = None) -> Any:
    """b's endpoint with MAC_A learned at a's VTEP, the loops (journals open) and the snapshot."""
    pair, interface, tun, overlay, fake, sock = b_endpoint(pump, fast)
    if tap is not None:
        overlay.tap_io = tap
        fake = tap
    engine = overlay.engine
    assert engine is not None
    engine.fdb.learn(MAC_A, "10.0.0.1", pair.now - 1.0)
    loop = FakeLoop()
    interface._journal.loop = loop
    overlay._loop = loop
    overlay.publish()
    pair.peer_ba.endpoint = sock.source  # the inbound lane wants the current endpoint
    afters: list[int] = []
    after = overlay.pump.after
    overlay.pump.after = lambda count, error: (afters.append(count), after(count, error))
    return pair, interface, tun, overlay, fake, sock, afters


FRAMES = [MAC_A + MAC_B + b"\x08\x00" + bytes([i]) * (100 + i) for i in range(3)] + [
    MAC_C + MAC_B + b"\x08\x00" + b"flooded" * 9]  # unknown MAC: the flood entry (a's VTEP)


def test_tap_round_is_sent_whole_and_journaled(twin: Any) -> None:
    """A TAP batch the snapshot covers: the pump reads, encapsulates, seals and sends it in one
    call; only the records wait, and applied they leave the engines as the general way does."""
    pump, fast = twin
    results = []
    for lane in (True, False):
        pair, interface, tun, overlay, tap, sock, afters = endpoint(pump, fast)
        engine = overlay.engine
        before = pair.peer_ba.tx_bytes
        tap.inbox.extend(FRAMES)
        if lane:
            overlay.pump.on_readable()
            assert afters == [] and overlay.pump.stage == SENT_WHOLE and overlay.pump.tx_whole == 1
            assert [r[0] for r in overlay._records] == [VX_SENT] and len(interface._journal.records) == 1
            assert engine.tx_packets == 0 and pair.peer_ba.tx_bytes == before  # not applied yet
            interface._apply_journal()  # the endpoint's journal is applied with the interface's
            assert not overlay._records and engine.tx_packets == len(FRAMES)
            assert engine.fdb.entries[MAC_A].used == overlay.pump.now  # the FDB time is the round's
        else:
            overlay._loop = None  # no loop: the lanes refuse, the shell's general way
            overlay.pump.on_readable()
            assert afters == [len(FRAMES)] and overlay.lane_counts["tx_general"] == 1
            interface._apply_journal()
        assert overlay.lane_counts["tx_lane"] == int(lane)
        results.append((_opened(pair, interface.bind), _engine_state(overlay)[:6], pair.peer_ba.tx_bytes - before))
    assert results[0] == results[1]
    assert len(results[0][0]) == len(FRAMES) and results[0][1][0] == len(FRAMES)


def test_round_not_settled_goes_the_general_way_after_the_journal(twin: Any) -> None:
    """A lane round leaves its records; the next round has a frame the snapshot does not cover
    (too short): ``after`` gets it, the endpoint's journal is applied before the engine sees the
    batch, the interface's before ``send_packets``' general way, and every frame is counted."""
    pump, fast = twin
    pair, interface, tun, overlay, tap, sock, afters = endpoint(pump, fast)
    engine = overlay.engine
    tap.inbox.extend(FRAMES[:2])
    overlay.pump.on_readable()
    assert afters == [] and len(overlay._records) == 1 and len(interface._journal.records) == 1
    seen: list[tuple[int, int]] = []
    transmit = engine.transmit_bufs

    def spy(*args: Any) -> Any:
        seen.append((len(overlay._records), engine.tx_packets))
        return transmit(*args)

    engine.transmit_bufs = spy  # type: ignore[method-assign]
    tap.inbox.extend([FRAMES[2], MAC_A + MAC_B])  # the second is too short for a frame
    overlay.pump.on_readable()
    assert afters == [2] and overlay.pump.stage == READ
    assert seen == [(0, 2)]  # the lane's record applied first: its 2 frames counted before
    assert overlay.lane_counts == {"tx_lane": 1, "tx_general": 1, "rx_lane": 0, "rx_general": 0}
    interface._apply_journal()
    assert engine.tx_packets == 3 and engine.drops.get("tx_short", 0) + sum(engine.drops.values()) >= 1
    assert len(_opened(pair, interface.bind)) == 3


def test_wireguard_lane_refused_sends_through_send_packets(twin: Any) -> None:
    """The snapshot covers the batch but the interface's journal is closed: the pump
    encapsulates (its record journaled) and the shell sends through ``send_packets``, which
    books the WireGuard side at once."""
    pump, fast = twin
    pair, interface, tun, overlay, tap, sock, afters = endpoint(pump, fast)
    interface._journal.loop = None
    before = pair.peer_ba.tx_bytes
    tap.inbox.extend(FRAMES[:1])
    overlay.pump.on_readable()
    assert afters == [1] and overlay.pump.stage == ENCAPSULATED and overlay.pump.tx_whole == 0
    assert len(interface.bind.sent) == 1  # type: ignore[union-attr]
    assert pair.peer_ba.tx_bytes > before and not interface._journal.records
    assert [r[0] for r in overlay._records] == [VX_SENT]


def test_reply_leaves_in_the_inbound_wakeup(twin: Any) -> None:
    """A VXLAN request through the WireGuard inbound pump: the local delivery writes it to the
    TAP, the kernel (EchoTap) queues the reply, and the pump's answer reads and sends it before
    the wake-up ends; the WireGuard journal holds the request's record, then the reply's."""
    pump, fast = twin
    pair, interface, tun, overlay, tap, sock, afters = endpoint(pump, fast, EchoTap())
    came_back: list[int] = []
    after = interface._inbound.after
    interface._inbound.after = lambda s, count, error: (came_back.append(count), after(s, count, error))
    request = vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A, body=b"ping" * 20)
    sock.inbox.append(sealed(pair, request))
    interface._inbound.on_readable(sock, sock.io)
    assert came_back == [] and afters == []
    assert tap.frames == [request[36:]]
    assert overlay.pump.answers == 1 and overlay.lane_counts["rx_lane"] == 1 and overlay.pump.tx_whole == 1
    kinds = [record[0] for record in interface._journal.records]
    assert kinds == [pump.RECEIVED, pump.SENT]
    assert [r[0] for r in overlay._records] == [VX_RECEIVED, VX_SENT]
    (reply,) = _opened(pair, interface.bind)
    assert reply[36 - 2 :] == MAC_A + MAC_B + b"\x08\x00" + b"ping" * 20 + b"reply"
    interface._inbound.on_readable(sock, sock.io)  # nothing more: no answer without a write
    assert overlay.pump.answers == 1


def _observe(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One scenario on one twin: a request in (answered), a TAP batch out, a batch the lanes
    leave; what leaves, what the records and engines say (times as offsets from the round's)."""
    pump, fast = use_twin(name, monkeypatch)
    pair, interface, tun, overlay, tap, sock, afters = endpoint(pump, fast, EchoTap())
    sock.inbox.append(sealed(pair, vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A, body=b"q" * 50)))
    interface._inbound.on_readable(sock, sock.io)
    tap.inbox.extend(FRAMES)
    overlay.pump.on_readable()
    records = [tuple(x for x in r if not isinstance(x, float)) for r in overlay._records]
    tap.inbox.extend([MAC_A + MAC_B])
    overlay.pump.on_readable()
    interface._apply_journal()
    overlay.flush()
    engine = overlay.engine
    assert engine is not None
    return {"sent": _opened(pair, interface.bind), "tap": list(tap.frames), "records": records,
            "engine": _engine_state(overlay)[:6], "lanes": dict(overlay.lane_counts), "afters": afters,
            "whole": overlay.pump.tx_whole, "answers": overlay.pump.answers,
            "fdb": sorted((mac.hex(), entry.used == overlay.pump.now or entry.used) for mac, entry
                          in engine.fdb.entries.items() if mac != bytes(6))}


def test_native_and_pure_pumps_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    native = _observe("cython", monkeypatch)
    pure = _observe("pure", monkeypatch)
    assert native["fdb"] != [] and native["records"] != []
    for key in native:
        if key != "fdb":
            assert native[key] == pure[key], key
    # FDB times: MAC_A used by the rounds (at the pump's clock), the same in both
    assert [k for k, v in native["fdb"] if v is True] == [k for k, v in pure["fdb"] if v is True]


def test_pump_arguments_are_checked_the_same(twin: Any) -> None:
    for name in TWINS:
        mod = l2pump_pair.load(name)
        with pytest.raises(ValueError):
            mod.L2Pump(load_fast(name), l2_pair.load(name), None, 4, bytes(4), 4789)  # headroom < HEADROOM
        with pytest.raises(ValueError):
            mod.L2Pump(load_fast(name), l2_pair.load(name), None, 200, bytes(5), 4789)


def test_two_endpoints_share_the_delivery_and_the_answer(twin: Any) -> None:
    """Two endpoints on one interface (dstports 4789 and 4790): the Hub's delivery gives each
    its packets, its answer runs each pump's; removing one installs the other's pump itself."""
    pump, fast = twin
    pair, interface, tun, overlay, tap, sock, afters = endpoint(pump, fast, EchoTap())
    other = ep.L2Overlay(interface, VxlanConfig(vni=42, local="10.0.0.2", remote="10.0.0.1", name="vx1",
                                                   dstport=4790))
    other.engine = VxlanEngine(other.config, pair.now, fast)
    other.engine.set_own_mac(MAC_B)
    other.engine.fdb.learn(MAC_A, "10.0.0.1", pair.now - 1.0)
    other_tap = EchoTap()
    other.tap_io = other_tap
    other._set_mtu(1370)
    other._loop = overlay._loop
    other.publish()
    hub = ep.Hub.of(interface)
    hub.add(other)
    assert interface._inbound.local == hub.deliver and interface._inbound.answer == hub.answer
    to_other = bytearray(vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A, body=b"other" * 9))
    to_other[22:24] = (4790).to_bytes(2, "big")
    sock.inbox.extend([sealed(pair, vxlan_packet("10.0.0.1", "10.0.0.2", MAC_A, body=b"first" * 9)),
                       sealed(pair, bytes(to_other))])
    interface._inbound.on_readable(sock, sock.io)
    assert [f[14:] for f in tap.frames] == [b"first" * 9]
    assert [f[14:] for f in other_tap.frames] == [b"other" * 9]
    assert overlay.pump.answers == 1 and other.pump.answers == 1
    assert len(_opened(pair, interface.bind)) == 2  # both replies sent in that wake-up
    other.close("test")
    assert interface._inbound.local == overlay.pump.deliver and interface._inbound.answer == overlay.pump.answer
