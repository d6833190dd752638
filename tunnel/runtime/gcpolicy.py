"""The daemon's policy for CPython's cyclic garbage collector (``WGPY_GC``).

Why: the data path allocates no long-lived containers (the pumps reuse their buffers and lists),
so the GC rarely runs in a daemon: measured with ``bench/ping_tail.py``'s probe, 4 collections of
the youngest generation (~80 us each) in two minutes of pinging two daemons at 10 ms, none in
10 s of a TCP stream (docs/benchmarks.md, "The ping tail"). But every so often (after 100 young
collections, when enough objects survived) CPython runs a *full* collection, which walks every
tracked object of the process: ~29,000 of them once the daemon has imported its modules, 99,000
with 10,000 peers configured; that takes 7.5 ms (29 ms with 10,000 peers) on this VM after
10 ms idle, and a packet that arrives meanwhile waits. Objects that live as long as the daemon
(modules, classes, functions, the configuration) never become garbage, so walking them is
wasted: ``gc.freeze()`` moves them out of the collector's sight (after it a full collection of
the same process takes ~5 us).

The policy, ``freeze`` (the default):

- :meth:`GcPolicy.start`, once the daemon is set up (interface started, UAPI socket served,
  just before the event loop idles for the first time): ``gc.collect()`` (garbage of the
  start-up goes), then ``gc.freeze()``.
- :meth:`GcPolicy.housekeeping`, called with the interface's housekeeping (about once a second,
  never on a packet's path): when at least :data:`REFREEZE_OBJECTS` tracked objects have reached
  the oldest generation since the last freeze (a configuration that added many peers, say),
  they are collected and frozen the same way, at a moment we choose and at the cost of walking
  only them. Counting them is a walk of that generation only (~1 us per 100 objects).
- The generations' thresholds stay CPython's (700, 10, 10): the young collections are rare and
  cheap here, and a larger first threshold would only make each one longer.

The price: a reference cycle among frozen objects is never reclaimed. Nothing on the daemon's
long-lived state relies on the collector: a removed peer is freed by reference counting
(tests/test_gcpolicy.py checks it), and the garbage of each request and batch is younger than
any freeze.

``default`` leaves CPython's collector as it is (for comparisons, and a way out if freezing ever
misbehaves). Any other value of ``WGPY_GC`` fails the daemon's start with a clear message.
:func:`state` is what ``wg-py show`` reports (``stats["gc"]``).
"""

from __future__ import annotations

import gc
import time
from typing import Any

ENV = "WGPY_GC"
MODES = ("freeze", "default")
REFREEZE_OBJECTS = 5000  # objects in the oldest generation (a full collection of ~1 ms cold)

_active: GcPolicy | None = None  # the daemon's policy (process-wide, as the collector is)


def parse_mode(value: str | None, source: str = ENV) -> str:
    """The policy named by ``value`` (None or empty: ``freeze``); ValueError otherwise."""
    if value is None or not value.strip():
        return "freeze"
    mode = value.strip().lower()
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {', '.join(MODES)} (got {value!r})")
    return mode


class GcPolicy:
    """One daemon's GC policy (see the module doc). ``clock`` is for tests (the freezes'
    times reported by :func:`state`); the collector itself is the process's."""

    def __init__(self, mode: str = "freeze", clock: Any = time.monotonic) -> None:
        self.mode = parse_mode(mode)
        self.clock = clock
        self.freezes = 0  # times objects were frozen
        self.last_freeze: float | None = None
        self.last_pause = 0.0  # seconds the last collect-and-freeze took

    def start(self) -> None:
        """The daemon is set up: collect and freeze everything so far (``freeze`` mode)."""
        global _active
        _active = self
        if self.mode == "freeze":
            self._freeze()

    def housekeeping(self) -> None:
        """About once a second: freeze what reached the oldest generation since the last
        freeze, once it is :data:`REFREEZE_OBJECTS` objects or more (``freeze`` mode)."""
        if self.mode == "freeze" and len(gc.get_objects(generation=2)) >= REFREEZE_OBJECTS:
            self._freeze()

    def close(self) -> None:
        """Nothing to undo: frozen objects stay frozen until the process exits."""

    def _freeze(self) -> None:
        began = time.perf_counter()
        gc.collect()
        gc.freeze()
        self.last_pause = time.perf_counter() - began
        self.freezes += 1
        self.last_freeze = self.clock()


def state() -> dict[str, Any]:
    """The collector's state for ``wg-py show``: the daemon's policy (``default`` when none was
    started), how often it froze, the objects frozen, the thresholds, and per generation the
    collections so far and the objects they collected."""
    policy = _active
    return {
        "mode": policy.mode if policy is not None else "default",
        "freezes": policy.freezes if policy is not None else 0,
        "last_pause_us": round(policy.last_pause * 1e6) if policy is not None else 0,
        "frozen": gc.get_freeze_count(),
        "threshold": list(gc.get_threshold()),
        "collections": [s["collections"] for s in gc.get_stats()],
        "collected": [s["collected"] for s in gc.get_stats()],
    }


__all__ = ["ENV", "MODES", "REFREEZE_OBJECTS", "GcPolicy", "parse_mode", "state"]
