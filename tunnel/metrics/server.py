"""The ``/metrics`` HTTP server and the collector that reads counters on the event loop.

:func:`parse_address` accepts ``HOST:PORT``, ``[IPV6]:PORT`` and ``:PORT`` (every IPv4
address). :class:`MetricsServer` binds when it is made (before a daemon forks: a busy port is a
start-up error the user sees) and serves from :meth:`MetricsServer.start` on, in a thread of its
own (``wsgiref`` with one thread per request). Its registry holds the process collectors and
the :class:`LoopCollector` of the daemon.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

ENV = "WGPY_METRICS"
SCRAPE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop
T = TypeVar("T")


class MetricsError(ValueError):
    """A bad metrics address, or one that cannot be listened on (the message is for the user)."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[IPV6]:PORT`` / ``:PORT`` -> (host, port); host ``""`` = every IPv4
    address. Raises :class:`MetricsError`."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MetricsError(f"metrics address {text!r}: expected ADDR:PORT (e.g. 127.0.0.1:9586)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsError(f"metrics address {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise MetricsError(f"metrics address {text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    return host, int(port_text)


def address_option(option: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The address to serve on: ``--metrics`` if given, else ``WGPY_METRICS``, else None."""
    if option:
        return option
    value = (os.environ if environ is None else environ).get(ENV, "").strip()
    return value or None


class LoopCollector(Collector, Generic[T]):
    """A prometheus-client collector whose data is taken on an asyncio loop at scrape time.

    ``snapshot()`` runs on the loop (via ``call_soon_threadsafe``; the scrape thread waits at
    most ``timeout`` seconds, then the scrape fails with HTTP 500 and the loop is untouched);
    ``families(snapshot)`` then builds the metrics in the scrape thread. Before :meth:`bind`
    (or after the loop closed) it yields nothing.
    """

    def __init__(self, snapshot: Callable[[], T], families: Callable[[T], Iterable[Metric]],
                 timeout: float = SCRAPE_TIMEOUT) -> None:
        self._snapshot = snapshot
        self._families = families
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take snapshots on ``loop`` (call from the loop's own thread)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def take(self) -> T | None:
        """One snapshot taken on the loop (directly when called from the loop's thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        if threading.get_ident() == self._loop_thread:
            return self._snapshot()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._snapshot())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the event loop did not answer within {self._timeout}s") from None

    def collect(self) -> Iterator[Metric]:
        snapshot = self.take()
        if snapshot is not None:
            yield from self._families(snapshot)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        """As WSGIServer's, without HTTPServer's reverse DNS look-up of the address."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log (the daemon's stdout is its log)."""


class MetricsServer:
    """``/metrics`` on ``(host, port)``: bound at construction, served after :meth:`start`."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        server_class = _Server6 if ":" in host else _Server
        try:
            self._httpd = make_server(host, port, make_wsgi_app(self.registry), server_class, _QuietHandler)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {host or '*'}:{port}: {exc.strerror or exc}") from None
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop, *collectors: LoopCollector[Any]) -> None:
        """Register ``collectors`` (bound to ``loop``; call from the loop's thread) and serve."""
        for collector in collectors:
            collector.bind(loop)
            self.registry.register(collector)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="wg-py metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5.0)
            self._thread = None
        self._httpd.server_close()


def open_server(option: str | None, environ: Mapping[str, str] | None = None) -> MetricsServer | None:
    """The server asked for by ``--metrics`` / ``WGPY_METRICS``, bound; None if neither is set.
    Raises :class:`MetricsError` with a message for the user."""
    text = address_option(option, environ)
    if text is None:
        return None
    host, port = parse_address(text)
    return MetricsServer(host, port)
