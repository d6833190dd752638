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
from pathlib import Path
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


@pytest.mark.parametrize(("value", "us"), [(None, sched.AUTO), ("", sched.AUTO), ("auto", sched.AUTO),
                                           (" Auto ", sched.AUTO), ("off", 0), (" OFF ", 0), ("100", 100),
                                           ("2500", 2500), ("100000", 100_000)])
def test_parse_slice(value: str | None, us: int) -> None:
    assert sched.parse_slice(value) == us


@pytest.mark.parametrize("value", ["99", "100001", "0", "-1", "-5", "1ms", "fast", "autox"])
def test_a_bad_slice_is_a_clear_error(value: str) -> None:
    with pytest.raises(ValueError, match=r"WGPY_SLICE must be auto, off or microseconds 100\.\.100000"):
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
    assert "WGPY_SLICE must be auto, off or microseconds" in done.stderr
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


# ---- the policy: auto follows the machine's idle share -------------------------------------


def test_auto_asks_for_the_slice_while_the_cpus_are_busy_with_hysteresis() -> None:
    """On below AUTO_ON_IDLE_PERCENT idle, off above AUTO_OFF_IDLE_PERCENT, nothing in between;
    an idle share that could not be measured (None) never turns it on and turns it off."""
    policy = sched.SlicePolicy(sched.AUTO)
    on, off = sched.AUTO_ON_IDLE_PERCENT, sched.AUTO_OFF_IDLE_PERCENT
    steps = [(100.0, None), (None, None), (on, None), (on - 0.01, sched.DEFAULT_SLICE_US), (0.0, None),
             (off, None), ((on + off) / 2, None), (off + 0.01, 0), ((on + off) / 2, None), (100.0, None),
             (0.0, sched.DEFAULT_SLICE_US), (None, 0), (None, None)]
    for idle, change in steps:
        assert policy.decide(idle) == change, (idle, change)
    assert policy.mode == "auto"


@pytest.mark.parametrize(("setting", "mode", "first"), [(0, "off", None), (300, "fixed", 300)])
def test_off_and_fixed_ignore_the_load(setting: int, mode: str, first: int | None) -> None:
    policy = sched.SlicePolicy(setting)
    assert policy.mode == mode
    assert [policy.decide(idle) for idle in (None, 0.0, 100.0, None)] == [first, None, None, None]


def test_idle_meter_measures_the_share_between_readings(tmp_path: Path) -> None:
    readings = iter([(10.0, 90.0), (10.5, 90.5), (10.5, 90.5), (12.0, 90.5)])
    meter = sched.IdleMeter(lambda: next(readings))
    assert [meter() for _ in range(4)] == [None, 50.0, None, 0.0]
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 10 0 0 0\ncpu0 50 0 25 400 25 0 5 0 0 0\n")
    tck = os.sysconf("SC_CLK_TCK")
    assert sched.machine_cpu_times(str(stat)) == (160 / tck, 850 / tck)
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError):
        sched.machine_cpu_times(str(stat))
    broken = sched.IdleMeter(lambda: sched.machine_cpu_times(str(tmp_path / "missing")))
    assert broken() is None and broken() is None
    live = sched.IdleMeter()
    live()
    share = live()
    assert share is None or 0.0 <= share <= 100.0


def test_auto_applies_to_every_thread_and_back() -> None:
    """start and housekeeping set every thread of the process (a child process, so the test's
    threads keep theirs) as the idle share goes, and state() says so."""
    if not custom_slices():
        pytest.skip("this kernel has no custom scheduler slices (Linux < 6.12)")
    code = ("import threading\n"
            "from tunnel.runtime import sched\n"
            "shares = iter([None, 3.0, 35.0, 80.0])\n"
            "policy = sched.SlicePolicy(sched.AUTO, idle=lambda: next(shares))\n"
            "stop = threading.Event()\n"
            "t = threading.Thread(target=stop.wait, args=(30,)); t.start()\n"
            "tid = t.native_id\n"
            "policy.start()\n"
            "seen = [(sched.get_slice(), sched.get_slice(tid))]\n"
            "for _ in range(3):\n"
            "    policy.housekeeping()\n"
            "    seen.append((sched.get_slice(), sched.get_slice(tid)))\n"
            "st = sched.state()\n"
            "print(seen, st['mode'], st['changes'], st['idle_percent'], st['slice_us'])\n"
            "stop.set(); t.join()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    default = in_thread(sched.get_slice)
    assert done.stdout.split() == (f"[({default}, {default}), (100, 100), (100, 100), ({default}, {default})] "
                                   f"auto 2 80.0 {default}").split()
