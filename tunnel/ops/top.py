"""``wg-py top [--interval S] [--once] [--json] [--count N]``: a live view of every wg-py
interface on the host, like iftop per peer: WireGuard peers (over the UAPI ``stats=1``
extension) and VXLAN remotes (over the VXLAN control socket), one row each, sorted by rate.

Rates are computed here from successive samples (``interval`` seconds apart, over the last
``window`` seconds), the same way for both kinds. ``--once`` takes two samples one interval
apart and prints once (a table, or with ``--json`` one JSON object for scripts:
``{"interfaces": {name: summary}, "rows": [row, ...]}``). Without it the view refreshes every
interval until Ctrl-C (or ``--count`` refreshes). Drawing is rich's (tables, live refresh).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tunnel.ops.show import ago, human_bytes, human_rate
from tunnel.ops.status import Snapshot, collect
from tunnel.wireguard.stats import RateMeter

Key = tuple[str, str, str]  # (kind, interface, peer or remote)


@dataclass
class Row:
    """One WireGuard peer or VXLAN remote."""

    kind: str  # "wireguard" or "vxlan"
    interface: str
    peer: str  # public key (base64) or remote VTEP address
    endpoint: str
    rx_bytes: int
    tx_bytes: int
    rx_rate: float  # bytes per second
    tx_rate: float
    latest_handshake: int  # Unix time; 0 for never and for VXLAN


class Sampler:
    """Turns snapshots into rows with rates (its own :class:`RateMeter`)."""

    def __init__(self, window: float = 5.0) -> None:
        self.meter: RateMeter[Key] = RateMeter(window)

    def rows(self, snap: Snapshot, now: float) -> list[Row]:
        """The rows of ``snap`` at ``now`` (monotonic), sorted by rate, highest first."""
        rows: list[Row] = []
        for name, stats in snap.wireguard.items():
            for peer in stats.get("peers", []):
                rows.append(Row("wireguard", name, peer["public_key"], peer.get("endpoint") or "",
                                peer["rx_bytes"], peer["tx_bytes"], 0.0, 0.0, peer["latest_handshake"]))
        for name, stats in snap.vxlan.items():
            for remote, counts in stats.get("remotes", {}).items():
                rows.append(Row("vxlan", name, remote, remote, counts["rx_bytes"], counts["tx_bytes"], 0.0, 0.0, 0))
        counters = {(r.kind, r.interface, r.peer): (r.tx_bytes, r.rx_bytes) for r in rows}
        rates = self.meter.rates(now, counters)
        self.meter.sample(now, counters)
        for row in rows:
            row.tx_rate, row.rx_rate = rates[(row.kind, row.interface, row.peer)]
        rows.sort(key=lambda r: (-(r.rx_rate + r.tx_rate), -(r.rx_bytes + r.tx_bytes), r.interface, r.peer))
        return rows


def summaries(snap: Snapshot) -> dict[str, dict[str, Any]]:
    """Per interface: kind, drops by reason, twins and offloads."""
    out: dict[str, dict[str, Any]] = {}
    for kind, table in (("wireguard", snap.wireguard), ("vxlan", snap.vxlan)):
        for name, stats in table.items():
            out[name] = {"kind": kind, "drops": stats.get("drops", {}),
                         "implementation": stats.get("implementation", {}), "offloads": stats.get("offloads", {})}
    return out


def render(snap: Snapshot, rows: list[Row], interval: float) -> Any:
    """A rich renderable: one line per interface, then the table of rows."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    head = Text()
    head.append(f"wg-py top - {time.strftime('%H:%M:%S')} - every {interval:g}s - Ctrl-C quits\n", style="bold")
    for name, info in sorted(summaries(snap).items()):
        drops = sum(info["drops"].values())
        twins = ",".join(f"{k}={v}" for k, v in sorted(info["implementation"].items()) if v)
        head.append(f"{name} ({info['kind']}): drops {drops}  {twins}\n")
    if not snap.wireguard and not snap.vxlan:
        head.append("no wg-py interfaces found\n", style="yellow")
    table = Table(expand=False, header_style="bold")
    for column, justify in (("IFACE", "left"), ("KIND", "left"), ("PEER / REMOTE", "left"), ("ENDPOINT", "left"),
                            ("RX RATE", "right"), ("TX RATE", "right"), ("RX", "right"), ("TX", "right"),
                            ("HANDSHAKE", "right")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        peer = row.peer if row.kind == "vxlan" else row.peer[:16] + "..."
        handshake = ago(row.latest_handshake, now) if row.kind == "wireguard" else "-"
        table.add_row(row.interface, row.kind, peer, row.endpoint, human_rate(row.rx_rate), human_rate(row.tx_rate),
                      human_bytes(row.rx_bytes), human_bytes(row.tx_bytes), handshake)
    return Group(head, table)


def parse_args(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wg-py top", description="Live per-peer view of every wg-py interface.")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds the rates average over (default 5)")
    parser.add_argument("--once", action="store_true", help="sample twice, one interval apart, print once")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON")
    parser.add_argument("--count", type=int, default=0, help="stop after N refreshes (default: never)")
    options = parser.parse_args(list(args))
    if options.interval <= 0 or options.window <= 0:
        parser.error("--interval and --window must be positive")
    if options.json and not options.once:
        parser.error("--json needs --once")
    return options


def main(args: Sequence[str]) -> int:
    options = parse_args(args)
    sampler = Sampler(options.window)
    if options.once:
        sampler.rows(collect(), time.monotonic())
        time.sleep(options.interval)
        snap = collect()
        rows = sampler.rows(snap, time.monotonic())
        if options.json:
            print(json.dumps({"interfaces": summaries(snap), "rows": [asdict(r) for r in rows]}, indent=2))
        else:
            from rich.console import Console

            Console().print(render(snap, rows, options.interval))
        return 0
    from rich.live import Live

    snap = collect()
    rows = sampler.rows(snap, time.monotonic())
    refreshes = 0
    try:
        with Live(render(snap, rows, options.interval), auto_refresh=False, screen=False) as live:
            while not options.count or refreshes < options.count:
                time.sleep(options.interval)
                snap = collect()
                rows = sampler.rows(snap, time.monotonic())
                live.update(render(snap, rows, options.interval), refresh=True)
                refreshes += 1
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
