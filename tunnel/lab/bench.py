"""``wg-py bench``: wg-py against the references, side by side, on this machine.

One run builds, per contender, two namespaces joined by a veth pair (one :class:`~tunnel.lab.netns.Lab`,
prefix ``wgb<pid>``; everything is removed on the way out, also after Ctrl-C, SIGTERM or a
failure; every command has a timeout) and alternates the contenders round by round (the order
rotates each round) so that slow drifts of the machine hit all of them alike:

``veth``        raw veth, no tunnel (the ceiling)
``wgpy``        wg-py WireGuard on both ends (MTU 1420, configured with ``wg setconf``)
``wgpy-w2``     the same with ``WGPY_WORKERS=2`` (issue 17: two data path threads per daemon)
``wggo-VER``    one per ``--wireguard-go PATH`` (repeatable; default: Debian's ``wireguard-go``
                on the PATH), on both ends (MTU 1420), keyed by and labelled with its
                ``--version`` line (``wggo-20250522`` = ``wireguard-go v0.0.20250522``)
``wgpy-vxlan``  ``wg-py vxlan`` on both ends (TAP MTU 1450, from the veth)
``kvxlan``      the kernel's vxlan driver on both ends (MTU 1450)
``kvxlan-wgpy`` the kernel's vxlan over wg-py WireGuard (issue 12; :mod:`tunnel.lab.benchoverlay`)
``kvxlan-wggo-VER`` the kernel's vxlan over each ``--wireguard-go`` contender
``wgpy-l2``     wg-py's one-process L2 overlay (``wg-py vxlan add ... dev WGIFACE``); reported
                as unavailable, with the reason, when this wg-py refuses it or runs it as a
                separate process

Per round and contender: iperf3 TCP with 1 and 4 streams, iperf3 UDP with 64-byte payloads at
an unlimited offered rate (packets/s that arrived); then, after every contender's throughput
runs of the round, the ping RTTs of all contenders in interleaved blocks (:func:`ping_schedule`:
A B, B A, ...; 200 pings at 10 ms per contender and round). Around each single-stream TCP
run: the CPU time (utime+stime from ``/proc/PID/stat``) of the tunnel processes on both ends,
the machine's busy time and its softirq time (``/proc/stat``), each divided by the bytes moved,
and the machine's idle share (whether the stream left CPU unused). Around each 4-stream run
(issue 17): the machine's idle share and each CPU's busy share (``/proc/stat``), and the busiest
tunnel process's CPU time over the wall time (in cores; above 1 it ran on more than one CPU at a
time). After the rounds: the tunnel processes' peak RSS (``VmHWM``) and, for wg-py and
wireguard-go, the RSS (``VmRSS``) of a fresh daemon before and after ``wg setconf`` of
``--peers`` generated peers (one /32 each).

Figures are medians over the rounds. The report names the contenders it compared (each
wireguard-go by version) and is a table with each figure, its ratios to the references (wg-py /
each wireguard-go, wg-py VXLAN / kernel vxlan, wg-py L2 / each kernel overlay and plain wg-py)
and to raw veth, the targets of issues 17 and 12 marked met or not (the wireguard-go targets
once per wireguard-go), the machine's ``/proc/loadavg``
before and after the run, a JSON file and a PNG bar chart (:func:`tunnel.lab.benchchart.chart`,
matplotlib from the ``bench`` extra; without it no PNG is written) under ``bench/results/``.
The pure functions (parsing, statistics, report, chart) take and return plain data and are
unit-tested; :func:`run` does the I/O and shows a progress bar (rich) on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crypto import keys
from tunnel.lab import benchchart, benchoverlay
from tunnel.lab.benchoverlay import Unavailable
from tunnel.lab.benchreport import (
    CONTENDERS,
    KVXLAN_WGGO,
    METRICS,
    OVERLAYS,
    PEER_RSS,
    TUNNEL_PROCESSES,
    WGGO,
    busiest_cores,
    evaluate_targets,
    fmt,
    idle_figures,
    kind,
    metrics_of,
    overlay_key,
    overlay_label,
    parse_ping,
    per_gigabyte,
    proc_cpu_ticks,
    ratio,
    references,
    render_table,
    softirq_ticks,
    status_kib,
    summarize,
    system_busy_ticks,
    tcp_figures,
    udp_received_pps,
    wireguard_go_key,
    wireguard_go_label,
)
from tunnel.lab.netns import CommandError, Lab, missing_requirements
from tunnel.wireguard import quick

# ---- options -----------------------------------------------------------------------------------


@dataclass
class Options:
    rounds: int = 3
    time: int = 5
    only: list[str] = field(default_factory=lambda: list(CONTENDERS))
    json_path: Path | None = None
    chart: bool = True
    peers: int = 10_000
    ping_count: int = 200  # per contender and round: the RTT medians of 50 were too noisy
    ping_interval: float = 0.01
    quick: bool = False
    wireguard_go: list[str] = field(default_factory=list)  # paths; empty: wireguard-go on PATH


@dataclass(frozen=True)
class WireguardGo:
    """One wireguard-go contender: its key (``wggo-20250522``), label (its ``--version`` line)
    and the program's path."""

    key: str
    label: str
    path: str


def program_version(path: str) -> str:
    """``PATH --version`` output (stdout, else stderr); raises ValueError if it cannot run."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"{path}: cannot run --version: {exc}") from exc
    return done.stdout or done.stderr


def wireguard_go_contenders(paths: Sequence[str],
                            version_of: Callable[[str], str] = program_version) -> list[WireguardGo]:
    """The wireguard-go contenders for ``paths`` in order, each labelled from ``version_of(path)``
    (the ``--version`` output) and given a unique key. Raises ValueError naming the path if one
    is not a wireguard-go (so a mistyped path is a clear error, not a silent gap)."""
    out: list[WireguardGo] = []
    for path in paths:
        try:
            label = wireguard_go_label(version_of(path))
        except ValueError as exc:
            raise ValueError(f"--wireguard-go {path}: {exc}") from exc
        out.append(WireguardGo(wireguard_go_key(label, [w.key for w in out]), label, path))
    return out


def expand(only: Sequence[str], wggos: Sequence[WireguardGo]) -> list[str]:
    """The run's contender keys: ``only`` with the ``wggo`` slot replaced by the wireguard-go
    contenders' keys and the ``kvxlan-wggo`` slot by their overlay keys, in their order."""
    out: list[str] = []
    for name in only:
        if name == WGGO:
            out += [w.key for w in wggos]
        elif name == KVXLAN_WGGO:
            out += [overlay_key(w.key) for w in wggos]
        else:
            out.append(name)
    return out


def programs_and_labels(wggos: Sequence[WireguardGo]) -> tuple[dict[str, str], dict[str, str]]:
    """(contender key -> wireguard-go binary, contender key -> label) for every contender that
    runs one of ``wggos``: the plain ones and the kernel vxlan over each."""
    programs = {w.key: w.path for w in wggos} | {overlay_key(w.key): w.path for w in wggos}
    labels = {w.key: w.label for w in wggos} | {overlay_key(w.key): overlay_label(w.label)
                                                for w in wggos}
    return programs, labels


def parse_args(args: Sequence[str]) -> Options:
    """The command line -> :class:`Options`; raises SystemExit (argparse) on bad input."""
    p = argparse.ArgumentParser(prog="wg-py bench", description="Benchmark wg-py against "
                                "wireguard-go, the kernel's vxlan and raw veth, in namespaces.")
    p.add_argument("--rounds", type=int, help="rounds per contender (default 3; --quick: 1)")
    p.add_argument("--time", type=int, help="seconds per iperf3 run (default 5; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--wireguard-go", action="append", default=[], metavar="PATH",
                   help="a wireguard-go binary to compare against (repeatable; each one is "
                   "labelled with its --version; default: wireguard-go on the PATH)")
    p.add_argument("--only", help="comma-separated subset of: " + ",".join(CONTENDERS))
    p.add_argument("--json", type=Path, help="write the JSON here (the PNG next to it) "
                   "instead of bench/results/")
    p.add_argument("--no-chart", action="store_true", help="no PNG")
    p.add_argument("--peers", type=int, help="peers for the RSS test (default 10000; "
                   "--quick: 500; 0 skips it)")
    ns = p.parse_args(list(args))
    opts = Options(quick=ns.quick, chart=not ns.no_chart, json_path=ns.json,
                   wireguard_go=list(ns.wireguard_go))
    if ns.quick:
        opts.rounds, opts.time, opts.peers, opts.ping_count = 1, 1, 500, 10
    for name in ("rounds", "time", "peers"):
        value = getattr(ns, name)
        if value is not None:
            setattr(opts, name, value)
    if opts.rounds < 1 or opts.time < 1 or opts.peers < 0:
        p.error("--rounds and --time must be >= 1, --peers >= 0")
    if ns.only:
        wanted = [w.strip() for w in ns.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in CONTENDERS]
        if unknown or not wanted:
            p.error(f"--only: unknown {','.join(unknown)}; choose from {','.join(CONTENDERS)}")
        opts.only = [c for c in CONTENDERS if c in wanted]
    return opts


# ---- the lab side ------------------------------------------------------------------------------

OUTER = ("10.200.0.1", "10.200.0.2")
INNER = ("10.201.0.1", "10.201.0.2")
VNI = "42"
WG_MTU = 1420
SETUP_TIMEOUT = 15.0


class SetupError(RuntimeError):
    """A contender could not be built (it is left out of the run)."""


@dataclass
class Pair:
    """One contender's two namespaces: ``client`` (sends) and ``server``; ``server_addr`` is the
    address traffic goes to (inside the tunnel); ``pids`` are the tunnel processes of both ends."""

    name: str
    client: str
    server: str
    server_addr: str
    pids: list[int] = field(default_factory=list)
    mtu: int = 1500


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return " ".join(_read("/proc/loadavg").split()[:3])


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of ``pids`` (all threads), in seconds; vanished processes count 0 (used by
    ``bench/vxlan_pump.py``; :func:`measure_tcp` reads :func:`process_cpu` per process)."""
    tck = os.sysconf("SC_CLK_TCK")
    return sum(proc_cpu_ticks(t) for p in pids if (t := _read(f"/proc/{p}/stat"))) / tck


def rss_mib(pids: Sequence[int], field_name: str = "VmRSS") -> float:
    return sum(status_kib(_read(f"/proc/{p}/status"), field_name) for p in pids) / 1024


WGPY_UNDERLAY = ("wgpy", "wgpy-w2", "kvxlan-wgpy", "wgpy-l2")  # contenders whose WireGuard is wg-py


def _wg_program(name: str, programs: Mapping[str, str]) -> list[str]:
    """wg-py's daemon for ``wgpy`` and the overlays over wg-py; for a contender over
    wireguard-go, its binary from ``programs`` (else the ``wireguard-go`` on the PATH:
    ``bench/hops.py`` builds a plain ``wggo`` pair)."""
    if name in WGPY_UNDERLAY:
        return quick.daemon_command()
    return [programs.get(name, "wireguard-go")]


def _wg_conf(private: bytes, port: int, peers: str) -> str:
    return f"[Interface]\nPrivateKey = {keys.to_base64(private)}\nListenPort = {port}\n\n{peers}"


def build_pair(lab: Lab, name: str, programs: Mapping[str, str] | None = None) -> Pair:
    """Two namespaces on a veth (OUTER addresses), and the contender's tunnel between them
    (INNER addresses; for an overlay, the VXLAN over them with ``benchoverlay.OVERLAY``
    addresses), reachable by ping; raises SetupError otherwise (:class:`Unavailable` when the
    contender does not exist in this wg-py). ``programs`` maps a contender over wireguard-go
    to its binary."""
    programs = programs or {}
    a, b = lab.namespace(f"{name}a"), lab.namespace(f"{name}b")
    lab.veth(a, b, [f"{OUTER[0]}/24"], [f"{OUTER[1]}/24"])
    ends = ((a, "veth0", 0), (b, "veth1", 1))
    pair = Pair(name, a, b, INNER[1])
    env = {"WGPY_VXLAN_RUN_DIR": str(lab.path("vxlan-run")), "LOG_LEVEL": "error"}
    if name == "veth":
        pair.server_addr = OUTER[1]
        return pair
    if name in WGPY_UNDERLAY or kind(name) in (WGGO, KVXLAN_WGGO):
        privs = [keys.generate_private(), keys.generate_private()]
        ifaces = []
        wg_env = {**env, "WGPY_WORKERS": "2"} if name == "wgpy-w2" else env
        for ns, _, i in ends:
            iface = lab.start_daemon(ns, _wg_program(name, programs), env=wg_env)
            other = 1 - i
            peer = (f"[Peer]\nPublicKey = {keys.to_base64(keys.public_from_private(privs[other]))}\n"
                    f"AllowedIPs = {INNER[other]}/32\nEndpoint = {OUTER[other]}:{51820 + other}\n")
            conf = lab.path(f"{iface}.conf")
            conf.write_text(_wg_conf(privs[i], 51820 + i, peer))
            lab.run(ns, ["wg", "setconf", iface, str(conf)])
            lab.run(ns, ["ip", "addr", "add", f"{INNER[i]}/24", "dev", iface])
            lab.run(ns, ["ip", "link", "set", "mtu", str(WG_MTU), "up", "dev", iface])
            ifaces.append(iface)
        pair.mtu = WG_MTU
        if kind(name) in OVERLAYS:
            pair.mtu = benchoverlay.add_overlay(lab, kind(name), list(zip((a, b), ifaces, strict=True)),
                                                INNER, WG_MTU, env)
            pair.server_addr = benchoverlay.OVERLAY[1]
    else:
        for ns, veth, i in ends:
            opts = ["id", VNI, "dstport", "4789", "remote", OUTER[1 - i], "local", OUTER[i],
                    "dev", veth]
            if name == "kvxlan":
                lab.run(ns, ["ip", "link", "add", "vx0", "type", "vxlan", *opts])
            else:
                lab.run(ns, [*quick.daemon_command(), "vxlan", "add", "vx0", *opts], env=env)
            lab.run(ns, ["ip", "addr", "add", f"{INNER[i]}/24", "dev", "vx0"])
            lab.run(ns, ["ip", "link", "set", "vx0", "up"])
        pair.mtu = int(lab.run(a, ["cat", "/sys/class/net/vx0/mtu"]).stdout.strip() or 0)
    if kind(name) in TUNNEL_PROCESSES:
        pair.pids = lab.daemon_pids(a) + lab.daemon_pids(b)
    if not lab.wait_ping(a, pair.server_addr, timeout=SETUP_TIMEOUT):
        raise SetupError(f"{name}: no ping reply through the tunnel within {SETUP_TIMEOUT:.0f}s")
    return pair


def process_cpu(pids: Sequence[int]) -> dict[int, float]:
    """pid -> utime+stime in seconds, for the processes of ``pids`` still there."""
    tck = os.sysconf("SC_CLK_TCK")
    return {p: proc_cpu_ticks(t) / tck for p in pids if (t := _read(f"/proc/{p}/stat"))}


def measure_tcp(lab: Lab, pair: Pair, streams: int, seconds: int) -> dict[str, float | None]:
    """One iperf3 TCP run client -> server; throughput and, around it, CPU per gigabyte
    (tunnel processes, machine busy, softirq) and, from the same readings, the machine's idle
    share, each CPU's busy share (keys of :func:`idle_figures`) and the busiest tunnel
    process's cores (``tunnel_cores``). The readings bracket the whole iperf3 call, server
    start (~0.1 s) included."""
    stat0, procs0, t0 = _read("/proc/stat"), process_cpu(pair.pids), time.monotonic()
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds,
                        extra=["-P", str(streams)] if streams > 1 else [])
    stat1, procs1, t1 = _read("/proc/stat"), process_cpu(pair.pids), time.monotonic()
    tck = os.sysconf("SC_CLK_TCK")
    bps, nbytes = tcp_figures(result)
    cpu = sum(procs1.values()) - sum(procs0[p] for p in procs1 if p in procs0)
    busy = (system_busy_ticks(stat1) - system_busy_ticks(stat0)) / tck
    softirq = (softirq_ticks(stat1) - softirq_ticks(stat0)) / tck
    return {"gbps": bps / 1e9,
            "cpu_tunnel": per_gigabyte(cpu, nbytes) if pair.pids else None,
            "cpu_system": per_gigabyte(busy, nbytes),
            "cpu_softirq": per_gigabyte(softirq, nbytes),
            "tunnel_cores": busiest_cores(procs0, procs1, t1 - t0) if pair.pids else None,
            **idle_figures(stat0, stat1)}


def measure_udp(lab: Lab, pair: Pair, seconds: int) -> float:
    """iperf3 UDP, 64-byte payloads, unlimited offered rate: received kpps."""
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds, udp=True,
                        bandwidth="0", extra=["-l", "64"])
    return udp_received_pps(result) / 1e3


def measure_ping_rtts(lab: Lab, pair: Pair, count: int, interval: float) -> list[float]:
    """The RTTs in ms of ``count`` pings at ``interval`` seconds (CommandError if none came back)."""
    limit = int(count * interval + 10)
    done = lab.run(pair.client, ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                                 "-w", str(limit), pair.server_addr], check=False,
                   timeout=limit + 5)
    rtts = parse_ping(done.stdout)
    if not rtts:
        raise CommandError(f"no ping replies: {done.stdout}{done.stderr}")
    return rtts


PING_BLOCKS = 4  # a round's pings per contender come in this many blocks, interleaved


def ping_schedule(names: Sequence[str], count: int, blocks: int = PING_BLOCKS) -> list[tuple[str, int]]:
    """The order of a round's ping blocks: ``(contender, pings)``, every contender ``count``
    pings in ``blocks`` blocks (fewer if ``count`` is smaller), the contenders' order reversed
    every other block (A B, B A, A B, ...). So each contender's pings spread over the same
    stretch of the round, none always follows the same neighbour, and a drift of the machine
    (how warm its caches and vCPUs are, what ran just before) hits them alike."""
    blocks = max(1, min(blocks, count))
    sizes = [count // blocks + (1 if b < count % blocks else 0) for b in range(blocks)]
    order: list[tuple[str, int]] = []
    for b, size in enumerate(sizes):
        for name in (names if b % 2 == 0 else list(reversed(names))):
            order.append((name, size))
    return order


def measure_peer_rss(lab: Lab, name: str, peers: int,
                     programs: Mapping[str, str]) -> tuple[float, float]:
    """A fresh daemon in its own namespace: (VmRSS MiB idle, VmRSS MiB after ``wg setconf`` of
    ``peers`` generated peers with one /32 each)."""
    ns = lab.namespace(f"{name}p")
    iface = lab.start_daemon(ns, _wg_program(name, programs), env={"LOG_LEVEL": "error"})
    pids = lab.daemon_pids(ns)
    time.sleep(0.5)
    idle = rss_mib(pids)
    sections = []
    for i in range(peers):
        ip = 0x0A800000 + i + 1  # 10.128.0.1 on
        sections.append(f"[Peer]\nPublicKey = {keys.to_base64(os.urandom(32))}\nAllowedIPs = "
                        f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}/32\n")
    conf = lab.path(f"{iface}-peers.conf")
    conf.write_text(_wg_conf(keys.generate_private(), 51900, "\n".join(sections)))
    lab.run(ns, ["wg", "setconf", iface, str(conf)], timeout=300)
    listed = lab.run(ns, ["wg", "show", iface, "peers"], timeout=120).stdout.split()
    if len(listed) != peers:
        raise CommandError(f"{name}: {len(listed)} peers configured, expected {peers}")
    time.sleep(1.0)
    return idle, rss_mib(pids)


_progress: Any = None  # the rich Progress of the run under way (lines print above its bar)


def _say(text: str) -> None:
    if _progress is not None:
        _progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        print(text, flush=True)


def _step(description: str | None = None, total: int | None = None) -> None:
    """Advance the progress bar by one step (or only change its text or total)."""
    if _progress is None:
        return
    task = _progress.task_ids[0]
    if total is not None or description is not None:
        _progress.update(task, total=total, description=description)
    else:
        _progress.advance(task)


@contextlib.contextmanager
def progress_bar(total: int) -> Iterator[None]:
    """A progress bar for the run (rich; drawn only on a terminal, removed when done)."""
    global _progress
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True)
    bar.add_task("setting up", total=total)
    _progress = bar
    try:
        with bar:
            yield
    finally:
        _progress = None


def _attempt(what: str, fn: Callable[[], str]) -> None:
    """Run one measurement; print its line, or why it failed (the run goes on)."""
    _step(description=what)
    try:
        _say(f"{what:<34} {fn()}")
    except (CommandError, KeyError, ValueError, OSError) as exc:
        _say(f"{what:<34} FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    _step()


def run(opts: Options, wggos: Sequence[WireguardGo] = ()) -> dict[str, Any]:
    """Build the contenders (``opts.only``, its ``wggo`` slot filled by ``wggos``), measure them
    (rounds alternate), return the results document."""
    samples: dict[str, dict[str, list[float | None]]] = {}
    info: dict[str, Any] = {}
    started = time.time()
    load_before = _read("/proc/loadavg").strip()
    programs, labels = programs_and_labels(wggos)
    names_wanted = expand(opts.only, wggos)
    with Lab(f"wgb{os.getpid() % 100000}") as lab, progress_bar(len(names_wanted)):
        pairs: list[Pair] = []
        for name in names_wanted:
            _step(description=f"setup {name}")
            t0 = time.monotonic()
            try:
                pair = build_pair(lab, name, programs)
            except Unavailable as exc:
                _say(f"setup {name:<28} UNAVAILABLE: {exc}")
                info[name] = {"label": labels.get(name, CONTENDERS[kind(name)]),
                              "unavailable": str(exc), "path": programs.get(name)}
                _step()
                continue
            except (SetupError, CommandError, OSError) as exc:
                _say(f"setup {name:<28} FAILED: {exc}")
                info[name] = {"label": labels.get(name, CONTENDERS[kind(name)]), "error": str(exc),
                              "path": programs.get(name)}
                _step()
                continue
            pairs.append(pair)
            info[name] = {"label": labels.get(name, CONTENDERS[kind(name)]), "mtu": pair.mtu,
                          "pids": pair.pids, "path": programs.get(name)}
            samples[name] = {m.key: [] for m in METRICS}
            _say(f"setup {name:<28} ok (mtu {pair.mtu}, {time.monotonic() - t0:.1f}s)")
            _step()
        peer_runs = sum(1 for p in pairs if kind(p.name) in PEER_RSS) if opts.peers else 0
        _step(total=len(names_wanted) + opts.rounds * len(pairs) * 4 + peer_runs)
        for r in range(opts.rounds):
            order = pairs[r % len(pairs):] + pairs[: r % len(pairs)] if pairs else []
            for p in order:
                s = samples[p.name]
                tag = f"[{r + 1}/{opts.rounds}] {p.name}"

                def tcp(streams: int, p: Pair = p, s: dict[str, list[float | None]] = s) -> str:
                    got = measure_tcp(lab, p, streams, opts.time)
                    s[f"tcp{streams}_gbps"].append(got["gbps"])
                    if streams == 1:
                        s["cpu_tunnel_s_per_gb"].append(got["cpu_tunnel"])
                        s["cpu_system_s_per_gb"].append(got["cpu_system"])
                        s["cpu_softirq_s_per_gb"].append(got["cpu_softirq"])
                        idle = got.get("idle_tcp4_pct")  # idle_figures' key, whatever the streams
                        s["idle_tcp1_pct"].append(idle)
                        return (f"{got['gbps']:.3f} Gbit/s  tunnel cpu {fmt(got['cpu_tunnel'])} "
                                f"s/GB  machine cpu {fmt(got['cpu_system'])} s/GB  softirq "
                                f"{fmt(got['cpu_softirq'])} s/GB  idle {fmt(idle)} %")
                    s["tunnel_cores_tcp4"].append(got["tunnel_cores"])
                    busy = []
                    for key, value in got.items():
                        if key == "idle_tcp4_pct" or key.startswith("busy_tcp4_cpu"):
                            s.setdefault(key, []).append(value)
                            if key != "idle_tcp4_pct":
                                busy.append(f"{value:.0f}")
                    return (f"{got['gbps']:.3f} Gbit/s  idle {fmt(got.get('idle_tcp4_pct'))} %  "
                            f"per-CPU busy {'/'.join(busy)} %  busiest tunnel process "
                            f"{fmt(got['tunnel_cores'])} cores")

                def udp(p: Pair = p, s: dict[str, list[float | None]] = s) -> str:
                    s["udp64_kpps"].append(kpps := measure_udp(lab, p, opts.time))
                    return f"{kpps:.1f} kpps received"

                _attempt(f"{tag} tcp x1", lambda: tcp(1))
                _attempt(f"{tag} tcp x4", lambda: tcp(4))
                _attempt(f"{tag} udp 64B", udp)
            # the round's pings: all contenders in interleaved blocks (ping_schedule), after the
            # throughput runs, so each contender's RTTs sample the same state of the machine
            rtts: dict[str, list[float]] = {p.name: [] for p in order}
            failed: dict[str, str] = {}
            by_name = {p.name: p for p in order}
            _step(description=f"[{r + 1}/{opts.rounds}] ping, interleaved")
            for name, count in ping_schedule([p.name for p in order], opts.ping_count):
                if name in failed:
                    continue
                try:
                    rtts[name] += measure_ping_rtts(lab, by_name[name], count, opts.ping_interval)
                except (CommandError, OSError) as exc:
                    failed[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            for p in order:
                what = f"[{r + 1}/{opts.rounds}] {p.name} ping x{opts.ping_count}"
                if p.name in failed:
                    _say(f"{what:<34} FAILED: {failed[p.name]}")
                else:
                    med, avg = statistics.median(rtts[p.name]), statistics.fmean(rtts[p.name])
                    samples[p.name]["ping_median_ms"].append(med)
                    samples[p.name]["ping_avg_ms"].append(avg)
                    _say(f"{what:<34} median {med:.3f} ms  avg {avg:.3f} ms  ({PING_BLOCKS} blocks, interleaved)")
                _step()
        for p in pairs:
            if p.pids:
                per = [rss_mib([pid], "VmHWM") for pid in p.pids]
                samples[p.name]["peak_rss_mib"].append(max(per))
                _say(f"{p.name + ' peak rss':<34} {max(per):.1f} MiB (max of {len(per)} processes)")
        if opts.peers:
            for p in pairs:
                if kind(p.name) not in PEER_RSS:
                    continue

                def peers(p: Pair = p) -> str:
                    idle, full = measure_peer_rss(lab, p.name, opts.peers, programs)
                    samples[p.name]["rss_idle_mib"].append(idle)
                    samples[p.name]["rss_peers_mib"].append(full)
                    return f"{idle:.1f} MiB idle, {full:.1f} MiB with {opts.peers} peers"

                _attempt(f"{p.name} rss {opts.peers} peers", peers)
    names = [p.name for p in pairs]
    summary = summarize(samples)
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "host": {**host_info(), "loadavg_before": load_before,
                 "loadavg_after": _read("/proc/loadavg").strip()},
        "wireguard_go": [asdict(w) for w in wggos],
        "labels": {n: info[n]["label"] for n in names},
        "options": {**asdict(opts), "json_path": str(opts.json_path or "")},
        "contenders": info,
        "order": names,
        "samples": samples,
        "summary": summary,
        "ratios": {f"{a}/{b}": {m.key: ratio(summary, m.key, a, b) for m in metrics_of(summary)}
                   for a, b in [*references(names), *((c, "veth") for c in names)]
                   if a in names and b in names},
        "targets": evaluate_targets(summary, labels),
    }


def host_info() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""

    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "iperf3": version(["iperf3", "--version"]),
            "wgpy_pure": os.environ.get("WGPY_PURE") == "1"}


def results_dir() -> Path:
    """``bench/results`` of the source tree this module lives in, else under the cwd."""
    root = Path(__file__).resolve().parent.parent
    return (root if (root / "bench").is_dir() else Path.cwd()) / "bench" / "results"


def write_results(doc: Mapping[str, Any], opts: Options) -> list[Path]:
    """The JSON (and PNG) files: ``--json PATH`` (+ .png), else timestamped + ``latest.*``."""
    text = json.dumps(doc, indent=2) + "\n"
    title = f"wg-py bench {doc.get('started', '')}"
    chart: bytes | None = None
    if opts.chart and doc["order"]:
        if benchchart.available():
            chart = benchchart.chart(doc["summary"], doc["order"], title, opts.peers,
                                     doc.get("labels"))
        else:
            _say("matplotlib is not installed (pip install 'wg-py[bench]'): no chart")
    if opts.json_path:
        targets = [opts.json_path]
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        targets = [results_dir() / f"bench-{stamp}.json", results_dir() / "latest.json"]
    written = []
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
        if chart is not None:
            path.with_suffix(".png").write_bytes(chart)
            written.append(path.with_suffix(".png"))
    return written


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through Lab.close()


def main(args: list[str]) -> int:
    """``wg-py bench [options]``: 0 when the run completed, 1 on a setup problem, 130 on Ctrl-C."""
    try:
        opts = parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    missing = missing_requirements(("ip", "wg", "ping", "ss", "iperf3"))
    if missing:
        print(f"wg-py bench: {missing}", file=sys.stderr)
        return 1
    wggos: list[WireguardGo] = []
    if WGGO in opts.only or KVXLAN_WGGO in opts.only:
        paths = opts.wireguard_go or [p for p in [shutil.which("wireguard-go")] if p]
        if not paths:
            opts.only = [c for c in opts.only if c not in (WGGO, KVXLAN_WGGO)]
            _say("wireguard-go is not installed: left out")
        try:
            wggos = wireguard_go_contenders(paths)
        except ValueError as exc:
            print(f"wg-py bench: {exc}", file=sys.stderr)
            return 1
        if wggos:
            _say("wireguard-go contenders: " + ", ".join(f"{w.key} = {w.label} ({w.path})"
                                                         for w in wggos))
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        doc = run(opts, wggos)
    except KeyboardInterrupt:
        print("wg-py bench: interrupted; namespaces removed", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say("")
    unavailable = {k: v["unavailable"] for k, v in doc["contenders"].items() if "unavailable" in v}
    sys.stdout.write(render_table(doc["summary"], doc["order"], opts.peers, doc["labels"],
                                  unavailable))
    _say(f"load average before/after: {doc['host']['loadavg_before']} / "
         f"{doc['host']['loadavg_after']} (shared machine)")
    for path in write_results(doc, opts):
        _say(f"wrote {path}")
    return 0
