"""Where wg-py's time goes under load: py-spy samples the daemons while iperf3 runs through them.

    .venv/bin/python bench/profile.py [--target wgpy|wgpy-vxlan] [--time 10] [--rate 250]
                                      [--native] [--idle]

Builds the same namespace pair as ``wg-py bench`` (``tunnel.lab.bench.build_pair``; removed on the
way out), starts ``py-spy record --format raw`` on the sending and the receiving daemon, runs a
single-stream iperf3 TCP test for ``--time`` seconds, then prints, per side, the functions with
the most samples on top of the stack (self) and anywhere on it (inclusive), and writes the same
text to ``bench/results/profile-TARGET[-native].txt``. py-spy is a development tool, not a
dependency (``.venv/bin/pip install py-spy``). ``--native`` adds C/Cython frames and syscalls
(py-spy then pauses the process at each sample, which slows it down a lot: read the shares,
not the speed); ``--idle`` keeps samples of threads that wait (by default py-spy drops them,
so the percentages are of busy time).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunnel.lab.bench import build_pair, measure_tcp, results_dir  # noqa: E402
from tunnel.lab.netns import Lab  # noqa: E402

_LINE = re.compile(r" \(([^:()]+):\d+\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: samples add up across lines."""
    m = _LINE.search(frame)
    return frame[: m.start()] + f" ({Path(m.group(1)).name})" if m else frame


def aggregate(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """py-spy raw (collapsed) output -> (samples, self counts, inclusive counts) by function.

    Each line is ``frame;frame;...;leaf COUNT`` (outermost first; a thread name may lead)."""
    total, own, incl = 0, collections.Counter[str](), collections.Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            incl[name] += n
    return total, own, incl


def report(side: str, raw: str, seconds: float, rate: int, top: int = 20) -> str:
    total, own, incl = aggregate(raw)
    lines = [f"== {side}: {total} samples (~{total / max(seconds * rate, 1):.0%} of "
             f"{seconds:.0f}s at {rate}/s across threads)"]
    for title, counter in (("self", own), ("inclusive", incl)):
        lines.append(f"-- top {top} by {title}")
        lines += [f"{100 * n / max(total, 1):5.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", choices=("wgpy", "wgpy-vxlan"), default="wgpy")
    p.add_argument("--time", type=int, default=10)
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--native", action="store_true")
    p.add_argument("--idle", action="store_true")
    opts = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    with Lab(f"wgprof{__import__('os').getpid() % 10000}") as lab:
        pair = build_pair(lab, opts.target)
        sides = {"sender": lab.daemon_pids(pair.client), "receiver": lab.daemon_pids(pair.server)}
        procs = {}
        for side, pids in sides.items():
            out = lab.path(f"{side}.txt")
            argv = [pyspy, "record", "--pid", str(pids[0]), "--duration", str(opts.time + 1),
                    "--rate", str(opts.rate), "--format", "raw",
                    "-o", str(out)] + (["--native"] if opts.native else ["--nonblocking"]) + (
                    ["--idle"] if opts.idle else [])
            procs[side] = (lab.spawn(None, argv), out)
        time.sleep(0.5)
        got = measure_tcp(lab, pair, 1, opts.time)
        text = (f"wg-py profile: {opts.target}, iperf3 TCP 1 stream {got['gbps']:.3f} Gbit/s, "
                f"tunnel CPU {got['cpu_tunnel'] or 0:.1f} s/GB, py-spy {opts.rate}/s"
                f"{' --native' if opts.native else ''}\n\n")
        for side, (proc, out) in procs.items():
            try:
                proc.wait(timeout=opts.time + 30)
            except subprocess.TimeoutExpired:
                proc.stop()
            raw = out.read_text() if out.exists() else ""
            if not raw:
                text += f"== {side}: py-spy wrote nothing:\n{proc.output()}\n"
                continue
            text += report(side, raw, opts.time + 1, opts.rate) + "\n"
    print(text, end="")
    path = results_dir() / f"profile-{opts.target}{'-native' if opts.native else ''}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
