"""tunnel.ops without daemons: the show text, top's rows and rates, the rendering."""

from __future__ import annotations

from typing import Any

from tunnel.ops import show, top
from tunnel.ops.status import Snapshot


def wg(name: str, peers: list[tuple[str, int, int]]) -> dict[str, Any]:
    return {"interface": name, "kind": "wireguard", "public_key": "PUB", "listen_port": 51820, "mtu": 1420,
            "drops": {"invalid_mac1": 2}, "rate_window": 5.0, "errors": {},
            "implementation": {"pumps": "cython", "batch_io": "cython", "cipher": "cython", "datapath": "pure"},
            "offloads": {"tun": "csum,tso4,tso6", "tun_gro": True, "udp_gso": True, "udp_gro": False},
            "peers": [{"public_key": key, "endpoint": "192.0.2.1:51820", "allowed_ips": ["10.0.0.2/32"],
                       "latest_handshake": 1000, "handshakes": 1, "initiations_sent": 2, "tx_bytes": tx,
                       "rx_bytes": rx, "tx_rate": 10.0, "rx_rate": 20.0, "persistent_keepalive": 25, "staged": 0}
                      for key, tx, rx in peers]}


def test_show_text() -> None:
    text = show.render(wg("wg0", [("KEY=", 2048, 3 * 1024 * 1024)]), now=1075.0)
    assert "interface: wg0" in text and "peer: KEY=" in text
    assert "latest handshake: 1 minute, 15 seconds ago" in text
    assert "transfer: 3.00 MiB received, 2.00 KiB sent" in text
    assert "rate: 160 bit/s received, 80 bit/s sent (last 5 s)" in text
    assert "drops: invalid_mac1 2" in text and "twins: batch_io cython, cipher cython, datapath pure" in text
    assert "offloads: tun csum,tso4,tso6 +gro; udp gso, no gro" in text
    assert "persistent keepalive: every 25 seconds" in text
    assert show.ago(0, 5.0) == "Never" and show.human_rate(1.25e6) == "10.0 Mbit/s"


def test_top_rates_and_order() -> None:
    sampler = top.Sampler(window=5.0)
    first = Snapshot(wireguard={"wg0": wg("wg0", [("A", 0, 0), ("B", 0, 0)])},
                     vxlan={"vx0": {"remotes": {"10.0.0.2": {"tx_bytes": 0, "rx_bytes": 0}}, "drops": {}}})
    rows = sampler.rows(first, 100.0)
    assert all(r.rx_rate == r.tx_rate == 0 for r in rows) and len(rows) == 3
    second = Snapshot(wireguard={"wg0": wg("wg0", [("A", 100, 100), ("B", 1000, 3000)])},
                      vxlan={"vx0": {"remotes": {"10.0.0.2": {"tx_bytes": 500, "rx_bytes": 0}}, "drops": {}}})
    rows = sampler.rows(second, 102.0)
    assert [(r.kind, r.peer) for r in rows] == [("wireguard", "B"), ("vxlan", "10.0.0.2"), ("wireguard", "A")]
    assert (rows[0].tx_rate, rows[0].rx_rate) == (500.0, 1500.0)
    summary = top.summaries(second)
    assert summary["wg0"]["drops"] == {"invalid_mac1": 2} and summary["vx0"]["kind"] == "vxlan"


def test_top_renders_a_table() -> None:
    from rich.console import Console

    snap = Snapshot(wireguard={"wg0": wg("wg0", [("ABCDEFGHIJKLMNOPQRSTUV=", 1, 2)])})
    rows = top.Sampler().rows(snap, 1.0)
    console = Console(width=200, record=True, force_terminal=False)
    console.print(top.render(snap, rows, 1.0))
    text = console.export_text()
    assert "wg0 (wireguard): drops 2" in text and "ABCDEFGHIJKLMNOP..." in text and "RX RATE" in text
