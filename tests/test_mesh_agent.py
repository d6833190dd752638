"""The mesh agent against the in-memory store and the fake backend (same code path as with etcd)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from crypto import keys
from tunnel.mesh.agent import Agent, AgentOptions, MeshError
from tunnel.mesh.backend import FakeBackend
from tunnel.mesh.config import Keys, NetworkConfig
from tunnel.mesh.record import Claim, encode_key
from tunnel.mesh.state import read_state
from tunnel.mesh.store import KeyValue, MemoryStore

NET = "t"
WAIT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def until(predicate: Callable[[], object], timeout: float = WAIT) -> None:
    """Wait (bounded) for ``predicate``; fail the test if it never holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class Node:
    def __init__(self, store: MemoryStore, index: int, clock: Clock, state_dir: Path | None = None,
                 private: bytes | None = None, ttl: int = 3) -> None:
        self.private = private or keys.generate_private()
        self.public = keys.public_from_private(self.private)
        self.backend = FakeBackend()
        self.agent = Agent(store, self.backend, AgentOptions(
            network=NET, iface=f"wgt{index}", private_key=self.private, public_key=self.public,
            endpoints=((f"192.0.2.{index}", 0),), name=f"n{index}", ttl=ttl, interval=0.2, resync=2.0,
            state_dir=state_dir, wall=clock))
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Node:
        self.task = asyncio.ensure_future(self.agent.run(self.stop))
        return self

    async def leave(self) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, WAIT)

    async def kill(self) -> None:
        """Gone without leaving (its lease stays until it expires)."""
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass

    def peers(self) -> set[bytes]:
        return set(self.backend.peers)


async def init(store: MemoryStore, network: str = "10.50.0.0/16", subnet_len: int = 24, grace: int = 3600) -> None:
    config = NetworkConfig(ipaddress.ip_network(network), subnet_len, claim_grace=grace)
    assert await store.create(Keys(NET).config, config.to_json().encode())


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_three_agents_converge_and_leave_cleanly(clock: Clock, tmp_path: Path) -> None:
    store = MemoryStore(clock)
    await init(store)
    nodes = [Node(store, i, clock, tmp_path).start() for i in range(3)]
    await until(lambda: all(len(n.peers()) == 2 for n in nodes))
    for n in nodes:
        others = {m.public for m in nodes if m is not n}
        assert n.peers() == others
        assert n.backend.routes == {m.agent.subnet for m in nodes if m is not n}
        assert n.backend.peers[nodes[0].public if n is not nodes[0] else nodes[1].public].endpoint[1] == 51820
    state = read_state(tmp_path / "wgt0.json")
    assert state is not None and state["subnet"] == str(nodes[0].agent.subnet)
    assert {e["public_key"] for e in state["nodes"]} == {encode_key(n.public) for n in nodes}
    assert state["address"] == str(nodes[0].agent.subnet.network_address + 1)  # type: ignore[union-attr]
    await nodes[2].leave()
    assert not (tmp_path / "wgt2.json").exists()
    assert await store.get(Keys(NET).node(nodes[2].public)) is None
    await until(lambda: all(n.peers() == {m.public for m in nodes[:2] if m is not n} for n in nodes[:2]))
    for n in nodes[:2]:
        await n.leave()


async def test_sticky_subnet_for_the_same_key_only(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store)
    first = Node(store, 1, clock).start()
    await first.agent.joined.wait()
    subnet = first.agent.subnet
    await first.leave()
    again = Node(store, 1, clock, private=first.private).start()
    other = Node(store, 2, clock).start()
    await asyncio.wait_for(asyncio.gather(again.agent.joined.wait(), other.agent.joined.wait()), WAIT)
    assert again.agent.subnet == subnet
    assert other.agent.subnet != subnet
    await again.leave()
    await other.leave()


async def test_killed_node_vanishes_when_its_lease_expires(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store)
    a, b = Node(store, 1, clock).start(), Node(store, 2, clock).start()
    await until(lambda: a.peers() == {b.public} and b.peers() == {a.public})
    await b.kill()
    await asyncio.sleep(1.5)  # a few reconciles: nothing changes while the lease lives
    assert a.peers() == {b.public}
    clock.now += 2.0  # the fake clock moves; a's lease is renewed on the way, b's is not
    await store.keepalive(a.agent.lease)
    clock.now += 1.1  # past b's TTL
    store.expire()
    await until(lambda: a.peers() == set() and a.backend.routes == set())
    assert a.agent.counters.nodes_alive == 1
    await a.leave()


async def test_lease_lost_while_alive_is_granted_again(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store)
    a = Node(store, 1, clock).start()
    await a.agent.joined.wait()
    await store.revoke(a.agent.lease)  # as if it expired during a partition
    assert await store.get(Keys(NET).node(a.public)) is None
    await until(lambda: a.agent.counters.lease_regrants == 1)
    await until(lambda: store.data.get(Keys(NET).node(a.public)) is not None)
    assert a.task is not None and not a.task.done()
    await a.leave()


async def test_store_outage_keeps_the_data_plane_then_catches_up(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store)
    a, b = Node(store, 1, clock).start(), Node(store, 2, clock).start()
    await until(lambda: a.peers() == {b.public} and b.peers() == {a.public})
    before = (dict(a.backend.peers), set(a.backend.routes))
    store.set_available(False)
    await until(lambda: a.agent.counters.store_errors["unavailable"] >= 3)
    assert (dict(a.backend.peers), set(a.backend.routes)) == before
    assert a.task is not None and not a.task.done()
    store.set_available(True)
    c = Node(store, 3, clock).start()
    await until(lambda: a.peers() == {b.public, c.public} and b.peers() == {a.public, c.public})
    assert a.agent.counters.watch_restarts["unavailable"] >= 1
    for n in (a, b, c):
        await n.leave()


class CompactingStore(MemoryStore):
    """Compacts right after the first listing, so the watch that follows starts too old."""

    compactions = 0

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        result = await super().list(prefix)
        if prefix.endswith(f"{NET}/") and self.compactions == 0:
            self.compactions += 1
            self._put("/other/key", b"x", 0)
            await self.compact(self.revision)
        return result


async def test_compacted_watch_relists_and_converges(clock: Clock) -> None:
    store = CompactingStore(clock)
    await init(store)
    a = Node(store, 1, clock).start()
    await a.agent.joined.wait()
    b = Node(store, 2, clock).start()
    await until(lambda: a.peers() == {b.public} and b.peers() == {a.public})
    assert a.agent.counters.watch_restarts["compacted"] == 1
    await a.leave()
    await b.leave()


async def test_hostile_records_are_counted_and_change_nothing(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store)
    a, b = Node(store, 1, clock).start(), Node(store, 2, clock).start()
    await until(lambda: a.peers() == {b.public})
    names = Keys(NET)
    evil = keys.public_from_private(keys.generate_private())
    assert b.agent.subnet is not None
    await store.put(names.node(evil), json.dumps({"public_key": encode_key(evil), "subnet": str(b.agent.subnet),
                                                  "endpoints": ["198.51.100.1:1"]}).encode())
    await store.put(names.nodes + "garbage", b"\x00\xff")
    await store.put(names.node(keys.public_from_private(keys.generate_private())), b"{not json")
    await until(lambda: sum(a.agent.counters.hostile_records.values()) >= 3)
    assert a.agent.counters.hostile_records == {"claim_mismatch": 1, "bad_key": 1, "malformed_json": 1}
    await asyncio.sleep(0.5)
    assert a.peers() == {b.public}
    assert a.backend.peers[b.public].allowed_ips == (b.agent.subnet,)
    assert a.agent.counters.hostile_records["claim_mismatch"] == 1  # counted once, not per reconcile
    # a full re-list (cached parses reused) and more watch traffic count nothing again
    a.agent.restart_watch("test")
    await until(lambda: a.agent.counters.watch_restarts["test"] == 1)
    c = Node(store, 3, clock).start()
    await until(lambda: a.peers() == {b.public, c.public})
    assert a.agent.counters.hostile_records == {"claim_mismatch": 1, "bad_key": 1, "malformed_json": 1}
    assert c.agent.counters.hostile_records == {"claim_mismatch": 1, "bad_key": 1, "malformed_json": 1}
    await c.leave()
    await a.leave()
    await b.leave()


async def test_reclaim_only_after_the_grace_period(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store, "10.50.0.0/24", 26, grace=600)  # four subnets
    names = Keys(NET)
    config = NetworkConfig(ipaddress.ip_network("10.50.0.0/24"), 26)
    for i in range(4):
        absent = keys.public_from_private(keys.generate_private())
        claim = Claim(config.subnet_at(i), absent, f"gone{i}", int(clock.now) - 300 - i)
        await store.create(names.claim(claim.subnet), claim.to_json().encode())
    n = Node(store, 1, clock)
    with pytest.raises(MeshError, match="no free subnet"):
        await n.agent.run(asyncio.Event())
    clock.now += 400  # claims 0..3 are now 700..703 s old: the oldest is reclaimed
    m = Node(store, 2, clock).start()
    await m.agent.joined.wait()
    assert m.agent.subnet == config.subnet_at(3)
    kv = await store.get(names.claim(config.subnet_at(3)))
    assert kv is not None and json.loads(kv.value)["public_key"] == encode_key(m.public)
    await m.leave()


async def test_no_config_is_a_clear_error(clock: Clock) -> None:
    store = MemoryStore(clock)
    with pytest.raises(MeshError, match="mesh init"):
        await Node(store, 1, clock).agent.run(asyncio.Event())


async def test_hostile_claim_key_name_never_breaks_claiming(clock: Clock) -> None:
    store = MemoryStore(clock)
    await init(store, "10.50.0.0/24", 26)
    names = Keys(NET)
    await store.put(names.claims + "10.50.0.0-26", b"junk")
    await store.put(names.claims + "zzz", b"junk")
    nodes = [Node(store, i, clock).start() for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*(n.agent.joined.wait() for n in nodes)), WAIT)
    subnets = {n.agent.subnet for n in nodes}
    assert len(subnets) == 3 and ipaddress.ip_network("10.50.0.0/26") not in subnets
    for n in nodes:
        await n.leave()
