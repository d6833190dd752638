"""wg-py's ping tail: per-ping RTTs of several contenders in alternating blocks, matched with
what the wg-py daemons were doing at the moment (the probe ``bench/tailprobe``: CPython's GC,
the interface's timers and callbacks). Not a test: numbers for docs/benchmarks.md ("The ping
tail").

    sudo .venv/bin/python bench/ping_tail.py --wireguard-go /work/shared/bin/wireguard-go-upstream \\
        --wgpy wgpy --probe gc,calls --blocks 6 --pings 500 --json out.json

Contenders: each ``--wgpy LABEL`` is a wg-py pair (``--env LABEL:KEY=VALUE`` sets an
environment variable of its daemons, ``--program LABEL:PATH`` runs another wg-py, e.g. the main
checkout's ``.venv/bin/wg-py``); ``--wireguard-go PATH`` adds the ``wggo`` pair, ``--veth`` the
bare veth between two namespaces (no tunnel: the machine's own floor). Every block pings each
contender ``--pings`` times at ``--interval`` (``ping -D``: each reply's wall-clock time), the
order rotating from block to block. With ``--probe``, the wg-py daemons record events (see
bench/tailprobe/sitecustomize.py) and dump them after each block (SIGUSR1).

Printed per contender: p50, p90, p99, p99.9 and max RTT over all blocks and the load average
around them; for each wg-py contender with the probe, how often a ping's flight overlapped each
kind of event, among the slowest 10 % and 1 % of its pings and among the others (an event that
causes the tail shows up far more often among the slow pings).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wg_ab import wg_pair  # noqa: E402  (bench/, the script's folder)

from tunnel.lab.bench import OUTER  # noqa: E402
from tunnel.lab.netns import Lab, wait_for  # noqa: E402
from tunnel.wireguard.quick import daemon_command  # noqa: E402

PROBE_DIR = ROOT / "bench" / "tailprobe"
LINE = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+).*time=([\d.]+) ms")
HIST = re.compile(r"^\s*(\d+\.\d+)\s+\[\d+\]\s+(.+?)\[(\d+(?:/\d+)?)\]\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s*$")
SLACK = 0.0002  # seconds added before a ping's flight when matching events (ping's own wake-up)


class Contender:
    def __init__(self, label: str, client: str, server: str, addr: str, pids: list[int], probed: bool) -> None:
        self.label, self.client, self.server, self.addr = label, client, server, addr
        self.pids, self.probed = pids, probed
        self.pings: list[tuple[float, int, float]] = []  # (reply's wall time, seq, rtt ms)
        self.lost = 0
        self.events: list[list[Any]] = []
        self.loads: list[str] = []
        self.tracked: list[int] = []
        self.covered = 0.0  # seconds of wall time the probes' events cover
        self.dumped = time.time()  # when the probes' events were last taken
        self.waits: list[tuple[float, float]] = []  # per ping with --sched: (ms runnable, ms running)


def wg_contender(lab: Lab, label: str, program: list[str], env: dict[str, str], probed: bool) -> Contender:
    pair = wg_pair(lab, label[:6], program, env)
    return Contender(label, pair.client, pair.server, pair.server_addr, pair.pids, probed)


def veth_contender(lab: Lab) -> Contender:
    a, b = lab.namespace("vetha"), lab.namespace("vethb")
    lab.veth(a, b, [f"{OUTER[0]}/24"], [f"{OUTER[1]}/24"])
    if not lab.wait_ping(a, OUTER[1], timeout=10):
        raise RuntimeError("veth: no ping")
    return Contender("veth", a, b, OUTER[1], [], False)


def ping_block(lab: Lab, c: Contender, count: int, interval: float, sched: str | None = None) -> None:
    """``count`` pings; with ``sched`` (a file name), under ``perf sched record`` (see :func:`waits`)."""
    limit = int(count * interval + 10)
    perf = None
    if sched:
        perf = subprocess.Popen(["perf", "sched", "record", "-k", "CLOCK_MONOTONIC", "-o", sched, "--",
                                 "sleep", str(limit + 2)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    offset = time.time() - time.monotonic()
    try:
        done = lab.run(c.client, ["ping", "-D", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                                  "-w", str(limit), c.addr], check=False, timeout=limit + 5)
    finally:
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
    first = len(c.pings)
    got = 0
    for line in done.stdout.splitlines():
        m = LINE.match(line)
        if m:
            c.pings.append((float(m.group(1)), int(m.group(2)), float(m.group(3))))
            got += 1
    c.lost += count - got
    if sched:
        c.waits.extend(waits(sched, c, c.pings[first:], offset))
        os.unlink(sched)


def waits(data: str, c: Contender, pings: list[tuple[float, int, float]], offset: float) -> list[tuple[float, float]]:
    """Per ping: (ms during its flight when one of its processes was runnable but waited for a
    CPU while none of them ran, ms when one of them ran), from ``perf sched timehist`` of
    ``data``. The ping's processes: the contender's daemons (all their threads) and ``ping``.
    Each timehist line is a task switched out at its time, after ``run time`` on the CPU, which
    it got ``sch delay`` after it was woken. Counting a wait only while nothing of the ping's
    runs keeps a thread that is woken beside the one doing the work (wireguard-go's goroutine
    hand-offs) from counting."""
    out = subprocess.run(["perf", "sched", "timehist", "-i", data], capture_output=True, text=True,
                         timeout=300, check=False).stdout
    pids = set(c.pids)
    waiting: list[tuple[float, float]] = []
    running: list[tuple[float, float]] = []
    for line in out.splitlines():
        m = HIST.match(line)
        if not m:
            continue
        t, comm, ids, delay, run = float(m.group(1)), m.group(2), m.group(3), float(m.group(4)), float(m.group(5))
        pid = int(ids.split("/")[-1])
        if pid not in pids and comm != "ping":
            continue
        begin = t - run / 1000
        running.append((begin, t))
        if delay:
            waiting.append((begin - delay / 1000, begin))
    waiting.sort()
    running.sort()
    result = []
    for reply, _, rtt in pings:
        hi = reply - offset
        lo = hi - rtt / 1000
        waited = union(waiting, lo, hi)
        ran = union(running, lo, hi)
        result.append((1000 * (length(waited) - overlap(waited, ran)), 1000 * length(ran)))
    return result


def union(intervals: list[tuple[float, float]], lo: float, hi: float) -> list[tuple[float, float]]:
    """The union of ``intervals`` (sorted by start) within [lo, hi], as disjoint sorted intervals."""
    merged: list[tuple[float, float]] = []
    i = bisect.bisect_left(intervals, (lo - 1.0,))
    for start, end in intervals[i:]:
        if start >= hi:
            break
        start, end = max(start, lo), min(end, hi)
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two disjoint sorted interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def collect(c: Contender, probe_dir: Path) -> None:
    """Ask the probed daemons for their events since the last time (SIGUSR1) and keep them."""
    now = time.time()
    c.covered += now - c.dumped
    c.dumped = now
    for pid in c.pids:
        path = probe_dir / f"{pid}.json"
        path.unlink(missing_ok=True)
        os.kill(pid, signal.SIGUSR1)
        if not wait_for(path.exists, 5.0):
            print(f"  {c.label}: pid {pid} wrote no events", flush=True)
            continue
        data = json.loads(path.read_text())
        path.unlink()
        c.events.extend([pid, *e] for e in data["events"])
        c.tracked.append(data["tracked"])


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def event_kind(e: list[Any]) -> str:
    return f"gc{e[2]}" if e[1] == "gc" else e[2]


def overlaps(c: Contender) -> dict[str, dict[str, float]]:
    """Per event kind: the share of pings whose flight overlapped one, among the slowest 10 %,
    the slowest 1 % and the other 90 %."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for e in c.events:
        spans.setdefault(event_kind(e), []).append((e[3], e[4]))
    for v in spans.values():
        v.sort()
    rtts = sorted(r for _, _, r in c.pings)
    p90, p99 = quantile(rtts, 0.9), quantile(rtts, 0.99)
    groups = {"slowest 1%": [p for p in c.pings if p[2] >= p99], "slowest 10%": [p for p in c.pings if p[2] >= p90],
              "other 90%": [p for p in c.pings if p[2] < p90]}
    result: dict[str, dict[str, float]] = {}
    for kind, intervals in spans.items():
        starts = [s for s, _ in intervals]
        row = {}
        for group, pings in groups.items():
            hit = 0
            for t, _, rtt in pings:
                lo, hi = t - rtt / 1000 - SLACK, t
                # any interval with start <= hi and end >= lo
                i = bisect.bisect_right(starts, hi)
                j = i - 1
                while j >= 0 and starts[j] >= lo - 1.0:  # events last well under a second
                    if intervals[j][1] >= lo:
                        hit += 1
                        break
                    j -= 1
            row[group] = hit / len(pings) if pings else float("nan")
        result[kind] = row
    return result


def set_slice(tid: int, ns: int) -> None:
    """sched_setattr(tid, SCHED_OTHER, sched_runtime=ns): the EEVDF slice a task asks for (Linux 6.12+)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, ns, 0, 0, 0, 0), 56)
    if libc.syscall(314, tid, attr, 0):  # SYS_sched_setattr on x86-64
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sched_summary(c: Contender) -> str:
    """The RTT with the time spent waiting for a CPU taken out, and how much of the tail that is."""
    rtts = [r for _, _, r in c.pings]
    net = sorted(r - w for r, (w, _) in zip(rtts, c.waits, strict=True))
    order = sorted(range(len(rtts)), key=rtts.__getitem__)
    slow10 = order[int(0.9 * len(order)):]
    slow1 = order[int(0.99 * len(order)):]

    def share(idx: list[int]) -> float:
        return sum(c.waits[i][0] for i in idx) / max(1e-9, sum(rtts[i] for i in idx))

    def mostly(idx: list[int]) -> float:
        return sum(1 for i in idx if c.waits[i][0] >= 0.5 * rtts[i]) / max(1, len(idx))

    return (f"{'':>10} minus CPU waits: {quantile(net, .5):7.3f} {quantile(net, .9):7.3f} {quantile(net, .99):7.3f} "
            f"{quantile(net, .999):7.3f} {net[-1]:7.3f}   waits are {share(slow10):.0%} of the slowest 10 %'s "
            f"time ({mostly(slow10):.0%} mostly waiting), {share(slow1):.0%} of the slowest 1 %'s "
            f"({mostly(slow1):.0%}), {share(order[: int(0.9 * len(order))]):.0%} of the others'")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wgpy", action="append", default=[], metavar="LABEL")
    p.add_argument("--env", action="append", default=[], metavar="LABEL:KEY=VALUE")
    p.add_argument("--program", action="append", default=[], metavar="LABEL:PATH")
    p.add_argument("--wireguard-go", metavar="PATH")
    p.add_argument("--veth", action="store_true")
    p.add_argument("--slice", action="append", default=[], metavar="LABEL:NS",
                   help="set the scheduler slice (sched_setattr, SCHED_OTHER's sched_runtime) of a "
                        "contender's daemon threads from outside, after the start")
    p.add_argument("--probe", default="", help="what the wg-py daemons record: gc,calls,wake")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--pings", type=int, default=500)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--sched", action="store_true",
                   help="record the scheduler (perf sched) during each block: per ping, how long its "
                        "processes waited for a CPU while runnable")
    p.add_argument("--json")
    opts = p.parse_args(argv)
    if not 1 <= opts.blocks <= 40 or not 1 <= opts.pings <= 5000:
        p.error("--blocks 1..40, --pings 1..5000")
    envs: dict[str, dict[str, str]] = {label: {} for label in opts.wgpy}
    programs: dict[str, list[str]] = {label: daemon_command() for label in opts.wgpy}
    for spec in opts.env:
        label, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        envs[label][key] = value
    for spec in opts.program:
        label, _, path = spec.partition(":")
        programs[label] = [path]
    lab = Lab(f"wpt{os.getpid() % 10000}")
    probe_dir = Path(lab.path("probe"))
    probe_dir.mkdir(parents=True, exist_ok=True)
    contenders: list[Contender] = []
    try:
        for label in opts.wgpy:
            env = {"LOG_LEVEL": "error", **envs[label]}
            if opts.probe:
                env.update({"PYTHONPATH": f"{PROBE_DIR}{os.pathsep}{ROOT}", "WGPY_TAILPROBE": opts.probe,
                            "WGPY_TAILPROBE_DIR": str(probe_dir)})
            contenders.append(wg_contender(lab, label, programs[label], env, bool(opts.probe)))
        if opts.wireguard_go:
            contenders.append(wg_contender(lab, "wggo", [opts.wireguard_go], {"LOG_LEVEL": "error"}, False))
        if opts.veth:
            contenders.append(veth_contender(lab))
        for spec in opts.slice:
            label, _, ns = spec.partition(":")
            for c in contenders:
                if c.label == label:
                    for pid in c.pids:
                        for tid in os.listdir(f"/proc/{pid}/task"):
                            set_slice(int(tid), int(ns))
        for c in contenders:  # discard what the set-up left in the probes
            if c.probed:
                collect(c, probe_dir)
                c.events.clear()
                c.tracked.clear()
                c.covered = 0.0
        for block in range(opts.blocks):
            k = block % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                ping_block(lab, c, opts.pings, opts.interval, str(lab.path("sched.data")) if opts.sched else None)
                with open("/proc/loadavg") as f:
                    c.loads.append(" ".join(f.read().split()[:3]))
                if c.probed:
                    collect(c, probe_dir)
                rtts = sorted(r for _, _, r in c.pings[-opts.pings:])
                print(f"block {block + 1}/{opts.blocks} {c.label:>8}: p50 {quantile(rtts, .5):.3f} "
                      f"p90 {quantile(rtts, .9):.3f} p99 {quantile(rtts, .99):.3f} max {rtts[-1] if rtts else 0:.3f} ms"
                      f"  load {c.loads[-1]}", flush=True)
    finally:
        lab.close()
    report: dict[str, Any] = {"argv": argv, "contenders": {}}
    print(f"\n{'contender':>10} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}  pings lost  load")
    for c in contenders:
        rtts = sorted(r for _, _, r in c.pings)
        row = {q: quantile(rtts, v) for q, v in (("p50", .5), ("p90", .9), ("p99", .99), ("p999", .999))}
        row["max"] = rtts[-1] if rtts else float("nan")
        print(f"{c.label:>10} {row['p50']:7.3f} {row['p90']:7.3f} {row['p99']:7.3f} {row['p999']:7.3f} "
              f"{row['max']:7.3f}  {len(rtts):5d} {c.lost:4d}  {c.loads[0]} .. {c.loads[-1]}")
        entry: dict[str, Any] = {**{k: round(v, 3) for k, v in row.items()}, "lost": c.lost, "loads": c.loads,
                                 "pings": [(round(t, 6), seq, rtt) for t, seq, rtt in c.pings]}
        if c.waits and len(c.waits) == len(c.pings):
            entry["waits"] = [(round(w, 3), round(r, 3)) for w, r in c.waits]
            print(sched_summary(c))
        if c.probed:
            kinds = Counter(event_kind(e) for e in c.events)
            durations: dict[str, list[float]] = {}
            for e in c.events:
                durations.setdefault(event_kind(e), []).append((e[4] - e[3]) * 1e6)
            seconds = max(c.covered, 1e-9)
            entry["overlaps"] = ov = overlaps(c)
            entry["events"] = [[*e[:3], round(e[3], 6), round(e[4], 6), *e[5:]] for e in c.events]
            entry["tracked"] = c.tracked
            print(f"           events per second (both daemons), median / max duration (us), share of pings "
                  f"overlapping one: slowest 1% / slowest 10% / other 90%   (objects tracked by the GC: "
                  f"{c.tracked[-len(c.pids):] if c.tracked else '?'})")
            for kind in sorted(kinds):
                d = sorted(durations[kind])
                o = ov.get(kind, {})
                print(f"           {kind:>16}: {kinds[kind] / seconds:7.1f}/s  {statistics.median(d):8.1f} "
                      f"{d[-1]:9.1f}   {o.get('slowest 1%', 0):5.1%} {o.get('slowest 10%', 0):6.1%} "
                      f"{o.get('other 90%', 0):6.1%}")
        report["contenders"][c.label] = entry
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, separators=(",", ":"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
