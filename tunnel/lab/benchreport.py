"""The pure half of ``wg-py bench``: what is measured, the targets, parsing of tool output,
statistics and the text table (the PNG chart is :mod:`tunnel.lab.benchchart`, matplotlib).

Everything here takes and returns plain data and is unit-tested; :mod:`tunnel.lab.bench` runs the
lab and calls these.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tunnel.lab.netns import iperf3_bits_per_second

CONTENDERS: dict[str, str] = {
    "veth": "raw veth",
    "wgpy": "wg-py WireGuard",
    "wgpy-w2": "wg-py WireGuard, workers 2",  # issue 17: WGPY_WORKERS=2 on both ends
    "wggo": "wireguard-go",
    "wgpy-vxlan": "wg-py VXLAN",
    "kvxlan": "kernel vxlan",
    # the L2 overlays of issue 12: VXLAN (VNI 42, port 4789) between the tunnel addresses
    "kvxlan-wgpy": "kernel vxlan over wg-py",
    "kvxlan-wggo": "kernel vxlan over wireguard-go",
    "wgpy-l2": "wg-py L2 over WireGuard (one process)",
}
# "wggo" and "kvxlan-wggo" are slots: a run fills each with one contender per wireguard-go
# binary, keyed ``wggo-VERSION`` (:func:`wireguard_go_key`) and ``kvxlan-wggo-VERSION``
# (:func:`overlay_key`), labelled with its ``--version`` line.
WGGO = "wggo"
KVXLAN_WGGO = "kvxlan-wggo"
OVERLAYS = ("kvxlan-wgpy", KVXLAN_WGGO, "wgpy-l2")  # a VXLAN inside a WireGuard pair
# (contender, reference) kinds whose ratios the report gives, in this order
REFERENCES: tuple[tuple[str, str], ...] = (
    ("wgpy", WGGO), ("wgpy-w2", WGGO), ("wgpy-w2", "wgpy"), ("wgpy-vxlan", "kvxlan"),
    ("wgpy-l2", KVXLAN_WGGO), ("wgpy-l2", "kvxlan-wgpy"), ("wgpy-l2", "wgpy"),
)
# contenders with userspace tunnel processes (for the kernel overlays: their WireGuard daemons)
TUNNEL_PROCESSES = ("wgpy", "wgpy-w2", WGGO, "wgpy-vxlan", *OVERLAYS)
PEER_RSS = ("wgpy", WGGO)


def is_wireguard_go(key: str) -> bool:
    """True for the wireguard-go contenders (``wggo`` or ``wggo-VERSION``)."""
    return key == WGGO or key.startswith(WGGO + "-")


def kind(key: str) -> str:
    """The slot of :data:`CONTENDERS` a contender key belongs to (``wggo-20250522`` -> ``wggo``,
    ``kvxlan-wggo-20250522`` -> ``kvxlan-wggo``)."""
    if key == KVXLAN_WGGO or key.startswith(KVXLAN_WGGO + "-"):
        return KVXLAN_WGGO
    return WGGO if is_wireguard_go(key) else key


def overlay_key(wggo_key: str) -> str:
    """The key of the kernel vxlan over a wireguard-go contender: ``wggo-20250522`` ->
    ``kvxlan-wggo-20250522``."""
    return f"kvxlan-{wggo_key}"


def overlay_label(wggo_label: str) -> str:
    """``wireguard-go v0.0.20250522`` -> ``kernel vxlan over wireguard-go v0.0.20250522``."""
    return f"kernel vxlan over {wggo_label}"


def wireguard_go_label(version_output: str) -> str:
    """The label of a wireguard-go binary from its ``--version`` output: the first line,
    ``wireguard-go vX.Y.Z`` (e.g. ``wireguard-go v0.0.20250522``). Raises ValueError if the
    output does not start with such a line (not a wireguard-go, or a broken one)."""
    lines = version_output.strip().splitlines()
    words = lines[0].split() if lines else []
    if len(words) != 2 or words[0] != "wireguard-go" or not any(ch.isdigit() for ch in words[1]):
        first = lines[0] if lines else ""
        raise ValueError(f"not a wireguard-go --version line: {first!r}")
    return f"{words[0]} {words[1]}"


def wireguard_go_key(label: str, taken: Collection[str] = ()) -> str:
    """A contender key for a wireguard-go label, unique among ``taken``:
    ``wireguard-go v0.0.20250522`` -> ``wggo-20250522`` (``wggo-20250522-2`` if taken)."""
    version = label.split()[1].removeprefix("v").removeprefix("0.0.")
    clean = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in version)[:24]
    key, n = f"{WGGO}-{clean}", 2
    while key in taken:
        key, n = f"{WGGO}-{clean}-{n}", n + 1
    return key


def references(contenders: Sequence[str]) -> list[tuple[str, str]]:
    """The (contender, reference) pairs whose ratios the report gives, for those measured:
    wg-py WireGuard against each wireguard-go contender, wg-py VXLAN against kernel vxlan,
    wg-py L2 against the kernel vxlan over each wireguard-go, over wg-py, and plain wg-py."""
    out: list[tuple[str, str]] = []
    for a, b in REFERENCES:
        if a not in contenders:
            continue
        out += [(a, c) for c in contenders if kind(c) == b]
    return out


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS: tuple[Metric, ...] = (
    Metric("tcp1_gbps", "TCP 1 stream", "Gbit/s", True),
    Metric("tcp4_gbps", "TCP 4 streams", "Gbit/s", True),
    Metric("udp64_kpps", "UDP 64 B received", "kpps", True),
    Metric("ping_median_ms", "ping RTT median", "ms", False),
    Metric("ping_avg_ms", "ping RTT avg", "ms", False),
    Metric("cpu_tunnel_s_per_gb", "tunnel CPU (TCP 1)", "s/GB", False),
    Metric("cpu_system_s_per_gb", "machine CPU (TCP 1)", "s/GB", False),
    Metric("cpu_softirq_s_per_gb", "softirq CPU (TCP 1)", "s/GB", False),
    # over each 1-stream run: idle left means the stream was not bound by the machine's CPUs
    # (on a 2-CPU machine both ends and iperf3 share them; docs/benchmarks.md, session 8)
    Metric("idle_tcp1_pct", "machine idle (TCP 1)", "%", False),
    # over each 4-stream run (issue 17: did a daemon use both cores?); not judged
    Metric("idle_tcp4_pct", "machine idle (TCP 4)", "%", False),
    Metric("tunnel_cores_tcp4", "busiest tunnel process (TCP 4)", "cores", False),
    Metric("peak_rss_mib", "tunnel peak RSS", "MiB", False),
    Metric("rss_idle_mib", "RSS, no peers", "MiB", False),
    Metric("rss_peers_mib", "RSS, N peers", "MiB", False),
)
METRIC = {m.key: m for m in METRICS}
BUSY_PREFIX, BUSY_SUFFIX = "busy_tcp4_cpu", "_pct"  # busy_tcp4_cpu0_pct, ...: one per CPU


def busy_key(cpu: int) -> str:
    """The metric key of CPU ``cpu``'s busy share over the 4-stream runs."""
    return f"{BUSY_PREFIX}{cpu}{BUSY_SUFFIX}"


def metrics_of(summary: Mapping[str, Mapping[str, float]]) -> list[Metric]:
    """:data:`METRICS` with, after the idle row, one ``CPUn busy (TCP 4)`` row per CPU that
    ``summary`` has a figure for (their number depends on the machine)."""
    cpus = sorted({int(k[len(BUSY_PREFIX):-len(BUSY_SUFFIX)]) for row in summary.values()
                   for k in row if k.startswith(BUSY_PREFIX) and k.endswith(BUSY_SUFFIX)
                   and k[len(BUSY_PREFIX):-len(BUSY_SUFFIX)].isdigit()})
    out: list[Metric] = []
    for m in METRICS:
        out.append(m)
        if m.key == "idle_tcp4_pct":
            out += [Metric(busy_key(n), f"CPU{n} busy (TCP 4)", "%", False) for n in cpus]
    return out
CHART_METRICS = ("tcp1_gbps", "tcp4_gbps", "udp64_kpps", "ping_median_ms", "cpu_tunnel_s_per_gb",
                 "rss_peers_mib")


@dataclass(frozen=True)
class Target:
    """``metric`` of ``contender`` divided by that of ``reference`` must be >= ``at_least``
    (or <= ``at_most``). A ``reference`` of ``wggo`` stands for each wireguard-go contender of
    the run (the target is judged against each); ``{ref}`` in ``text`` names it."""

    text: str
    metric: str
    contender: str
    reference: str
    at_least: float | None = None
    at_most: float | None = None
    issue: int = 17


TARGETS: tuple[Target, ...] = (  # issue 17, then issue 12
    Target("wg-py WireGuard >= 2x {ref}, TCP 1 stream", "tcp1_gbps", "wgpy", WGGO, at_least=2.0),
    Target("wg-py WireGuard tunnel CPU per GB <= 0.5x {ref}", "cpu_tunnel_s_per_gb", "wgpy", WGGO,
           at_most=0.5),
    Target("ping RTT through wg-py WireGuard <= 0.8x {ref}", "ping_median_ms", "wgpy", WGGO,
           at_most=0.8),
    Target("wg-py VXLAN >= 0.6x {ref}, TCP 1 stream", "tcp1_gbps", "wgpy-vxlan", "kvxlan",
           at_least=0.6),
    Target("wg-py VXLAN >= 0.5x {ref}, TCP 4 streams", "tcp4_gbps", "wgpy-vxlan", "kvxlan",
           at_least=0.5),
    Target("ping RTT through wg-py VXLAN <= through {ref}", "ping_median_ms", "wgpy-vxlan", "wgpy",
           at_most=1.0),
    Target("wg-py L2 (one process) >= 4x {ref}, TCP 1 stream", "tcp1_gbps", "wgpy-l2",
           KVXLAN_WGGO, at_least=4.0, issue=12),
    Target("wg-py L2 (one process) >= 2x {ref}, TCP 1 stream", "tcp1_gbps", "wgpy-l2",
           "kvxlan-wgpy", at_least=2.0, issue=12),
    Target("wg-py L2 (one process) >= 0.8x {ref}, TCP 1 stream (aim)", "tcp1_gbps", "wgpy-l2",
           "wgpy", at_least=0.8, issue=12),
)


# ---- parsing and statistics (pure) ---------------------------------------------------------------


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def parse_ping(text: str) -> list[float]:
    """The per-reply RTTs (ms) in ``ping`` output (``... time=0.045 ms`` lines)."""
    rtts = []
    for line in text.splitlines():
        _, found, rest = line.partition(" time=")
        if found and "bytes from" in line:
            rtts.append(float(rest.split()[0]))
    return rtts


def proc_cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks, all threads) from a ``/proc/PID/stat`` line.

    The command name (field 2) may hold spaces and parentheses: fields are counted after the
    last ')'; utime and stime are fields 14 and 15."""
    rest = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def system_busy_ticks(proc_stat_text: str) -> int:
    """Busy ticks of all CPUs from ``/proc/stat`` (everything but idle and iowait)."""
    for line in proc_stat_text.splitlines():
        if line.startswith("cpu "):
            f = [int(x) for x in line.split()[1:]]
            return f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
    raise ValueError("no cpu line in /proc/stat")


def cpu_ticks(proc_stat_text: str) -> dict[str, tuple[int, int]]:
    """``cpu`` (all CPUs) and each ``cpuN`` of ``/proc/stat`` -> (busy ticks, total ticks).

    Busy is everything but idle and iowait (as :func:`system_busy_ticks`: user, nice, system,
    irq, softirq, steal); total is busy + idle + iowait (guest time is already in user)."""
    out: dict[str, tuple[int, int]] = {}
    for line in proc_stat_text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        f = [int(x) for x in fields]
        busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
        out[name] = (busy, busy + f[3] + f[4])
    if "cpu" not in out:
        raise ValueError("no cpu line in /proc/stat")
    return out


def softirq_ticks(proc_stat_text: str) -> int:
    """Softirq ticks of all CPUs (field 7 of the ``cpu`` line of ``/proc/stat``)."""
    for line in proc_stat_text.splitlines():
        if line.startswith("cpu "):
            return int(line.split()[7])
    raise ValueError("no cpu line in /proc/stat")


def idle_figures(before: str, after: str) -> dict[str, float]:
    """From two ``/proc/stat`` readings around a run: ``idle_tcp4_pct`` (the machine's idle
    share, %) and one :func:`busy_key` per CPU (that CPU's busy share, %). A CPU whose ticks did
    not advance (or that came or went between the readings) is left out."""
    t0, t1 = cpu_ticks(before), cpu_ticks(after)
    out: dict[str, float] = {}
    for name, (busy1, total1) in t1.items():
        if name not in t0:
            continue
        busy0, total0 = t0[name]
        if total1 <= total0:
            continue
        share = 100.0 * (busy1 - busy0) / (total1 - total0)
        if name == "cpu":
            out["idle_tcp4_pct"] = 100.0 - share
        elif name[3:].isdigit():
            out[busy_key(int(name[3:]))] = share
    return out


def busiest_cores(cpu_before: Mapping[int, float], cpu_after: Mapping[int, float],
                  seconds: float) -> float | None:
    """The largest CPU time (s) any one process spent between the readings (pid -> seconds),
    over the wall time ``seconds``: in cores (above 1.0 the process ran on more than one CPU
    at a time). None without a process present in both readings or with no elapsed time."""
    used = [cpu_after[p] - cpu_before[p] for p in cpu_after if p in cpu_before]
    if not used or seconds <= 0:
        return None
    return max(used) / seconds


def status_kib(status_text: str, name: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of ``/proc/PID/status`` in KiB (0 if absent)."""
    for line in status_text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def tcp_figures(result: Mapping[str, Any]) -> tuple[float, int]:
    """(bits/s, bytes) the iperf3 TCP receiver saw."""
    return iperf3_bits_per_second(result), int(result["end"]["sum_received"]["bytes"])


def udp_received_pps(result: Mapping[str, Any]) -> float:
    """Packets per second that reached the iperf3 UDP server (sent minus lost)."""
    s = result["end"]["sum"]
    return (int(s["packets"]) - int(s["lost_packets"])) / float(s["seconds"])


def per_gigabyte(seconds: float, nbytes: int) -> float | None:
    return seconds / (nbytes / 1e9) if nbytes > 0 else None


def summarize(samples: Mapping[str, Mapping[str, Sequence[float | None]]]) -> dict[str, dict[str, float]]:
    """contender -> metric -> median over the rounds (metrics without a value left out)."""
    out: dict[str, dict[str, float]] = {}
    for contender, metrics in samples.items():
        row = {k: m for k, v in metrics.items() if (m := median(v)) is not None}
        out[contender] = row
    return out


def ratio(summary: Mapping[str, Mapping[str, float]], metric: str, a: str, b: str) -> float | None:
    """summary[a][metric] / summary[b][metric], or None if either is missing or b is 0."""
    x, y = summary.get(a, {}).get(metric), summary.get(b, {}).get(metric)
    if x is None or not y:
        return None
    return x / y


def evaluate_targets(summary: Mapping[str, Mapping[str, float]],
                     labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Each target, once per reference it is judged against (a ``wggo`` target once per
    wireguard-go contender in ``summary``, in its order), with its text naming the reference
    (``labels[key]``, else the default label), the measured ratio and ``met`` (True, False,
    or None if not measured)."""
    names = {**CONTENDERS, **(labels or {})}
    out = []
    for t in TARGETS:
        refs = [c for c in summary if kind(c) == t.reference] or [t.reference]
        for ref in refs:
            r = ratio(summary, t.metric, t.contender, ref)
            met = None
            if r is not None:
                met = (t.at_least is None or r >= t.at_least) and (t.at_most is None or r <= t.at_most)
            out.append({**asdict(t), "reference": ref, "text": t.text.format(ref=names.get(ref, ref)),
                        "ratio": r, "met": met})
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _label(m: Metric, peers: int | None) -> str:
    return m.label.replace(" N ", f" {peers} ") if peers else m.label


def render_table(summary: Mapping[str, Mapping[str, float]], contenders: Sequence[str],
                 peers: int | None = None, labels: Mapping[str, str] | None = None,
                 unavailable: Mapping[str, str] | None = None) -> str:
    """The report: which contenders were compared (each wireguard-go with its version, from
    ``labels``), which were unavailable and why (``unavailable``: key -> reason), figures,
    ratios to each reference and to raw veth, targets (``peers`` replaces the N in the RSS
    row's label)."""
    names = {**CONTENDERS, **(labels or {})}
    refs = references(contenders)
    metrics = metrics_of({c: summary.get(c, {}) for c in contenders})
    head = ["metric", "unit", *contenders, *(f"{a}/{b}" for a, b in refs)]
    lines = ["compared: " + ", ".join(f"{c} = {names.get(c, c)}" for c in contenders)]
    lines += [f"unavailable: {c} = {names.get(c, c)}: {why}"
              for c, why in (unavailable or {}).items()]
    lines.append("")
    rows = [head]
    for m in metrics:
        if not any(m.key in summary.get(c, {}) for c in contenders):
            continue
        cells = [fmt(summary.get(c, {}).get(m.key)) for c in contenders]
        cells += [fmt(ratio(summary, m.key, a, b)) + "x" if ratio(summary, m.key, a, b) else "n/a"
                  for a, b in refs]
        rows.append([_label(m, peers), m.unit, *cells])
    lines += _grid(rows)
    if "veth" in contenders:
        vrows = [["ratio to raw veth", "", *contenders]]
        for m in metrics:
            if m.key in summary.get("veth", {}):
                vrows.append([_label(m, peers), "x", *(fmt(ratio(summary, m.key, c, "veth"))
                                               for c in contenders)])
        if len(vrows) > 1:
            lines += ["", *_grid(vrows)]
    lines.append("")
    for t in evaluate_targets({c: summary.get(c, {}) for c in contenders}, labels):
        state = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        if t["met"] is None and t["contender"] in (unavailable or {}):
            state += f" ({t['contender']} unavailable)"
        lines.append(f"target: {t['text']}: {fmt(t['ratio'])}{'x' if t['ratio'] else ''} -> {state}")
    return "\n".join(lines) + "\n"


def _grid(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
