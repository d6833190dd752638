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
    "wggo": "wireguard-go",
    "wgpy-vxlan": "wg-py VXLAN",
    "kvxlan": "kernel vxlan",
}
# "wggo" is a slot: a run fills it with one contender per wireguard-go binary, keyed
# ``wggo-VERSION`` (:func:`wireguard_go_key`) and labelled with its ``--version`` line.
WGGO = "wggo"
REFERENCES: dict[str, str] = {"wgpy": WGGO, "wgpy-vxlan": "kvxlan"}
TUNNEL_PROCESSES = ("wgpy", WGGO, "wgpy-vxlan")  # contenders with userspace tunnel processes
PEER_RSS = ("wgpy", WGGO)


def is_wireguard_go(key: str) -> bool:
    """True for the wireguard-go contenders (``wggo`` or ``wggo-VERSION``)."""
    return key == WGGO or key.startswith(WGGO + "-")


def kind(key: str) -> str:
    """The slot of :data:`CONTENDERS` a contender key belongs to (``wggo-20250522`` -> ``wggo``)."""
    return WGGO if is_wireguard_go(key) else key


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
    wg-py WireGuard against each wireguard-go contender, wg-py VXLAN against kernel vxlan."""
    out: list[tuple[str, str]] = []
    for a, b in REFERENCES.items():
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
    Metric("peak_rss_mib", "tunnel peak RSS", "MiB", False),
    Metric("rss_idle_mib", "RSS, no peers", "MiB", False),
    Metric("rss_peers_mib", "RSS, N peers", "MiB", False),
)
METRIC = {m.key: m for m in METRICS}
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


TARGETS: tuple[Target, ...] = (  # issue 17
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
                 peers: int | None = None, labels: Mapping[str, str] | None = None) -> str:
    """The report: which contenders were compared (each wireguard-go with its version, from
    ``labels``), figures, ratios to each reference and to raw veth, targets (``peers``
    replaces the N in the RSS row's label)."""
    names = {**CONTENDERS, **(labels or {})}
    refs = references(contenders)
    head = ["metric", "unit", *contenders, *(f"{a}/{b}" for a, b in refs)]
    lines = ["compared: " + ", ".join(f"{c} = {names.get(c, c)}" for c in contenders), ""]
    rows = [head]
    for m in METRICS:
        if not any(m.key in summary.get(c, {}) for c in contenders):
            continue
        cells = [fmt(summary.get(c, {}).get(m.key)) for c in contenders]
        cells += [fmt(ratio(summary, m.key, a, b)) + "x" if ratio(summary, m.key, a, b) else "n/a"
                  for a, b in refs]
        rows.append([_label(m, peers), m.unit, *cells])
    lines += _grid(rows)
    if "veth" in contenders:
        vrows = [["ratio to raw veth", "", *contenders]]
        for m in METRICS:
            if m.key in summary.get("veth", {}):
                vrows.append([_label(m, peers), "x", *(fmt(ratio(summary, m.key, c, "veth"))
                                               for c in contenders)])
        if len(vrows) > 1:
            lines += ["", *_grid(vrows)]
    lines.append("")
    for t in evaluate_targets({c: summary.get(c, {}) for c in contenders}, labels):
        state = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
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
