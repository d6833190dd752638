"""Metric families of a mesh agent, from its snapshot (``Agent.metrics_snapshot()``).

Labels ``interface`` and ``network`` on every family; by-kind counters add ``kind`` (store
errors: the :class:`~tunnel.mesh.store.StoreError` kinds), ``reason`` (watch restarts: the
store error kind, ``compacted``, ``store_recovered``, ``resync``; hostile records: the reasons
of :data:`tunnel.mesh.record.REASONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

LABELS = ["interface", "network"]

COUNTERS = (
    ("reconciles", "wgpy_mesh_reconciles", "Reconciles run (desired state applied to the interface)."),
    ("reconcile_failures", "wgpy_mesh_reconcile_failures", "Reconciles of which an action failed."),
    ("actions_applied", "wgpy_mesh_actions_applied", "Peer and route changes applied."),
    ("lease_regrants", "wgpy_mesh_lease_regrants", "Leases found gone and granted again."),
    ("claim_renewals", "wgpy_mesh_claim_renewals", "Subnet claim renewals."),
)
BY_LABEL = (
    ("store_errors", "wgpy_mesh_store_errors", "Failed store calls, by kind.", "kind"),
    ("watch_restarts", "wgpy_mesh_watch_restarts", "Watches ended and re-listed, by reason.", "reason"),
    ("hostile_records", "wgpy_mesh_hostile_records", "Store values ignored as invalid, by reason.", "reason"),
)


def families(snapshot: Mapping[str, Any]) -> list[Metric]:
    """The metrics of one agent's snapshot (pure)."""
    labels = [str(snapshot["interface"]), str(snapshot["network"])]
    counters: Mapping[str, Any] = snapshot["counters"]
    out: list[Metric] = []
    alive = GaugeMetricFamily("wgpy_mesh_nodes_alive", "Valid live nodes in the network (this one included).",
                              labels=LABELS)
    alive.add_metric(labels, counters["nodes_alive"])
    out.append(alive)
    up = GaugeMetricFamily("wgpy_mesh_store_up", "1 if the last store call succeeded, else 0.", labels=LABELS)
    up.add_metric(labels, 1 if counters["store_up"] else 0)
    out.append(up)
    joined = GaugeMetricFamily("wgpy_mesh_joined", "1 once this node's record is published.", labels=LABELS)
    joined.add_metric(labels, 1 if snapshot.get("joined") else 0)
    out.append(joined)
    for key, name, text in COUNTERS:
        counter = CounterMetricFamily(name, text, labels=LABELS)
        counter.add_metric(labels, counters[key])
        out.append(counter)
    for key, name, text, label in BY_LABEL:
        counter = CounterMetricFamily(name, text, labels=[*LABELS, label])
        for value, count in sorted(counters[key].items()):
            counter.add_metric([*labels, str(value)], count)
        out.append(counter)
    return out
