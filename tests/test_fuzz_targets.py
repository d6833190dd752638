"""The atheris targets (fuzz/) on their seed corpora, so they cannot rot (``make fuzz`` fuzzes them).

Each target's seeds are valid inputs; running them checks the target's invariants on real
messages and configs of every kind the target covers. The crash inputs that fuzzing found are
regression tests in the test files of their parsers (tests/test_fuzz_regressions.py).
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import TARGETS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", TARGETS)
def test_target_passes_its_seeds(name: str) -> None:
    module = importlib.import_module(f"fuzz.{name}")
    seeds = module.seeds()
    assert len(seeds) >= 3
    for seed in seeds:
        module.test_one_input(seed)
    module.test_one_input(b"")
    module.test_one_input(b"\xff" * 3)


def test_atheris_runs_a_target() -> None:
    """The libFuzzer driver itself: a short run of one cheap target ends cleanly (-runs bounds it)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "wg_quick", "--", "-runs=200", "-seed=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = re.search(r"^Done (\d+) runs", proc.stderr, re.MULTILINE)  # the corpus's inputs count too
    assert done is not None and int(done.group(1)) >= 200, proc.stderr[-2000:]
