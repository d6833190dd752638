"""The per-wake-up pumps (tunnel.wireguard._pump and tunnel.wireguard.pump_ref) and their journal, through the shell.

Each test runs against both twins. A real engine pair makes the traffic; the interface under test
wraps one side's engine with the fakes of :mod:`tests.shellfakes`, so what the pumps read, seal,
open, send and write is checked end to end, and what they journal is checked against the
engine's general path (``send_batch``/``receive_batch``) fed the same traffic.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import pytest

from tunnel.io.endpoint import Endpoint
from tunnel.io.offload import load_io
from tunnel.wireguard import pump as pump_pair
from tunnel.wireguard.device import Device
from tunnel.wireguard.interface import MAX_ROUNDS, TUN_BATCH, UDP_BATCH, Interface
from tunnel.wireguard.output import Output, packet_buffer
from tunnel.wireguard.peer import Peer

from .shellfakes import FakeLoop, FakeSocket, FakeTun, make_interface, make_pair, sealed
from .wgpair import Pair, ipv4_packet

REQUEST = ipv4_packet("10.0.0.1", "10.0.0.2", b"ping" * 10)
REPLY = ipv4_packet("10.0.0.2", "10.0.0.1", b"pong" * 10)


@pytest.fixture(params=["cython", "pure"])
def pump(request: pytest.FixtureRequest) -> ModuleType:
    return pump_pair.load(request.param)


def record_calls(target: Any, name: str, log: list[str]) -> None:
    """Log ``name`` to ``log`` each time ``target.name`` is called (then call through)."""
    original = getattr(target, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        log.append(name)
        return original(*args, **kwargs)

    setattr(target, name, spy)


def answer_on_write(tun: FakeTun, *answers: bytes) -> None:
    """Make the fake TUN queue ``answers`` when written to, as the kernel queues an echo reply."""
    original = tun.write_batch

    def write(views: Sequence[bytes | bytearray | memoryview]) -> int:
        tun.inbox.extend(answers)
        return original(views)

    tun.write_batch = write  # type: ignore[method-assign]


def b_side(pump: ModuleType, loop: FakeLoop | None) -> tuple[Pair, Interface, FakeTun, Any, FakeSocket]:
    pair = make_pair()
    interface, tun, bind = make_interface(pair.b.device, pump, loop)
    return pair, interface, tun, bind, FakeSocket(pair.a.endpoint)


def settle_source(pair: Pair, sock: FakeSocket, interface: Interface) -> None:
    """b's peer endpoint becomes the source the fake socket reports (what receive_lane checks)."""
    pair.peer_ba.endpoint = sock.source


# ---------------------------------------------------------------------------------------- journal


def test_journal_arms_one_timer_and_keeps_order(pump: ModuleType) -> None:
    flushed: list[list[tuple[Any, ...]]] = []
    journal = pump.Journal(0.002, lambda: flushed.append(journal.take()))
    assert not journal.open()  # no loop: nothing may be journaled
    loop = FakeLoop()
    journal.loop = loop
    journal.add((0, "first"))
    journal.add((1, "second"))
    assert [delay for delay, _ in loop.later] == [0.002]
    assert loop.fire() == 1
    assert flushed == [[(0, "first"), (1, "second")]] and journal.take() == []
    journal.add((0, "third"))  # the timer fired: a new record arms a new one
    assert len(loop.later) == 1
    for k in range(pump.JOURNAL_LIMIT - 1):
        assert journal.open()
        journal.add((0, k))
    assert not journal.open()  # full: the next batch goes to the interface


# ---------------------------------------------------------------------------------------- outbound


def test_settled_outbound_batch_is_sent_then_journaled(pump: ModuleType) -> None:
    pair = make_pair()
    loop = FakeLoop()
    interface, tun, bind = make_interface(pair.a.device, pump, loop)
    came_back: list[int] = []
    interface._outbound.after = lambda count, error: came_back.append(count)
    peer = pair.peer_ab
    tx_before, new_handshake_before = peer.tx_bytes, peer.timers.new_handshake
    tun.inbox.extend([REQUEST, ipv4_packet("10.0.0.1", "10.0.0.2", b"more")])
    interface._outbound.on_readable()
    assert came_back == [] and bind.slot_sends == 1 and len(bind.sent) == 2
    # The datagrams left; the engine has not been told yet.
    assert peer.tx_bytes == tx_before and peer.timers.new_handshake == new_handshake_before
    assert len(interface._journal.records) == 1
    assert loop.fire() == 1
    assert interface._journal.records == []
    assert peer.tx_bytes == tx_before + sum(len(d) for d, _ in bind.sent)
    assert peer.timers.new_handshake is not None  # timersDataSent
    out = pair.b.device.receive_batch([bytearray(d) for d, _ in bind.sent], [len(d) for d, _ in bind.sent],
                                      [pair.a.endpoint] * 2, pair.now)
    assert [bytes(p) for p in out.packets] == [REQUEST, ipv4_packet("10.0.0.1", "10.0.0.2", b"more")]


@pytest.mark.parametrize("case", ["no_journal", "no_route", "full_batch", "pending", "too_big", "journal_full"])
def test_unsettled_outbound_batch_comes_back_at_once(pump: ModuleType, case: str) -> None:
    pair = make_pair()
    loop = FakeLoop()
    interface, tun, bind = make_interface(pair.a.device, pump, None if case == "no_journal" else loop)
    came_back: list[tuple[int, Exception | None]] = []
    interface._outbound.after = lambda count, error: came_back.append((count, error))
    packets = [REQUEST]
    if case == "no_route":
        packets = [ipv4_packet("10.0.0.1", "10.9.9.9")]
    elif case == "full_batch":
        packets = [REQUEST] * TUN_BATCH
    elif case == "pending":
        tun.pending = 1
    elif case == "too_big":
        tun.errors["read:too_big"] = 1  # the read dropped a packet: the MTU may have grown
    elif case == "journal_full":
        interface._journal.records.extend([(99,)] * pump.JOURNAL_LIMIT)
    tun.inbox.extend(packets)
    interface._outbound.on_readable()
    assert came_back == [(len(packets), None)]
    assert len(interface._journal.records) == (pump.JOURNAL_LIMIT if case == "journal_full" else 0)
    # A lane batch that came back was still sent by the pump; a refused one was not.
    assert len(bind.sent) == (0 if case == "no_route" else len(packets))


def test_unsettled_outbound_batch_is_finished_by_the_interface(pump: ModuleType) -> None:
    """Through the real callback: the journal first, then the batch (here: no route, dropped)."""
    pair = make_pair()
    loop = FakeLoop()
    interface, tun, bind = make_interface(pair.a.device, pump, loop)
    tun.inbox.append(REQUEST)
    interface._outbound.on_readable()  # settled: journaled
    assert len(interface._journal.records) == 1
    tx_before = pair.peer_ab.tx_bytes
    tun.inbox.append(ipv4_packet("10.0.0.1", "10.9.9.9"))
    interface._outbound.on_readable()  # no route: back to the interface, which applies the journal
    assert interface._journal.records == []
    assert pair.peer_ab.tx_bytes == tx_before + len(bind.sent[0][0])
    assert pair.a.device.drops["no_route"] == 1


# ---------------------------------------------------------------------------------------- leftovers


def started(interface: Interface, loop: FakeLoop, *socks: FakeSocket) -> None:
    """Start ``interface`` on the fake loop (which wires the pumps' ``again``), watching ``socks``."""
    assert interface.bind is not None
    interface.bind.sockets.extend(socks)  # type: ignore[attr-defined]
    interface.start(loop)  # type: ignore[arg-type]
    loop.later.clear()  # the engine's own timers: not what these tests look at


def a_side_started(pump: ModuleType) -> tuple[Pair, FakeLoop, Interface, FakeTun, Any, list[int]]:
    """Side a's interface started on a fake loop; the outbound pump's ``after`` records counts."""
    pair = make_pair()
    loop = FakeLoop()
    interface, tun, bind = make_interface(pair.a.device, pump, loop)
    started(interface, loop)
    came_back: list[int] = []
    interface._outbound.after = lambda count, error: came_back.append(count)
    return pair, loop, interface, tun, bind, came_back


def test_full_outbound_lane_batch_is_journaled_and_segments_left_run_again(pump: ModuleType) -> None:
    """With ``again`` wired (a started interface), a full lane batch is journaled, not handed to
    ``after``; a full batch needs nothing more (the fd stays readable), but segments left in the
    TUN batch (which do not make the fd readable) make the pump ask for another run, which reads
    them."""
    pair, loop, interface, tun, bind, came_back = a_side_started(pump)
    tun.inbox.extend([REQUEST] * (TUN_BATCH + 3))
    interface._outbound.on_readable()
    assert came_back == [] and len(bind.sent) == TUN_BATCH and len(interface._journal.records) == 1
    assert loop.soon == []
    tun.pending = 1  # as if a TSO packet's segments were left over
    interface._outbound.on_readable()
    assert came_back == [] and len(bind.sent) == TUN_BATCH + 3 and len(interface._journal.records) == 2
    assert len(loop.soon) == 1
    tun.pending = 0
    tun.inbox.append(REQUEST)  # what the leftover segments would be
    assert loop.run_soon() == 1
    assert came_back == [] and len(bind.sent) == TUN_BATCH + 4 and loop.soon == []
    peer, tx_before = pair.peer_ab, pair.peer_ab.tx_bytes
    interface._apply_journal()
    assert peer.tx_bytes == tx_before + sum(len(d) for d, _ in bind.sent)
    out = pair.b.device.receive_batch([bytearray(d) for d, _ in bind.sent], [len(d) for d, _ in bind.sent],
                                      [pair.a.endpoint] * len(bind.sent), pair.now)
    assert len(out.packets) == TUN_BATCH + 4


@pytest.mark.parametrize("case", ["no_route", "too_big", "journal_full"])
def test_full_outbound_batch_with_anything_else_still_goes_to_after(pump: ModuleType, case: str) -> None:
    """``again`` covers only what is left to read: a full batch the lane did not take, a read
    that dropped a packet too big, or a full journal still come back to the interface."""
    pair, loop, interface, tun, bind, came_back = a_side_started(pump)
    packet = ipv4_packet("10.0.0.1", "10.9.9.9") if case == "no_route" else REQUEST
    if case == "too_big":
        tun.errors["read:too_big"] = 1
    elif case == "journal_full":
        interface._journal.records.extend([(99,)] * pump.JOURNAL_LIMIT)
    tun.pending = 1
    tun.inbox.extend([packet] * TUN_BATCH)
    interface._outbound.on_readable()
    assert came_back == [TUN_BATCH] and loop.soon == []
    assert not interface._outbound.leftover(TUN_BATCH) or case == "journal_full"
    assert not interface._outbound.leftover(0)


def test_full_inbound_lane_batch_and_its_answers_are_journaled_and_run_again(pump: ModuleType) -> None:
    """A full batch of lane datagrams with GRO segments left, whose write makes the kernel
    queue a full batch of answers with segments left too: both journaled, and both pumps asked
    to run again (the UDP one with its socket)."""
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    started(interface, loop, sock)
    answer_on_write(tun, *[REPLY] * TUN_BATCH)
    came_back: list[int] = []
    interface._inbound.after = lambda s, count, error: came_back.append(count)
    sock.inbox.extend(sealed(pair, REQUEST) for _ in range(UDP_BATCH))
    sock.pending = 1
    tun.pending = 1
    interface._inbound.on_readable(sock, sock.io)
    assert came_back == [] and len(tun.written) == UDP_BATCH and len(bind.sent) == TUN_BATCH
    assert [record[0] for record in interface._journal.records] == [pump.RECEIVED, pump.SENT]
    assert interface._inbound.leftover(UDP_BATCH, sock)
    assert [(getattr(cb, "__name__", ""), args) for cb, args in loop.soon] == [
        ("_again_due", (interface._inbound.on_readable, (sock, sock))),
        ("_again_due", (interface._outbound.on_readable, ())),
    ]
    sock.pending = tun.pending = 0
    sock.inbox.append(sealed(pair, REQUEST))
    answer_on_write(tun)  # no more answers
    assert loop.run_soon() == 2
    assert len(tun.written) == UDP_BATCH + 1 and came_back == []
    peer, rx_before = pair.peer_ba, pair.peer_ba.rx_bytes
    interface._apply_journal()
    assert peer.rx_bytes > rx_before


def test_a_forged_datagram_in_a_full_batch_still_goes_to_after(pump: ModuleType) -> None:
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    started(interface, loop, sock)
    forged = bytearray(sealed(pair, REQUEST))
    forged[-1] ^= 1
    sock.inbox.extend([sealed(pair, REQUEST) for _ in range(UDP_BATCH - 1)] + [bytes(forged)])
    sock.pending = 1
    came_back: list[int] = []
    interface._inbound.after = lambda s, count, error: came_back.append(count)
    interface._inbound.on_readable(sock, sock.io)
    assert came_back == [UDP_BATCH] and loop.soon == []
    assert not interface._inbound.leftover(UDP_BATCH, sock)


def test_segments_left_after_max_rounds_are_read_again(pump: ModuleType) -> None:
    """The interface's own rounds (a batch that is not the lane's) stop after MAX_ROUNDS; what
    is still pending is read in another wake-up, not left until the next packet arrives."""
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    started(interface, loop, sock)
    reads = tun.reads
    tun.pending = 1
    interface._read_tun()
    assert tun.reads - reads == MAX_ROUNDS and len(loop.soon) == 1
    tun.pending = 0
    tun.inbox.append(REPLY)
    loop.run_soon()
    assert tun.reads - reads == MAX_ROUNDS + 1
    sock.pending = 1
    sock.inbox.append(b"\x01junk")  # not the lane's: the general way, then the rounds
    interface._inbound.on_readable(sock, sock.io)
    assert len(loop.soon) == 1 and loop.soon[0][1][0] == interface._inbound.on_readable


def test_again_is_dropped_after_a_stop_or_for_a_closed_socket(pump: ModuleType) -> None:
    """A run asked for is not run once the interface stopped, nor for a socket that is no longer
    watched (a rebind closed it: its fd number may belong to something else by then)."""
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    started(interface, loop, sock)
    calls: list[tuple[Any, ...]] = []
    interface._again(lambda *args: calls.append(args), sock, sock)
    interface._again(lambda *args: calls.append(args), FakeSocket(sock.source), sock)
    interface._again(lambda *args: calls.append(args))
    loop.run_soon()
    assert calls == [(sock, sock), ()]
    interface.stopped.set()
    interface._again(lambda *args: calls.append(args))
    loop.run_soon()
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------- inbound


def test_settled_inbound_batch_and_its_answer_are_journaled_in_order(pump: ModuleType) -> None:
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    answer_on_write(tun, REPLY)
    came_back: list[int] = []
    interface._inbound.after = lambda s, count, error: came_back.append(count)
    sock.inbox.append(sealed(pair, REQUEST))
    peer = pair.peer_ba
    rx_before, tx_before = peer.rx_bytes, peer.tx_bytes
    interface._inbound.on_readable(sock, sock.io)
    assert came_back == []
    assert tun.written == [REQUEST] and len(bind.sent) == 1
    kinds = [record[0] for record in interface._journal.records]
    assert kinds == [pump.RECEIVED, pump.SENT]
    assert (peer.rx_bytes, peer.tx_bytes) == (rx_before, tx_before)
    loop.fire()
    assert peer.rx_bytes > rx_before and peer.tx_bytes == tx_before + len(bind.sent[0][0])
    out = pair.a.device.receive_batch([bytearray(bind.sent[0][0])], [len(bind.sent[0][0])], [pair.b.endpoint],
                                      pair.now)
    assert [bytes(p) for p in out.packets] == [REPLY]


@pytest.mark.parametrize("settled", [True, False], ids=["settled", "general"])
def test_local_answer_is_called_last_in_every_wakeup(pump: ModuleType, settled: bool) -> None:
    """The local delivery's answer (``set_local_answer``) runs at the end of each UDP wake-up:
    after the batch's records (settled) or after the interface's general way (``after``)."""
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    if settled:
        settle_source(pair, sock, interface)
    else:  # from another port: a roam the engine must record, so the general way
        sock = FakeSocket(Endpoint(pair.a.endpoint.ip, pair.a.endpoint.port + 1))
    calls: list[str] = []
    after = interface._inbound.after
    interface._inbound.after = lambda s, count, error: (calls.append("after"), after(s, count, error))
    interface.set_local_answer(lambda: calls.append(f"answer {len(interface._journal.records)}"))
    sock.inbox.append(sealed(pair, REQUEST))
    interface._inbound.on_readable(sock, sock.io)
    assert calls == (["answer 1"] if settled else ["after", "answer 0"])
    interface._inbound.on_readable(sock, sock.io)  # an empty wake-up: the answer still comes last
    assert calls[-1].startswith("answer") and len(calls) == (2 if settled else 3)
    interface.set_local_answer(None)
    interface._inbound.on_readable(sock, sock.io)
    assert len(calls) == (2 if settled else 3)


def test_inbound_lane_needs_the_current_endpoint(pump: ModuleType) -> None:
    """A datagram from another address (a roam the engine must record) goes the general way,
    which moves the endpoint; later ones can take the lane."""
    loop = FakeLoop()
    pair, interface, tun, bind, _ = b_side(pump, loop)
    sock = FakeSocket(Endpoint(pair.a.endpoint.ip, pair.a.endpoint.port + 1))
    came_back: list[int] = []
    done = interface._inbound.after
    interface._inbound.after = lambda s, count, error: (came_back.append(count), done(s, count, error))
    sock.inbox.append(sealed(pair, REQUEST))
    interface._inbound.on_readable(sock, sock.io)
    assert came_back == [1] and tun.written == [REQUEST]
    assert pair.peer_ba.endpoint is sock.source
    sock.inbox.append(sealed(pair, REQUEST))
    interface._inbound.on_readable(sock, sock.io)
    assert came_back == [1] and len(interface._journal.records) == 1


def test_forged_datagram_comes_back_and_is_counted(pump: ModuleType) -> None:
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    forged = bytearray(sealed(pair, REQUEST))
    forged[-1] ^= 1
    sock.inbox.extend([sealed(pair, REQUEST), bytes(forged)])
    interface._inbound.on_readable(sock, sock.io)
    assert interface._journal.records == [] and tun.written == [REQUEST]
    assert sum(pair.b.device.drops.values()) == 1


def test_journal_is_applied_before_an_unsettled_batch(pump: ModuleType) -> None:
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    calls: list[str] = []
    record_calls(pair.b.device, "lane_received", calls)
    record_calls(pair.b.device, "receive_batch", calls)
    sock.inbox.append(sealed(pair, REQUEST))
    interface._inbound.on_readable(sock, sock.io)  # settled: journaled
    sock.inbox.append(b"\x01junk")  # not a transport message: the general way
    interface._inbound.on_readable(sock, sock.io)
    assert calls == ["lane_received", "receive_batch"]


@pytest.mark.parametrize("entry", ["statistics", "uapi_begin", "timer", "keepalives", "close"])
def test_every_entry_into_the_engine_applies_the_journal(pump: ModuleType, entry: str) -> None:
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    sock.inbox.append(sealed(pair, REQUEST))
    interface._inbound.on_readable(sock, sock.io)
    assert interface._journal.records
    rx_before = pair.peer_ba.rx_bytes
    entries: dict[str, Callable[[], object]] = {
        "statistics": interface.statistics,
        "uapi_begin": interface.uapi_begin,
        "timer": interface._on_timer,
        "keepalives": lambda: interface.send_keepalives([]),
        "close": interface.close,
    }
    if entry == "close":
        interface.tun.close = lambda: None  # type: ignore[method-assign]
        interface.bind.close = lambda: None  # type: ignore[union-attr]
    entries[entry]()
    assert interface._journal.records == [] and pair.peer_ba.rx_bytes > rx_before


# ---------------------------------------------------------------------------------------- equivalence


def timer_state(peer: Peer) -> tuple[object, ...]:
    t = peer.timers
    return (
        t.new_handshake is None, t.send_keepalive is None, t.persistent_keepalive is None,
        t.retransmit_handshake is None, t.keepalive_needed, t.sent_last_minute_handshake,
    )


def general_way(pair: Pair, datagram: bytes, answer: bytes | None) -> Output:
    """b handles ``datagram`` with the engine's general calls, then sends ``answer`` if any."""
    device: Device = pair.b.device
    out = device.receive_batch([bytearray(datagram)], [len(datagram)], [pair.peer_ba.endpoint], pair.now)
    if answer is not None:
        out.extend(device.send_batch([packet_buffer(answer, device.mtu)], [len(answer)], pair.now))
    return out


@pytest.mark.parametrize("keepalive", [0, 25])
def test_lanes_leave_the_engine_as_the_general_way_does(pump: ModuleType, keepalive: int) -> None:
    """Requests and answers (and a keepalive-only exchange) through b's pumps and journal leave
    b's counters and timers as the engine's general calls do for the same traffic."""
    loop = FakeLoop()
    lanes, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(lanes, sock, interface)
    reference = make_pair()
    for pair in (lanes, reference):
        pair.peer_ba.persistent_keepalive = keepalive
    script: list[tuple[bytes, bytes | None]] = [(REQUEST, REPLY), (REQUEST, None), (b"", None), (REQUEST, REPLY)]
    for payload, answer in script:
        for pair in (lanes, reference):
            if payload:
                datagram = sealed(pair, payload)
            else:  # a keepalive from a
                out = pair.a.device.send_keepalive(pair.peer_ab, pair.now)
                datagram = bytes(out.datagrams[0][0])
            if pair is lanes:
                tun.inbox.clear()
                if answer is not None:
                    answer_on_write(tun, answer)
                sock.inbox.append(datagram)
                interface._inbound.on_readable(sock, sock.io)
                tun.write_batch = FakeTun.write_batch.__get__(tun)  # type: ignore[method-assign]
            else:
                general_way(pair, datagram, answer)
        loop.fire()
        assert interface._journal.records == []
        mine, theirs = lanes.peer_ba, reference.peer_ba
        assert (mine.rx_bytes, mine.tx_bytes) == (theirs.rx_bytes, theirs.tx_bytes)
        assert timer_state(mine) == timer_state(theirs)
        assert dict(lanes.b.device.drops) == dict(reference.b.device.drops)
    assert tun.written == [REQUEST, REQUEST, REQUEST]


# ---------------------------------------------------------------------------------- arguments


class _Loop:
    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        pass


def _bad_calls(pump: ModuleType, io: ModuleType, fds: tuple[int, int]) -> dict[
        str, tuple[type[Exception], Callable[[], object]]]:
    """Calls that break the pumps' argument contract (pump_ref's docstring), each with the error
    it names; the TUN and UDP batch I/O are real objects (the twin of the same kind) on a
    socketpair and a UDP socket, so a short list is refused where it would be read."""
    tun_fd, udp_fd = fds
    tun = io.TunBatch(tun_fd, vnet_hdr=False)
    udp = io.UdpBatch(udp_fd, gso=False)
    device = type("Device", (), {"mtu": 1420})()

    def journal() -> Any:
        made = pump.Journal(0.01, lambda: None)
        made.loop = _Loop()
        return made

    def outbound(headroom: Any = 16, journal_: Any = None) -> Any:
        return pump.Outbound(device, tun, None, None, journal() if journal_ is None else journal_,
                             lambda *_: None, headroom)

    def inbound(headroom: Any = 16, outbound_: Any = None) -> Any:
        return pump.Inbound(device, tun, outbound() if outbound_ is None else outbound_,
                            lambda *_: None, headroom)

    other = pump_pair.load("pure" if pump.__name__.endswith("_pump") else "cython")
    slot = bytearray(64)
    return {
        # constructors
        "journal-str-delay": (TypeError, lambda: pump.Journal("0.01", lambda: None)),
        "journal-none-delay": (TypeError, lambda: pump.Journal(None, lambda: None)),
        "outbound-negative-headroom": (ValueError, lambda: outbound(headroom=-1)),
        "outbound-float-headroom": (TypeError, lambda: outbound(headroom=16.0)),
        "outbound-str-headroom": (TypeError, lambda: outbound(headroom="16")),
        "outbound-no-journal": (TypeError, lambda: pump.Outbound(device, tun, None, None, None,
                                                                  lambda *_: None, 16)),
        "outbound-other-twins-journal": (TypeError, lambda: outbound(
            journal_=other.Journal(0.01, lambda: None))),
        "inbound-negative-headroom": (ValueError, lambda: inbound(headroom=-16)),
        "inbound-float-headroom": (TypeError, lambda: inbound(headroom=0.5)),
        "inbound-no-outbound": (TypeError, lambda: pump.Inbound(device, tun, None, lambda *_: None, 16)),
        "inbound-other-twins-outbound": (TypeError, lambda: inbound(outbound_=other.Outbound(
            device, tun, None, None, other.Journal(0.01, lambda: None), lambda *_: None, 16))),
        # the headroom attribute keeps its rule
        "outbound-set-negative-headroom": (ValueError, lambda: setattr(outbound(), "headroom", -1)),
        "inbound-set-negative-headroom": (ValueError, lambda: setattr(inbound(), "headroom", -1)),
        "inbound-set-str-headroom": (TypeError, lambda: setattr(inbound(), "headroom", "8")),
        # the journal's records are tuples
        "journal-list-record": (TypeError, lambda: journal().add([0, "x"])),
        # Outbound.run
        "outbound-run-tuple-bufs": (TypeError, lambda: outbound().run((slot,), [0], 16, 1420, 0.0)),
        "outbound-run-none-lengths": (TypeError, lambda: outbound().run([slot], None, 16, 1420, 0.0)),
        "outbound-run-short-lengths": (ValueError, lambda: outbound().run([slot, slot], [0], 16, 1420, 0.0)),
        "outbound-run-negative-headroom": (ValueError, lambda: outbound().run([slot], [0], -16, 1420, 0.0)),
        "outbound-run-zero-mtu": (ValueError, lambda: outbound().run([slot], [0], 16, 0, 0.0)),
        "outbound-run-float-mtu": (TypeError, lambda: outbound().run([slot], [0], 16, 1420.0, 0.0)),
        "outbound-run-str-now": (TypeError, lambda: outbound().run([slot], [0], 16, 1420, "now")),
        "outbound-settled-str": (TypeError, lambda: outbound().settled("1")),
        "outbound-record-float": (TypeError, lambda: outbound().record(1.0)),
        # Inbound.run
        "inbound-run-tuple-bufs": (TypeError, lambda: inbound().run(udp, (slot,), [0], [None], 0.0)),
        "inbound-run-tuple-sources": (TypeError, lambda: inbound().run(udp, [slot], [0], (None,), 0.0)),
        "inbound-run-short-lengths": (ValueError, lambda: inbound().run(udp, [slot, slot], [0], [None] * 2, 0.0)),
        "inbound-run-short-sources": (ValueError, lambda: inbound().run(udp, [slot, slot], [0] * 2, [None], 0.0)),
        "inbound-run-str-now": (TypeError, lambda: inbound().run(udp, [slot], [0], [None], "now")),
        "inbound-settled-str": (TypeError, lambda: inbound().settled("0", udp)),
    }


def _io_for(pump: ModuleType) -> ModuleType:
    """The batch I/O twin a daemon pairs with this pump twin (native with native)."""
    return load_io("pure" if pump.__name__.endswith("pump_ref") else "cython")


@contextlib.contextmanager
def _fds() -> Iterator[tuple[int, int]]:
    """(a socketpair end standing in for the TUN, a bound UDP socket), closed afterwards."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for sock in (ours, udp):
            sock.setblocking(False)
        udp.bind(("127.0.0.1", 0))
        yield ours.fileno(), udp.fileno()
    finally:
        for sock in (ours, peer, udp):
            sock.close()


with _fds() as _names_fds:
    BAD_PUMP_CALLS = sorted(_bad_calls(pump_pair.load("pure"), load_io("pure"), _names_fds))


@pytest.mark.parametrize("case", BAD_PUMP_CALLS)
def test_bad_arguments_are_the_same_error_in_both_pump_twins(pump: ModuleType, case: str) -> None:
    """Same API, same errors: each call that breaks the pumps' argument contract raises the
    error the contract names in both twins (before this test the pure twin took a negative
    headroom, a tuple batch, a float MTU, a str ``now``, any journal, and the Cython twin took
    a negative headroom too)."""
    with _fds() as fds:
        error, call = _bad_calls(pump, _io_for(pump), fds)[case]
        with pytest.raises(error):
            call()


def test_bad_pump_calls_are_valid_once_fixed(pump: ModuleType) -> None:
    """The calls above break one rule each: the same calls with good arguments go through (an
    empty TUN and socket: nothing read)."""
    with _fds() as (tun_fd, udp_fd):
        io = _io_for(pump)
        tun, udp = io.TunBatch(tun_fd, vnet_hdr=False), io.UdpBatch(udp_fd, gso=False)
        device = type("Device", (), {"mtu": 1420})()
        journal = pump.Journal(1, lambda: None)
        journal.loop = _Loop()
        journal.add((0, "x"))
        journal.add(None)
        out = pump.Outbound(device, tun, None, None, journal, lambda *_: None, 0)
        inb = pump.Inbound(device, tun, out, lambda *_: None, 16)
        out.headroom = inb.headroom = 32
        assert (out.headroom, inb.headroom) == (32, 32)
        slot = bytearray(64)
        out.tun_bufs, inb.udp_bufs = [slot], [slot]
        assert out.run([slot], [0], 16, 1420, 0) == 0 and out.settled(0) and out.record(0) is None
        assert inb.run(udp, [slot], [0], [None], 0) == 0 and inb.settled(0, udp)


def test_socket_for_picks_the_endpoint_family_else_the_other(pump: ModuleType) -> None:
    """The socket a lane batch leaves on (the outbound pump's, and the L2 overlay pump's for its
    WireGuard lane): the endpoint's family when bound, else the other one, as UdpBind.send_batch
    picks for the general way; None before any socket is bound."""
    journal = pump.Journal(1, lambda: None)
    v4, v6 = object(), object()
    here4, here6 = Endpoint("10.0.0.2", 51820), Endpoint("fd00::2", 51820)

    def outbound(udp4: Any, udp6: Any) -> Any:
        return pump.Outbound(object(), object(), udp4, udp6, journal, lambda *_: None, 0)

    both = outbound(v4, v6)
    assert both.socket_for(here4) is v4 and both.socket_for(here6) is v6
    only4, only6 = outbound(v4, None), outbound(None, v6)
    assert only4.socket_for(here4) is v4 and only4.socket_for(here6) is v4
    assert only6.socket_for(here4) is v6 and only6.socket_for(here6) is v6
    none = outbound(None, None)
    assert none.socket_for(here4) is None and none.socket_for(here6) is None


# ------------------------------------------------------------------------------ lane snapshots


def test_outbound_wakeups_use_the_snapshot_until_the_engine_changes(pump: ModuleType) -> None:
    """Later wake-ups of a settled lane are snapshot hits with the same datagrams and journal
    records; a change the engine makes (here the peer's endpoint set by configuration) is a
    miss, and the batch goes to the new endpoint."""
    pair = make_pair()
    loop = FakeLoop()
    interface, tun, bind = make_interface(pair.a.device, pump, loop)
    send = interface._outbound.send_lane
    for k in range(4):
        tun.inbox.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"n" * (k + 1)))
        interface._outbound.on_readable()
    assert (send.hits, send.misses) == (3, 1) and len(bind.sent) == 4
    assert {ep for _, ep in bind.sent} == {pair.b.endpoint}
    records = interface._journal.records
    assert [r[0] for r in records] == [pump.SENT] * 4
    assert all(r[1] is pair.peer_ab and r[2] is pair.peer_ab.current for r in records)
    loop.fire()
    moved = Endpoint("192.0.2.77", 51821)
    pair.peer_ab.endpoint = moved
    tun.inbox.append(REQUEST)
    interface._outbound.on_readable()
    assert (send.hits, send.misses) == (3, 2) and bind.sent[-1][1] is moved
    tun.inbox.append(REQUEST)
    interface._outbound.on_readable()
    assert send.hits == 4 and bind.sent[-1][1] is moved
    counts = interface.stats()["lane_snapshots"]
    assert (counts["send_hits"], counts["send_misses"]) == (4, 2)


def test_inbound_wakeups_use_the_snapshot_until_the_engine_changes(pump: ModuleType) -> None:
    """The same for the inbound lane: hits while nothing changed; an engine change a lane rule
    reads (here the MTU set again) makes the next batch a miss, then the snapshot is renewed."""
    loop = FakeLoop()
    pair, interface, tun, bind, sock = b_side(pump, loop)
    settle_source(pair, sock, interface)
    receive = interface._inbound.receive_lane
    for _ in range(3):
        sock.inbox.append(sealed(pair, REQUEST))
        interface._inbound.on_readable(sock, sock.io)
    assert (receive.hits, receive.misses) == (2, 1) and tun.written == [REQUEST] * 3
    records = [r for r in interface._journal.records if r[0] == pump.RECEIVED]
    assert len(records) == 3 and all(r[1] is pair.peer_ba.current for r in records)
    loop.fire()
    pair.b.device.mtu = pair.b.device.mtu
    for _ in range(2):
        sock.inbox.append(sealed(pair, REQUEST))
        interface._inbound.on_readable(sock, sock.io)
    assert (receive.hits, receive.misses) == (3, 2) and tun.written == [REQUEST] * 5
