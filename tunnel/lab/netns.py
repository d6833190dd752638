"""Network namespaces for the demo and the tests: create, wire, run inside, always tear down.

A :class:`Lab` owns everything it makes: namespaces (``<prefix><n>``, prefix unique per process,
e.g. ``wgpy4711x0a``: ``wgpy``, the pid, ``x``, a per-process counter), veth pairs, background
processes, WireGuard interface names (unique per process too, since ``/var/run/wireguard/`` is
shared by every namespace) and temporary files.
:meth:`Lab.close` (also run by ``with Lab() as lab:``) undoes all of it even after a failure:
it stops our background processes, then every process still living in one of our namespaces
(daemonized tunnel daemons; found with ``ip netns pids``, so only processes we started), deletes
the namespaces and removes stray UAPI sockets of the interface names it handed out.

Every wait is bounded: commands take a ``timeout`` and :func:`wait_for` gives up after its own.
Needs root and iproute2; :func:`missing_requirements` says what is absent (the tests skip on it).

Stale labs: a run killed with SIGKILL cannot close its lab, and its namespaces (and the daemons
in them) stay. :func:`sweep_stale` removes what a lab of the default prefix left behind when the
process named in it no longer exists: the namespaces ``wgpy<pid>x...`` (first the processes
still living in them), their ``/etc/netns`` directories and the lab's temporary directory. The
first :class:`Lab` of a process sweeps once; ``make clean-netns`` (``python -m
tunnel.lab.netns sweep``) does it by hand. A name with a live pid (even one the kernel reused),
another prefix (``vx1234...``, ``wgb...``), or the older ambiguous form without the ``x``
(``wgpy47110a``: pid 4711 or 47110?) is never touched. Pids are looked up in this process's
pid namespace: labs run from another pid namespace that shares ``/var/run/netns`` (a container
with the host's netns directory) would look dead, so do not share one between them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UAPI_DIR = Path("/var/run/wireguard")
ETC_NETNS = Path("/etc/netns")
_NAMES = itertools.count()
_DEFAULT_PREFIX = re.compile(r"^wgpy(\d+)x\d")  # wgpy<pid>x<n>...: the pid ends at the x
_swept = False  # the first Lab of this process sweeps stale labs once


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds passed; return the outcome."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def missing_requirements(tools: Sequence[str] = ("ip",)) -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        return "ip netns is not usable here"
    return None


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for commands we run: this interpreter's bin dir (``wg-py``) first in PATH."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    package_root = str(Path(__file__).resolve().parents[2])  # the repository root
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    if extra:
        env.update(extra)
    return env


def _gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (any owner)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_names(names: Sequence[str], alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Those of ``names`` that a default-prefix lab of a process that no longer exists made
    (``wgpy<pid>x...`` with ``alive(pid)`` False), in order; every other name is kept."""
    stale = []
    for name in names:
        match = _DEFAULT_PREFIX.match(name)
        if match is not None and not alive(int(match.group(1))):
            stale.append(name)
    return stale


def list_namespaces() -> list[str]:
    """The names ``ip netns list`` shows (the first word of each line)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split()]


def namespace_pids(ns: str) -> list[int]:
    """The processes living in namespace ``ns`` (``ip netns pids``), this one excluded."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def kill_namespace_pids(ns: str) -> None:
    """SIGTERM, then SIGKILL, every process living in ``ns``; bounded (3 s a signal)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in namespace_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_for(lambda: not namespace_pids(ns), 3.0):
            return


def sweep_stale(alive: Callable[[int], bool] = pid_alive) -> list[str]:
    """Remove what default-prefix labs of dead processes left (see the module docstring): their
    namespaces (the processes in them first), ``/etc/netns`` directories and temporary
    directories. Returns the namespaces removed; never raises for what is already gone."""
    removed = []
    for ns in stale_names(list_namespaces(), alive):
        with contextlib.suppress(Exception):
            kill_namespace_pids(ns)
        done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        if done.returncode == 0:
            removed.append(ns)
    with contextlib.suppress(OSError):
        for name in stale_names(sorted(os.listdir(ETC_NETNS)), alive):
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    tmp = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for name in stale_names(sorted(os.listdir(tmp)), alive):
            path = tmp / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
    return removed


class CommandError(RuntimeError):
    """A command inside a namespace failed; the message carries its output."""


@dataclass
class Process:
    """A background process started by a :class:`Lab`; its output goes to ``log``."""

    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps the process."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=timeout)


class Lab:
    """A set of namespaces with one unique name prefix; see the module docstring."""

    def __init__(self, prefix: str | None = None) -> None:
        global _swept
        if not _swept:
            _swept = True
            with contextlib.suppress(Exception):  # best effort: a lab works without it
                sweep_stale()
        self.prefix = prefix or f"wgpy{os.getpid()}x{next(_NAMES)}"
        self.namespaces: list[str] = []
        self.processes: list[Process] = []
        self.interfaces: list[str] = []
        self.etc_dirs: list[Path] = []
        self._counter = itertools.count()
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.closed = False

    # -- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Undo everything; safe to call twice, never raises for what is already gone."""
        if self.closed:
            return
        self.closed = True
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                kill_namespace_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
        for name in self.interfaces:
            sock = UAPI_DIR / f"{name}.sock"
            # The daemon removes its socket when its device goes; give it a moment first.
            wait_for(_gone(sock), 2.0)
            with contextlib.suppress(OSError):
                sock.unlink()
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- names -------------------------------------------------------------------------------

    def namespace(self, tag: str = "") -> str:
        """Create a namespace (loopback up) and return its name."""
        name = f"{self.prefix}{tag or next(self._counter)}"
        subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10, check=True)
        self.namespaces.append(name)
        self.run(name, ["ip", "link", "set", "lo", "up"])
        return name

    def interface_name(self) -> str:
        """A WireGuard interface name unique across processes (at most 15 characters)."""
        name = f"wg{os.getpid() % 100000}x{next(self._counter)}"
        self.interfaces.append(name)
        return name

    def etc_file(self, ns: str, name: str, text: str) -> None:
        """Write ``/etc/netns/NS/NAME``, which ``ip netns exec NS`` shows as ``/etc/NAME``
        (e.g. ``hosts``); :meth:`close` removes ``/etc/netns/NS``."""
        directory = ETC_NETNS / ns
        directory.mkdir(parents=True, exist_ok=True)
        self.etc_dirs.append(directory)
        (directory / name).write_text(text)

    def path(self, name: str) -> Path:
        """A file name in this lab's temporary directory (removed by :meth:`close`)."""
        return self.tmpdir / name

    # -- running things ----------------------------------------------------------------------

    def argv(self, ns: str | None, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)

    def run(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` (None: here) and wait at most ``timeout`` seconds.

        Output is collected through files, not pipes, so a daemon that the command leaves
        behind holding its stdout cannot make us wait.
        """
        full = self.argv(ns, argv)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    full, stdout=out, stderr=err, timeout=timeout,
                    input=None if input is None else input.encode(),
                    stdin=subprocess.DEVNULL if input is None else None,
                    env=tool_env(env), check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise CommandError(f"timed out after {timeout}s: {' '.join(full)}") from exc
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(
                full, proc.returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )
        if check and done.returncode != 0:
            raise CommandError(
                f"exit {done.returncode}: {' '.join(full)}\n{done.stdout}{done.stderr}".rstrip()
            )
        return done

    def spawn(
        self, ns: str | None, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Process:
        """Start ``argv`` inside ``ns`` in the background; :meth:`close` stops it."""
        full = self.argv(ns, argv)
        log = self.path(f"proc{next(self._counter)}.log")
        with log.open("wb") as out:
            popen = subprocess.Popen(
                full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=tool_env(env),
            )
        proc = Process(full, popen, log)
        self.processes.append(proc)
        return proc

    def start_daemon(
        self,
        ns: str,
        program: Sequence[str],
        iface: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Run ``PROGRAM IFACE`` in ``ns`` (it daemonizes once ready, like wireguard-go), then
        wait until its UAPI socket exists. Returns the interface name (a fresh one if None).

        Output goes to a log file, not a pipe: the daemonized child would hold a pipe open.
        """
        name = iface or self.interface_name()
        log = self.path(f"daemon-{name}.log")
        with log.open("wb") as out:
            try:
                done = subprocess.run(
                    self.argv(ns, [*program, name]), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=tool_env(env), timeout=timeout, check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise CommandError(f"{program[0]} {name} did not return in {timeout}s") from exc
        if done.returncode != 0:
            raise CommandError(f"{program[0]} {name} failed ({done.returncode}): "
                               f"{log.read_text(errors='replace')}")
        if not wait_for(lambda: (UAPI_DIR / f"{name}.sock").exists(), 10.0):
            raise CommandError(f"{program[0]} {name}: no UAPI socket appeared")
        return name

    def daemon_pids(self, ns: str) -> list[int]:
        """Processes living in ``ns`` (our daemons, once daemonized)."""
        out = self.run(None, ["ip", "netns", "pids", ns], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    # -- wiring ------------------------------------------------------------------------------

    def veth(
        self,
        ns_a: str,
        ns_b: str,
        addrs_a: Sequence[str] = (),
        addrs_b: Sequence[str] = (),
        names: tuple[str, str] = ("veth0", "veth1"),
    ) -> tuple[str, str]:
        """Join two namespaces with a veth pair; assign addresses (IPv6 with ``nodad``); up."""
        name_a, name_b = names
        self.run(None, ["ip", "link", "add", name_a, "netns", ns_a, "type", "veth",
                        "peer", "name", name_b, "netns", ns_b])
        for ns, dev, addrs in ((ns_a, name_a, addrs_a), (ns_b, name_b, addrs_b)):
            for addr in addrs:
                self.add_address(ns, dev, addr)
            self.run(ns, ["ip", "link", "set", dev, "up"])
        return name_a, name_b

    def add_address(self, ns: str, dev: str, addr: str) -> None:
        extra = ["nodad"] if ":" in addr else []
        self.run(ns, ["ip", "addr", "add", addr, "dev", dev, *extra])

    def link_exists(self, ns: str | None, dev: str) -> bool:
        return self.run(ns, ["ip", "link", "show", "dev", dev], check=False).returncode == 0

    # -- traffic -----------------------------------------------------------------------------

    def ping(self, ns: str, addr: str, count: int = 3, timeout: float = 10.0) -> float | None:
        """Ping ``addr`` from ``ns``; the mean RTT in ms if any reply came back, else None."""
        done = self.run(
            ns, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-w", str(int(timeout)), addr],
            check=False, timeout=timeout + 5,
        )
        if done.returncode != 0:
            return None
        for line in done.stdout.splitlines():
            if "min/avg/max" in line:
                return float(line.split("=")[1].split("/")[1])
        return None

    def wait_ping(self, ns: str, addr: str, timeout: float = 10.0) -> bool:
        """Ping once at a time until a reply comes (a handshake may be in flight)."""
        return wait_for(lambda: self.ping(ns, addr, 1, 2.0) is not None, timeout, 0.1)

    def iperf3(
        self,
        server_ns: str,
        client_ns: str,
        server_addr: str,
        *,
        seconds: float = 2.0,
        udp: bool = False,
        bandwidth: str = "100M",
        reverse: bool = False,
        port: int = 5201,
        extra: Sequence[str] = (),
    ) -> dict[str, Any]:
        """One bounded iperf3 run; returns the parsed JSON (see :func:`iperf3_bits_per_second`)."""
        server = self.spawn(server_ns, ["iperf3", "-s", "-1", "-p", str(port)])
        listening = wait_for(
            lambda: f":{port} " in self.run(
                server_ns, ["ss", "-Hltn"], check=False, timeout=5).stdout
            or not server.alive(),
            10.0,
        )
        if not listening or not server.alive():
            raise CommandError(f"iperf3 server did not start: {server.output()}")
        argv = ["iperf3", "-c", server_addr, "-p", str(port), "-t", str(seconds), "-J",
                "--connect-timeout", "5000", *extra]
        if udp:
            argv += ["-u", "-b", bandwidth]
        if reverse:
            argv.append("-R")
        try:
            done = self.run(client_ns, argv, check=False, timeout=seconds + 20)
        finally:
            server.stop(timeout=2.0)
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise CommandError(f"iperf3 gave no JSON: {done.stdout}{done.stderr}") from exc
        if "error" in result:
            raise CommandError(f"iperf3: {result['error']}")
        return result


def iperf3_bits_per_second(result: Mapping[str, Any]) -> float:
    """Throughput the receiver saw (TCP: ``sum_received``; UDP: ``sum``)."""
    end = result["end"]
    if "sum_received" in end:
        return float(end["sum_received"]["bits_per_second"])
    return float(end["sum"]["bits_per_second"])


@contextlib.contextmanager
def lab(prefix: str | None = None) -> Iterator[Lab]:
    """``with lab() as l:``: a :class:`Lab` closed on the way out, whatever happened."""
    instance = Lab(prefix)
    try:
        yield instance
    finally:
        instance.close()


def main(args: Sequence[str]) -> int:
    """``python -m tunnel.lab.netns sweep``: :func:`sweep_stale`, naming what it removed."""
    if list(args) != ["sweep"]:
        print("usage: python -m tunnel.lab.netns sweep", file=sys.stderr)
        return 2
    reason = missing_requirements()
    if reason is not None:
        print(f"cannot sweep: {reason}", file=sys.stderr)
        return 1
    for ns in sweep_stale():
        print(f"removed stale namespace {ns}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
