"""A probe injected into wg-py daemons by ``bench/ping_tail.py`` (through PYTHONPATH; not part
of wg-py): what the daemon did, with wall-clock times (``time.time()``, the clock of ``ping -D``
and of the kernel's packet timestamps), so slow pings can be matched with it.

``WGPY_TAILPROBE`` (comma-separated, unset: the probe does nothing) chooses what is recorded:

- ``gc``: every collection of CPython's cyclic GC (``gc.callbacks``): start, end, generation,
  objects collected;
- ``calls``: the interface's Python entry points run from the loop (the journal's timer, the
  engine's timer, housekeeping, the pumps' callbacks for batches they did not settle), start
  and end;
- ``wake``: every readable callback of the pumps (a Python frame around the native one: this
  changes what it measures a little), start and end.

``WGPY_TAILPROBE_DIR``: where SIGUSR1 makes the daemon write ``<pid>.json`` (the events since
the last dump, then forgotten; written atomically). At most 200,000 events are kept between
dumps.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import time
from typing import Any

_WHAT = {w for w in os.environ.get("WGPY_TAILPROBE", "").split(",") if w}
_DIR = os.environ.get("WGPY_TAILPROBE_DIR", "/tmp")
_LIMIT = 200_000
_events: list[tuple[Any, ...]] = []
_gc_start = [0.0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = time.time()
    elif len(_events) < _LIMIT:
        _events.append(("gc", info["generation"], _gc_start[0], time.time(), info["collected"]))


def _dump(_signum: int, _frame: Any) -> None:
    events = list(_events)
    del _events[:]
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    extra = {"gc_count": gc.get_count(), "gc_threshold": gc.get_threshold(), "tracked": len(gc.get_objects()),
             "frozen": gc.get_freeze_count(), "gc_enabled": gc.isenabled()}
    with open(path + ".tmp", "w") as f:
        json.dump({"events": events, **extra}, f)
    os.replace(path + ".tmp", path)


def _timed(name: str, method: Any) -> Any:
    def wrapper(*args: Any) -> Any:
        t0 = time.time()
        try:
            return method(*args)
        finally:
            if len(_events) < _LIMIT:
                _events.append(("call", name, t0, time.time()))
    wrapper.__name__ = getattr(method, "__name__", name)
    return wrapper


def _install() -> None:
    if "gc" in _WHAT:
        gc.callbacks.append(_gc_callback)
    signal.signal(signal.SIGUSR1, _dump)
    if not _WHAT & {"calls", "wake"}:
        return
    from tunnel.wireguard import interface

    cls = interface.Interface
    if "calls" in _WHAT:
        for name in ("housekeeping", "_journal_due", "_on_timer", "_tun_batch_done", "_udp_batch_done"):
            setattr(cls, name, _timed(name, getattr(cls, name)))
    if "wake" in _WHAT:
        start = cls.start

        def traced_start(self: Any, loop: Any) -> None:
            start(self, loop)
            loop.add_reader(self.tun.fd, _timed("tun_readable", self._outbound.on_readable))
            if self.bind is not None:
                for sock in self.bind.sockets:
                    loop.add_reader(sock.fileno(), _timed("udp_readable", self._inbound.on_readable), sock, sock.io)

        cls.start = traced_start


if _WHAT:
    _install()
