"""Issue 17 (vxlat): the VXLAN and L2 paths of two builds side by side, in one run: CPU per byte
(1 and 4 TCP streams) and ping. Not a test: numbers for docs/benchmarks.md.

Contenders (each on its own namespace pair, built as ``wg-py bench`` builds them,
``tunnel.lab.bench.build_pair``): ``kvxlan`` (the kernel's vxlan), ``wgpy`` (wg-py WireGuard, this
worktree), and for each build (``new`` = this worktree, ``base`` = ``--base-program``, e.g. a
checkout of the commit before the work run as ``env PYTHONPATH=DIR python -m tunnel.cli``):
``vx-BUILD`` (``wg-py vxlan`` on both ends) and ``l2-BUILD`` (the VXLAN endpoint inside the
WireGuard daemon). Rounds rotate the order.

Per contender and round: ``--pings`` pings at ``--interval`` s (median RTT), then iperf3 TCP with
1 and 4 streams for ``--time`` s: Gbit/s, the tunnel processes' utime and stime per GB (both
ends, all threads; stime is the kernel work done in the daemons' syscalls: the user/kernel
crossings and the copies), the machine's busy and softirq CPU per GB (``/proc/stat``), and
``/proc/loadavg`` before each contender.

    sudo .venv/bin/python bench/vxlat.py --rounds 3 \\
        --base-program "env PYTHONPATH=/tmp/base $PWD/.venv/bin/python -m tunnel.cli"
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from tunnel.lab.bench import Pair, build_pair, loadavg
from tunnel.lab.benchreport import parse_ping, per_gigabyte, tcp_figures
from tunnel.lab.netns import Lab


def proc_times(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime) seconds summed over ``pids`` (all threads)."""
    tck = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / tck, system / tck


def machine() -> tuple[float, float]:
    """(busy, softirq) seconds of all CPUs (/proc/stat; busy excludes idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / tck, fields[6] / tck


def tcp(lab: Lab, pair: Pair, streams: int, seconds: int) -> dict[str, Any]:
    u0, s0 = proc_times(pair.pids)
    b0, q0 = machine()
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds,
                        extra=["-P", str(streams)] if streams > 1 else [])
    u1, s1 = proc_times(pair.pids)
    b1, q1 = machine()
    bps, nbytes = tcp_figures(result)
    tag = f"x{streams}"
    return {f"{tag}_gbps": bps / 1e9,
            f"{tag}_user": per_gigabyte(u1 - u0, nbytes) if pair.pids else None,
            f"{tag}_sys": per_gigabyte(s1 - s0, nbytes) if pair.pids else None,
            f"{tag}_tunnel": per_gigabyte(u1 - u0 + s1 - s0, nbytes) if pair.pids else None,
            f"{tag}_machine": per_gigabyte(b1 - b0, nbytes),
            f"{tag}_softirq": per_gigabyte(q1 - q0, nbytes)}


def ping(lab: Lab, pair: Pair, count: int, interval: float) -> dict[str, float]:
    """Median and 10th percentile RTT, and the tunnel processes' CPU (user + system, both ends)
    per answered ping in us (``ping_cpu_us``: timers and housekeeping during the run included)."""
    limit = int(count * interval + 10)
    u0, s0 = proc_times(pair.pids)
    done = lab.run(pair.client, ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                                 "-w", str(limit), pair.server_addr], check=False,
                   timeout=limit + 5)
    u1, s1 = proc_times(pair.pids)
    rtts = sorted(parse_ping(done.stdout))
    if not rtts:
        return {"ping_ms": float("nan"), "ping_p10_ms": float("nan"), "ping_cpu_us": float("nan")}
    return {"ping_ms": statistics.median(rtts), "ping_p10_ms": rtts[len(rtts) // 10],
            "ping_cpu_us": (u1 - u0 + s1 - s0) / len(rtts) * 1e6 if pair.pids else float("nan")}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time", type=int, default=5)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--base-program", default=None, help="wg-py command of the base build")
    parser.add_argument("--only", default=None, help="comma-separated contenders")
    parser.add_argument("--streams", default="1,4")
    parser.add_argument("--no-ping", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--hold", type=float, default=0.0,
                        help="seconds to keep the pairs up after building (for profiling)")
    opts = parser.parse_args(argv)
    names = ["kvxlan", "wgpy", "vx-new", "l2-new"]
    if opts.base_program:
        names += ["vx-base", "l2-base"]
    if opts.only:
        wanted = opts.only.split(",")
        names = [n for n in names if n in wanted]
    streams = [int(s) for s in opts.streams.split(",") if s]
    tag = os.getpid() % 10000
    labs: dict[str, Lab] = {}
    pairs: dict[str, Pair] = {}
    results: dict[str, dict[str, list[Any]]] = {n: {} for n in names}
    saved = os.environ.get("WG_PY_IMPLEMENTATION")
    counter = itertools.count()  # WireGuard interface names (global UAPI sockets) unique across the labs
    try:
        for name in names:
            build = name.split("-")[-1]
            lab = labs[name] = Lab(f"vl{name[:2]}{build[0]}{tag}")
            lab._counter = counter
            if build == "base":
                os.environ["WG_PY_IMPLEMENTATION"] = opts.base_program
            else:
                os.environ.pop("WG_PY_IMPLEMENTATION", None)
                if saved is not None:
                    os.environ["WG_PY_IMPLEMENTATION"] = saved
            kind = {"vx": "wgpy-vxlan", "l2": "wgpy-l2"}.get(name[:2], name)
            pairs[name] = build_pair(lab, kind)
            print(f"{name}: pids {pairs[name].pids}", flush=True)
        if saved is None:
            os.environ.pop("WG_PY_IMPLEMENTATION", None)
        if opts.hold:
            print("holding", flush=True)
            time.sleep(opts.hold)
        for r in range(opts.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                pair, lab, row = pairs[name], labs[name], results[name]
                row.setdefault("load", []).append(loadavg())
                figures: dict[str, Any] = {}
                if not opts.no_ping:
                    figures.update(ping(lab, pair, opts.pings, opts.interval))
                for count in streams:
                    figures.update(tcp(lab, pair, count, opts.time))
                for key, value in figures.items():
                    row.setdefault(key, []).append(value)
                print(r, name, row["load"][-1],
                      {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()},
                      flush=True)
                time.sleep(0.3)
    finally:
        for lab in labs.values():
            lab.close()
    summary: dict[str, dict[str, Any]] = {}
    for name, row in results.items():
        summary[name] = {k: (statistics.median([x for x in v if x is not None])
                             if k != "load" and any(x is not None for x in v) else v)
                         for k, v in row.items()}
    keys = sorted({k for s in summary.values() for k in s if k != "load"})
    print("metric".ljust(14) + "".join(n.rjust(10) for n in names))
    for key in keys:
        cells = []
        for n in names:
            v = summary[n].get(key)
            cells.append(f"{v:10.3f}" if isinstance(v, float) else str(v).rjust(10))
        print(key.ljust(14) + "".join(cells))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"summary": summary, "rounds": results, "names": names}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
