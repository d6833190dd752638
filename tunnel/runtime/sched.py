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

Why not always (docs/benchmarks.md, "The slice on a quiet machine"): on an idle machine the
slice costs. Measured in session 6 in alternating blocks, the 100 us slice raised wg-py's ping
median by 11-25 % and the VXLAN daemon's CPU per ping by ~30 %, a 400 us slice as much; its gain
is the tail when the CPUs are busy. A woken daemon waits for a CPU only when none is idle (the
scheduler puts it on an idle one first), so the default, ``auto``, asks for the slice only while
the machine's CPUs were busy: their idle share over the last reading (``/proc/stat``, about a
second) below :data:`AUTO_ON_IDLE_PERCENT`, back to the kernel's default above
:data:`AUTO_OFF_IDLE_PERCENT` (the gap keeps it from flapping). CPU pressure (PSI) is not the
signal: two processes that keep both CPUs of this VM busy wait for nobody, so PSI reads ~0 %
while every wake-up of the daemon lands on a busy CPU. Under a throughput load the slice is on
and costs nothing measurable (one stream 1.69 against 1.73 s/GB without, quiet machine).

:func:`set_slice` and :func:`get_slice` are the system calls (x86-64 and arm64 numbers; other
architectures: OSError(ENOSYS)); a slice of 0 returns a thread to the kernel's default. A kernel
older than 6.12 accepts the call and ignores the slice: :func:`get_slice` then reads back the
default. :func:`parse_slice` reads ``WGPY_SLICE``: ``auto`` (unset), ``off`` (the scheduler's
default, always) or microseconds, 100..100000 (that slice, always). :class:`SlicePolicy` is the
daemons' use of it: the decision (:meth:`SlicePolicy.decide`, from an idle share the caller
measured: no I/O) and its application to every thread of the process (``start``,
``housekeeping``, on the daemon's loop thread); :class:`IdleMeter` measures the idle share.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Callable
from typing import Any

ENV = "WGPY_SLICE"
DEFAULT_SLICE_US = 100  # the shortest the kernel takes; what auto asks for while the CPUs are busy
AUTO = -1  # parse_slice's value for auto
AUTO_ON_IDLE_PERCENT = 20.0  # the machine's idle share below which auto asks for the slice
AUTO_OFF_IDLE_PERCENT = 50.0  # ... and above which it returns to the kernel's default
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr
_ATTR = struct.Struct("IIQiIQQQII")  # struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)
SCHED_OTHER = 0


def parse_slice(value: str | None, source: str = ENV) -> int:
    """Microseconds of slice to ask for always, 0 for ``off``, :data:`AUTO` for ``auto`` (also
    unset or empty); ValueError with a clear message otherwise."""
    if value is None or not value.strip():
        return AUTO
    text = value.strip().lower()
    if text == "auto":
        return AUTO
    if text == "off":
        return 0
    try:
        us = int(text)
    except ValueError:
        us = -1
    if not MIN_SLICE_US <= us <= MAX_SLICE_US:
        raise ValueError(f"{source} must be auto, off or microseconds {MIN_SLICE_US}..{MAX_SLICE_US} "
                         f"(got {value!r})")
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


def machine_cpu_times(path: str = "/proc/stat") -> tuple[float, float]:
    """(busy, idle) seconds of all CPUs since boot, from /proc/stat (idle includes iowait; busy
    is every other field of the ``cpu`` line up to steal). Raises OSError or ValueError."""
    with open(path) as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    if len(fields) < 5:
        raise ValueError(f"{path}: no cpu line")
    tck = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / tck, idle / tck


class IdleMeter:
    """The machine's idle share, percent, between two calls (None on the first call, or where
    ``read`` fails or no time passed); ``read`` returns (busy, idle) seconds, as
    :func:`machine_cpu_times` does."""

    def __init__(self, read: Callable[[], tuple[float, float]] = machine_cpu_times) -> None:
        self.read = read
        self.last: tuple[float, float] | None = None

    def __call__(self) -> float | None:
        try:
            now = self.read()
        except (OSError, ValueError):
            return None
        last, self.last = self.last, now
        if last is None:
            return None
        busy, idle = now[0] - last[0], now[1] - last[1]
        return 100.0 * idle / (busy + idle) if busy + idle > 0 else None


class SlicePolicy:
    """One daemon's scheduler slice (``WGPY_SLICE``; see the module doc).

    ``setting`` is :func:`parse_slice`'s value. :meth:`decide` is the rule alone: given the
    machine's idle share the caller measured (percent; None: unknown), the slice to set now
    (microseconds, 0 for the kernel's default) or None for no change; it keeps only its own
    state. :meth:`start` (once the daemon is set up) and :meth:`housekeeping` (about once a
    second) measure the idle share (``idle``, an :class:`IdleMeter` by default) and apply the
    decision to every thread of the process; they run on the daemon's loop thread and never
    raise (a kernel that refuses the call is logged once and leaves the default). Threads
    started later inherit the slice of the thread that starts them.
    """

    def __init__(self, setting: int = AUTO, idle: Callable[[], float | None] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.setting = setting
        self.measure_idle = idle if idle is not None else IdleMeter()
        self.log = log
        self.wanted = 0  # the slice the rule last asked for (0: the kernel's default)
        self.idle: float | None = None  # the last idle share measured (auto)
        self.changes = 0  # times the slice was set
        self.error: str | None = None  # why the kernel refused, if it did

    @property
    def mode(self) -> str:
        return "auto" if self.setting == AUTO else "off" if self.setting == 0 else "fixed"

    def decide(self, idle: float | None) -> int | None:
        """The slice to set for this idle share (percent), or None to leave it as it is."""
        if self.setting != AUTO:
            want = self.setting
        elif self.wanted:
            want = 0 if idle is None or idle > AUTO_OFF_IDLE_PERCENT else self.wanted
        else:
            want = DEFAULT_SLICE_US if idle is not None and idle < AUTO_ON_IDLE_PERCENT else 0
        if want == self.wanted:
            return None
        self.wanted = want
        return want

    def start(self) -> None:
        """The daemon is set up: apply the setting (a fixed slice now; auto: from the next
        housekeeping on, once an idle share was measured)."""
        global _active
        _active = self
        self.housekeeping()

    def housekeeping(self) -> None:
        """About once a second: follow the machine's idle share (auto)."""
        if self.setting == AUTO:
            self.idle = self.measure_idle()
        change = self.decide(self.idle)
        if change is None or self.error is not None:
            return
        try:
            got = set_process_slice(change)
        except OSError as exc:
            self.error = str(exc)
            if self.log is not None:
                self.log(f"could not ask for a {change} us scheduler slice: {exc}")
            return
        self.changes += 1
        if self.log is not None:
            idle = f", machine idle {self.idle:.0f} %" if self.idle is not None else ""
            self.log(f"scheduler slice {got} us (WGPY_SLICE {self.mode}{idle})")

    def close(self) -> None:
        """Nothing to undo: the process ends with the daemon."""


_active: SlicePolicy | None = None  # the daemon's policy (process-wide, as the threads are)


def state() -> dict[str, Any]:
    """What ``show`` reports (``sched``): the mode, the slice in use (None: unreadable), the last
    idle share measured (auto), how often the slice was set, and a refusal."""
    policy = _active
    return {
        "mode": policy.mode if policy is not None else "off",
        "slice_us": slice_in_use(),
        "idle_percent": round(policy.idle, 1) if policy is not None and policy.idle is not None else None,
        "changes": policy.changes if policy is not None else 0,
        "error": policy.error if policy is not None else None,
    }


__all__ = ["AUTO", "AUTO_OFF_IDLE_PERCENT", "AUTO_ON_IDLE_PERCENT", "DEFAULT_SLICE_US", "ENV", "IdleMeter",
           "SlicePolicy", "get_slice", "machine_cpu_times", "parse_slice", "set_process_slice", "set_slice",
           "slice_in_use", "state"]
