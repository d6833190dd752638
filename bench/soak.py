"""Soak: minutes of traffic through a wg-py WireGuard pair and a wg-py VXLAN pair, with churn.

    .venv/bin/python bench/soak.py [--minutes 10] [--interval 10] [--json PATH] [--no-chart]

Four namespaces (``tunnel.lab.netns.Lab``, prefix ``wgs<pid>``; removed on the way out, Ctrl-C
and SIGTERM included): a wg-py WireGuard pair (``wg-py IFACE`` on both ends, ``wg setconf``,
MTU 1420) and beside it a wg-py VXLAN pair (``wg-py vxlan add vx0 ...`` on both ends), each on
its own veth, built by :func:`tunnel.lab.bench.build_pair` exactly as ``wg-py bench`` builds
them. For ``--minutes``:

- **traffic**: per pair, back-to-back single-stream iperf3 TCP runs of ``--interval`` - 1
  seconds (each bounded), and a ping every 0.2 s (one ``ping`` process per pair, bounded by
  ``-c`` and ``-w``);
- **churn** on the live WireGuard daemons, every ``--churn-every`` (2) seconds: ``wg set`` adds
  ``--churn-peers`` (20) peers with random keys and allowed-IPs, replaces the allowed-IPs of the
  real peer on both ends (its tunnel address plus a different extra /24 each time), then removes
  the added peers; a bounded number of cycles;
- **samples** every ``--interval`` (10) seconds: VmRSS, open fds and thread count of each wg-py
  process (``/proc/PID/status``, ``/proc/PID/fd``), and the throughput of each pair's latest
  iperf3 run.

At the end: per process the least-squares slope of RSS (MiB/min), fds and threads (per min)
over the samples after the first minute (the warm-up), pings sent/answered per pair, churn
cycles done, and a check that no namespace of ours and none of the daemons is left after the
lab closed. Writes JSON and a PNG (:func:`tunnel.lab.benchchart.timeseries_chart`, matplotlib
from the ``bench`` extra) to ``bench/results/soak-YYYYMMDD-HHMMSS.*``; prints the JSON.
Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from crypto import keys  # noqa: E402
from tunnel.lab import benchchart  # noqa: E402
from tunnel.lab.bench import INNER, build_pair, rss_mib  # noqa: E402
from tunnel.lab.benchreport import parse_ping, status_kib, tcp_figures  # noqa: E402
from tunnel.lab.netns import CommandError, Lab, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def linear_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs; None with fewer than two distinct xs."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def process_sample(pid: int) -> dict[str, float] | None:
    """VmRSS (MiB), open fds and threads of ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    return {"rss_mib": status_kib(status, "VmRSS") / 1024, "fds": float(fds),
            "threads": float(status_kib(status, "Threads"))}


def status_line(status: str, name: str) -> str:
    return next((line for line in status.splitlines() if line.startswith(name + ":")), "")


def peer_keys(lab: Lab, ns: str, iface: str) -> list[str]:
    return lab.run(ns, ["wg", "show", iface, "peers"]).stdout.split()


class Soak:
    """The run's state; threads write their own fields only, the main thread reads them."""

    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.stop = threading.Event()
        self.latest_gbps: dict[str, float | None] = {}
        self.iperf_runs: dict[str, int] = {}
        self.iperf_errors: dict[str, list[str]] = {}
        self.churn_cycles = 0
        self.churn_errors: list[str] = []

    def traffic(self, name: str, client: str, server: str, addr: str, port: int) -> None:
        """Back-to-back iperf3 runs until told to stop (bounded by the run's length)."""
        seconds = max(1, int(self.args.interval) - 1)
        limit = int(self.args.minutes * 60 / seconds) + 2
        self.iperf_runs[name] = 0
        self.iperf_errors[name] = []
        for _ in range(limit):
            if self.stop.is_set():
                return
            try:
                result = self.lab.iperf3(server, client, addr, seconds=seconds, port=port)
                self.latest_gbps[name] = tcp_figures(result)[0] / 1e9
                self.iperf_runs[name] += 1
            except (CommandError, KeyError, ValueError) as exc:
                self.latest_gbps[name] = 0.0
                self.iperf_errors[name].append(str(exc)[:300])
                self.stop.wait(1.0)

    def churn(self, ends: list[tuple[str, str, str, str]]) -> None:
        """``wg set`` churn on both live WireGuard daemons; ``ends`` = (ns, iface, real peer
        key, real peer tunnel address)."""
        cycles = int(self.args.minutes * 60 / self.args.churn_every) + 1
        for cycle in range(cycles):
            if self.stop.wait(self.args.churn_every):
                return
            try:
                for side, (ns, iface, real, addr) in enumerate(ends):
                    fakes = [keys.to_base64(keys.public_from_private(keys.generate_private()))
                             for _ in range(self.args.churn_peers)]
                    argv = ["wg", "set", iface]
                    for k, key in enumerate(fakes):
                        argv += ["peer", key, "allowed-ips",
                                 f"10.{240 + side}.{cycle % 250}.{k + 1}/32,fd00:{side}:{cycle}::{k + 1}/128",
                                 "endpoint", f"192.0.2.{k + 1}:{51000 + k}"]
                    self.lab.run(ns, argv)
                    # Replace the real peer's allowed-IPs: its address plus a new /24 each time.
                    self.lab.run(ns, ["wg", "set", iface, "peer", real, "allowed-ips",
                                      f"{addr}/32,10.{230 + side}.{cycle % 250}.0/24"])
                    remove = ["wg", "set", iface]
                    for key in fakes:
                        remove += ["peer", key, "remove"]
                    self.lab.run(ns, remove)
                    left = peer_keys(self.lab, ns, iface)
                    if left != [real]:
                        self.churn_errors.append(f"cycle {cycle} {iface}: peers left {left}")
                self.churn_cycles += 1
            except CommandError as exc:
                self.churn_errors.append(f"cycle {cycle}: {str(exc)[:300]}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    lab = Lab(f"wgs{os.getpid()}")
    pids: dict[str, int] = {}
    namespaces: list[str] = []
    report: dict[str, Any] = {"minutes": args.minutes, "interval_s": args.interval,
                              "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    samples: list[dict[str, Any]] = []
    pingers: dict[str, Any] = {}
    threads: list[threading.Thread] = []
    soak = Soak(lab, args)
    try:
        wg = build_pair(lab, "wgpy")
        wg_ifaces = list(lab.interfaces[:2])
        vx = build_pair(lab, "wgpy-vxlan")
        namespaces = list(lab.namespaces)
        for label, pair in (("wg", wg), ("vxlan", vx)):
            for side, pid in zip(("a", "b"), pair.pids, strict=False):
                pids[f"{label}-{side}"] = pid
        real_b = peer_keys(lab, wg.client, wg_ifaces[0])[0]
        real_a = peer_keys(lab, wg.server, wg_ifaces[1])[0]
        ends = [(wg.client, wg_ifaces[0], real_b, INNER[1]), (wg.server, wg_ifaces[1], real_a, INNER[0])]
        count = int(args.minutes * 60 / 0.2)
        for label, pair in (("wg", wg), ("vxlan", vx)):
            pingers[label] = lab.spawn(pair.client, ["ping", "-n", "-i", "0.2", "-W", "2", "-c", str(count),
                                                     "-w", str(int(args.minutes * 60) + 5), pair.server_addr])
        threads = [
            threading.Thread(target=soak.traffic, args=("wg", wg.client, wg.server, wg.server_addr, 5201)),
            threading.Thread(target=soak.traffic, args=("vxlan", vx.client, vx.server, vx.server_addr, 5202)),
            threading.Thread(target=soak.churn, args=(ends,)),
        ]
        for t in threads:
            t.start()
        start = time.monotonic()
        n_samples = int(args.minutes * 60 / args.interval) + 1
        for i in range(n_samples):
            soak.stop.wait(max(0.0, start + i * args.interval - time.monotonic()))
            sample: dict[str, Any] = {"t_s": round(time.monotonic() - start, 1), "proc": {},
                                      "gbps": dict(soak.latest_gbps), "churn_cycles": soak.churn_cycles}
            for name, pid in pids.items():
                sample["proc"][name] = process_sample(pid)
            samples.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
        soak.stop.set()
        for t in threads:
            t.join(timeout=60)
        report["threads_still_running"] = [t.name for t in threads if t.is_alive()]
        for label, proc in pingers.items():
            proc.wait(timeout=int(args.minutes * 60) + 20)
            text = proc.output()
            sent = re.search(r"(\d+) packets transmitted", text)
            report[f"ping_{label}"] = {"scheduled": count, "sent": int(sent.group(1)) if sent else None,
                                       "answered": len(parse_ping(text))}
        report["rss_hwm_mib"] = {name: rss_mib([pid], "VmHWM") for name, pid in pids.items()}
    finally:
        soak.stop.set()
        for t in threads:
            t.join(timeout=60)
        lab.close()
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report["iperf_runs"] = soak.iperf_runs
    report["iperf_errors"] = soak.iperf_errors
    report["churn_cycles"] = soak.churn_cycles
    report["churn_errors"] = soak.churn_errors[:20]
    report["pids"] = pids
    report["samples"] = samples
    report["slopes"] = slopes(samples, list(pids))
    report["leftovers"] = leftovers(lab.prefix, namespaces, pids)
    return report


def slopes(samples: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per process: first/last/max and the slope per minute of each figure, after the first
    minute (warm-up)."""
    out: dict[str, dict[str, Any]] = {}
    late = [s for s in samples if s["t_s"] >= 60] or samples
    for name in names:
        rows = [(s["t_s"] / 60, s["proc"].get(name)) for s in late]
        rows = [(t, p) for t, p in rows if p]
        entry: dict[str, Any] = {}
        for key in ("rss_mib", "fds", "threads"):
            ys = [p[key] for _, p in rows]
            slope = linear_slope([t for t, _ in rows], ys)
            entry[key] = {"first": ys[0] if ys else None, "last": ys[-1] if ys else None,
                          "max": max(ys) if ys else None,
                          "slope_per_min": None if slope is None else round(slope, 4)}
        out[name] = entry
    return out


def leftovers(prefix: str, namespaces: list[str], pids: dict[str, int]) -> dict[str, Any]:
    """Namespaces of ours still listed and our daemons still running after the lab closed (a
    daemon gets up to 10 s to exit; an exited one not yet reaped by init counts as gone)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    ours = [line.split()[0] for line in listed.splitlines() if line.startswith(prefix)]
    def running(pid: int) -> bool:  # an exited daemon waiting for init to reap it is not running
        try:
            return "\tZ" not in status_line(Path(f"/proc/{pid}/status").read_text(), "State")
        except OSError:
            return False

    wait_for(lambda: not any(running(pid) for pid in pids.values()), 10.0, 0.2)
    alive = [name for name, pid in pids.items() if running(pid)]
    return {"namespaces": ours, "processes": alive, "namespaces_created": namespaces,
            "clean": not ours and not alive}


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so that the lab is closed on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--churn-every", type=float, default=2.0, help="seconds between churn cycles")
    p.add_argument("--churn-peers", type=int, default=20, help="peers added and removed per cycle")
    p.add_argument("--json", type=Path, help="write the JSON here (the PNG next to it)")
    p.add_argument("--no-chart", action="store_true")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.interval < 2 or args.churn_every <= 0 or args.churn_peers < 0:
        p.error("--minutes > 0, --interval >= 2, --churn-every > 0, --churn-peers >= 0")
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    signal.signal(signal.SIGTERM, _interrupt)
    report = run(args)
    path = args.json or RESULTS / time.strftime("soak-%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_chart and benchchart.available():
        png = benchchart.timeseries_chart(report["samples"], title=f"wg-py soak, {args.minutes:g} min")
        path.with_suffix(".png").write_bytes(png)
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 0 if report["leftovers"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
