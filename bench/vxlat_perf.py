"""CPU seconds per GB that one transfer caused, from a system-wide ``perf record -a -g``: the
tunnel daemons (user space by library/symbol, kernel by the system call the stack is under),
``iperf3``, and softirq work in any other context. Robust to other jobs on the machine (their
samples are not counted, unless they were interrupted by this transfer's softirq work). Not a
test: numbers for docs/benchmarks.md ("VXLAN and L2: CPU per byte and latency").

    bench/vxlat.py --rounds 1 --only vx-new --no-ping --streams 1 --time 10 --hold 4 &  # pids
    perf record -a -g -F 499 -o DATA -- sleep 7      # in the middle of the iperf3 run
    bench/vxlat_perf.py DATA --hz 499 --gbps RATE --seconds 7 --pids PID,PID
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence

FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")
SYSCALLS = (("sendmmsg", "sendmmsg (UDP send)"), ("sendmsg", "sendmmsg (UDP send)"),
            ("recvmmsg", "recvmmsg (UDP receive)"), ("recvmsg", "recvmmsg (UDP receive)"),
            ("do_writev", "TAP writev"), ("do_readv", "TAP readv"), ("sys_write", "TAP writev"),
            ("sys_read", "TAP readv"), ("epoll", "epoll"))


def user_part(sym: str, dso: str) -> str:
    if "libpython" in dso:
        return "CPython (interpreter, C API)"
    if "loop.cpython" in dso:
        return "uvloop"
    if "_io.cpython" in dso:
        return "checksums (wgpy_sum)" if sym == "wgpy_sum" else "_io (segmentation, GRO, glue)"
    for name in ("_fast", "_pump", "_l2", "_transport", "_datapath"):
        if f"{name}.cpython" in dso:
            return name
    if "libcrypto" in dso:
        return "libcrypto"
    if "libc" in dso and ("memmove" in sym or "memcpy" in sym):
        return "memcpy (user copies)"
    return "other user"


def syscall(frames: Sequence[str]) -> str:
    for line in frames:
        m = FRAME.match(line)
        if m:
            for key, name in SYSCALLS:
                if key in m.group(2):
                    return name
    return "other (irq, scheduler)"


def account(script: str, pids: set[str]) -> Counter[str]:
    """Sample counts per category from ``perf script -F comm,pid,tid,ip,sym,dso`` output."""
    counts: Counter[str] = Counter()

    def sample(block: list[str]) -> None:
        if len(block) < 2:
            return
        head = block[0].split()
        comm, pid = head[0], head[1].split("/")[0]
        frames = block[1:]
        top = FRAME.match(frames[0])
        if top is None:
            return
        sym, dso = top.group(2), top.group(3)
        kernel = "kernel" in dso
        copy = kernel and any(k in sym for k in ("copy_from_iter", "copy_to_iter", "copy_page"))
        softirq = any(k in f for f in frames for k in ("net_rx_action", "handle_softirqs", "__do_softirq"))
        if pid in pids:
            counts[("daemons kernel: " + syscall(frames)) if kernel else ("daemons user: " + user_part(sym, dso))] += 1
            if copy:
                counts["  (kernel copies in the daemons)"] += 1
        elif comm == "iperf3":
            counts["iperf3 " + ("kernel" if kernel else "user")] += 1
            if copy:
                counts["  (kernel copies in iperf3)"] += 1
        elif softirq or comm.startswith("ksoftirqd"):
            counts["softirq in other contexts"] += 1

    block: list[str] = []
    for line in script.splitlines():
        if line and not line[0].isspace():
            sample(block)
            block = [line]
        elif line.strip():
            block.append(line)
    sample(block)
    return counts


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="perf.data of perf record -a -g")
    parser.add_argument("--hz", type=float, required=True, help="perf record -F")
    parser.add_argument("--gbps", type=float, required=True, help="the transfer's rate")
    parser.add_argument("--seconds", type=float, required=True, help="the recording's length")
    parser.add_argument("--pids", default="", help="the tunnel daemons' pids, comma-separated")
    opts = parser.parse_args(argv)
    script = subprocess.run(["perf", "script", "-i", opts.data, "-F", "comm,pid,tid,ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    counts = account(script, {p for p in opts.pids.split(",") if p})
    gb = opts.gbps * opts.seconds / 8
    total = sum(v for k, v in counts.items() if not k.startswith("  "))
    if not total:
        print("no samples")
        return 1
    print(f"GB in the window {gb:.2f}; attributable CPU {total / opts.hz:.2f} s = "
          f"{total / opts.hz / gb:.3f} s/GB")
    for key in sorted(counts, key=lambda k: (k.strip().split(":")[0], -counts[k])):
        print(f"{counts[key] / opts.hz / gb:7.3f} s/GB {100 * counts[key] / total:5.1f} %  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
