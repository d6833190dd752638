"""Hypothesis settings for the fuzz tests: a few hundred examples in ``make test``, many more in
``make fuzz`` (``WGPY_FUZZ_EXAMPLES=N`` sets the count for every fuzz test)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(examples: int) -> settings:
    """``examples`` normally; ``WGPY_FUZZ_EXAMPLES`` (if set) instead. No deadline: the machine
    is shared and tests never assert on time. Function-scoped fixtures are allowed: the fuzz tests
    take only stateless ones (a twin's module)."""
    override = int(os.environ.get("WGPY_FUZZ_EXAMPLES", "0") or 0)
    return settings(
        max_examples=override or examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
    )
