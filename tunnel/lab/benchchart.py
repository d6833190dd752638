"""The benchmark's PNG chart, drawn with matplotlib (the optional ``bench`` extra).

:func:`chart` draws one panel per metric of ``CHART_METRICS`` that was measured (each metric has
its own unit, so its own axis), with one bar per contender in the run's order, the value on top
of each bar and, on the bars of wg-py, the ratios to the references it is judged against
(wg-py WireGuard / each wireguard-go of the run, wg-py VXLAN / kernel vxlan) written on the
bar (above it); the legend names each wireguard-go by its version.
:func:`available` tells whether matplotlib can be imported; ``wg-py bench`` writes no PNG
without it (``make bench`` installs the extra). Pure: data in, PNG bytes out (Agg backend, no
display).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from tunnel.lab.benchreport import (
    CHART_METRICS,
    CONTENDERS,
    KVXLAN_WGGO,
    METRIC,
    _label,
    fmt,
    kind,
    ratio,
    references,
)

COLORS = {"veth": "#969696", "wgpy": "#1f77b4", "wggo": "#ff7f0e", "wgpy-vxlan": "#2ca02c", "kvxlan": "#d62728",
          "kvxlan-wgpy": "#9467bd", "wgpy-l2": "#17becf"}
WGGO_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#bcbd22")  # one per wireguard-go, in run order
KVXLAN_WGGO_COLORS = ("#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d")  # the kernel vxlan over each


def colors(contenders: Sequence[str]) -> list[str]:
    """The bar color of each contender: fixed per kind, the contenders of a wireguard-go slot
    (``wggo``, ``kvxlan-wggo``) one each from :data:`WGGO_COLORS` or
    :data:`KVXLAN_WGGO_COLORS` in their order."""
    out: list[str] = []
    seen = {"wggo": 0, KVXLAN_WGGO: 0}
    for c in contenders:
        slot = kind(c)
        if slot in seen:
            palette = WGGO_COLORS if slot == "wggo" else KVXLAN_WGGO_COLORS
            out.append(palette[seen[slot] % len(palette)])
            seen[slot] += 1
        else:
            out.append(COLORS.get(c, "#444444"))
    return out


def available() -> bool:
    """True if matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def short(contender: str) -> str:
    """A contender's name on the chart's ratio lines: a wireguard-go's version
    (``wggo-20250522`` -> ``20250522``, the legend says which it is), else its key."""
    return contender.removeprefix("wggo-") if kind(contender) == "wggo" else contender


def ratio_labels(summary: Mapping[str, Mapping[str, float]], metric: str,
                 contenders: Sequence[str]) -> dict[str, str]:
    """The ratios written above each contender's bar, one ``"1.52x vs 20250522"`` line per
    reference measured in the run (wg-py WireGuard: each wireguard-go; wg-py VXLAN: kernel
    vxlan; wg-py L2: the kernel vxlan over each wireguard-go and over wg-py, plain wg-py)."""
    out: dict[str, list[str]] = {}
    for contender, reference in references(contenders):
        value = ratio(summary, metric, contender, reference)
        if value is not None:
            out.setdefault(contender, []).append(f"{value:.2f}x vs {short(reference)}")
    return {c: "\n".join(lines) for c, lines in out.items()}


def chart(summary: Mapping[str, Mapping[str, float]], contenders: Sequence[str],
          title: str = "wg-py bench", peers: int | None = None,
          labels: Mapping[str, str] | None = None) -> bytes:
    """The PNG (see module doc). Raises ImportError without matplotlib."""
    out = io.BytesIO()
    figure(summary, contenders, title, peers, labels).savefig(out, format="png")
    return out.getvalue()


def figure(summary: Mapping[str, Mapping[str, float]], contenders: Sequence[str],
           title: str = "wg-py bench", peers: int | None = None,
           labels: Mapping[str, str] | None = None) -> Any:
    """The chart as a matplotlib ``Figure`` (not attached to any display); the legend names
    each contender by ``labels`` (e.g. ``wireguard-go v0.0.20250522``), else its default."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    metrics = [k for k in CHART_METRICS if any(k in summary.get(c, {}) for c in contenders)]
    columns = max(1, min(3, len(metrics)))
    rows = max(1, -(-len(metrics) // columns))
    fig = Figure(figsize=(4.6 * columns, 3.8 * rows + 0.9), dpi=110, layout="constrained")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, key in enumerate(metrics):
        ax = axes[index // columns][index % columns]
        metric = METRIC[key]
        values = [summary.get(c, {}).get(key) for c in contenders]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(range(len(contenders)), heights, color=colors(contenders))
        ax.set_title(_label(metric, peers), fontsize=10)
        ax.set_ylabel(f"{metric.unit} ({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=8)
        ax.set_xticks(range(len(contenders)), [c for c in contenders], fontsize=8, rotation=20)
        peak = max(heights, default=0.0) or 1.0
        ax.set_ylim(0, peak * 1.5)
        ratios = ratio_labels(summary, key, contenders)
        for bar, contender, value in zip(bars, contenders, values, strict=True):
            x = bar.get_x() + bar.get_width() / 2
            ax.text(x, bar.get_height() + peak * 0.02, fmt(value), ha="center", va="bottom", fontsize=8)
            if contender in ratios:  # above the value, so that it never hides in a narrow bar
                ax.text(x, bar.get_height() + peak * 0.09, ratios[contender], ha="center", va="bottom",
                        fontsize=6.5, fontweight="bold", color="black")
        ax.grid(axis="y", alpha=0.3)
    for index in range(len(metrics), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    names = {**CONTENDERS, **(labels or {})}
    fig.legend(handles=[Patch(color=color, label=names.get(c, c))
                        for c, color in zip(contenders, colors(contenders), strict=True)],
                  loc="outside lower center", ncols=len(contenders), fontsize=8)
    return fig


def timeseries_chart(samples: Sequence[Mapping[str, Any]], title: str = "wg-py soak") -> bytes:
    """A PNG of a soak run over time (``bench/soak.py``): one panel of RSS (MiB) per process,
    one of throughput (Gbit/s) per pair, one of open fds and threads per process.

    ``samples``: dicts with ``t_s`` (seconds since the start), ``proc`` (process name -> dict
    with ``rss_mib``, ``fds``, ``threads``, or None once gone) and ``gbps`` (pair -> Gbit/s of
    its latest run, or None). Raises ImportError without matplotlib."""
    out = io.BytesIO()
    timeseries_figure(samples, title).savefig(out, format="png")
    return out.getvalue()


def timeseries_figure(samples: Sequence[Mapping[str, Any]], title: str = "wg-py soak") -> Any:
    """The soak chart as a matplotlib ``Figure`` (see :func:`timeseries_chart`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    rss_ax, gbps_ax, count_ax = fig.subplots(3, 1, sharex=True)
    procs = sorted({name for s in samples for name in s.get("proc", {})})
    pairs = sorted({name for s in samples for name in s.get("gbps", {})})

    def series(pick: Any) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for s in samples:
            value = pick(s)
            if value is not None:
                xs.append(float(s["t_s"]) / 60)
                ys.append(float(value))
        return xs, ys

    for name in procs:
        xs, ys = series(lambda s, n=name: (s["proc"].get(n) or {}).get("rss_mib"))
        rss_ax.plot(xs, ys, marker=".", label=name)
        xs, ys = series(lambda s, n=name: (s["proc"].get(n) or {}).get("fds"))
        count_ax.plot(xs, ys, marker=".", label=f"{name} fds")
        xs, ys = series(lambda s, n=name: (s["proc"].get(n) or {}).get("threads"))
        count_ax.plot(xs, ys, linestyle="--", label=f"{name} threads")
    for name in pairs:
        xs, ys = series(lambda s, n=name: s["gbps"].get(n))
        gbps_ax.plot(xs, ys, marker=".", label=name)
    for ax, label in ((rss_ax, "RSS (MiB)"), (gbps_ax, "iperf3 TCP (Gbit/s)"), (count_ax, "count")):
        ax.set_ylabel(label, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=4, loc="lower right")
    count_ax.set_xlabel("minutes", fontsize=9)
    return fig
