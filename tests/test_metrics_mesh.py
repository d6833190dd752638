"""The mesh agent's Prometheus metrics: the exposition parsed back against the agent's counters."""

from __future__ import annotations

import asyncio
import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crypto import keys
from tests.test_mesh_agent import NET, Clock, Node, init, until
from tunnel.mesh.config import Keys
from tunnel.mesh.record import encode_key
from tunnel.mesh.store import MemoryStore, StoreUnavailable
from tunnel.metrics import LoopCollector
from tunnel.metrics.mesh import families


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_the_exposition_matches_the_agents_counters() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    await init(store)
    a, b, c = (Node(store, i, clock).start() for i in (1, 2, 3))
    await until(lambda: a.peers() == {b.public, c.public})
    registry = CollectorRegistry()
    collector = LoopCollector(a.agent.metrics_snapshot, families)
    collector.bind(asyncio.get_running_loop())
    registry.register(collector)
    # hostile values (two reasons) and a store outage seen by the agent
    names = Keys(NET)
    await store.put(names.nodes + "garbage", b"\x00")
    evil = keys.public_from_private(keys.generate_private())
    await store.put(names.node(evil), json.dumps({"public_key": encode_key(evil)}).encode())
    await until(lambda: sum(a.agent.counters.hostile_records.values()) == 2)
    a.agent._store_error(StoreUnavailable("test outage"), "testing")
    await until(lambda: a.agent.counters.store_up)
    labels = (("interface", "wgt1"), ("network", NET))
    samples = scrape(registry)
    counters = a.agent.counters
    assert samples[("wgpy_mesh_nodes_alive", labels)] == 3 == counters.nodes_alive
    assert samples[("wgpy_mesh_joined", labels)] == 1
    assert samples[("wgpy_mesh_store_up", labels)] == 1
    assert samples[("wgpy_mesh_reconciles_total", labels)] >= 1
    assert samples[("wgpy_mesh_actions_applied_total", labels)] == counters.actions_applied >= 4  # 2 peers, 2 routes
    assert samples[("wgpy_mesh_store_errors_total", tuple(sorted((*labels, ("kind", "unavailable")))))] == 1
    hostile = {dict(key[1])["reason"]: value for key, value in samples.items()
               if key[0] == "wgpy_mesh_hostile_records_total"}
    assert hostile == {"bad_key": 1, "wrong_type": 1} == dict(counters.hostile_records)
    # a node leaving shows in the next scrape
    await c.leave()
    await until(lambda: a.peers() == {b.public})
    samples = scrape(registry)
    assert samples[("wgpy_mesh_nodes_alive", labels)] == 2 == a.agent.counters.nodes_alive
    assert samples[("wgpy_mesh_reconciles_total", labels)] == a.agent.counters.reconciles
    await a.leave()
    await b.leave()


def test_families_of_a_fresh_agent_are_zero_and_well_formed() -> None:
    snapshot = {"interface": "wg0", "network": "n", "joined": False,
                "counters": {"nodes_alive": 0, "reconciles": 0, "reconcile_failures": 0, "actions_applied": 0,
                             "lease_regrants": 0, "claim_renewals": 0, "store_errors": {}, "watch_restarts":
                             {"compacted": 2}, "hostile_records": {}, "store_up": False}}
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: iter(families(snapshot))})())
    samples = scrape(registry)
    labels = (("interface", "wg0"), ("network", "n"))
    assert samples[("wgpy_mesh_nodes_alive", labels)] == 0
    assert samples[("wgpy_mesh_joined", labels)] == 0
    assert samples[("wgpy_mesh_watch_restarts_total", tuple(sorted((*labels, ("reason", "compacted")))))] == 2
    assert not any(name == "wgpy_mesh_store_errors_total" for name, _ in samples)
