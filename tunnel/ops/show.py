"""``wg-py show [IFACE] [--json]``: ``wg show``'s view of wg-py interfaces plus what ``wg``
cannot show: per-peer rates over the last seconds (kept by the daemon), handshakes, drops by
reason, the batch I/O and offloads in use, and whether the native or the pure twins run.

Without IFACE every wg-py WireGuard interface is shown (sockets of other implementations are
skipped); ``--json`` prints the daemons' ``stats=1`` answers as one JSON object keyed by name.
Exit status 1 with a message when a named interface cannot be read.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tunnel.ops.status import StatusError, collect, wireguard_stats
from tunnel.runtime.report import runtime_line

USAGE = "usage: wg-py show [INTERFACE] [--json]\n"


def human_bytes(n: float) -> str:
    """``wg show``'s units: B, KiB, MiB, GiB, TiB with two decimals."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_rate(bytes_per_second: float) -> str:
    """Bits per second, as link rates are read: bit/s, kbit/s, Mbit/s, Gbit/s."""
    bits = bytes_per_second * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s"):
        if bits < 1000:
            return f"{bits:.0f} {unit}" if unit == "bit/s" else f"{bits:.1f} {unit}"
        bits /= 1000
    return f"{bits:.2f} Gbit/s"


def ago(unix: float, now: float) -> str:
    """``wg show``'s "latest handshake" text (``Never`` for 0)."""
    if not unix:
        return "Never"
    seconds = max(0, int(now - unix))
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return (", ".join(parts) or "Now") + (" ago" if parts else "")


def render(stats: Mapping[str, Any], now: float | None = None) -> str:
    """The text view of one interface's stats."""
    now = time.time() if now is None else now
    impl = stats.get("implementation", {})
    off = stats.get("offloads", {})
    lines = [
        f"interface: {stats['interface']}",
        f"  public key: {stats.get('public_key') or '(none)'}",
        "  private key: (hidden)",
        f"  listening port: {stats.get('listen_port', 0)}",
    ]
    if stats.get("fwmark"):
        lines.append(f"  fwmark: {stats['fwmark']:#x}")
    lines += [
        f"  mtu: {stats.get('mtu')}",
        "  twins: " + ", ".join(f"{k} {v}" for k, v in sorted(impl.items())),
        f"  offloads: tun {off.get('tun')}{' +gro' if off.get('tun_gro') else ''}; "
        f"udp {'gso' if off.get('udp_gso') else 'no gso'}, {'gro' if off.get('udp_gro') else 'no gro'}",
        "  drops: " + (", ".join(f"{k} {v}" for k, v in sorted(stats.get("drops", {}).items())) or "none"),
    ]
    runtime = runtime_line(stats.get("gc"), stats.get("sched"))  # WGPY_GC, WGPY_SLICE (tunnel/runtime)
    if runtime:
        lines.append(f"  {runtime}")
    workers = stats.get("workers") or []
    if len(workers) > 1:  # WGPY_WORKERS / --workers N (tunnel/wireguard/workers.py)
        lines.append("  workers: " + ", ".join(
            f"#{w['worker']} tx {w['tx_lane_batches']} rx {w['rx_lane_batches']} batches"
            f" handed over {w['handed_over']}" for w in workers))
    if stats.get("cookie_replies_sent"):
        lines.append(f"  cookie replies sent: {stats['cookie_replies_sent']}")
    if stats.get("errors"):
        lines.append("  i/o errors: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["errors"].items())))
    window = stats.get("rate_window", 0)
    peers = sorted(stats.get("peers", []), key=lambda p: -(p["rx_rate"] + p["tx_rate"]))
    for peer in peers:
        lines += ["", f"peer: {peer['public_key']}"]
        if peer.get("endpoint"):
            lines.append(f"  endpoint: {peer['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(peer['allowed_ips']) or '(none)'}")
        lines.append(f"  latest handshake: {ago(peer['latest_handshake'], now)}")
        lines.append(f"  transfer: {human_bytes(peer['rx_bytes'])} received, {human_bytes(peer['tx_bytes'])} sent")
        lines.append(f"  rate: {human_rate(peer['rx_rate'])} received, {human_rate(peer['tx_rate'])} sent"
                     f" (last {window:g} s)")
        lines.append(f"  handshakes: {peer['handshakes']} ({peer['initiations_sent']} initiations sent)")
        if peer.get("persistent_keepalive"):
            lines.append(f"  persistent keepalive: every {peer['persistent_keepalive']} seconds")
    return "\n".join(lines) + "\n"


def main(args: Sequence[str]) -> int:
    words = [a for a in args if a != "--json"]
    as_json = len(words) != len(args)
    if len(words) > 1 or any(w.startswith("-") for w in words):
        sys.stderr.write(USAGE)
        return 1
    if words:
        try:
            found = {words[0]: wireguard_stats(words[0])}
        except StatusError as exc:
            print(f"wg-py show: {exc}", file=sys.stderr)
            return 1
    else:
        found = collect().wireguard
    if as_json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    print("\n".join(render(stats) for _, stats in sorted(found.items())), end="")
    return 0
