"""The WireGuard daemon's ``workers N`` (tunnel/wireguard/workers.py), in memory.

A real engine pair (tests/wgpair.py) makes the traffic; side a's engine sits behind an
:class:`Interface` with fake devices (tests/shellfakes.py), and its workers get fake TUN queues
and sockets, so what a worker reads, seals, opens, sends, writes, journals and hands over is
checked end to end, and the control thread's part (``Workers.drain``) is called by the test.
The pumps and cipher are the selected twins (the suite runs once per twin, ``WGPY_PURE=1``).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from crypto.backend import TransportCipher
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard import daemon
from tunnel.wireguard.constants import REKEY_AFTER_TIME
from tunnel.wireguard.interface import Interface
from tunnel.wireguard.output import packet_buffer
from tunnel.wireguard.workers import UDP, Worker, Workers, parse_workers

from .shellfakes import FakeBind, FakeSocket, FakeTun, make_interface, make_pair
from .wgpair import Pair, ipv4_packet

A_TO_B = ipv4_packet("10.0.0.1", "10.0.0.2", b"data" * 300)
B_TO_A = ipv4_packet("10.0.0.2", "10.0.0.1", b"back" * 30)


class FakeUdp(FakeSocket):
    """A worker's socket: receives what is queued in ``inbox`` (from b), records what it sends."""

    def __init__(self, source: Endpoint) -> None:
        super().__init__(source)
        self.out = FakeBind()
        self.errors: dict[str, int] = {}
        self.lost_sources: list[Endpoint] = []

    def send_slots(self, bufs: Sequence[bytearray], lengths: Sequence[int], offset: int, count: int,
                   endpoint: Endpoint) -> int:
        return self.out.send_slots(bufs, lengths, offset, count, endpoint)

    def close(self) -> None:
        pass


def workers_for(pair: Pair, count: int = 2) -> tuple[Interface, FakeBind, Workers, list[Worker]]:
    """Side a's interface (the control thread's bind is ``bind``) and ``count`` workers on fake
    queues and sockets, not started (the test drives them)."""
    iface, _tun, bind = make_interface(pair.a.device)
    workers = Workers(iface, count)
    threads = []
    for i in range(count):
        udp = FakeUdp(pair.b.endpoint)
        worker = Worker(i, workers, 100 + i, FakeTun(), [(200 + i, udp, False)])
        threads.append(worker)
    workers.threads = threads
    return iface, bind, workers, threads


def udp_of(worker: Worker) -> FakeUdp:
    udp = next(iter(worker.udps.values()))
    assert isinstance(udp, FakeUdp)
    return udp


def receive(worker: Worker, *datagrams: bytes) -> None:
    udp = udp_of(worker)
    udp.inbox.extend(datagrams)
    worker.inbound.on_readable(udp, udp)


def test_parse_workers() -> None:
    assert parse_workers(None) == 1
    assert parse_workers("") == 1
    assert parse_workers("2") == 2
    assert parse_workers(64) == 64
    for bad in ("0", "65", "two", "-1", "1.5"):
        with pytest.raises(ValueError, match="workers"):
            parse_workers(bad, "WGPY_WORKERS")
    options = daemon.parse_args(["--workers", "3", "wg0"])
    assert options is not None and options.workers == "3" and options.name == "wg0"
    options = daemon.parse_args(["wg0", "--workers=2", "-f"])
    assert options is not None and options.workers == "2" and options.foreground
    assert daemon.parse_args(["wg0", "--workers"]) is None
    options = daemon.parse_args(["wg0"])
    assert options is not None and options.workers is None


def test_a_handshake_is_handed_to_the_control_thread() -> None:
    """b initiates; the worker that receives the initiation hands it over (the engine is not
    touched on the worker), its lanes stay closed until the control thread ran it, and the
    control thread answers on its own bind. Then the session carries data on the worker's lane."""
    pair = Pair()
    pair.now = __import__("time").monotonic()
    pair.peer_ba.endpoint = pair.a.endpoint
    iface, bind, workers, (worker, _) = workers_for(pair)
    out = pair.b.device.send_batch([packet_buffer(B_TO_A, 1420)], [len(B_TO_A)], pair.now)
    initiation = [bytes(d) for d, _ in out.datagrams]
    assert [d[0] for d in initiation] == [1]

    receive(worker, *initiation)
    assert worker.handed == 1 and worker.finished == 0
    assert [item[0] for item in workers.fifo] == [UDP]
    assert not bind.sent  # nothing answered yet: the worker does not run the engine
    assert pair.a.device.peers[pair.b.device.public_key].current is None  # type: ignore[index]
    # lanes closed while the hand-over is in flight (per-peer order)
    slot = [packet_buffer(A_TO_B, 1420)]
    assert worker.lanes.lane(None, slot, [len(A_TO_B)], 16, pair.now) is None

    workers.drain()  # the control thread
    assert worker.finished == 1
    assert [d[0] for d, _ in bind.sent] == [2]  # the response, from the control thread's bind
    response = bind.sent[0][0]
    first_data = pair.deliver(pair.b, [response], pair.a.endpoint)  # b's session is up
    transport = [bytes(d) for d, _ in first_data.datagrams]
    assert transport and all(d[0] == 4 for d in transport)

    # b's first transport message confirms a's session: handed over (the keypair waits for its
    # confirmation), then the steady state takes the lane on the worker.
    receive(worker, *transport)
    workers.drain()
    tun = worker.tun_io
    assert isinstance(tun, FakeTun)
    assert tun.written == [] and pair.a.delivered == []  # (the control thread wrote it)
    sealed = pair.b.device.send_batch([packet_buffer(B_TO_A, 1420)], [len(B_TO_A)], pair.now)
    receive(worker, *[bytes(d) for d, _ in sealed.datagrams])
    assert tun.written == [B_TO_A]  # the lane: opened and written on the worker
    assert worker.handed == 2  # not handed over
    # its bookkeeping reaches the engine through the journal, by the control thread
    peer = pair.a.device.peers[pair.b.device.public_key]  # type: ignore[index]
    rx_before = peer.rx_bytes
    assert len(worker.journal.records) == 1 and not workers.fifo
    worker.timers.due, due = [], worker.timers.due
    for _, callback in due:
        callback()  # the journal's timer, on the worker
    assert worker.counters["rx_lane_batches"] == 1
    workers.drain()
    assert peer.rx_bytes > rx_before


def test_a_send_batch_waits_behind_a_hand_over() -> None:
    """While a worker's hand-over is in flight, a batch the lane would take is handed over too,
    behind it; once the control thread ran them, the lane takes the next batch."""
    pair = make_pair()
    _iface, bind, workers, (worker, _) = workers_for(pair)
    tun = worker.tun_io
    assert isinstance(tun, FakeTun)
    udp = udp_of(worker)
    worker.handed += 1  # as if a hand-over were in flight
    tun.inbox.append(A_TO_B)
    worker.outbound.on_readable()
    assert not udp.out.sent and worker.handed == 2
    worker.finished += 1  # the first one done
    workers.drain()  # runs the second: sealed and sent by the engine on the control thread
    assert worker.finished == 2
    assert len(bind.sent) == 1
    assert at_b(pair, [bind.sent[0][0]]) == [A_TO_B]
    tun.inbox.append(A_TO_B)
    worker.outbound.on_readable()
    assert len(udp.out.sent) == 1 and worker.handed == 2  # the lane, on the worker
    assert len(worker.journal.records) == 1


def at_b(pair: Pair, datagrams: list[bytes]) -> list[bytes]:
    """What b's engine delivers from ``datagrams`` (sent by a)."""
    return [bytes(p) for p in pair.deliver(pair.b, datagrams, pair.a.endpoint).packets]


def _counter(datagram: bytes) -> int:
    return int(struct.unpack_from("<Q", datagram, 8)[0])


def test_two_workers_seal_one_keypair_concurrently() -> None:
    """Two worker threads seal 64-packet batches for one peer at once: every counter is
    unique and every datagram opens at b."""
    pair = make_pair()
    _iface, _bind, _workers, pool = workers_for(pair)
    rounds = 30
    barrier = threading.Barrier(2, timeout=60)
    errors: list[BaseException] = []

    def run(worker: Worker) -> None:
        tun = worker.tun_io
        assert isinstance(tun, FakeTun)
        try:
            for _ in range(rounds):
                tun.inbox.extend([A_TO_B] * 64)
                barrier.wait()
                worker.outbound.on_readable()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(w,)) for w in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    sent = [d for w in pool for d, _ in udp_of(w).out.sent]
    assert len(sent) == 2 * rounds * 64
    counters = [_counter(d) for d in sent]
    assert len(set(counters)) == len(counters), "a counter (nonce) was used twice"
    assert all(w.handed == 0 for w in pool)  # all on the lanes
    opened = [p for start in range(0, len(sent), 64) for p in at_b(pair, sent[start : start + 64])]
    assert opened == [A_TO_B] * len(sent)


def test_a_replay_is_refused_whichever_worker_gets_it() -> None:
    """The same datagrams reach both workers (an attacker replaying them to another socket of
    the group): the packets are written once; the copies are counted as replays."""
    pair = make_pair()
    iface, _bind, workers, (w0, w1) = workers_for(pair)
    out = pair.b.device.send_batch([packet_buffer(B_TO_A, 1420) for _ in range(8)], [len(B_TO_A)] * 8, pair.now)
    datagrams = [bytes(d) for d, _ in out.datagrams]
    receive(w0, *datagrams)
    receive(w1, *datagrams)
    t0, t1 = w0.tun_io, w1.tun_io
    assert isinstance(t0, FakeTun) and isinstance(t1, FakeTun)
    assert t0.written == [B_TO_A] * 8 and t1.written == []
    assert w0.handed == 0 and w1.handed == 0  # both on their lanes
    drops_before = sum(pair.a.device.drops.values())
    workers.drain()
    assert sum(pair.a.device.drops.values()) - drops_before == 8
    del iface


def test_transport_cipher_has_no_busy_error() -> None:
    """The cipher the workers share no longer refuses a second thread (regression guard for the
    single-owner contract it had)."""
    cipher: Any = TransportCipher(bytes(32), bytes(range(32)), 1)
    assert not hasattr(cipher, "_busy")


def test_rekey_while_a_worker_sends() -> None:
    """The session reaches REKEY_AFTER_TIME (its age moved, as a fake clock would): the worker's
    lane refuses the batch and hands it over; the control thread seals it with the old session
    and initiates; once b answered, the worker's lane seals with the new session."""
    pair = make_pair()
    _iface, bind, workers, (worker, _) = workers_for(pair)
    tun = worker.tun_io
    assert isinstance(tun, FakeTun)
    udp = udp_of(worker)
    peer = pair.a.device.peers[pair.b.device.public_key]  # type: ignore[index]
    old = peer.current
    assert old is not None and old.is_initiator
    old.created -= REKEY_AFTER_TIME + 1  # what a clock REKEY_AFTER_TIME later would see
    peer.last_initiation_sent -= REKEY_AFTER_TIME + 1
    pair.a.device.wall_offset += REKEY_AFTER_TIME + 1  # (b refuses a TAI64N timestamp not newer)
    pair.now += REKEY_AFTER_TIME + 1  # b's clock (its initiation limiter)
    tun.inbox.append(A_TO_B)
    worker.outbound.on_readable()
    assert not udp.out.sent and worker.handed == 1
    workers.drain()
    kinds = sorted(d[0] for d, _ in bind.sent)
    assert kinds == [1, 4]  # the data with the old session, and an initiation
    data = next(d for d, _ in bind.sent if d[0] == 4)
    assert struct.unpack_from("<I", data, 4)[0] == old.remote_index
    initiation = next(d for d, _ in bind.sent if d[0] == 1)
    response = pair.deliver(pair.b, [initiation], pair.a.endpoint)
    assert at_b(pair, [data]) == [A_TO_B]
    answer = [bytes(d) for d, _ in response.datagrams]
    assert [d[0] for d in answer] == [2]
    receive(worker, *answer)  # a handshake response: handed over, run by the control thread
    workers.drain()
    new = peer.current
    assert new is not None and new is not old
    tun.inbox.append(A_TO_B)
    worker.outbound.on_readable()
    assert len(udp.out.sent) == 1 and worker.handed == 2  # the lane, with the new session
    sealed = udp.out.sent[0][0]
    assert struct.unpack_from("<I", sealed, 4)[0] == new.remote_index
    assert at_b(pair, [sealed]) == [A_TO_B]


@pytest.mark.parametrize(("args", "env"), [(["--workers", "0"], {}), ([], {"WGPY_WORKERS": "lots"})])
def test_a_bad_worker_count_fails_the_start(args: list[str], env: dict[str, str]) -> None:
    """Refused before anything is created, with the reason on stderr and exit status 1."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tunnel.wireguard.daemon", *args, "wgpyw0"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "workers" in done.stderr and "1..64" in done.stderr
    assert not os.path.exists("/sys/class/net/wgpyw0")


def test_show_names_the_workers() -> None:
    """``wg-py show`` (text) lists each worker's lane batches and hand-overs with N > 1 only."""
    from tunnel.ops import show

    pair = make_pair()
    iface, _bind, workers, pool = workers_for(pair)
    stats = iface.stats()
    assert "workers:" not in show.render(stats)
    pool[0].counters["tx_lane_batches"] = 5
    pool[1].counters["handed_over"] = 2
    stats["workers"] = workers.stats()
    text = show.render(stats)
    assert "  workers: #0 tx 5 rx 0 batches handed over 0, #1 tx 0 rx 0 batches handed over 2\n" in text
