"""ReplayFilter: the 8128-packet sliding window, for the Cython path and the pure reference."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.backend import load

REJECT = 2**64 - 2**13 - 1
W = 8128


def run(module: ModuleType, steps: list[tuple[int, bool]]) -> None:
    window = module.ReplayFilter()
    for number, (counter, expected) in enumerate(steps):
        assert window.validate(counter) is expected, (number, counter)


def test_first_counters_and_duplicates(backend: ModuleType) -> None:
    run(
        backend,
        [
            (0, True),
            (0, False),
            (1, True),
            (1, False),
            (9, True),
            (8, True),
            (7, True),
            (9, False),
            (64, True),  # next block
            (63, True),
            (65, True),
            (64, False),
            (2, True),
        ],
    )


def test_window_edge(backend: ModuleType) -> None:
    run(
        backend,
        [
            (0, True),
            (9, True),
            (W + 9, True),  # highest is now W+9
            (9, False),  # exactly W behind, but seen
            (10, True),  # W-1 behind, unseen
            (8, False),  # W+1 behind
            (11, True),
            (W + 8, True),
            (W + 10, True),  # highest moves by one: 9 stays inside, 10 is at the edge
            (10, False),
            (12, True),
            (9, False),
        ],
    )


def test_far_jump_forgets_everything_behind(backend: ModuleType) -> None:
    top = 8137 + 3 * 8192
    run(
        backend,
        [
            (5, True),
            (8137, True),
            (top, True),
            (top - W - 1, False),
            (top - W, True),
            (top - W, False),
            (top - 1, True),
            (top, False),
            (8137, False),
            (5, False),
        ],
    )


def test_slide_through_many_laps(backend: ModuleType) -> None:
    window = backend.ReplayFilter()
    for counter in range(0, 40000, 3):  # about 1.6 laps of the 8192-bit ring
        assert window.validate(counter)
    last = 39999
    for counter in range(last - W, last + 1):
        assert window.validate(counter) is (counter % 3 != 0), counter
    for counter in range(last - W, last + 1):
        assert not window.validate(counter)
    for counter in (0, last - W - 1, last - W - 64, last - 2 * W):
        assert not window.validate(counter)


def test_whole_window_filled_backwards(backend: ModuleType) -> None:
    window = backend.ReplayFilter()
    top = W + 1000
    for counter in range(top, 999, -1):
        assert window.validate(counter), counter
    assert not window.validate(999)
    for counter in range(1000, top + 1):
        assert not window.validate(counter)
    assert window.validate(top + 1)
    assert not window.validate(1000)  # fell out of the window


def test_reject_after_messages(backend: ModuleType) -> None:
    run(
        backend,
        [
            (REJECT, False),
            (2**64 - 1, False),
            (REJECT - 1, True),
            (REJECT - 1, False),
            (REJECT, False),
            (REJECT - 2, True),
            (REJECT - 1 - W, True),
            (REJECT - 2 - W, False),
            (0, False),
        ],
    )
    window = backend.ReplayFilter()
    assert not window.validate(2**64)  # beyond 64 bits: just another impossible counter
    with pytest.raises(ValueError):
        window.validate(-1)


def test_reset(backend: ModuleType) -> None:
    window = backend.ReplayFilter()
    for counter in (0, 1, 50_000):
        assert window.validate(counter)
    window.reset()
    for counter in (0, 1, 50_000):
        assert window.validate(counter)
    assert not window.validate(0)


def _operation() -> st.SearchStrategy[tuple[str, int]]:
    kinds = st.sampled_from(["near", "edge", "ahead", "laps", "absolute", "limit"])
    return st.tuples(kinds, st.integers(0, 2**16))


@settings(max_examples=200, deadline=None)
@given(operations=st.lists(_operation(), max_size=300))
def test_implementations_agree_with_each_other_and_the_plain_rule(
    operations: list[tuple[str, int]],
) -> None:
    """Random walks near the window edges, across laps and near the limit."""
    filters = [load("pure").ReplayFilter(), load("cython").ReplayFilter()]
    seen: set[int] = set()
    highest = 0
    for kind, value in operations:
        if kind == "near":
            counter = highest + value % 130 - 65
        elif kind == "edge":
            counter = highest - W - 30 + value % 60
        elif kind == "ahead":
            counter = highest + value % 9000
        elif kind == "laps":
            counter = highest + value * 64 * 97
        elif kind == "absolute":
            counter = value
        else:
            counter = REJECT - 3 + value % 6
        counter = max(counter, 0)
        verdicts = [f.validate(counter) for f in filters]
        expected = counter < REJECT and counter not in seen and (counter > highest or highest - counter <= W)
        assert verdicts == [expected, expected], (kind, counter, highest)
        if expected:
            seen.add(counter)
            highest = max(highest, counter)
