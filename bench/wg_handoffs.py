"""Issue 17 (WireGuard ``workers N``): GIL hand-offs against epoll sleeps, per daemon, in one run.

Not a test: numbers for docs/multicore.md 4.7. Contenders (each two wg-py daemons in two
namespaces on a veth, this checkout's build): ``w1`` (workers 1), ``w2`` (``WGPY_WORKERS=2``,
the fused lane steps of tunnel/wireguard/fused_ref.py) and ``w2-unfused`` (the same with
``WGPY_FUSED=0``: a lane batch's seal and send, open and write as separate native calls, each
giving the GIL up). Rounds alternate the contenders. Per run (iperf3 -P ``--streams`` for
``--time`` s): throughput, the tunnel CPU seconds per GB (both ends), and over a 3 s window in
the middle of the run, per daemon (``c``/``s`` = client/server end): ``futex`` (futex system
calls: a thread waiting for the GIL, or waking its waiter, makes one), ``epoll_wait`` calls
(a worker's waits) and ``epoll_pwait`` calls (the event loop's waits), the voluntary and
involuntary context switches of its threads (``/proc/PID/task/TID/status``); and
``/proc/loadavg``.

    sudo .venv/bin/python bench/wg_handoffs.py --rounds 3 --streams 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wg_ab import wg_pair  # noqa: E402 (the bench directory is not a package)

from tunnel.lab.bench import Pair, process_cpu  # noqa: E402
from tunnel.lab.benchreport import per_gigabyte, tcp_figures  # noqa: E402
from tunnel.lab.netns import Lab  # noqa: E402

CONTENDERS = {"w1": {}, "w2": {"WGPY_WORKERS": "2"}, "w2-unfused": {"WGPY_WORKERS": "2", "WGPY_FUSED": "0"}}
EVENTS = "syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait"


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches summed over the process's threads."""
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


def syscall_counts(pid: int, seconds: float) -> dict[str, int]:
    """futex and epoll_wait calls of ``pid`` (all threads) over ``seconds`` (perf stat)."""
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", EVENTS, "-p", str(pid), "--", "sleep", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 30, check=False)
    counts = {}
    for line in out.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:"):
            name = fields[2].split("sys_enter_")[1]
            counts[name] = int(fields[0]) if fields[0].isdigit() else -1
    return counts


def run_once(lab: Lab, pair: Pair, streams: int, seconds: int) -> dict[str, Any]:
    window = 3.0
    found: dict[str, Any] = {}

    def sample() -> None:
        time.sleep((seconds - window) / 2)
        before = {pid: switches(pid) for pid in pair.pids}
        threads = []
        for end, pid in zip("cs", pair.pids, strict=False):
            t = threading.Thread(target=lambda e=end, p=pid: found.__setitem__(e, syscall_counts(p, window)))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        for end, pid in zip("cs", pair.pids, strict=False):
            v1, i1 = switches(pid)
            v0, i0 = before[pid]
            found[end] = {**found.get(end, {}), "voluntary": v1 - v0, "involuntary": i1 - i0}

    p0 = process_cpu(pair.pids)
    sampler = threading.Thread(target=sample)
    sampler.start()
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds,
                        extra=["-P", str(streams)] if streams > 1 else [])
    sampler.join()
    p1 = process_cpu(pair.pids)
    bps, nbytes = tcp_figures(result)
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {"gbps": bps / 1e9, "cpu_tunnel_s_per_gb": per_gigabyte(sum(p1.values()) - sum(p0.get(p, 0.0) for p in p1),
                                                                  nbytes),
            "window_s": window, "ends": found, "loadavg": load}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time", type=int, default=6)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--program", default=os.path.join(os.path.dirname(sys.executable), "wg-py"))
    p.add_argument("--json")
    opts = p.parse_args(argv)
    names = list(CONTENDERS)
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    lab = Lab(f"wgh{os.getpid() % 10000}")
    try:
        pairs = {n: wg_pair(lab, n.replace("-unfused", "u"), [opts.program], {"LOG_LEVEL": "error", **env})
                 for n, env in CONTENDERS.items()}
        for r in range(opts.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                row = run_once(lab, pairs[name], opts.streams, opts.time)
                rows[name].append(row)
                ends = " ".join(f"{e}: futex {v.get('futex')} epoll {v.get('epoll_wait')}+{v.get('epoll_pwait')} "
                                f"vol {v['voluntary']} "
                                f"invol {v['involuntary']}" for e, v in sorted(row["ends"].items()))
                print(f"[{r + 1}/{opts.rounds}] {name:10} {row['gbps']:.2f} Gbit/s "
                      f"{row['cpu_tunnel_s_per_gb'] or 0:.2f} s/GB  {ends}  load {row['loadavg']}", flush=True)
    finally:
        lab.close()
    summary = {}
    for name, sel in rows.items():
        summary[name] = {
            "gbps": statistics.median(x["gbps"] for x in sel),
            "cpu_tunnel_s_per_gb": statistics.median(x["cpu_tunnel_s_per_gb"] or 0 for x in sel),
            **{f"{e}_{k}": statistics.median(x["ends"].get(e, {}).get(k, 0) or 0 for x in sel)
               for e in "cs" for k in ("futex", "epoll_wait", "epoll_pwait", "voluntary", "involuntary")}}
    for name, row in summary.items():
        print(f"{name:10} " + " ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"rounds": rows, "summary": summary, "options": vars(opts)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
