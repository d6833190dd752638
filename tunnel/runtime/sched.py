"""The scheduler slice a daemon asks for (``WGPY_SLICE``): Linux's EEVDF custom slice.

Why (docs/benchmarks.md, "The ping tail"): on a busy machine a ping's slow replies are the
daemons waiting for a CPU after the packet woke them: the kernel queued the woken daemon behind
a process that was running (another program's compile, say) instead of preempting it, and the
daemon ran only when that process's slice ended or at the next tick, up to ~4 ms later. Since
Linux 6.12 a SCHED_OTHER task can ask for a shorter slice (``sched_setattr`` with
``sched_runtime``, 0.1-100 ms; the default is 0.7 ms times 1 + log2(CPUs), 1.4 ms on 2 CPUs).
A shorter slice gives the task an earlier virtual deadline, so when it wakes the scheduler
prefers it to a task that has been running: it preempts instead of queueing. It does not change
the task's weight: over time it gets the same share of CPU as before, in shorter pieces (a
daemon's work per wake-up is 0.05-0.3 ms, well inside 0.1 ms slices most of the time).

:func:`set_slice` and :func:`get_slice` are the system calls (x86-64 and arm64 numbers; other
architectures: OSError(ENOSYS)). A kernel older than 6.12 accepts the call and ignores the slice:
:func:`get_slice` then reads back the default. :func:`parse_slice` reads ``WGPY_SLICE``:
``off`` (leave the scheduler's default) or microseconds, 100..100000; unset means
:data:`DEFAULT_SLICE_US`.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

ENV = "WGPY_SLICE"
DEFAULT_SLICE_US = 100  # the shortest the kernel takes
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr
_ATTR = struct.Struct("IIQiIQQQII")  # struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)
SCHED_OTHER = 0


def parse_slice(value: str | None, source: str = ENV) -> int:
    """Microseconds of slice to ask for (0: ``off``); ValueError with a clear message otherwise."""
    if value is None or not value.strip():
        return DEFAULT_SLICE_US
    text = value.strip().lower()
    if text == "off":
        return 0
    try:
        us = int(text)
    except ValueError:
        us = -1
    if not MIN_SLICE_US <= us <= MAX_SLICE_US:
        raise ValueError(f"{source} must be off or microseconds {MIN_SLICE_US}..{MAX_SLICE_US} (got {value!r})")
    return us


def _syscall(which: int, *args: object) -> None:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(38, "sched_setattr: unknown system call number on this architecture")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(numbers[which], *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_slice(us: int, tid: int = 0) -> None:
    """Ask for a ``us``-microsecond slice for thread ``tid`` (0: the calling thread), keeping
    SCHED_OTHER and nice 0 (the daemons run with both). Raises OSError."""
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, SCHED_OTHER, 0, 0, 0, us * 1000, 0, 0, 0, 0),
                                       _ATTR.size)
    _syscall(0, ctypes.c_int(tid), attr, ctypes.c_uint(0))


def get_slice(tid: int = 0) -> int:
    """The slice, in microseconds, that thread ``tid`` (0: the caller) runs with (the
    scheduler's default unless one was asked for and the kernel knows custom slices)."""
    attr = ctypes.create_string_buffer(_ATTR.size)
    _syscall(1, ctypes.c_int(tid), attr, ctypes.c_uint(_ATTR.size), ctypes.c_uint(0))
    return int(_ATTR.unpack(attr.raw)[5] // 1000)


def slice_in_use() -> int | None:
    """The calling thread's slice in microseconds, or None where it cannot be read (for
    reports, which must not fail)."""
    try:
        return get_slice()
    except OSError:
        return None


def set_process_slice(us: int) -> list[int]:
    """Ask for ``us`` microseconds for every thread of this process; the slices read back."""
    got = []
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        set_slice(us, tid)
        got.append(get_slice(tid))
    return got


__all__ = ["DEFAULT_SLICE_US", "ENV", "get_slice", "parse_slice", "set_process_slice", "set_slice", "slice_in_use"]
