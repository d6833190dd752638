"""``wg-py [-f|--foreground] [--metrics ADDR:PORT] [--workers N] IFACE``: the WireGuard daemon, a
drop-in for ``wireguard-go IFACE``.

Workers: ``--workers N`` or ``WGPY_WORKERS=N`` in the environment (how it reaches a daemon that
wg-quick starts) runs the data path on N threads, each with its own TUN queue (IFF_MULTI_QUEUE)
and UDP sockets (SO_REUSEPORT); see tunnel/wireguard/workers.py. The default, 1, is the single
event loop. A bad value fails the start with a clear message.

Start-up order (what callers such as wg-quick rely on): create the TUN device, bind the UAPI
socket ``/var/run/wireguard/IFACE.sock`` and the UDP sockets, and only then return to the caller
by daemonizing (double fork; the parent exits 0 once the child runs its event loop, 1 with the
reason printed if anything failed). ``-f`` stays in the foreground.

The daemon exits 0, removing its socket, when the TUN device is deleted, when its socket file is
removed or replaced, and on SIGTERM/SIGINT.

Metrics: with ``--metrics ADDR:PORT``, or ``WGPY_METRICS=ADDR:PORT`` in the environment (which is
how it reaches a daemon that wg-quick starts with the interface name alone), the Prometheus
endpoint is bound before daemonizing (a busy port fails the start) and served by the daemon
(``tunnel.metrics``: each scrape reads the interface's stats on the event loop, journal
applied first, as a UAPI get does). LOG_LEVEL is read as wireguard-go reads it:
``error`` (the default), ``verbose``, ``debug`` (ours: verbose = INFO, debug adds per-packet
DEBUG messages) and ``silent``. Logs go to stdout. A daemonized child keeps stdout and stderr
only when LOG_LEVEL is set and not silent; otherwise all three of its standard fds are
/dev/null, as wireguard-go does (stdin is /dev/null in every case).

GC: ``WGPY_GC`` (``freeze``, the default, or ``default``) is the policy for CPython's cyclic
garbage collector (tunnel/runtime/gcpolicy.py): once set up, the daemon collects and freezes
its long-lived objects, so that a full collection, which would otherwise walk all of them
(7-29 ms here), never stalls a packet; ``wg-py show`` reports it. A bad value fails the start.

Scheduler slice: ``WGPY_SLICE`` (``auto``, the default; ``off``; or microseconds, 100..100000)
is the EEVDF slice every thread of the daemon asks for once it is set up
(tunnel/runtime/sched.py): a woken daemon then preempts a process that has been running instead
of waiting behind it, which is most of a ping's tail on a busy machine. ``auto`` asks for 100 us
only while the machine's CPUs are busy (idle below 20 %), because on an idle machine the slice costs
latency and CPU. ``wg-py show`` reports the mode and the slice in use; a bad value fails the
start; a kernel without custom slices (before 6.12) keeps its default.

Extension requests (UAPI ``ext=WORD ...``, e.g. the L2 overlay's ``ext=vxlan add ...``): their
handlers are given to :func:`main` by the caller, never imported here, because they live in
packages above this one (``tunnel.overlay`` imports ``tunnel.wireguard``, so the reverse import
would be a cycle across the layers, which ``tests/test_sans_io.py`` refuses, also for a module
name written as a string in this module's ``__main__``). So ``python -m tunnel.wireguard.daemon
IFACE`` runs a daemon without them: it answers ``ext=vxlan ...`` with ``unknown request``, and
``wg-py vxlan add ... dev IFACE`` says what to start instead. The ``wg-py`` command
(``tunnel.cli``, which sits above both packages) passes the overlay's handlers; without its
script, ``python -m tunnel IFACE`` does the same, and that is what
``tunnel.wireguard.quick.daemon_command`` falls back to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tunnel.io.tun import Tun
from tunnel.metrics import LoopCollector, MetricsError, MetricsServer, open_server
from tunnel.metrics.wireguard import families as wireguard_families
from tunnel.runtime import gcpolicy, sched
from tunnel.wireguard.constants import DEFAULT_MTU
from tunnel.wireguard.interface import PUMP_NAME, Extension, Interface
from tunnel.wireguard.uapi_server import UapiServer, listen_socket, socket_path
from tunnel.wireguard.workers import ENV as WORKERS_ENV
from tunnel.wireguard.workers import WorkerInterface, parse_workers

log = logging.getLogger("tunnel")

HOUSEKEEPING_INTERVAL = 1.0
USAGE = "usage: wg-py [-f|--foreground] [--metrics ADDR:PORT] [--workers N] INTERFACE-NAME\n"
_early_signals: list[int] = []  # SIGTERM/SIGINT received before the event loop took them over
_LEVELS = {"error": logging.ERROR, "verbose": logging.INFO, "debug": logging.DEBUG, "silent": None}


@dataclass(slots=True)
class Options:
    name: str
    foreground: bool
    metrics: str | None = None  # --metrics ADDR:PORT (WGPY_METRICS is read later)
    workers: str | None = None  # --workers N (WGPY_WORKERS is read later)


def parse_args(args: Sequence[str]) -> Options | None:
    """``[-f|--foreground] [--metrics ADDR:PORT] [--workers N] IFACE`` (options before or after
    the name); None if malformed."""
    foreground = False
    metrics: str | None = None
    workers: str | None = None
    names: list[str] = []
    words = iter(args)
    for arg in words:
        if arg in ("-f", "--foreground"):
            foreground = True
        elif arg == "--metrics":
            metrics = next(words, None)
            if metrics is None:
                return None
        elif arg.startswith("--metrics="):
            metrics = arg.split("=", 1)[1]
        elif arg == "--workers":
            workers = next(words, None)
            if workers is None:
                return None
        elif arg.startswith("--workers="):
            workers = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            return None
        else:
            names.append(arg)
    if len(names) != 1:
        return None
    return Options(names[0], foreground, metrics, workers)


def setup_logging(name: str) -> int | None:
    """Configure the ``tunnel`` logger from LOG_LEVEL; returns the level (None: silent).

    An unset LOG_LEVEL means ``error`` (a daemonized child then has no stdout to log to).
    """
    level = _LEVELS.get(os.environ.get("LOG_LEVEL", "error").lower(), logging.ERROR)
    logger = logging.getLogger("tunnel")
    logger.handlers.clear()
    logger.propagate = False
    if level is None:
        logger.addHandler(logging.NullHandler())
        logger.setLevel(logging.CRITICAL + 1)
        return None
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter(f"%(levelname)s: ({name}) %(asctime)s %(message)s", "%Y/%m/%d %H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(level)
    return level


def main(args: list[str], extensions: Mapping[str, Extension] | None = None) -> int:
    """Run the daemon (see module doc). ``extensions``: the handlers of UAPI ``ext=WORD ...``
    requests (:attr:`Interface.extensions`), given by the ``wg-py`` command line; none when the
    module runs alone (``python -m tunnel.wireguard.daemon``: see the module docstring)."""
    options = parse_args(args)
    if options is None:
        sys.stderr.write(USAGE)
        return 1
    name = options.name
    level = setup_logging(name)
    for signum in (signal.SIGTERM, signal.SIGINT):  # from now on a signal means a clean exit
        signal.signal(signum, lambda signum, _frame: _early_signals.append(signum))
    try:
        if options.workers is not None:
            workers = parse_workers(options.workers)
        else:
            workers = parse_workers(os.environ.get(WORKERS_ENV), WORKERS_ENV)
        gc_mode = gcpolicy.parse_mode(os.environ.get(gcpolicy.ENV))
        slice_setting = sched.parse_slice(os.environ.get(sched.ENV))
    except ValueError as exc:
        print(f"wg-py: {exc}", file=sys.stderr)
        return 1
    try:
        tun = Tun(name, DEFAULT_MTU, multi_queue=workers > 1)
    except (OSError, ValueError) as exc:
        print(f"wg-py: failed to create TUN device {name}: {exc}", file=sys.stderr)
        return 1
    name = tun.name
    try:
        uapi_sock, uapi_inode = listen_socket(name)
    except OSError as exc:
        tun.close()
        print(f"wg-py: failed to open UAPI socket {socket_path(name)}: {exc}", file=sys.stderr)
        return 1
    try:
        interface = Interface(tun) if workers == 1 else WorkerInterface(tun, workers)
    except OSError as exc:
        tun.close()
        uapi_sock.close()
        with contextlib.suppress(OSError):
            os.unlink(socket_path(name))
        print(f"wg-py: failed to open {workers} TUN queues: {exc}", file=sys.stderr)
        return 1
    interface.extensions.update(extensions or {})
    # the runtime policies (tunnel/runtime): started by _serve once set up, then housekeeping
    interface.attachments.append(gcpolicy.GcPolicy(gc_mode))
    interface.attachments.append(sched.SlicePolicy(slice_setting, log=lambda msg: log.info("%s: %s", name, msg)))
    try:
        interface.open_bind(0)
    except OSError as exc:
        _abandon(uapi_sock, name, interface)
        print(f"wg-py: failed to bind UDP sockets: {exc}", file=sys.stderr)
        return 1
    try:
        metrics = open_server(options.metrics)
    except MetricsError as exc:
        _abandon(uapi_sock, name, interface)
        print(f"wg-py: {exc}", file=sys.stderr)
        return 1
    log.info("device %s started (MTU %d, UDP port %d, %s pumps, %d worker%s)", name, tun.mtu,
             interface.listen_port, PUMP_NAME, workers, "" if workers == 1 else "s")
    if metrics is not None:
        log.info("metrics on http://%s:%d/metrics", metrics.host or "*", metrics.port)
    if options.foreground:
        return _run(interface, uapi_sock, uapi_inode, None, metrics)
    quiet = level is None or not os.environ.get("LOG_LEVEL")
    return _daemonize(interface, uapi_sock, uapi_inode, metrics, quiet=quiet)


def _abandon(uapi_sock: socket.socket, name: str, interface: Interface) -> None:
    with contextlib.suppress(OSError):
        os.unlink(socket_path(name))
    uapi_sock.close()
    interface.close()


def _daemonize(interface: Interface, uapi_sock: socket.socket, uapi_inode: int, metrics: MetricsServer | None,
               quiet: bool) -> int:
    """Double fork; the original process returns 0 once the grandchild reports it is running."""
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(ready_w)
        # The child owns the device, the socket file and the sockets from here on; this process
        # only drops its references (closing fds shared with the child deletes nothing).
        status = b""
        with os.fdopen(ready_r, "rb") as pipe:
            status = pipe.read(1)
        os.waitpid(pid, 0)
        if status == b"1":
            return 0
        with contextlib.suppress(OSError):  # the daemon died before serving: leave no stale file
            os.unlink(socket_path(interface.name))
        print(f"wg-py: the daemon for {interface.name} failed to start", file=sys.stderr)
        return 1
    # First child: a new session, then fork again so the daemon is no session leader.
    os.close(ready_r)
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        if quiet:
            os.dup2(null, 1)
            os.dup2(null, 2)
        os.close(null)
        code = _run(interface, uapi_sock, uapi_inode, ready_w, metrics)
    except BaseException:
        log.exception("daemon failed")
        code = 1
    finally:
        sys.stdout.flush()
    os._exit(code)


def _run(interface: Interface, uapi_sock: socket.socket, uapi_inode: int, ready_fd: int | None,
         metrics: MetricsServer | None = None) -> int:
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(interface, uapi_sock, uapi_inode, ready_fd, metrics))
    finally:
        if metrics is not None:
            metrics.close()


async def _serve(interface: Interface, uapi_sock: socket.socket, uapi_inode: int, ready_fd: int | None,
                 metrics: MetricsServer | None = None) -> int:
    loop = asyncio.get_running_loop()
    name = interface.name
    server = UapiServer(uapi_sock, socket_path(name), uapi_inode, interface)
    stop = asyncio.Event()
    reason = ["stopped"]

    def on_signal(signum: int) -> None:
        reason[0] = f"received {signal.Signals(signum).name}"
        stop.set()

    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        interface.start(loop)
        await server.start()
        if metrics is not None:
            metrics.start(loop, LoopCollector(interface.stats, wireguard_families))
    except BaseException:
        await server.close()
        interface.close()
        raise
    for attachment in interface.attachments:
        if isinstance(attachment, (gcpolicy.GcPolicy, sched.SlicePolicy)):
            attachment.start()  # freeze what lives as long as the daemon; the slice of every thread
    if _early_signals:
        on_signal(_early_signals[0])
    if ready_fd is not None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    log.info("UAPI listening on %s", server.path)

    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(interface.stopped.wait())]
    try:
        while not stop.is_set() and not interface.stopped.is_set():
            await asyncio.wait(waiters, timeout=HOUSEKEEPING_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() or interface.stopped.is_set():
                break
            if not server.intact():
                reason[0] = "the UAPI socket was removed"
                break
            try:
                interface.housekeeping()
            except Exception:
                log.debug("housekeeping failed", exc_info=True)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if interface.stopped.is_set():
            reason[0] = interface.stop_reason
        log.info("shutting down: %s", reason[0])
        log.info("statistics: %s", interface.statistics())
        await server.close()
        interface.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
