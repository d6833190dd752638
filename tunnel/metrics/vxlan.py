"""Metric families of a VXLAN endpoint, from its stats (``VxlanDaemon.metrics_snapshot()``).

Per remote VTEP (label ``remote``: the outer IP, or ``other`` past the engine's bound): bytes
and frames sent and received (inner frame bytes). Per device: FDB size, learned, aged,
migrated and evicted entries, neighbours, and drops by reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from tunnel.metrics.wireguard import info

REMOTE_LABELS = ["interface", "remote"]


def families(stats: Mapping[str, Any]) -> list[Metric]:
    """The metrics of one VXLAN device's stats dict (pure)."""
    iface = str(stats["interface"])
    per_remote = {
        "tx_bytes": CounterMetricFamily("vxlan_sent_bytes", "Inner frame bytes sent to the remote VTEP.",
                                        labels=REMOTE_LABELS),
        "rx_bytes": CounterMetricFamily("vxlan_received_bytes", "Inner frame bytes received from the remote VTEP.",
                                        labels=REMOTE_LABELS),
        "tx_frames": CounterMetricFamily("vxlan_sent_frames", "Frames sent to the remote VTEP.",
                                         labels=REMOTE_LABELS),
        "rx_frames": CounterMetricFamily("vxlan_received_frames", "Frames received from the remote VTEP.",
                                         labels=REMOTE_LABELS),
    }
    for remote, counts in sorted(stats.get("remotes", {}).items()):
        for key, family in per_remote.items():
            family.add_metric([iface, str(remote)], counts[key])
    out: list[Metric] = list(per_remote.values())
    gauges = (("fdb_entries", "vxlan_fdb_entries", "Entries in the forwarding database."),
              ("neighbours", "vxlan_neighbours", "Entries in the proxy-ARP neighbour table."))
    for key, name, text in gauges:
        gauge = GaugeMetricFamily(name, text, labels=["interface"])
        gauge.add_metric([iface], stats.get(key, 0))
        out.append(gauge)
    counters = (("fdb_learned", "vxlan_fdb_learned", "FDB entries learned from traffic."),
                ("fdb_aged", "vxlan_fdb_aged", "Learned FDB entries expired by ageing."),
                ("fdb_migrated", "vxlan_fdb_migrated", "Learned FDB entries that moved to another remote."),
                ("fdb_evicted", "vxlan_fdb_evicted", "Learned FDB entries evicted at maxaddress."))
    for key, name, text in counters:
        counter = CounterMetricFamily(name, text, labels=["interface"])
        counter.add_metric([iface], stats.get(key, 0))
        out.append(counter)
    drops = CounterMetricFamily("vxlan_drops", "Frames or datagrams dropped, by reason.",
                                labels=["interface", "reason"])
    for reason, count in sorted(stats.get("drops", {}).items()):
        drops.add_metric([iface, reason], count)
    out.append(drops)
    out.append(info(stats))
    return out
