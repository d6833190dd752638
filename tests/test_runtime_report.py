"""The runtime policies' line in both daemons' text show (tunnel/runtime/report.py)."""

from __future__ import annotations

from tunnel.runtime import gcpolicy
from tunnel.runtime.report import runtime_line


def test_both_policies_on_one_line() -> None:
    gc = {"mode": "freeze", "frozen": 28891, "freezes": 2, "collections": [67, 6, 1]}
    sched = {"mode": "auto", "slice_us": 1400, "idle_percent": 97.5, "changes": 2, "error": None}
    assert runtime_line(gc, sched) == ("gc: freeze, 28891 objects frozen (2 freezes), collections 67/6/1; "
                                       "scheduler slice: 1400 us (auto)")


def test_an_unreadable_slice_and_an_older_daemon() -> None:
    assert runtime_line(None, {"mode": "fixed", "slice_us": None}) == "scheduler slice: unknown (fixed)"
    assert runtime_line(None, {"slice_us": 100}) == "scheduler slice: 100 us"  # before the modes
    assert runtime_line(None, None) is None and runtime_line({}, {}) is None


def test_the_gc_state_renders() -> None:
    """What gcpolicy.state() returns is what the line reads."""
    line = runtime_line(gcpolicy.state(), None)
    assert line is not None and line.startswith("gc: ") and "collections " in line
