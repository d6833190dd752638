"""Issue 17 (WireGuard ``workers N``): where the CPU goes, per thread, in 4-stream TCP runs.

Not a test: numbers for docs/multicore.md. Contenders (each two namespaces on a veth, built by
``wg-py bench``'s :func:`~tunnel.lab.bench.build_pair`): ``wgpy`` (workers 1), ``wgpy-w2``
(``WGPY_WORKERS=2`` on both ends) and, with ``--wireguard-go PATH``, that wireguard-go.
Rounds alternate the contenders (order rotated each round). Per round and direction (the
client sends, then ``-R``: the server sends): iperf3 -P ``--streams`` for ``--time`` s, the
machine's idle share (``/proc/stat``), each tunnel thread's CPU seconds
(``/proc/PID/task/TID/stat``, both ends; a wg-py daemon's main thread is its control thread,
the others its workers), the tunnel CPU seconds per GB, ``/proc/loadavg``.

    sudo .venv/bin/python bench/wg_workers.py --rounds 3 --wireguard-go ../shared/bin/wireguard-go-upstream
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from tunnel.io.threads import thread_cpu_seconds
from tunnel.lab.bench import Pair, build_pair, loadavg
from tunnel.lab.benchreport import per_gigabyte, tcp_figures
from tunnel.lab.netns import Lab
from tunnel.runtime.sched import machine_cpu_times


def threads_cpu(pair: Pair) -> dict[str, float]:
    """``END:THREAD`` -> CPU seconds of every thread of the pair's tunnel processes: END is
    ``c`` (client) or ``s`` (server), THREAD ``main`` (a wg-py daemon's control thread) or the
    thread id."""
    out: dict[str, float] = {}
    for pid in pair.pids:
        end = "c" if _netns_of(pid) == _netns_of_name(pair.client) else "s"
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            out[f"{end}:{'main' if tid == pid else tid}"] = thread_cpu_seconds(pid, tid)
    return out


def _netns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def _netns_of_name(name: str) -> str:
    try:
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    except OSError:
        return "?"


def run_once(lab: Lab, pair: Pair, streams: int, seconds: int, reverse: bool) -> dict[str, Any]:
    busy0, idle0 = machine_cpu_times()
    t0 = threads_cpu(pair)
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds, reverse=reverse,
                        extra=["-P", str(streams)])
    busy1, idle1 = machine_cpu_times()
    t1 = threads_cpu(pair)
    bps, nbytes = tcp_figures(result)
    per_thread = {k: round(v - t0.get(k, 0.0), 2) for k, v in t1.items()}
    busiest = sorted(((v, k) for k, v in per_thread.items() if v >= 0.05), reverse=True)
    tunnel = sum(per_thread.values())
    return {"gbps": bps / 1e9, "idle_pct": 100 * (idle1 - idle0) / ((busy1 - busy0) + (idle1 - idle0)),
            "cpu_tunnel_s_per_gb": per_gigabyte(tunnel, nbytes), "threads_cpu_s": [f"{k} {v:.2f}" for v, k in busiest],
            "loadavg": loadavg()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time", type=int, default=5)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--wireguard-go", dest="wggo")
    p.add_argument("--json")
    p.add_argument("--only", help="comma-separated subset of wgpy,wgpy-w2 (and wggo-x)")
    opts = p.parse_args(argv)
    names = ["wgpy", "wgpy-w2"] + (["wggo-x"] if opts.wggo else [])
    if opts.only:
        names = [n for n in names if n in opts.only.split(",")]
    programs = {"wggo-x": opts.wggo} if opts.wggo else {}
    results: dict[str, list[dict[str, Any]]] = {}
    lab = Lab(f"wgw{os.getpid() % 10000}")
    try:
        pairs = {n: build_pair(lab, n, programs) for n in names}
        for r in range(opts.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                for reverse in (False, True):
                    row = run_once(lab, pairs[name], opts.streams, opts.time, reverse)
                    row.update(round=r, direction="server sends" if reverse else "client sends")
                    results.setdefault(name, []).append(row)
                    print(f"[{r + 1}/{opts.rounds}] {name:8} {row['direction']:12} {row['gbps']:.2f} Gbit/s "
                          f"idle {row['idle_pct']:.1f} % tunnel {row['cpu_tunnel_s_per_gb'] or 0:.2f} s/GB "
                          f"threads {row['threads_cpu_s']} load {row['loadavg']}", flush=True)
    finally:
        lab.close()
    summary = {}
    for name, rows in results.items():
        for direction in ("client sends", "server sends"):
            sel = [x for x in rows if x["direction"] == direction]
            summary[f"{name} {direction}"] = {
                "gbps": statistics.median(x["gbps"] for x in sel),
                "idle_pct": statistics.median(x["idle_pct"] for x in sel),
                "cpu_tunnel_s_per_gb": statistics.median(x["cpu_tunnel_s_per_gb"] or 0 for x in sel)}
    for key, row in summary.items():
        print(f"{key:26} {row['gbps']:.2f} Gbit/s idle {row['idle_pct']:.1f} % "
              f"tunnel {row['cpu_tunnel_s_per_gb']:.2f} s/GB")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"rounds": results, "summary": summary, "options": vars(opts)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
