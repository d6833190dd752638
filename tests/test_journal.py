"""The pumps' shared journal (``tunnel.io._journal`` / ``tunnel.io.journal_ref``), both twins.

The WireGuard and the VXLAN pumps used to carry a copy each; now both take this one, the twin
of their own kind (the native pumps ``cimport`` the native journal). These tests pin its
contract (journal_ref's docstring) in both twins and that each pump module re-exports the
journal twin of its kind.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tunnel.io import journal as journal_pair
from tunnel.vxlan import datapath as vxlan_datapath
from tunnel.vxlan import pump as vxlan_pump
from tunnel.wireguard import interface as wg_interface
from tunnel.wireguard import pump as wg_pump

from .shellfakes import FakeLoop


@pytest.fixture(params=["cython", "pure"])
def journal_twin(request: pytest.FixtureRequest) -> ModuleType:
    """Both twins in every mode (a missing native build is an error, as for the pumps)."""
    return journal_pair.load(request.param)


def test_first_record_arms_one_timer_and_flush_keeps_order(journal_twin: ModuleType) -> None:
    flushed: list[list[tuple[Any, ...]]] = []
    journal = journal_twin.Journal(0.002, lambda: flushed.append(journal.take()))
    loop = FakeLoop()
    journal.loop = loop
    journal.add((journal_twin.SENT, "a"))
    journal.add((journal_twin.RECEIVED, "b"))
    journal.add(None)  # a record is a tuple or None, as the native typed argument takes it
    assert journal.armed and [delay for delay, _ in loop.later] == [0.002]
    assert loop.fire() == 1
    assert not journal.armed
    assert flushed == [[(journal_twin.SENT, "a"), (journal_twin.RECEIVED, "b"), None]]
    assert journal.take() == [] and journal.records == []
    journal.add((0, "c"))  # the timer fired: the next record arms a new one
    assert len(loop.later) == 1 and journal.armed
    journal.add((0, "d"))  # armed: no second timer
    assert len(loop.later) == 1
    assert journal.take() == [(0, "c"), (0, "d")]


def test_open_needs_a_loop_and_room(journal_twin: ModuleType) -> None:
    journal = journal_twin.Journal(1, lambda: None)
    assert journal.delay == 1.0 and isinstance(journal.delay, float)
    assert not journal.open()  # no loop: the shell has not started, nothing is journaled
    journal.loop = FakeLoop()
    for k in range(journal_twin.JOURNAL_LIMIT):
        assert journal.open()
        journal.add((0, k))
    assert not journal.open()  # full: the next batch goes to the shell's ``after``
    assert len(journal.take()) == journal_twin.JOURNAL_LIMIT
    assert journal.open()
    journal.loop = None
    assert not journal.open()


def test_a_failing_flush_leaves_the_journal_disarmed(journal_twin: ModuleType) -> None:
    """The timer's callback clears ``armed`` before calling ``flush``: a flush that raises does
    not leave the journal believing a timer is still pending."""

    def flush() -> None:
        raise RuntimeError("flush failed")

    journal = journal_twin.Journal(0.5, flush)
    loop = FakeLoop()
    journal.loop = loop
    journal.add((0,))
    with pytest.raises(RuntimeError):
        loop.fire()
    assert not journal.armed and journal.records == [(0,)]
    journal.add((1,))
    assert len(loop.later) == 1  # re-armed


@pytest.mark.parametrize("case", ["str-delay", "none-delay", "list-record", "int-record", "add-without-loop"])
def test_bad_calls_are_the_same_error_in_both_twins(journal_twin: ModuleType, case: str) -> None:
    calls = {
        "str-delay": (TypeError, lambda: journal_twin.Journal("0.01", lambda: None)),
        "none-delay": (TypeError, lambda: journal_twin.Journal(None, lambda: None)),
        "list-record": (TypeError, lambda: _looped(journal_twin).add([0, "x"])),
        "int-record": (TypeError, lambda: _looped(journal_twin).add(0)),
        # the shell sets ``loop`` before anything may be journaled (``open`` says so)
        "add-without-loop": (AttributeError, lambda: journal_twin.Journal(0.1, lambda: None).add((0,))),
    }
    error, call = calls[case]
    with pytest.raises(error):
        call()


def _looped(journal_twin: ModuleType) -> Any:
    journal = journal_twin.Journal(0.1, lambda: None)
    journal.loop = FakeLoop()
    return journal


def test_the_constants_are_one_set() -> None:
    native, pure = journal_pair.load("cython"), journal_pair.load("pure")
    for name in ("SENT", "RECEIVED", "JOURNAL_LIMIT", "JOURNAL_DELAY"):
        assert getattr(native, name) == getattr(pure, name), name
    assert (pure.SENT, pure.RECEIVED) == (0, 1) and pure.JOURNAL_LIMIT > 0 and pure.JOURNAL_DELAY > 0
    assert vxlan_datapath.JOURNAL_DELAY == pure.JOURNAL_DELAY
    # tunnel/wireguard/interface.py keeps its own name for it (a file this change leaves alone)
    assert wg_interface.JOURNAL_DELAY == pure.JOURNAL_DELAY


@pytest.mark.parametrize("pumps", [wg_pump, vxlan_pump], ids=["wireguard", "vxlan"])
@pytest.mark.parametrize("twin", ["cython", "pure"])
def test_each_pump_twin_re_exports_the_journal_of_its_kind(pumps: Any, twin: str) -> None:
    pump, journal_twin = pumps.load(twin), journal_pair.load(twin)
    assert pump.Journal is journal_twin.Journal
    for name in ("SENT", "RECEIVED", "JOURNAL_LIMIT"):
        assert getattr(pump, name) == getattr(journal_twin, name)
