"""Issue 17 (VXLAN pumps and workers): ping RTT and 4-stream TCP through VXLAN contenders side
by side in one run, with CPU accounting and CPU idle. Not a test: numbers for docs/multicore.md.

Contenders (each two namespaces on a veth, as ``wg-py bench`` builds them):

``kvxlan``     the kernel's vxlan on both ends
``wgpy``       wg-py WireGuard (the daemon with the pumps), this worktree
``vx-before``  ``wg-py vxlan`` of another checkout (``--before PATH`` to its ``wg-py``; the
               main checkout by default): the daemon before the pumps
``vx-w1``      ``wg-py vxlan`` of this worktree, ``workers 1`` (the pumps on the loop)
``vx-w2``      the same with ``workers 2`` (only if asked: ``--workers2``)
``k-before``   ``--kernel-peer``: the kernel's vxlan on the client end, vx-before's daemon on
               the server end; ``k-w1`` (``k-w2``) the same with this worktree's daemon

Rounds alternate the contenders (order rotated each round). Per round: ``--pings`` pings at
``--interval`` s (median RTT), then iperf3 -P 4 for ``--time`` s one way: Gbit/s, the tunnel
processes' CPU seconds per GB (utime+stime of all their threads, both ends), the machine's busy
CPU seconds per GB and its idle share over the run (``/proc/stat``), and ``/proc/loadavg``.

    sudo .venv/bin/python bench/vxlan_pump.py --rounds 3 --workers2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from tunnel.lab.bench import INNER, OUTER, VNI, Pair, build_pair, cpu_seconds, loadavg
from tunnel.lab.benchreport import parse_ping, per_gigabyte, tcp_figures
from tunnel.lab.netns import Lab
from tunnel.runtime.sched import machine_cpu_times
from tunnel.wireguard import quick


def vxlan_pair(lab: Lab, name: str, program: list[str], workers: int,
               kernel_client: bool = False) -> Pair:
    """Two namespaces on a veth and ``program vxlan add`` on both ends (``workers`` if > 1);
    ``kernel_client``: the client end is the kernel's vxlan instead."""
    a, b = lab.namespace(f"{name}a"), lab.namespace(f"{name}b")
    lab.veth(a, b, [f"{OUTER[0]}/24"], [f"{OUTER[1]}/24"])
    env = {"WGPY_VXLAN_RUN_DIR": str(lab.path(f"run-{name}"))}
    for ns, veth, i in ((a, "veth0", 0), (b, "veth1", 1)):
        opts = ["id", VNI, "dstport", "4789", "remote", OUTER[1 - i], "local", OUTER[i],
                "dev", veth]
        if kernel_client and i == 0:
            lab.run(ns, ["ip", "link", "add", "vx0", "type", "vxlan", *opts])
        else:
            if workers > 1:
                opts += ["workers", str(workers)]
            lab.run(ns, [*program, "vxlan", "add", "vx0", *opts], env=env)
        lab.run(ns, ["ip", "addr", "add", f"{INNER[i]}/24", "dev", "vx0"])
        lab.run(ns, ["ip", "link", "set", "vx0", "up"])
    pair = Pair(name, a, b, INNER[1])
    pair.pids = lab.daemon_pids(a) + lab.daemon_pids(b)
    if not lab.wait_ping(a, pair.server_addr, timeout=30):
        raise RuntimeError(f"{name}: no ping through the tunnel")
    return pair


def ping_stats(lab: Lab, pair: Pair, count: int, interval: float) -> tuple[float, float]:
    """(median, 10th percentile) RTT in ms of ``count`` pings (the low percentile shows the
    per-packet cost with less of the machine's load in it)."""
    limit = int(count * interval + 10)
    done = lab.run(pair.client, ["ping", "-n", "-c", str(count), "-i",
                                 str(interval), "-W", "1", "-w", str(limit), pair.server_addr],
                   check=False, timeout=limit + 5)
    rtts = sorted(parse_ping(done.stdout))
    if not rtts:
        return float("nan"), float("nan")
    return statistics.median(rtts), rtts[len(rtts) // 10]


def ping_flood(lab: Lab, pair: Pair, count: int) -> dict[str, float]:
    """``ping -f -c count``: one request in flight at a time (the next leaves on the reply),
    so the tunnel processes' CPU per round trip is the per-wake-up cost of both ends (both
    directions of both daemons), which is what the pumps cut; and the mean RTT of the flood."""
    cpu0 = cpu_seconds(pair.pids)
    start = time.monotonic()
    done = lab.run(pair.client, ["ping", "-n", "-q", "-f", "-c", str(count), "-W", "1",
                                 pair.server_addr], check=False, timeout=120)
    wall = time.monotonic() - start
    cpu = cpu_seconds(pair.pids) - cpu0
    avg = float("nan")
    for line in done.stdout.splitlines():
        if "min/avg/max" in line:
            avg = float(line.split("=")[1].split("/")[1])
    return {"flood_rtt_ms": avg, "flood_cpu_us_per_ping": cpu / count * 1e6 if pair.pids else 0.0,
            "flood_pings_per_s": count / wall}


def thread_cpu(pids: Sequence[int]) -> dict[int, float]:
    """utime+stime seconds of every thread of ``pids`` (tid -> seconds)."""
    tck = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12])) / tck
    return out


REVERSE = False  # --reverse: the server end sends (iperf3 -R)


def tcp4(lab: Lab, pair: Pair, seconds: int) -> dict[str, Any]:
    cpu0 = cpu_seconds(pair.pids)
    threads0 = thread_cpu(pair.pids)
    busy0, idle0 = machine_cpu_times()
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds,
                        extra=["-P", "4"], reverse=REVERSE)
    cpu1 = cpu_seconds(pair.pids)
    threads1 = thread_cpu(pair.pids)
    busy1, idle1 = machine_cpu_times()
    bps, nbytes = tcp_figures(result)
    busy, idle = busy1 - busy0, idle1 - idle0
    per_thread = sorted((round(t - threads0.get(tid, 0.0), 2) for tid, t in threads1.items()),
                        reverse=True)
    return {"gbps": bps / 1e9,
            "cpu_tunnel_s_per_gb": per_gigabyte(cpu1 - cpu0, nbytes) if pair.pids else None,
            "cpu_tunnel_s": cpu1 - cpu0,
            "cpu_machine_s_per_gb": per_gigabyte(busy, nbytes),
            "idle_share": idle / (busy + idle) if busy + idle > 0 else None,
            "busiest_threads_s": per_thread[:6]}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time", type=int, default=5)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.005)
    parser.add_argument("--before", default="/work/main/.venv/bin/wg-py")
    parser.add_argument("--workers2", action="store_true")
    parser.add_argument("--no-tcp", action="store_true")
    parser.add_argument("--kernel-peer", action="store_true",
                        help="also k-before/k-w1: the kernel's vxlan on the client end")
    parser.add_argument("--flood", type=int, default=0, help="ping -f COUNT (CPU per ping)")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--reverse", action="store_true", help="iperf3 -R (server sends)")
    opts = parser.parse_args(argv)
    global REVERSE
    REVERSE = opts.reverse
    names = ["kvxlan", "wgpy", "vx-before", "vx-w1"] + (["vx-w2"] if opts.workers2 else [])
    if opts.kernel_peer:
        names += ["k-before", "k-w1"] + (["k-w2"] if opts.workers2 else [])
    if opts.only:
        names = [n for n in names if n in opts.only]
    results: dict[str, dict[str, list[Any]]] = {n: {} for n in names}
    lab = Lab(f"vxb{os.getpid() % 10000}")
    try:
        pairs: dict[str, Pair] = {}
        for name in names:
            if name in ("kvxlan", "wgpy"):
                pairs[name] = build_pair(lab, name)
            elif name == "vx-before":
                pairs[name] = vxlan_pair(lab, "vxb", [opts.before], 1)
            elif name == "k-before":
                pairs[name] = vxlan_pair(lab, "kb", [opts.before], 1, kernel_client=True)
            elif name in ("k-w1", "k-w2"):
                pairs[name] = vxlan_pair(lab, name.replace("-", ""), quick.daemon_command(),
                                         2 if name == "k-w2" else 1, kernel_client=True)
            else:
                pairs[name] = vxlan_pair(lab, name.replace("-", ""), quick.daemon_command(),
                                         2 if name == "vx-w2" else 1)
        for r in range(opts.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                pair = pairs[name]
                row = results[name]
                row.setdefault("load", []).append(loadavg())
                median, p10 = ping_stats(lab, pair, opts.pings, opts.interval)
                row.setdefault("ping_ms", []).append(median)
                row.setdefault("ping_p10_ms", []).append(p10)
                if opts.flood:
                    for key, value in ping_flood(lab, pair, opts.flood).items():
                        row.setdefault(key, []).append(value)
                if not opts.no_tcp:
                    for key, value in tcp4(lab, pair, opts.time).items():
                        row.setdefault(key, []).append(value)
                print(name, {k: v[-1] for k, v in row.items()}, flush=True)
                time.sleep(0.5)
    finally:
        lab.close()
    summary = {}
    for name, row in results.items():
        summary[name] = {k: (statistics.median([x for x in v if x is not None])
                             if k not in ("load", "busiest_threads_s")
                             and any(x is not None for x in v) else v)
                         for k, v in row.items()}
    print(json.dumps(summary, indent=1))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"summary": summary, "rounds": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
