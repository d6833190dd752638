"""Where one WireGuard TCP stream's CPU goes: a namespace pair of one program (wg-py or a
wireguard-go), ``iperf3 -t T`` through it, and in the middle of the run either a system-wide
``perf record -a -g`` (accounted by ``bench/vxlat_perf.py``: daemons' user space by library,
their kernel time by system call, iperf3, softirq elsewhere) or ``perf trace -s`` of both
daemons (system calls per GB). Not a test: numbers for docs/benchmarks.md.

In record mode it then splits the window by process: the cores each side's daemon, iperf3 and
the idle task took (their share of all samples times the machine's CPUs: perf samples
``cpu-clock``, idle CPUs included), and each daemon's time by the same categories, in shares
of that daemon's samples (which side is the bottleneck of the stream, and what its time is made
of). With ``--side sender --dwarf`` it records one daemon with DWARF call graphs instead (to
see which call of ours a libpython sample belongs to).

Sched mode reads each daemon thread's /proc schedstat and the machine's idle time
(/proc/stat) over the window: time on a CPU, time runnable but waiting for one, and voluntary
and involuntary context switches per second (whether a side is bound by its own work or by
sharing the CPUs).

    sudo .venv/bin/python bench/wg_perf.py --program .venv/bin/wg-py --mode record
    sudo .venv/bin/python bench/wg_perf.py --program .venv/bin/wg-py --mode sched
    sudo .venv/bin/python bench/wg_perf.py --program .venv/bin/wg-py --mode trace
    sudo .venv/bin/python bench/wg_perf.py --vxlan --mode record   # wg-py VXLAN, as wg-py bench builds it
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vxlat_perf import account  # noqa: E402
from wg_ab import wg_pair  # noqa: E402

from tunnel.lab.bench import build_pair, process_cpu  # noqa: E402
from tunnel.lab.benchreport import cpu_ticks, per_gigabyte, tcp_figures  # noqa: E402
from tunnel.lab.netns import Lab  # noqa: E402


def split(script: str, sides: dict[str, set[str]], cpus: int) -> list[str]:
    """Lines of the per-process split of a ``perf script -F comm,pid,tid,ip,sym,dso`` text:
    cores per side (``sides`` maps a name to its daemons' pids), iperf3 and idle, then each
    side's categories (:func:`vxlat_perf.account`) as shares of its samples."""
    per_comm: dict[str, int] = {}
    per_side = dict.fromkeys(sides, 0)
    for line in script.splitlines():
        if not line or line[0].isspace():
            continue
        head = line.split()
        comm, pid = head[0], head[1].split("/")[0]
        for name, pids in sides.items():
            if pid in pids:
                per_side[name] += 1
                break
        else:
            key = "idle" if comm.startswith("swapper") else comm
            per_comm[key] = per_comm.get(key, 0) + 1
    scale = max(1, sum(per_side.values()) + sum(per_comm.values())) / cpus
    lines = ["cores in the window: " + ", ".join(
        [f"{name} daemon {n / scale:.2f}" for name, n in per_side.items()]
        + [f"{key} {per_comm.get(key, 0) / scale:.2f}" for key in ("iperf3", "idle")])]
    for name, pids in sides.items():
        counts = account(script, pids)
        total = sum(v for k, v in counts.items() if k.startswith("daemons"))
        lines.append(f"{name} daemon ({total} samples):")
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            if total and (key.startswith("daemons") or "daemons)" in key):
                lines.append(f"  {100 * n / total:5.1f} %  {key.strip()}")
    return lines


THREAD_LINE = re.compile(r"^\s*\S.*?\((\d+)\), \d+ events")
SYSCALL_NAMES = ("readv", "writev", "read", "write", "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "epoll_wait",
                 "epoll_pwait")
TRACE_LINE = re.compile(r"^\s+(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)")


def idle_seconds() -> float:
    """The machine's idle (and iowait) CPU seconds so far: /proc/stat as ``wg-py bench`` reads it
    (:func:`tunnel.lab.benchreport.cpu_ticks`)."""
    with open("/proc/stat") as f:
        busy, total = cpu_ticks(f.read())["cpu"]
    return (total - busy) / os.sysconf("SC_CLK_TCK")


def schedstat(tid: int) -> list[int]:
    """A thread's CPU time and run-queue wait (ns, /proc schedstat), and its voluntary and
    involuntary context switches."""
    with open(f"/proc/{tid}/schedstat") as f:
        run, wait, _slices = (int(x) for x in f.read().split())
    with open(f"/proc/{tid}/status") as f:
        text = f.read()
    vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    return [run, wait, vol, invol]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--program", help="the WireGuard daemon (wg-py or a wireguard-go)")
    p.add_argument("--vxlan", action="store_true", help="a wg-py VXLAN pair instead (wg-py bench's wgpy-vxlan)")
    p.add_argument("--mode", choices=("record", "trace", "stat", "pyspy", "sched", "none"), default="record")
    p.add_argument("--time", type=int, default=10)
    p.add_argument("--window", type=float, default=6.0, help="seconds of perf in the middle")
    p.add_argument("--hz", type=int, default=499)
    p.add_argument("--reverse", action="store_true")
    p.add_argument("--keep", help="keep perf.data here (record mode)")
    p.add_argument("--side", choices=("sender", "receiver"),
                   help="record mode: that daemon's main thread only (perf -p), not the whole machine")
    p.add_argument("--dwarf", action="store_true",
                   help="record mode: DWARF call graphs (callers inside libpython and the extensions)")
    opts = p.parse_args(argv)
    env = {"LOG_LEVEL": "error", **({"WGPY_PURE": os.environ["WGPY_PURE"]} if "WGPY_PURE" in os.environ else {})}
    lab = Lab(f"wperf{os.getpid() % 10000}")
    try:
        if opts.vxlan:
            pair = build_pair(lab, "wgpy-vxlan")
            opts.program = "wg-py VXLAN"
        elif opts.program:
            pair = wg_pair(lab, "p", [opts.program], env)
        else:
            p.error("--program or --vxlan")
        pids = pair.pids
        sides = tuple({int(t) for pid in lab.daemon_pids(ns) for t in os.listdir(f"/proc/{pid}/task")}
                      for ns in (pair.client, pair.server))
        out: dict[str, Any] = {}

        def transfer() -> None:
            out["result"] = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=opts.time,
                                       reverse=opts.reverse)

        p0 = process_cpu(pids)
        worker = threading.Thread(target=transfer)
        worker.start()
        time.sleep(max(1.0, (opts.time - opts.window) / 2))
        with open("/proc/loadavg") as f:
            load0 = " ".join(f.read().split()[:3])
        data = opts.keep or tempfile.mktemp(prefix="wgperf", suffix=".data")
        perf_out = ""
        stat_out: dict[str, subprocess.Popen[str]] = {}
        stat_text: dict[str, str] = {}
        if opts.mode == "record":
            graph = ["--call-graph", "dwarf,16384"] if opts.dwarf else ["-g"]
            target = ["-p", str(min(sides[(opts.side == "receiver") != opts.reverse]))] if opts.side else ["-a"]
            subprocess.run(["perf", "record", "-q", *target, *graph, "-F", str(opts.hz), "-o", data, "--",
                            "sleep", str(opts.window)], capture_output=True, check=True)
        elif opts.mode == "pyspy":
            spies = [subprocess.Popen(
                [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--native", "-r", "250",
                 "-d", str(int(opts.window)), "-f", "raw", "-o", f"{opts.keep or '/tmp/wgspy'}.{side}.txt",
                 "-p", str(pid)], stdout=subprocess.DEVNULL)
                for side, group in zip(("sender", "receiver"), sides, strict=True) for pid in [min(group)]]
            for spy in spies:
                spy.wait(timeout=opts.window + 30)
        elif opts.mode == "stat":
            events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALL_NAMES)
            for side, group in zip(("sender", "receiver"), sides, strict=True):
                stat_out[side] = subprocess.Popen(
                    ["perf", "stat", "-x", ",", "-e", events, "-p", ",".join(map(str, sorted(group))), "--",
                     "sleep", str(opts.window)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for side, proc in stat_out.items():
                stat_text[side] = proc.communicate(timeout=opts.window + 30)[1]
        elif opts.mode == "sched":
            sched0 = {t: schedstat(t) for group in sides for t in group}
            idle0 = idle_seconds()
            time.sleep(opts.window)
            idle1 = idle_seconds()
            sched1 = {t: schedstat(t) for group in sides for t in group}
        elif opts.mode == "trace":
            perf_out = subprocess.run(
                ["perf", "trace", "-s", "-p", ",".join(map(str, pids)), "--", "sleep", str(opts.window)],
                capture_output=True, text=True, check=False).stderr
            if os.environ.get("WGPERF_RAW"):
                print(perf_out)
        worker.join(timeout=opts.time + 30)
        p1 = process_cpu(pids)
        with open("/proc/loadavg") as f:
            load1 = " ".join(f.read().split()[:3])
        bps, nbytes = tcp_figures(out["result"])
        cpu = per_gigabyte(sum(p1.values()) - sum(p0.get(x, 0.0) for x in p1), nbytes)
        retrans = out["result"]["end"].get("sum_sent", {}).get("retransmits", 0)
        print(f"{opts.program}: {bps / 1e9:.2f} Gbit/s, tunnel CPU {cpu or 0:.3f} s/GB, "
              f"{retrans} retransmits, load {load0} -> {load1}")
        gb = bps / 8e9 * opts.window
        if opts.mode == "record":
            script = subprocess.run(["perf", "script", "-i", data, "-F", "comm,pid,tid,ip,sym,dso"],
                                    capture_output=True, text=True, check=True).stdout
            if not opts.keep:
                os.unlink(data)
            print("daemon pids (client, server):", [sorted(s) for s in sides])
            counts = account(script, {str(x) for x in pids})
            total = sum(v for k, v in counts.items() if not k.startswith("  "))
            print(f"GB in the window {gb:.2f}; attributable CPU {total / opts.hz:.2f} s = "
                  f"{total / opts.hz / gb:.3f} s/GB")
            for key in sorted(counts, key=lambda k: (k.strip().split(":")[0], -counts[k])):
                print(f"{counts[key] / opts.hz / gb:7.3f} s/GB {100 * counts[key] / total:5.1f} %  {key}")
            ends = {"sender": pair.client, "receiver": pair.server}
            if opts.reverse:
                ends = {"sender": pair.server, "receiver": pair.client}
            for line in split(script, {name: {str(p) for p in lab.daemon_pids(ns)} for name, ns in ends.items()},
                              os.cpu_count() or 1):
                print(line)
        elif opts.mode == "stat":
            for side, text in stat_text.items():
                for line in text.splitlines():
                    parts = line.split(",")
                    if len(parts) > 2 and parts[0].isdigit():
                        n = int(parts[0])
                        print(f"{side:>9} {parts[2].split('sys_enter_')[-1]:>12} {n:9d} calls  {n / gb:10.0f} per GB")
        elif opts.mode == "sched":
            print(f"machine idle {(idle1 - idle0) / opts.window:.2f} cores (/proc/stat)")
            for side, group in zip(("sender", "receiver"), sides, strict=True):
                if opts.reverse:
                    side = {"sender": "receiver", "receiver": "sender"}[side]
                for t in sorted(group):
                    d = [b - a for a, b in zip(sched0[t], sched1[t], strict=True)]
                    if d[0] > 1e6 * opts.window / 100:
                        print(f"{side:>9} thread {t}: on CPU {d[0] / 1e9 / opts.window:.2f}, runnable but waiting "
                              f"{d[1] / 1e9 / opts.window:.2f} (cores); {d[2] / opts.window:.0f} voluntary and "
                              f"{d[3] / opts.window:.0f} involuntary switches/s")
        elif opts.mode == "trace":
            calls: dict[tuple[str, str], int] = {}
            who = "?"
            for line in perf_out.splitlines():
                head = THREAD_LINE.match(line)
                if head:
                    pid = int(head.group(1))
                    who = "sender" if pid in sides[0] else "receiver" if pid in sides[1] else str(pid)
                    if opts.reverse:
                        who = {"sender": "receiver", "receiver": "sender"}.get(who, who)
                m = TRACE_LINE.match(line)
                if m:
                    calls[(who, m.group(1))] = calls.get((who, m.group(1)), 0) + int(m.group(2))
            for (side, name), n in sorted(calls.items(), key=lambda kv: (kv[0][0], -kv[1])):
                print(f"{side:>9} {name:>12} {n:9d} calls  {n / gb:10.0f} per GB")
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
