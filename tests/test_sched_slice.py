"""The scheduler slice the daemon asks for (tunnel/runtime/sched.py, ``WGPY_SLICE``): the values it
takes, the system calls on this kernel (set, read back, per thread), and the daemon refusing a
bad value. Threads get their own slices: each test runs its calls in a fresh thread, so the
test process keeps its own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tunnel.runtime import sched


def in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread and return what it returned (or raise what it raised)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # handed to the test
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if error:
        raise error[0]
    return result[0]


def custom_slices() -> bool:
    """Whether this kernel keeps a custom slice (Linux 6.12+): ask for one in a thread."""
    def probe() -> bool:
        default = sched.get_slice()
        wanted = 300 if default != 300 else 400
        sched.set_slice(wanted)
        return sched.get_slice() == wanted
    return bool(in_thread(probe))


@pytest.mark.parametrize(("value", "us"), [(None, sched.DEFAULT_SLICE_US), ("", sched.DEFAULT_SLICE_US),
                                           ("off", 0), (" OFF ", 0), ("100", 100), ("2500", 2500),
                                           ("100000", 100_000)])
def test_parse_slice(value: str | None, us: int) -> None:
    assert sched.parse_slice(value) == us


@pytest.mark.parametrize("value", ["99", "100001", "0", "-5", "1ms", "fast"])
def test_a_bad_slice_is_a_clear_error(value: str) -> None:
    with pytest.raises(ValueError, match=r"WGPY_SLICE must be off or microseconds 100\.\.100000"):
        sched.parse_slice(value)


def test_set_and_read_back_in_one_thread_only() -> None:
    if not custom_slices():
        pytest.skip("this kernel has no custom scheduler slices (Linux < 6.12)")
    mine = sched.get_slice()

    def work() -> tuple[int, int]:
        sched.set_slice(150)
        tid = threading.get_native_id()
        return sched.get_slice(), sched.get_slice(tid)

    assert in_thread(work) == (150, 150)
    assert sched.get_slice() == mine  # the test's own thread is untouched


def test_another_threads_slice_by_its_id() -> None:
    if not custom_slices():
        pytest.skip("this kernel has no custom scheduler slices (Linux < 6.12)")
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def sleeper() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        assert ready.wait(30)
        sched.set_slice(700, tids[0])
        assert sched.get_slice(tids[0]) == 700
    finally:
        done.set()
        thread.join(30)


def test_the_slice_in_use_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``wg-py show`` reports: the slice, or None where the system call fails."""
    assert sched.slice_in_use() == sched.get_slice()
    monkeypatch.setattr("platform.machine", lambda: "unknown-cpu")
    assert sched.slice_in_use() is None


def test_a_missing_thread_is_an_os_error() -> None:
    with pytest.raises(OSError):
        sched.get_slice(2**22 + 12345)  # above the default pid_max: no such thread


def test_a_bad_slice_fails_the_daemon_start() -> None:
    """Refused before anything is created, with the reason on stderr and exit status 1."""
    done = subprocess.run([sys.executable, "-m", "tunnel.wireguard.daemon", "wgpysl0"],
                          env={**os.environ, "WGPY_SLICE": "5"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "WGPY_SLICE must be off or microseconds" in done.stderr
    assert not os.path.exists("/sys/class/net/wgpysl0")


def test_the_whole_process_gets_the_slice() -> None:
    """set_process_slice covers every thread, in a child process (so this one keeps its own)."""
    if not custom_slices():
        pytest.skip("this kernel has no custom scheduler slices (Linux < 6.12)")
    code = ("import threading, time\n"
            "from tunnel.runtime import sched\n"
            "stop = threading.Event()\n"
            "t = threading.Thread(target=stop.wait, args=(30,)); t.start()\n"
            "print(sched.set_process_slice(250))\n"
            "stop.set(); t.join()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[250, 250]"
