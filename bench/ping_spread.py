"""Why one ping's RTT through a tunnel varies from run to run: the RTT distribution (p10,
median, p90) of wg-py and of a wireguard-go, alternating, at several ping intervals and CPU
placements (``free``: as the scheduler likes; ``same``: both daemons and ping on CPU 0;
``split``: the client side on CPU 0, the server daemon on CPU 1). Not a test: numbers for
docs/benchmarks.md.

    sudo .venv/bin/python bench/ping_spread.py --wireguard-go /work/shared/bin/wireguard-go-upstream
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from tunnel.lab.bench import Pair, build_pair, wireguard_go_contenders
from tunnel.lab.benchreport import parse_ping
from tunnel.lab.netns import Lab


def place(pair: Pair, how: str) -> list[str]:
    """Pin the daemons' threads for ``how``; returns the taskset prefix for ping."""
    cpus = {"free": ("0-1", "0-1"), "same": ("0", "0"), "split": ("0", "1")}[how]
    for pid in pair.pids:
        cpu = cpus[0] if pid in pair.client_pids else cpus[1]
        subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], capture_output=True, check=True)
    return ["taskset", "-c", cpus[0]]


def pings(lab: Lab, pair: Pair, prefix: list[str], count: int, interval: float) -> list[float]:
    limit = int(count * interval + 10)
    done = lab.run(pair.client, [*prefix, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                                 "-w", str(limit), pair.server_addr], check=False, timeout=limit + 5)
    return parse_ping(done.stdout)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--wireguard-go", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--intervals", default="0.002,0.01,0.1")
    p.add_argument("--placements", default="free,same,split")
    p.add_argument("--json")
    opts = p.parse_args(argv)
    wggo = wireguard_go_contenders([opts.wireguard_go])[0]
    lab = Lab(f"wps{os.getpid() % 10000}")
    rows: list[dict[str, Any]] = []
    try:
        pairs = {"wgpy": build_pair(lab, "wgpy"), wggo.key: build_pair(lab, wggo.key, {wggo.key: wggo.path})}
        for pair in pairs.values():
            pair.client_pids = lab.daemon_pids(pair.client)  # type: ignore[attr-defined]
        for r in range(opts.rounds):
            for how in opts.placements.split(","):
                for interval in (float(x) for x in opts.intervals.split(",")):
                    names = list(pairs) if r % 2 == 0 else list(pairs)[::-1]
                    for name in names:
                        prefix = place(pairs[name], how)
                        rtts = sorted(pings(lab, pairs[name], prefix, opts.count, interval))
                        with open("/proc/loadavg") as f:
                            load = " ".join(f.read().split()[:3])
                        q = statistics.quantiles(rtts, n=10) if len(rtts) >= 10 else [0.0] * 9
                        row = {"round": r + 1, "name": name, "placement": how, "interval": interval,
                               "p10": q[0], "median": statistics.median(rtts), "p90": q[8],
                               "replies": len(rtts), "load": load}
                        rows.append(row)
                        print(f"[{r + 1}] {name:>22} {how:>5} i={interval:<6} p10 {q[0]:.3f} "
                              f"median {row['median']:.3f} p90 {q[8]:.3f} ms ({len(rtts)}) load {load}",
                              flush=True)
    finally:
        lab.close()
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
