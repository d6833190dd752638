"""``wg-py bench``: the option parsing, the parsers of /proc and tool output, the statistics, the
report and the matplotlib chart (pure functions), plus one short smoke run in namespaces.

Nothing here asserts on speed: the smoke run only checks that traffic flowed and that the
files were written.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tunnel.lab import bench, benchchart
from tunnel.lab import benchreport as report
from tunnel.lab.netns import missing_requirements

# ---- options -------------------------------------------------------------------------------------


def test_defaults() -> None:
    opts = bench.parse_args([])
    assert (opts.rounds, opts.time, opts.peers, opts.chart) == (3, 5, 10_000, True)
    assert opts.only == list(report.CONTENDERS)
    assert opts.json_path is None


def test_quick_and_overrides() -> None:
    opts = bench.parse_args(["--quick", "--time", "2", "--no-chart", "--json", "/tmp/x.json"])
    assert (opts.rounds, opts.time, opts.peers, opts.chart) == (1, 2, 500, False)
    assert opts.json_path == Path("/tmp/x.json")


def test_only_keeps_the_canonical_order() -> None:
    assert bench.parse_args(["--only", "kvxlan, veth"]).only == ["veth", "kvxlan"]


# ---- wireguard-go contenders ---------------------------------------------------------------------

UPSTREAM_VERSION = """wireguard-go v0.0.20250522

Userspace WireGuard daemon for linux-amd64.
Information available at https://www.wireguard.com.
Copyright (C) Jason A. Donenfeld <Jason@zx2c4.com>.
"""
VERSIONS = {"/up/wireguard-go": UPSTREAM_VERSION,
            "/usr/bin/wireguard-go": UPSTREAM_VERSION.replace("20250522", "20220316"),
            "/bin/true": "", "/usr/bin/python3": "Python 3.11.7\n"}


def test_wireguard_go_is_repeatable_and_keeps_its_order() -> None:
    opts = bench.parse_args(["--wireguard-go", "/up/wireguard-go", "--wireguard-go",
                             "/usr/bin/wireguard-go"])
    assert opts.wireguard_go == ["/up/wireguard-go", "/usr/bin/wireguard-go"]
    assert bench.parse_args([]).wireguard_go == []


def test_wireguard_go_label_is_the_version_line() -> None:
    assert report.wireguard_go_label(UPSTREAM_VERSION) == "wireguard-go v0.0.20250522"
    assert report.wireguard_go_label("  wireguard-go 1.2.3\n") == "wireguard-go 1.2.3"
    for bad in ("", "Python 3.11.7", "wireguard-go", "wireguard-go vX\n", "wg-py v1 extra"):
        with pytest.raises(ValueError):
            report.wireguard_go_label(bad)


def test_wireguard_go_keys_are_unique_and_name_the_version() -> None:
    assert report.wireguard_go_key("wireguard-go v0.0.20250522") == "wggo-20250522"
    assert report.wireguard_go_key("wireguard-go v1.2/3") == "wggo-1.2-3"
    taken = ["wggo-20250522", "wggo-20250522-2"]
    assert report.wireguard_go_key("wireguard-go v0.0.20250522", taken) == "wggo-20250522-3"
    assert report.kind("wggo-20250522") == "wggo" and report.kind("wgpy") == "wgpy"
    assert report.is_wireguard_go("wggo") and not report.is_wireguard_go("wgpy-vxlan")


def test_wireguard_go_contenders_from_version_output() -> None:
    wggos = bench.wireguard_go_contenders(["/up/wireguard-go", "/usr/bin/wireguard-go",
                                           "/up/wireguard-go"], VERSIONS.__getitem__)
    assert [(w.key, w.label, w.path) for w in wggos] == [
        ("wggo-20250522", "wireguard-go v0.0.20250522", "/up/wireguard-go"),
        ("wggo-20220316", "wireguard-go v0.0.20220316", "/usr/bin/wireguard-go"),
        ("wggo-20250522-2", "wireguard-go v0.0.20250522", "/up/wireguard-go")]
    assert bench.expand(["veth", "wgpy", "wggo", "kvxlan"], wggos[:2]) == [
        "veth", "wgpy", "wggo-20250522", "wggo-20220316", "kvxlan"]
    assert bench.expand(["veth", "wggo"], []) == ["veth"]
    programs = {w.key: w.path for w in wggos}
    assert bench._wg_program("wggo-20220316", programs) == ["/usr/bin/wireguard-go"]
    assert bench._wg_program("wggo", {}) == ["wireguard-go"]  # bench/hops.py's plain pair
    for path in ("/bin/true", "/usr/bin/python3"):
        with pytest.raises(ValueError, match=f"--wireguard-go {path}: not a wireguard-go"):
            bench.wireguard_go_contenders([path], VERSIONS.__getitem__)


def test_program_version_runs_the_binary(tmp_path: Path) -> None:
    fake = tmp_path / "wireguard-go"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'wireguard-go v9.9.9' && exit 0\nexit 1\n")
    fake.chmod(0o755)
    assert bench.wireguard_go_contenders([str(fake)])[0].label == "wireguard-go v9.9.9"
    with pytest.raises(ValueError, match="cannot run"):
        bench.program_version(str(tmp_path / "absent"))


def test_a_path_that_is_not_wireguard_go_is_a_clear_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--wireguard-go", "/bin/true", "--only", "veth,wggo"]) == 1
    assert "--wireguard-go /bin/true: not a wireguard-go" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--rounds", "0"], ["--peers", "-1"],
                                  ["--time", "x"], ["--bogus"]])
def test_bad_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(argv) == 2
    assert "usage" in capsys.readouterr().err


# ---- parsers -------------------------------------------------------------------------------------

PING = """PING 10.201.0.2 (10.201.0.2) 56(84) bytes of data.
64 bytes from 10.201.0.2: icmp_seq=1 ttl=64 time=0.512 ms
64 bytes from 10.201.0.2: icmp_seq=2 ttl=64 time=0.101 ms
From 10.201.0.1 icmp_seq=3 Destination Host Unreachable
64 bytes from 10.201.0.2: icmp_seq=4 ttl=64 time=12.0 ms

--- 10.201.0.2 ping statistics ---
rtt min/avg/max/mdev = 0.101/4.204/12.000/5.510 ms
"""


def test_parse_ping_takes_each_reply_only() -> None:
    assert report.parse_ping(PING) == [0.512, 0.101, 12.0]
    assert report.parse_ping("") == []


def test_proc_cpu_ticks_survives_odd_command_names() -> None:
    # pid (comm) state ppid ... field 14 utime, 15 stime; the name holds ") (" and spaces
    rest = ["S"] + [str(n) for n in range(4, 14)] + ["700", "45"] + ["0"] * 30
    line = "4711 (wg) (py x) " + " ".join(rest)
    assert report.proc_cpu_ticks(line) == 745


def test_system_busy_ticks_leaves_idle_and_iowait_out() -> None:
    text = "cpu  100 5 50 9000 300 7 8 2 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert report.system_busy_ticks(text) == 100 + 5 + 50 + 7 + 8 + 2
    with pytest.raises(ValueError):
        report.system_busy_ticks("intr 1 2 3\n")


def test_status_kib() -> None:
    text = "Name:\twg-py\nVmHWM:\t   36400 kB\nVmRSS:\t   30000 kB\n"
    assert report.status_kib(text, "VmHWM") == 36400
    assert report.status_kib(text, "VmRSS") == 30000
    assert report.status_kib(text, "VmSwap") == 0


def test_iperf3_figures() -> None:
    tcp = {"end": {"sum_sent": {"bits_per_second": 2e9, "bytes": 10},
                   "sum_received": {"bits_per_second": 1.5e9, "bytes": 937_500_000}}}
    assert report.tcp_figures(tcp) == (1.5e9, 937_500_000)
    udp = {"end": {"sum": {"packets": 10_500, "lost_packets": 500, "seconds": 2.0,
                           "bits_per_second": 1.0}}}
    assert report.udp_received_pps(udp) == 5000.0


def test_per_gigabyte() -> None:
    assert report.per_gigabyte(3.0, 1_500_000_000) == pytest.approx(2.0)
    assert report.per_gigabyte(1.0, 0) is None


# ---- statistics and report -----------------------------------------------------------------------


def test_median_ignores_missing_rounds() -> None:
    assert report.median([3.0, None, 1.0, 2.0]) == 2.0
    assert report.median([None, None]) is None
    assert report.median([1.0, 4.0]) == 2.5


A, B = "wggo-20250522", "wggo-20220316"
LABELS = {A: "wireguard-go v0.0.20250522", B: "wireguard-go v0.0.20220316"}
ORDER = ["veth", "wgpy", A, B, "wgpy-vxlan", "kvxlan"]
SAMPLES: dict[str, dict[str, list[float | None]]] = {
    "veth": {"tcp1_gbps": [10.0, 9.0, 11.0], "ping_median_ms": [0.05, 0.05, 0.05],
             "cpu_tunnel_s_per_gb": [None, None, None]},
    "wgpy": {"tcp1_gbps": [1.0, 2.0, 1.5], "ping_median_ms": [0.4, 0.3, 0.5],
             "cpu_tunnel_s_per_gb": [3.0, 2.0, 4.0]},
    A: {"tcp1_gbps": [0.7, 0.75, 0.8], "ping_median_ms": [0.45], "cpu_tunnel_s_per_gb": [5.0]},
    B: {"tcp1_gbps": [0.3, 0.35, 0.4], "ping_median_ms": [0.5, 0.5, 0.5],
        "cpu_tunnel_s_per_gb": [10.0]},
    "wgpy-vxlan": {"tcp1_gbps": [0.1, None, 0.2], "tcp4_gbps": [3.0], "ping_median_ms": [0.3]},
    "kvxlan": {"tcp1_gbps": [5.0, 5.0, 6.0], "tcp4_gbps": [5.0]},
}


def test_summarize_and_ratios() -> None:
    summary = report.summarize(SAMPLES)
    assert summary["veth"] == {"tcp1_gbps": 10.0, "ping_median_ms": 0.05}
    assert summary["wgpy-vxlan"]["tcp1_gbps"] == pytest.approx(0.15)
    assert report.ratio(summary, "tcp1_gbps", "wgpy", B) == pytest.approx(1.5 / 0.35)
    assert report.ratio(summary, "tcp1_gbps", "wgpy", A) == pytest.approx(2.0)
    assert report.ratio(summary, "udp64_kpps", "wgpy", A) is None
    assert report.ratio(summary, "tcp1_gbps", "wgpy", "absent") is None
    assert report.ratio({"a": {"m": 1.0}, "b": {"m": 0.0}}, "m", "a", "b") is None


def test_references_pair_wgpy_with_each_wireguard_go() -> None:
    assert report.references(ORDER) == [("wgpy", A), ("wgpy", B), ("wgpy-vxlan", "kvxlan")]
    assert report.references(["wgpy", "wggo", "kvxlan"]) == [("wgpy", "wggo")]
    assert report.references([A, "wgpy-vxlan"]) == []


def test_targets_of_issue_17_against_each_wireguard_go() -> None:
    summary = report.summarize(SAMPLES)
    got = [(t["metric"], t["contender"], t["reference"], round(t["ratio"], 3), t["met"])
           for t in report.evaluate_targets(summary, LABELS) if t["issue"] == 17]
    assert got == [
        ("tcp1_gbps", "wgpy", A, 2.0, True), ("tcp1_gbps", "wgpy", B, 4.286, True),
        ("cpu_tunnel_s_per_gb", "wgpy", A, 0.6, False), ("cpu_tunnel_s_per_gb", "wgpy", B, 0.3, True),
        ("ping_median_ms", "wgpy", A, 0.889, False), ("ping_median_ms", "wgpy", B, 0.8, True),
        ("tcp1_gbps", "wgpy-vxlan", "kvxlan", 0.03, False),
        ("tcp4_gbps", "wgpy-vxlan", "kvxlan", 0.6, True),
        ("ping_median_ms", "wgpy-vxlan", "wgpy", 0.75, True)]
    texts = [t["text"] for t in report.evaluate_targets(summary, LABELS) if t["issue"] == 17]
    assert texts[0] == "wg-py WireGuard >= 2x wireguard-go v0.0.20250522, TCP 1 stream"
    assert texts[3] == "wg-py WireGuard tunnel CPU per GB <= 0.5x wireguard-go v0.0.20220316"
    assert texts[-1] == "ping RTT through wg-py VXLAN <= through wg-py WireGuard"
    summary["wgpy-vxlan"]["ping_median_ms"] = 0.41
    assert [t for t in report.evaluate_targets(summary) if t["issue"] == 17][-1]["met"] is False
    # no wireguard-go measured: its targets are there once each, not measured
    rest = {k: v for k, v in summary.items() if not report.is_wireguard_go(k)}
    unmeasured = [t for t in report.evaluate_targets(rest) if t["reference"] == "wggo"]
    assert [(t["metric"], t["met"]) for t in unmeasured] == [
        ("tcp1_gbps", None), ("cpu_tunnel_s_per_gb", None), ("ping_median_ms", None)]
    assert unmeasured[0]["text"] == "wg-py WireGuard >= 2x wireguard-go, TCP 1 stream"


def test_render_table_names_the_versions_and_gives_ratios_against_each() -> None:
    summary = report.summarize(SAMPLES)
    text = report.render_table(summary, ORDER, labels=LABELS)
    lines = text.splitlines()
    assert lines[0] == ("compared: veth = raw veth, wgpy = wg-py WireGuard, "
                        f"{A} = wireguard-go v0.0.20250522, {B} = wireguard-go v0.0.20220316, "
                        "wgpy-vxlan = wg-py VXLAN, kvxlan = kernel vxlan")
    head = lines[2].split()
    assert head[:2] == ["metric", "unit"]
    assert head[-3:] == [f"wgpy/{A}", f"wgpy/{B}", "wgpy-vxlan/kvxlan"]
    tcp = next(line for line in lines if line.startswith("TCP 1 stream"))
    assert tcp.split()[-3:] == ["2x", "4.29x", "0.03x"]
    assert "UDP 64 B" not in text  # no contender measured it
    assert "ratio to raw veth" in text
    assert ("target: wg-py WireGuard >= 2x wireguard-go v0.0.20250522, TCP 1 stream: 2x -> met"
            in lines)
    assert ("target: ping RTT through wg-py WireGuard <= 0.8x wireguard-go v0.0.20250522: "
            "0.889x -> NOT MET") in lines
    assert "target: wg-py VXLAN >= 0.6x kernel vxlan, TCP 1 stream: 0.03x -> NOT MET" in lines
    assert "target: wg-py VXLAN >= 0.5x kernel vxlan, TCP 4 streams: 0.6x -> met" in lines
    # a subset: no reference columns it cannot fill, targets not measured
    subset = {k: v for k, v in summary.items() if k in ("wgpy", "kvxlan")}
    sub = report.render_table(subset, ["wgpy", "kvxlan"])
    assert "/" not in sub.splitlines()[2] and "not measured" in sub


# ---- chart (matplotlib) --------------------------------------------------------------------------


def test_chart_has_a_bar_value_and_ratios_per_contender() -> None:
    summary = report.summarize(SAMPLES)
    figure = benchchart.figure(summary, ORDER, "t", 100, LABELS)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    measured = [k for k in report.CHART_METRICS if any(k in summary.get(c, {}) for c in ORDER)]
    assert [ax.get_title() for ax in panels] == [report.METRIC[k].label for k in measured]
    tcp = panels[measured.index("tcp1_gbps")]
    heights = [bar.get_height() for bar in tcp.patches]
    assert heights == [summary[c].get("tcp1_gbps", 0.0) for c in ORDER]
    texts = [t.get_text() for t in tcp.texts]
    assert "1.5" in texts and "0.35" in texts and "0.75" in texts  # the values on the bars
    assert "2.00x vs 20250522\n4.29x vs 20220316" in texts  # wg-py against each wireguard-go
    assert "0.03x vs kvxlan" in texts
    ping = panels[measured.index("ping_median_ms")]
    assert "0.89x vs 20250522\n0.80x vs 20220316" in [t.get_text() for t in ping.texts]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["raw veth", "wg-py WireGuard", "wireguard-go v0.0.20250522",
                      "wireguard-go v0.0.20220316", "wg-py VXLAN", "kernel vxlan"]


def test_ratio_labels_need_the_reference() -> None:
    summary = report.summarize(SAMPLES)
    assert benchchart.ratio_labels(summary, "tcp1_gbps", ["wgpy", B]) == {"wgpy": "4.29x vs 20220316"}
    assert benchchart.ratio_labels(summary, "tcp1_gbps", ["wgpy", "veth"]) == {}
    assert benchchart.ratio_labels(summary, "udp64_kpps", ["wgpy", A]) == {}


def test_chart_png_shows_the_contender_colors() -> None:
    import io

    import matplotlib.image

    contenders = ["wgpy", A, B, "kvxlan"]
    data = benchchart.chart(report.summarize(SAMPLES), contenders)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = matplotlib.image.imread(io.BytesIO(data), format="png")
    colors = {tuple(int(round(255 * c)) for c in px[:3]) for row in pixels[::3] for px in row[::3]}
    wanted = benchchart.colors(contenders)
    assert len(set(wanted)) == 4  # the two wireguard-go get distinct colors
    for hexcolor in wanted:
        assert tuple(int(hexcolor[i:i + 2], 16) for i in (1, 3, 5)) in colors


def test_write_results_json_and_png(tmp_path: Path) -> None:
    summary = report.summarize(SAMPLES)
    doc = {"summary": summary, "order": ["wgpy", A], "samples": SAMPLES, "labels": LABELS}
    opts = bench.Options(json_path=tmp_path / "out" / "r.json")
    written = bench.write_results(doc, opts)
    assert written == [tmp_path / "out" / "r.json", tmp_path / "out" / "r.png"]
    assert json.loads(written[0].read_text())["summary"]["wgpy"]["tcp1_gbps"] == 1.5
    assert written[1].read_bytes().startswith(b"\x89PNG")
    opts.chart = False
    assert bench.write_results(doc, opts) == [tmp_path / "out" / "r.json"]


# ---- the real thing, tiny ------------------------------------------------------------------------

_MISSING = missing_requirements(("ip", "wg", "ping", "ss", "iperf3"))


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
def test_smoke_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """veth, wg-py and Debian's wireguard-go (the default contender), one round of one second
    each, 20 peers: about 30 s."""
    out = tmp_path / "bench.json"
    code = bench.main(["--quick", "--only", "veth,wgpy,wggo", "--peers", "20", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = json.loads(out.read_text())
    version = subprocess.run(["wireguard-go", "--version"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[0]
    key = report.wireguard_go_key(version)
    assert doc["order"] == ["veth", "wgpy", key]
    assert doc["labels"][key] == version and doc["contenders"][key]["label"] == version
    assert f"{key} = {version}" in printed  # the report names the version it compared
    for name in ("veth", "wgpy", key):
        assert doc["summary"][name]["tcp1_gbps"] > 0
        assert doc["summary"][name]["ping_median_ms"] > 0
    assert doc["summary"]["wgpy"]["rss_peers_mib"] > 0
    assert doc["summary"][key]["rss_peers_mib"] > 0
    assert doc["contenders"]["wgpy"]["mtu"] == bench.WG_MTU
    assert set(doc["ratios"]) >= {f"wgpy/{key}", "wgpy/veth"}
    assert f"[1/1] {key} tcp x1" in printed and "target:" in printed
    assert "load average before/after:" in printed and doc["host"]["loadavg_before"]
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    timeout=10).stdout
    assert f"wgb{os.getpid() % 100000}" not in leftover


def test_timeseries_chart_plots_each_process_and_pair_over_time() -> None:
    """The soak chart: RSS per process, throughput per pair, fds and threads, against minutes;
    a process that is gone (None) leaves a gap instead of a zero."""
    samples = [
        {"t_s": 0.0, "proc": {"wg-a": {"rss_mib": 30.0, "fds": 18.0, "threads": 1.0}, "vx-a": None},
         "gbps": {"wg": 1.0}},
        {"t_s": 60.0, "proc": {"wg-a": {"rss_mib": 31.0, "fds": 18.0, "threads": 2.0},
                               "vx-a": {"rss_mib": 20.0, "fds": 32.0, "threads": 1.0}},
         "gbps": {"wg": 2.0, "vx": 3.0}},
    ]
    figure = benchchart.timeseries_figure(samples, "soak")
    rss, gbps, counts = figure.axes[:3]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in rss.lines}
    assert lines == {"vx-a": ([1.0], [20.0]), "wg-a": ([0.0, 1.0], [30.0, 31.0])}
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in gbps.lines}
    assert lines == {"vx": ([1.0], [3.0]), "wg": ([0.0, 1.0], [1.0, 2.0])}
    labels = {line.get_label(): list(line.get_ydata()) for line in counts.lines}
    assert labels["wg-a threads"] == [1.0, 2.0] and labels["vx-a fds"] == [32.0]
    assert benchchart.timeseries_chart(samples).startswith(b"\x89PNG\r\n\x1a\n")


def test_ping_schedule_interleaves_every_contender_alike() -> None:
    order = bench.ping_schedule(["a", "b", "c"], 200)
    assert order[:6] == [("a", 50), ("b", 50), ("c", 50), ("c", 50), ("b", 50), ("a", 50)]
    for name in "abc":  # each gets all its pings, in the same number of blocks
        assert sum(n for who, n in order if who == name) == 200
        assert sum(1 for who, _ in order if who == name) == bench.PING_BLOCKS
    uneven = bench.ping_schedule(["a", "b"], 10, blocks=4)
    assert [n for who, n in uneven if who == "a"] == [3, 3, 2, 2]
    assert bench.ping_schedule(["a"], 2, blocks=4) == [("a", 1), ("a", 1)]  # no empty block
