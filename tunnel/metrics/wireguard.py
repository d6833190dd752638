"""Metric families of a WireGuard interface, from its stats (``Interface.stats()``).

Names and labels of the per-peer metrics are those of the usual WireGuard exporter
(``wireguard_sent_bytes_total``, ``wireguard_received_bytes_total``,
``wireguard_latest_handshake_seconds``; labels ``interface`` and ``public_key``), so existing
dashboards work. wg-py adds per-peer handshakes and initiations, the engine's drops by reason
(every :class:`~tunnel.wireguard.messages.Drop` name and transport verdict - ``auth``,
``replay``, ... -, zero included, so ``rate()`` has a series from the first scrape), cookie
replies sent, the shell's I/O errors and an info metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from crypto.backend import REASONS
from tunnel.wireguard.messages import Drop

# Every reason the engine counts: the Drop names and the transport cipher's verdicts.
DROP_REASONS: tuple[str, ...] = tuple(sorted(
    {value for key, value in vars(Drop).items() if key.isupper() and isinstance(value, str)}
    | {reason for reason in REASONS if reason != "ok"}
))
PEER_LABELS = ["interface", "public_key"]


def families(stats: Mapping[str, Any]) -> list[Metric]:
    """The metrics of one interface's stats dict (pure: no I/O, no clock)."""
    iface = str(stats["interface"])
    sent = CounterMetricFamily("wireguard_sent_bytes", "Bytes sent to the peer (UDP payload).",
                               labels=PEER_LABELS)
    received = CounterMetricFamily("wireguard_received_bytes", "Bytes received from the peer (UDP payload).",
                                   labels=PEER_LABELS)
    latest = GaugeMetricFamily("wireguard_latest_handshake_seconds",
                               "Unix time of the latest completed handshake with the peer (0: none).",
                               labels=PEER_LABELS)
    handshakes = CounterMetricFamily("wireguard_handshakes", "Handshakes completed with the peer (sessions derived).",
                                     labels=PEER_LABELS)
    initiations = CounterMetricFamily("wireguard_handshake_initiations_sent",
                                      "Handshake initiations sent to the peer (retries included).",
                                      labels=PEER_LABELS)
    for peer in stats.get("peers", []):
        labels = [iface, str(peer["public_key"])]
        sent.add_metric(labels, peer["tx_bytes"])
        received.add_metric(labels, peer["rx_bytes"])
        latest.add_metric(labels, peer["latest_handshake"])
        handshakes.add_metric(labels, peer["handshakes"])
        initiations.add_metric(labels, peer["initiations_sent"])
    peers = GaugeMetricFamily("wireguard_peers", "Configured peers.", labels=["interface"])
    peers.add_metric([iface], len(stats.get("peers", [])))
    drops = CounterMetricFamily("wireguard_drops", "Datagrams or packets the engine dropped, by reason.",
                                labels=["interface", "reason"])
    counted: Mapping[str, int] = stats.get("drops", {})
    for reason in sorted(set(DROP_REASONS) | set(counted)):
        drops.add_metric([iface, reason], counted.get(reason, 0))
    cookies = CounterMetricFamily("wireguard_cookie_replies_sent", "Cookie replies sent while under load.",
                                  labels=["interface"])
    cookies.add_metric([iface], stats.get("cookie_replies_sent", 0))
    errors = CounterMetricFamily("wgpy_io_errors", "Failed or refused TUN/UDP operations and loop errors, by kind.",
                                 labels=["interface", "kind"])
    for kind, count in sorted(stats.get("errors", {}).items()):
        errors.add_metric([iface, kind], count)
    return [sent, received, latest, handshakes, initiations, peers, drops, cookies, errors, info(stats)]


def info(stats: Mapping[str, Any]) -> Metric:
    """``wgpy_interface_info``: what runs the interface (twins, batch I/O, offloads)."""
    metric = InfoMetricFamily("wgpy_interface", "How the interface runs: native or pure twins, batch I/O, offloads.",
                              labels=["interface", "kind"])
    details = {str(k): str(v) for k, v in stats.get("implementation", {}).items()}
    details.update({f"offload_{k}": str(v).lower() for k, v in stats.get("offloads", {}).items()})
    metric.add_metric([str(stats["interface"]), str(stats.get("kind", ""))], details)
    return metric
