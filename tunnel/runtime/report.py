"""The runtime policies' line in the daemons' text ``show`` (``wg-py show``, ``wg-py vxlan show``)."""

from __future__ import annotations

from typing import Any


def runtime_line(gc: dict[str, Any] | None, sched: dict[str, Any] | None) -> str | None:
    """``gc: MODE, N objects frozen (F freezes), collections a/b/c; slice S us`` from the JSON
    ``show`` fields ``gc`` (:func:`tunnel.runtime.gcpolicy.state`) and ``sched``
    (:func:`tunnel.runtime.sched.state`); None when the daemon reported neither (an older daemon)."""
    parts = []
    if gc:
        parts.append(f"gc: {gc['mode']}, {gc['frozen']} objects frozen ({gc['freezes']} freezes), "
                     f"collections {'/'.join(str(n) for n in gc['collections'])}")
    if sched:
        us = sched.get("slice_us")
        mode = f" ({sched['mode']})" if sched.get("mode") else ""
        parts.append(f"scheduler slice: {us} us{mode}" if us is not None else f"scheduler slice: unknown{mode}")
    return "; ".join(parts) or None


__all__ = ["runtime_line"]
