"""Prometheus metrics of wg-py's long-running processes (prometheus-client).

A process serves ``/metrics`` over HTTP when ``WGPY_METRICS=ADDR:PORT`` is set in its
environment or ``--metrics ADDR:PORT`` is given (the option wins). The HTTP server runs in its
own threads; every scrape hops onto the process's event loop to read the engine's counters
there (:class:`~tunnel.metrics.server.LoopCollector`), so the data path never shares state with
another thread and a scrape costs the loop one snapshot, nothing per packet.

Layering: this package imports from the engines and shells (``tunnel.wireguard``,
``tunnel.vxlan``) and from prometheus-client; of those, only the daemons' thin start-up hook
imports it back (``tests/test_sans_io.py`` enforces it).

Adding a kind of process (e.g. the mesh agent), three steps:

1. a ``snapshot()`` callable, run ON the loop, that returns plain data (a dict) of the
   process's counters (read the engine here; apply anything deferred first);
2. a pure ``families(snapshot) -> list[Metric]`` function in a new module here, e.g.
   ``tunnel/metrics/mesh.py``, building ``CounterMetricFamily``/``GaugeMetricFamily`` objects
   (names ``wgpy_mesh_*``, counters without ``_total``: the client appends it) - unit-test it
   with ``prometheus_client.parser.text_string_to_metric_families``;
3. in the daemon: ``server = open_server(option)`` before daemonizing (binds the port, so a
   busy port is a start-up error), then on the running loop
   ``server.start(loop, LoopCollector(snapshot, families))`` and ``server.close()`` at exit.

Process metrics (``process_*``, ``python_*``) come with every server.
"""

from tunnel.metrics.server import (
    ENV,
    LoopCollector,
    MetricsError,
    MetricsServer,
    address_option,
    open_server,
    parse_address,
)

__all__ = ["ENV", "LoopCollector", "MetricsError", "MetricsServer", "address_option", "open_server",
           "parse_address"]
