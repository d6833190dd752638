"""The lanes' snapshots (tunnel.wireguard._lane / lane_ref) against the live lane rules.

The model test is the safety net of the design: in memory, with a fake clock, two engines
(tests/wgpair.py) go through random sequences of operations through the public sans-I/O API
(data both ways by the lane or the general path, handshakes, roaming, endpoints set by
configuration, allowed-IPs and MTU changes, a third peer added and removed, a peer removed and
added again, key changes, time passing: rekeys, expiry, keepalives; ciphers made near their
counter limit), and after every step a probe batch asks both the snapshot (``decide``) and the
live rule (``datapath.lane``/``receive_lane``, asked first) for their verdict: they must name the
same peer and keypair, and where the snapshot holds, the cipher, endpoint, route table, slot and
MTU the pumps use from it must be the live objects' (a missing generation bump shows up as a
stale grant). ``test_model_catches_a_missing_bump`` checks that it does. Each bump site also
has a direct test (the generation moves), and the steady state must not move it.
"""

from __future__ import annotations

import os
import random
from types import ModuleType
from typing import Any

import pytest

from crypto import backend, keys
from crypto.backend import HEADROOM
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard import datapath as datapath_pair
from tunnel.wireguard import lane as lane_pair
from tunnel.wireguard import peer as peer_module
from tunnel.wireguard.allowedips import AllowedIPs
from tunnel.wireguard.constants import REKEY_AFTER_MESSAGES
from tunnel.wireguard.device import Device
from tunnel.wireguard.output import packet_buffer

from .wgpair import Pair, Side, ipv4_packet, ipv6_packet

SEEDS = range(8)
STEPS = 160


@pytest.fixture(params=["cython", "pure"])
def twin(request: pytest.FixtureRequest) -> str:
    if request.param == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    return str(request.param)


class Mismatch(AssertionError):
    """The snapshot and the live rule disagree."""


class Model:
    """Two engines of one twin (datapath, cipher, generation and lanes), each side with a
    SendLane and a ReceiveLane on its device's generation."""

    def __init__(self, twin: str, seed: int) -> None:
        self.rng = rng = random.Random(seed)
        self.lanes: ModuleType = lane_pair.load(twin)
        cipher_module = backend.load(twin)

        def cipher(send: bytes, receive: bytes, index: int) -> Any:
            if rng.random() < 0.3:  # a session close to its REKEY_AFTER_MESSAGES counter
                start = REKEY_AFTER_MESSAGES - rng.randint(1, 12)
                return cipher_module.TransportCipher(send, receive, index, send_counter=start)
            return cipher_module.TransportCipher(send, receive, index)

        self.pair = Pair(cipher=cipher, datapath=datapath_pair.load(twin), generation=self.lanes.Generation)
        self.send = {s.name: self.lanes.SendLane(s.device.generation) for s in (self.pair.a, self.pair.b)}
        self.receive = {s.name: self.lanes.ReceiveLane(s.device.generation) for s in (self.pair.a, self.pair.b)}
        self.third: dict[str, Any] = {"a": None, "b": None}
        self.checks = self.send_hits = self.receive_hits = 0
        self.log: list[str] = []

    # ------------------------------------------------------------------ the verdicts

    def own(self, side: Side) -> tuple[str, str, str]:
        """(own v4, other's v4, other's v6) inner addresses of ``side``."""
        return ("10.0.0.1", "10.0.0.2", "fd00::2") if side is self.pair.a else ("10.0.0.2", "10.0.0.1", "fd00::1")

    def peer_of(self, side: Side) -> Any:
        other = self.pair.other(side)
        return side.device.peers.get(other.device.public_key)  # type: ignore[arg-type]

    def check_send(self, side: Side, bufs: list[bytearray], lengths: list[int]) -> Any:
        device, now = side.device, self.pair.now
        send = self.send[side.name]
        want = device.datapath.lane(device, bufs, lengths, HEADROOM, now)
        hits = send.hits
        got = send.decide(device, bufs, lengths, HEADROOM, now)
        self.checks += 1
        if (got is None) != (want is None) or (got is not None and (got[0] is not want[0] or got[1] is not want[1])):
            raise Mismatch(f"send verdict {got} != live {want} after {self.log[-6:]}")
        if send.hits > hits:
            self.send_hits += 1
        if got is not None and send.holds():
            peer, keypair = got
            if not (send.lane is got and send.cipher is keypair.cipher and send.endpoint == peer.endpoint
                    and send.table is device.routes() and send.slot == peer.slot and send.mtu == device.mtu
                    and send.v6 == (":" in peer.endpoint.ip)):
                raise Mismatch(f"send snapshot fields stale after {self.log[-6:]}")
        return got

    def check_receive(self, side: Side, bufs: list[bytearray], lengths: list[int], sources: list[Any]) -> Any:
        device, now = side.device, self.pair.now
        receive = self.receive[side.name]
        want = device.datapath.receive_lane(device, bufs, lengths, sources, now)
        hits = receive.hits
        got = receive.decide(device, bufs, lengths, sources, now)
        self.checks += 1
        if got is not want:
            raise Mismatch(f"receive verdict {got} != live {want} after {self.log[-6:]}")
        if receive.hits > hits:
            self.receive_hits += 1
        if got is not None and receive.holds():
            peer = got.peer
            if not (receive.cipher is got.cipher and receive.table is device.routes() and receive.slot == peer.slot
                    and receive.endpoint == peer.endpoint and receive.receiver == got.local_index):
                raise Mismatch(f"receive snapshot fields stale after {self.log[-6:]}")
        return got

    def probe(self) -> None:
        """Verdicts on small batches that change nothing, on both sides."""
        rng = self.rng
        for side in (self.pair.a, self.pair.b):
            me, other4, other6 = self.own(side)
            dst = rng.choice([other4, other4, other6, "10.0.0.3", "10.9.9.9"])
            packet = ipv6_packet("fd00::9", dst) if ":" in dst else ipv4_packet(me, dst, b"p" * rng.randint(1, 60))
            count = rng.choice([1, 1, 2, 5])
            self.check_send(side, [packet_buffer(packet, 1500) for _ in range(count)], [len(packet)] * count)
            indices = list(side.device.receivers) + [self.receive[side.name].receiver, 12345]
            index = rng.choice(indices) & 0xFFFFFFFF
            peer = self.peer_of(side)
            other = self.pair.other(side).endpoint
            source = rng.choice([other, Endpoint(other.ip, other.port), Endpoint(other.ip, 4242),
                                 peer.endpoint if peer is not None and peer.endpoint is not None else other])
            kind = 4 if rng.random() < 0.9 else 1
            size = rng.choice([32, 48, 100]) if kind == 4 else 148
            datagram = bytearray(size)
            datagram[0] = kind
            datagram[4:8] = index.to_bytes(4, "little")
            count = rng.choice([1, 1, 3])
            self.check_receive(side, [bytearray(datagram) for _ in range(count)], [size] * count, [source] * count)

    # ------------------------------------------------------------------ operations

    def data(self) -> None:
        """A batch from a random side: through the lane when granted (sealed, delivered, then
        ``lane_sent``), else the general path."""
        rng, pair = self.rng, self.pair
        side = rng.choice([pair.a, pair.b])
        other = pair.other(side)
        me, other4, other6 = self.own(side)
        packets = []
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            roll = rng.random()
            if roll < 0.75:
                packets.append(ipv4_packet(me, other4, b"d" * rng.randint(0, 1300)))
            elif roll < 0.85:
                packets.append(ipv6_packet("fd00::9", other6))
            elif roll < 0.92:
                packets.append(ipv4_packet(me, "10.0.0.3"))
            else:
                packets.append(ipv4_packet(me, other4, b"o" * 1450))  # over most MTUs
        device = side.device
        bufs = [packet_buffer(p, 1500) for p in packets]
        lengths = [len(p) for p in packets]
        lane = self.check_send(side, bufs, lengths)
        if lane is None:
            pair.pump(side, device.send_batch(bufs, lengths, pair.now))
            return
        peer, keypair = lane
        sealed = keypair.cipher.seal_batch(bufs, lengths, device.mtu)
        datagrams = [bytes(bufs[i][: lengths[i]]) for i in range(sealed)]
        if datagrams and peer.endpoint is not None and (peer.endpoint.ip, peer.endpoint.port) == (
                other.endpoint.ip, other.endpoint.port):
            received = [bytearray(d) for d in datagrams]
            sizes = [len(d) for d in datagrams]
            sources = [side.endpoint] * len(received)
            self.check_receive(other, received, sizes, sources)
            pair.pump(other, other.device.receive_batch(received, sizes, sources, pair.now))
        out = device.lane_sent(peer, keypair, sum(lengths[:sealed]), pair.now)
        if out is not None:
            pair.pump(side, out)

    def step(self) -> None:
        rng, pair = self.rng, self.pair
        side = rng.choice([pair.a, pair.b])
        other = pair.other(side)
        device = side.device
        peer = self.peer_of(side)
        roll = rng.random()
        if roll < 0.40:
            self.log.append("data")
            self.data()
        elif roll < 0.52:
            seconds = rng.choice([0.01, 0.3, 2.0, 11.0, 40.0, 125.0, 200.0, 600.0])
            self.log.append(f"advance {seconds}")
            pair.advance(seconds, step=5.0)
        elif roll < 0.58:
            port = rng.choice([51820, 51821, 40000, 40001])
            self.log.append(f"roam {side.name} {port}")
            side.endpoint = Endpoint(side.endpoint.ip, port)  # the other side learns it by a datagram
        elif roll < 0.63 and peer is not None:
            target = rng.choice([other.endpoint, Endpoint(other.endpoint.ip, other.endpoint.port),
                                 Endpoint(other.endpoint.ip, 9), Endpoint("2001:db8::2", 7), None])
            self.log.append(f"set endpoint {side.name} {target}")
            peer.endpoint = target
        elif roll < 0.70 and peer is not None:
            self.allowed_ips(side, peer)
        elif roll < 0.74:
            mtu = rng.choice([1420, 1420, 1280, 300])
            self.log.append(f"mtu {side.name} {mtu}")
            device.mtu = mtu
        elif roll < 0.82 and peer is not None:
            self.log.append(f"initiate {side.name}")
            pair.pump(side, device.initiate(peer, pair.now))
        elif roll < 0.84 and peer is not None:
            self.log.append(f"handshake, confirmation lost {side.name}")
            self.lost_confirmation(side, peer)
        elif roll < 0.87:
            self.third_peer(side)
        elif roll < 0.89 and peer is not None:
            self.log.append(f"keepalive {side.name}")
            pair.pump(side, device.send_keepalive(peer, pair.now))
        elif roll < 0.91:
            self.log.append(f"same key {side.name}")
            device.set_private_key(device.private_key)
        elif roll < 0.93:
            self.log.append(f"remove and add again {side.name}")
            self.readd(side)
        else:
            self.log.append("data")
            self.data()

    def lost_confirmation(self, side: Side, peer: Any) -> None:
        """``side`` initiates, the other responds, and what ``side`` sends next (the keepalive
        or staged data that confirms the responder's session) is lost: the responder holds its
        new keypair as ``next`` until later data confirms it."""
        pair = self.pair
        other = pair.other(side)
        initiation = [bytes(d) for d, ep in side.device.initiate(peer, pair.now).datagrams
                      if (ep.ip, ep.port) == (other.endpoint.ip, other.endpoint.port)]
        if not initiation:
            return
        response = [bytes(d) for d, ep in pair.deliver(other, initiation, side.endpoint).datagrams
                    if (ep.ip, ep.port) == (side.endpoint.ip, side.endpoint.port)]
        if response:
            pair.deliver(side, response, other.endpoint)  # its output is lost

    def allowed_ips(self, side: Side, peer: Any) -> None:
        rng = self.rng
        table = side.device.allowed_ips
        _, other4, _ = self.own(side)
        choice = rng.randrange(5)
        self.log.append(f"allowed-ips {side.name} {choice}")
        if choice == 0:
            table.remove(f"{other4}/32", peer)
        elif choice == 1:
            table.insert(f"{other4}/32", peer)
        elif choice == 2:
            table.insert("10.0.0.0/24", peer)
        elif choice == 3 and self.third[side.name] is not None:
            table.insert(f"{other4}/32", self.third[side.name])  # moved to the third peer
        else:
            table.remove_peer(peer)
            table.insert(f"{other4}/32", peer)
            table.insert(f"{self.own(side)[2]}/128", peer)

    def third_peer(self, side: Side) -> None:
        device = side.device
        third = self.third[side.name]
        if third is None:
            self.log.append(f"add third {side.name}")
            third = device.add_peer(keys.public_from_private(keys.generate_private()))
            device.allowed_ips.insert("10.0.0.3/32", third)
            third.endpoint = Endpoint("192.0.2.9", 1)
            self.third[side.name] = third
        else:
            self.log.append(f"remove third {side.name}")
            device.remove_peer(third.public_key)
            self.third[side.name] = None

    def readd(self, side: Side) -> None:
        device = side.device
        other = self.pair.other(side)
        key = other.device.public_key
        assert key is not None
        device.remove_peer(key)
        peer = device.add_peer(key)
        _, other4, other6 = self.own(side)
        device.allowed_ips.insert(f"{other4}/32", peer)
        device.allowed_ips.insert(f"{other6}/128", peer)
        peer.endpoint = other.endpoint
        if side is self.pair.a:
            self.pair.peer_ab = peer
        else:
            self.pair.peer_ba = peer

    def run(self, steps: int) -> None:
        self.probe()
        for _ in range(steps):
            self.step()
            self.probe()


def test_snapshot_verdicts_equal_the_live_rules(twin: str) -> None:
    send_hits = receive_hits = checks = 0
    for seed in SEEDS:
        model = Model(twin, seed)
        model.run(STEPS)
        send_hits += model.send_hits
        receive_hits += model.receive_hits
        checks += model.checks
    # The histories must exercise the snapshots, not only the misses (each run is seeded: the
    # counts are the same every time).
    assert send_hits >= 350 and receive_hits >= 200, (send_hits, receive_hits, checks)


def _unbumped(owner: type, name: str) -> property:
    """``owner.name`` (a property) with a setter that stores without the generation bump."""
    original = getattr(owner, name)

    def setter(self: Any, value: Any) -> None:
        setattr(self, "_" + name, value)

    return property(original.fget, setter)


def _keypair_slots_unbumped(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(peer_module.Peer, "current", _unbumped(peer_module.Peer, "current"))
    mp.setattr(peer_module.Peer, "next", _unbumped(peer_module.Peer, "next"))


# Bump sites whose removal the model must notice. An engine operation often bumps more than once
# (a rotation also drops a keypair and adds a receiver index), and one bump per operation is
# enough for a single-threaded reader, so a site is only noticeable where it is an operation's
# only bump: the responder's confirmation moves ``current`` and ``next`` (both removed here),
# roaming and configuration the endpoint, configuration the MTU and allowed IPs. The staged
# packets' bumps cannot be noticed: staged packets only wait while the lane is refused for
# another reason, and each change that could grant it again bumps too. Every site has its
# direct test below.
MUTATIONS = {
    "peer.endpoint": lambda mp: mp.setattr(peer_module.Peer, "endpoint", _unbumped(peer_module.Peer, "endpoint")),
    "peer.current+next": _keypair_slots_unbumped,
    "device.mtu": lambda mp: mp.setattr(Device, "mtu", _unbumped(Device, "mtu")),
    "allowed-ips": lambda mp: mp.setattr(AllowedIPs, "_changed", lambda self: None),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_model_catches_a_missing_bump(twin: str, mutation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    MUTATIONS[mutation](monkeypatch)
    with pytest.raises(Mismatch):
        for seed in SEEDS:
            Model(twin, seed).run(STEPS)


# ------------------------------------------------------------------------------ each bump site


def _established(twin: str) -> Pair:
    pair = Pair(datapath=datapath_pair.load(twin), generation=lane_pair.load(twin).Generation)
    pair.handshake()
    assert pair.peer_ab.current is not None and pair.peer_ba.current is not None
    return pair


def _moves(device: Device, change: Any) -> bool:
    before = device.generation.value
    change()
    return bool(device.generation.value > before)


def test_configuration_bumps(twin: str) -> None:
    pair = _established(twin)
    device = pair.a.device
    peer = pair.peer_ab
    assert _moves(device, lambda: setattr(device, "mtu", 1300))
    assert _moves(device, lambda: device.allowed_ips.insert("10.1.0.0/16", peer))
    assert _moves(device, lambda: device.allowed_ips.remove("10.1.0.0/16", peer))
    assert _moves(device, lambda: device.allowed_ips.insert_raw(bytes(4), 0, peer))
    assert _moves(device, lambda: device.allowed_ips.remove_raw(bytes(4), 0, peer))
    assert _moves(device, lambda: peer.__setattr__("endpoint", Endpoint("192.0.2.2", 1)))
    assert _moves(device, lambda: peer.__setattr__("endpoint", None))
    third = keys.public_from_private(keys.generate_private())
    assert _moves(device, lambda: device.add_peer(third))
    assert not _moves(device, lambda: device.add_peer(third))  # already there: nothing changed
    assert _moves(device, lambda: device.allowed_ips.insert("10.0.0.3/32", device.peers[third]))
    assert _moves(device, lambda: device.allowed_ips.remove_peer(device.peers[third]))
    assert not _moves(device, lambda: device.allowed_ips.remove_peer(device.peers[third]))  # had none
    assert _moves(device, lambda: device.remove_peer(third))
    assert _moves(device, lambda: device.allowed_ips.clear())
    assert _moves(device, lambda: device.set_private_key(device.private_key))
    assert _moves(device, lambda: device.set_private_key(None))


def test_session_bumps(twin: str) -> None:
    pair = _established(twin)
    a, b = pair.a.device, pair.b.device
    # a rotation from the initiator: a new index, the response installs b's next, the
    # confirmation makes it current and drops the oldest keypair
    pair.now += 10
    out = a.initiate(pair.peer_ab, pair.now)
    assert out.datagrams
    before_b = b.generation.value
    response = pair.deliver(pair.b, [bytes(d) for d, _ in out.datagrams], pair.a.endpoint)
    assert b.generation.value > before_b and pair.peer_ba.next is not None
    assert _moves(a, lambda: pair.deliver(pair.a, [bytes(d) for d, _ in response.datagrams], pair.b.endpoint))
    pair.now += 10
    confirm = pair.peer_ba.next
    assert _moves(b, lambda: pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2")))
    assert pair.peer_ba.current is confirm and pair.peer_ba.next is None
    # a keypair dropped on its own (the receiver index goes, the cipher is zeroed)
    old = pair.peer_ab.previous
    assert old is not None
    assert _moves(a, lambda: a._drop_keypair(old))
    # expiry by the zero-key timer forgets every keypair
    assert _moves(a, lambda: pair.advance(600.0))
    assert pair.peer_ab.current is None


def test_roaming_and_staged_bumps(twin: str) -> None:
    pair = _established(twin)
    b = pair.b.device
    # roaming: b's datagram from a new source moves a's endpoint for b
    pair.a.endpoint = Endpoint("192.0.2.1", 40000)
    assert _moves(b, lambda: pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2")))
    assert pair.peer_ba.endpoint == Endpoint("192.0.2.1", 40000)
    # the same endpoint again (an equal object): nothing changed
    assert not _moves(b, lambda: pair.peer_ba.__setattr__("endpoint", Endpoint("192.0.2.1", 40000)))
    # staged packets: with the sessions gone a packet is staged; its flush at the handshake
    # empties the queue
    pair.advance(600.0)
    a = pair.a.device
    pair.a.lossy = True
    assert _moves(a, lambda: pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2")))
    assert pair.peer_ab.staged
    before = a.generation.value
    a._stage(pair.peer_ab, b"x")
    assert a.generation.value > before
    pair.a.lossy = False
    pair.now += 10
    assert _moves(a, lambda: pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2")))
    assert not pair.peer_ab.staged


def test_the_steady_state_does_not_bump(twin: str) -> None:
    """The lanes' bookkeeping (lane_sent, lane_received) and a transport batch from the known
    endpoint change nothing a lane rule reads: the snapshots keep holding."""
    pair = _established(twin)
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))  # b confirmed, endpoints settled
    pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    a, b = pair.a.device, pair.b.device
    before = (a.generation.value, b.generation.value)
    for _ in range(20):
        pair.now += 0.5
        pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
        pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
        peer, keypair = pair.peer_ab, pair.peer_ab.current
        assert keypair is not None
        a.lane_sent(peer, keypair, 100, pair.now)
        b.lane_received(pair.peer_ba.current, 100, 1, (0, 0, 0), pair.now)  # type: ignore[arg-type]
    assert (a.generation.value, b.generation.value) == before


def test_native_snapshot_over_pure_objects() -> None:
    """The Cython lanes over the pure twins' objects (a pure generation, route table and
    cipher, as with WGPY_PURE=1) keep their snapshot through those objects' Python attributes:
    hits with ``datapath.lane``'s answers."""
    native = lane_pair.load("cython")
    pure = lane_pair.load("pure")
    pair = Pair(cipher=backend.load("pure").TransportCipher, datapath=datapath_pair.load("pure"),
                generation=pure.Generation)
    pair.handshake()
    pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    send = native.SendLane(pair.a.device.generation)
    packet = ipv4_packet("10.0.0.1", "10.0.0.2")
    for _ in range(3):
        lane = send.decide(pair.a.device, [packet_buffer(packet, 1500)], [len(packet)], HEADROOM, pair.now)
        assert lane is not None and lane[0] is pair.peer_ab and lane[1] is pair.peer_ab.current
    assert (send.hits, send.misses) == (2, 1) and send.holds()
    assert send.check([packet_buffer(ipv4_packet("10.0.0.1", "10.0.0.9"), 1500)], [40], HEADROOM, pair.now) is None
    pair.a.device.mtu = 1300
    assert not send.holds()
    receive = native.ReceiveLane(pair.b.device.generation)
    buf = packet_buffer(packet, 1500)
    lengths = [len(packet)]
    pair.peer_ab.current.cipher.seal_batch([buf], lengths, 1420)  # type: ignore[union-attr]
    for _ in range(2):
        got = receive.decide(pair.b.device, [bytearray(buf[: lengths[0]])], lengths, [pair.a.endpoint], pair.now)
        assert got is pair.peer_ba.current
    assert (receive.hits, receive.misses) == (1, 1)
