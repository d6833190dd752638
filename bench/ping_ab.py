"""Ping A/B of two wg-py daemons (e.g. the main checkout's and this one's) and, optionally, a
wireguard-go: alternating blocks of pings through each pair, in one run. Not a test.

    sudo .venv/bin/python bench/ping_ab.py --a /work/main/.venv/bin/wg-py --b .venv/bin/wg-py \
        --wireguard-go /work/shared/bin/wireguard-go-upstream --blocks 8 --count 100

Each block pings ``--count`` times at ``--interval`` seconds (10 ms: ``wg-py bench``'s) through
every pair in turn, the order rotating from block to block, so that load changes hit them
alike. Reported per pair: the RTT median, p10 and p90 over all blocks, the median of the block
medians, and the daemons' CPU per ping (both daemons' utime + stime over the blocks, from
/proc/PID/stat, divided by the pings), with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wg_ab import wg_pair  # noqa: E402

from tunnel.lab.bench import process_cpu  # noqa: E402
from tunnel.lab.benchreport import parse_ping  # noqa: E402
from tunnel.lab.netns import Lab  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True, help="wg-py daemon A (e.g. main's)")
    p.add_argument("--b", required=True, help="wg-py daemon B (e.g. this branch's)")
    p.add_argument("--wireguard-go", help="a wireguard-go binary as a third contender")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--json")
    opts = p.parse_args(argv)
    env = {"LOG_LEVEL": "error"}
    programs = {"a": opts.a, "b": opts.b}
    if opts.wireguard_go:
        programs["g"] = opts.wireguard_go
    rtts: dict[str, list[float]] = {name: [] for name in programs}
    block_medians: dict[str, list[float]] = {name: [] for name in programs}
    cpu: dict[str, float] = dict.fromkeys(programs, 0.0)
    pings: dict[str, int] = dict.fromkeys(programs, 0)
    load_before = loadavg()
    lab = Lab(f"pab{os.getpid() % 10000}")
    try:
        pairs = {name: wg_pair(lab, name, [program], env) for name, program in programs.items()}
        names = list(programs)
        for block in range(opts.blocks):
            order = names[block % len(names):] + names[:block % len(names)]
            for name in order:
                pair = pairs[name]
                c0 = process_cpu(pair.pids)
                done = lab.run(pair.client, ["ping", "-c", str(opts.count), "-i", str(opts.interval), "-W", "1",
                                             pair.server_addr], check=False, timeout=opts.count * 2 + 10)
                c1 = process_cpu(pair.pids)
                got = parse_ping(done.stdout)
                rtts[name] += got
                pings[name] += len(got)
                cpu[name] += sum(c1.values()) - sum(c0.get(pid, 0.0) for pid in c1)
                if got:
                    block_medians[name].append(statistics.median(got))
                print(f"[{block + 1}/{opts.blocks}] {name}: {len(got)} replies, median "
                      f"{statistics.median(got) if got else float('nan'):.3f} ms, load {loadavg()}", flush=True)
    finally:
        lab.close()
    load_after = loadavg()
    result: dict[str, Any] = {"programs": programs, "interval": opts.interval, "count": opts.count,
                              "blocks": opts.blocks, "load_before": load_before, "load_after": load_after,
                              "results": {}}
    print(f"load {load_before} -> {load_after}")
    for name in programs:
        values = sorted(rtts[name])
        if not values:
            print(f"{name}: no replies")
            continue
        row = {"median_ms": statistics.median(values), "p10_ms": values[len(values) // 10],
               "p90_ms": values[len(values) * 9 // 10], "median_of_blocks_ms": statistics.median(block_medians[name]),
               "block_medians_ms": block_medians[name], "replies": len(values),
               "cpu_us_per_ping": cpu[name] / max(pings[name], 1) * 1e6}
        result["results"][name] = row
        print(f"{name} ({programs[name]}): median {row['median_ms']:.3f} ms (p10 {row['p10_ms']:.3f}, "
              f"p90 {row['p90_ms']:.3f}), median of block medians {row['median_of_blocks_ms']:.3f} ms, "
              f"daemons' CPU {row['cpu_us_per_ping']:.0f} us per ping")
    if "a" in result["results"] and "b" in result["results"]:
        ra, rb = result["results"]["a"], result["results"]["b"]
        print(f"b / a: median {rb['median_ms'] / ra['median_ms']:.3f}, CPU per ping "
              f"{rb['cpu_us_per_ping'] / ra['cpu_us_per_ping']:.3f}")
        if "g" in result["results"]:
            rg = result["results"]["g"]
            print(f"vs wireguard-go: a {ra['median_ms'] / rg['median_ms']:.3f}x, "
                  f"b {rb['median_ms'] / rg['median_ms']:.3f}x")
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
