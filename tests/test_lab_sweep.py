"""The lab's sweep of stale namespaces (``tunnel.lab.netns.sweep_stale``).

A test run killed with SIGKILL leaves its lab's namespaces; the next lab removes those whose
process is gone, and nothing else: not a namespace of a live process, not another prefix,
not the older ambiguous name form. The name rule is checked with a given ``alive`` and then for
real: namespaces, a process living in the stale one, its /etc/netns directory and temp dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.netns import requires_root_netns
from tunnel.lab import netns
from tunnel.lab.netns import Lab, list_namespaces, namespace_pids, stale_names, sweep_stale, wait_for


def test_only_default_prefix_names_of_dead_pids_are_stale() -> None:
    names = ["wgpy100x0a", "wgpy100x12", "wgpy200x0b", "wgpy100x0-tmpdir", "wgpy1000a", "wgpyx0",
             "vx100x0", "wgb100", "wg100x0", "xwgpy100x0", "wgpy100xa"]
    alive = {200}.__contains__
    assert stale_names(names, alive) == ["wgpy100x0a", "wgpy100x12", "wgpy100x0-tmpdir"]
    assert stale_names(names, lambda pid: True) == []


def test_a_lab_names_its_namespaces_so_the_sweep_can_read_the_pid() -> None:
    lab = Lab.__new__(Lab)  # the name only: no sweep, no temp dir
    lab.prefix = f"wgpy{os.getpid()}x{7}"
    assert netns._DEFAULT_PREFIX.match(lab.prefix + "a") is not None
    assert stale_names([lab.prefix + "a"]) == []  # this process is alive
    with Lab() as real:
        match = netns._DEFAULT_PREFIX.match(real.prefix)
        assert match is not None and int(match.group(1)) == os.getpid()
        assert real.tmpdir.name.startswith(real.prefix + "-")


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped (not reused since: checked)."""
    for _ in range(20):
        proc = subprocess.Popen(["true"])
        proc.wait(timeout=10)
        if not netns.pid_alive(proc.pid):
            return proc.pid
    raise AssertionError("no dead pid found")


@pytest.mark.netns
@requires_root_netns
def test_sweep_removes_a_dead_runs_namespace_and_keeps_the_rest() -> None:
    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process that is not this one
    stale = f"wgpy{dead}x0a"
    keep = [f"wgpy{os.getpid()}x9999k", f"wgpy{sleeper.pid}x0k", f"vx{dead}x0k", f"wgpy{dead}0k"]
    etc = netns.ETC_NETNS / stale
    tmp = Path(tempfile.gettempdir()) / f"wgpy{dead}x0-stale"
    leftover: subprocess.Popen[bytes] | None = None
    try:
        for name in [stale, *keep]:
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10, capture_output=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("")
        tmp.mkdir(exist_ok=True)
        # a daemon the killed run left in its namespace
        leftover = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])
        assert wait_for(lambda: len(namespace_pids(stale)) == 1, 5.0)
        removed = sweep_stale()
        assert stale in removed
        present = set(list_namespaces())
        assert stale not in present
        assert all(name in present for name in keep), (keep, present)
        assert leftover.wait(timeout=10) != 0  # killed by the sweep
        assert not etc.exists() and not tmp.exists()
        assert sleeper.poll() is None
    finally:
        for name in [stale, *keep]:
            subprocess.run(["ip", "netns", "del", name], timeout=10, capture_output=True, check=False)
        for proc in (sleeper, leftover):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if etc.exists():
            for child in etc.iterdir():
                child.unlink()
            etc.rmdir()
        if tmp.exists():
            tmp.rmdir()


@pytest.mark.netns
@requires_root_netns
def test_the_first_lab_of_a_process_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = f"wgpy{_dead_pid()}x0first"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10, capture_output=True)
    try:
        monkeypatch.setattr(netns, "_swept", False)
        with Lab():
            assert stale not in list_namespaces()
        assert netns._swept
    finally:
        subprocess.run(["ip", "netns", "del", stale], timeout=10, capture_output=True, check=False)


@pytest.mark.netns
@requires_root_netns
def test_the_sweep_command() -> None:
    done = subprocess.run([sys.executable, "-m", "tunnel.lab.netns", "sweep"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([sys.executable, "-m", "tunnel.lab.netns"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr
