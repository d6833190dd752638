"""Pieces shared by the data path worker threads of both daemons (``workers N``, issue 17):
the VXLAN daemon's (``tunnel/vxlan/workers.py``) and the WireGuard daemon's
(``tunnel/wireguard/workers.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Timers:
    """A worker's ``call_later`` (what a pump journal arms): callbacks due at a monotonic time,
    run by the worker's loop (only its thread calls these)."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.due.append((time.monotonic() + delay, callback))

    def timeout(self) -> float:
        """Seconds until the next callback (-1: none)."""
        if not self.due:
            return -1.0
        return max(0.0, min(t for t, _ in self.due) - time.monotonic())

    def run_due(self) -> None:
        now = time.monotonic()
        ready = [cb for t, cb in self.due if t <= now]
        if ready:
            self.due = [(t, cb) for t, cb in self.due if t > now]
            for callback in ready:
                callback()


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """utime + stime of one thread from /proc/PID/task/TID/stat (0.0 if it is gone)."""
    import os

    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


__all__ = ["Timers", "thread_cpu_seconds"]
