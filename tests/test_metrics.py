"""Prometheus metrics (tunnel.metrics) against the engines' known counters, parsed back with
prometheus-client's own parser; the stats they are built from (tunnel.wireguard.stats); the
collector that reads them on the event loop; the UAPI ``stats=1`` extension."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from crypto import keys
from tunnel.metrics import LoopCollector, MetricsError, MetricsServer, address_option, open_server, parse_address
from tunnel.metrics import vxlan as vxlan_metrics
from tunnel.metrics import wireguard as wg_metrics
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.counters import OTHER, RemoteCounters
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.header import VXLAN_HLEN
from tunnel.wireguard import daemon
from tunnel.wireguard import pump as pump_pair
from tunnel.wireguard.messages import Drop
from tunnel.wireguard.stats import RateMeter, device_stats
from tunnel.wireguard.uapi import EINVAL
from tunnel.wireguard.uapi_session import UapiSession

from .shellfakes import FakeLoop, make_interface, make_pair
from .wgpair import Pair, ipv4_packet


class _Static(Collector):
    def __init__(self, metrics: Iterable[Any]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterable[Any]:
        return self.metrics


def scrape(metrics: Iterable[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Render metric families as the exposition text, parse it back: {(sample, labels): value}."""
    registry = CollectorRegistry()
    registry.register(_Static(metrics))
    text = generate_latest(registry).decode()
    return parsed(text)


def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def wg_stats(pair: Pair, name: str = "wgt0") -> dict[str, Any]:
    stats = device_stats(pair.a.device, {})
    stats.update({"interface": name, "kind": "wireguard", "implementation": {"pumps": "pure"},
                  "offloads": {"tun": "csum"}, "errors": {"udp:EPERM": 2}})
    return stats


# ------------------------------------------------------------------------------- WireGuard


def test_wireguard_exposition_matches_the_engine_counters() -> None:
    pair = Pair()
    pair.handshake()
    for _ in range(3):
        pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2", b"z" * 100))
    # Hostile input: a datagram of an unknown type and a short transport message, each dropped.
    pair.deliver(pair.a, [b"\x09" + bytes(40), b"\x04" + bytes(20)], pair.b.endpoint)
    peer = pair.peer_ab
    assert peer.tx_bytes > 0 and peer.rx_bytes > 0 and peer.handshakes == 1 and peer.initiations_sent == 1
    samples = scrape(wg_metrics.families(wg_stats(pair)))
    labels = (("interface", "wgt0"), ("public_key", keys.to_base64(peer.public_key)))
    assert samples[("wireguard_sent_bytes_total", labels)] == peer.tx_bytes
    assert samples[("wireguard_received_bytes_total", labels)] == peer.rx_bytes
    assert samples[("wireguard_latest_handshake_seconds", labels)] == int(peer.last_handshake_wall or -1)
    assert samples[("wireguard_handshakes_total", labels)] == 1
    assert samples[("wireguard_handshake_initiations_sent_total", labels)] == 1
    assert samples[("wireguard_peers", (("interface", "wgt0"),))] == 1
    drops = {dict(k[1])["reason"]: v for k, v in samples.items() if k[0] == "wireguard_drops_total"}
    assert drops[Drop.INVALID_TYPE] == 1 and drops[Drop.INVALID_SIZE] == 1
    assert drops == {reason: pair.a.device.drops.get(reason, 0) for reason in drops}
    assert set(drops) >= set(wg_metrics.DROP_REASONS)  # every reason has a series, zero included
    assert samples[("wireguard_cookie_replies_sent_total", (("interface", "wgt0"),))] == 0
    assert samples[("wgpy_io_errors_total", (("interface", "wgt0"), ("kind", "udp:EPERM")))] == 2
    info = [dict(k[1]) for k in samples if k[0] == "wgpy_interface_info"]
    assert info == [{"interface": "wgt0", "kind": "wireguard", "pumps": "pure", "offload_tun": "csum"}]


def test_cookie_replies_are_counted_under_load() -> None:
    pair = Pair()
    device = pair.b.device
    device.handshake_load.until = float("inf")  # under load from the first handshake message on
    pair.handshake()  # b answers a's initiation with a cookie reply instead of a response
    assert device.drops[Drop.COOKIE_SENT] >= 1
    stats = device_stats(device, {})
    assert stats["cookie_replies_sent"] == device.drops[Drop.COOKIE_SENT]


def test_rate_meter() -> None:
    meter: RateMeter[str] = RateMeter(window=5.0)
    assert meter.rates(10.0, {"p": (100, 50)}) == {"p": (0.0, 0.0)}  # no history yet
    meter.sample(10.0, {"p": (0, 0)})
    meter.sample(11.0, {"p": (1000, 500)})
    assert meter.rates(12.0, {"p": (2000, 1000), "new": (5, 5)}) == {"p": (1000.0, 500.0), "new": (0.0, 0.0)}
    for t in range(12, 30):
        meter.sample(float(t), {"p": (t * 100, 0)})
    # Only the window's history is kept: from t=24 (29 - 5) to 29 at 100 B/s.
    assert meter.rates(29.0, {"p": (2900, 0)}) == {"p": (100.0, 0.0)}
    assert meter.rates(29.0, {"p": (0, 0)}) == {"p": (0.0, 0.0)}  # counters went down: 0, not negative
    with pytest.raises(ValueError):
        RateMeter(window=0)


@pytest.fixture(params=["cython", "pure"])
def pump(request: pytest.FixtureRequest) -> ModuleType:
    return pump_pair.load(request.param)


def test_interface_stats_apply_the_journal_first(pump: ModuleType) -> None:
    """Bytes a pump sent and journaled are in the stats (and so in a scrape) at once."""
    pair = make_pair()
    interface, tun, bind = make_interface(pair.a.device, pump, FakeLoop())
    peer = pair.peer_ab
    before = peer.tx_bytes
    tun.inbox.append(ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 200))
    interface._outbound.on_readable()
    assert len(interface._journal.records) == 1 and peer.tx_bytes == before  # not applied yet
    stats = interface.stats()
    assert interface._journal.records == []
    sent = sum(len(d) for d, _ in bind.sent)
    (shown,) = stats["peers"]
    assert shown["tx_bytes"] == before + sent == peer.tx_bytes
    assert stats["implementation"]["pumps"] in ("cython", "pure")
    assert stats["offloads"]["tun"] == "csum,tso4,tso6" and stats["offloads"]["udp_gso"] is True
    json.dumps(stats)  # JSON-ready


# ------------------------------------------------------------------------------- VXLAN


def _datagram(vni: int, src_mac: bytes, payload: bytes = b"p" * 50) -> bytearray:
    header = bytes([0x08, 0, 0, 0]) + (vni << 8).to_bytes(4, "big")
    frame = b"\xff" * 6 + src_mac + b"\x08\x00" + payload
    return bytearray(header + frame)


def test_vxlan_exposition_per_remote_and_fdb() -> None:
    engine = VxlanEngine(VxlanConfig(vni=42, name="vx0", ageing=10.0))
    a = _datagram(42, b"\x02\x00\x00\x00\x00\x01")
    b = _datagram(42, b"\x02\x00\x00\x00\x00\x02", b"q" * 80)
    assert engine.receive(a, ("192.0.2.1", 4789), 0.0) is not None
    assert engine.receive(b, ("192.0.2.2", 4789), 0.0) is not None
    assert engine.receive(_datagram(7, b"\x02\x00\x00\x00\x00\x03"), ("192.0.2.3", 4789), 0.0) is None  # wrong VNI
    # A frame to the MAC learned from 192.0.2.1 goes back there.
    frame = bytearray(VXLAN_HLEN) + b"\x02\x00\x00\x00\x00\x01" + b"\x02\xaa\xbb\xcc\xdd\xee" + b"\x08\x00" + b"r" * 60
    assert len(engine.transmit(frame, 1.0, VXLAN_HLEN).datagrams) == 1
    engine.age(20.0)  # both learned entries expire
    stats = engine.stats()
    stats.update({"interface": "vx0", "kind": "vxlan"})
    samples = scrape(vxlan_metrics.families(stats))

    def remote(ip: str) -> tuple[tuple[str, str], ...]:
        return (("interface", "vx0"), ("remote", ip))

    assert samples[("vxlan_received_frames_total", remote("192.0.2.1"))] == 1
    assert samples[("vxlan_received_bytes_total", remote("192.0.2.1"))] == len(a) - VXLAN_HLEN
    assert samples[("vxlan_received_bytes_total", remote("192.0.2.2"))] == len(b) - VXLAN_HLEN
    assert samples[("vxlan_sent_frames_total", remote("192.0.2.1"))] == 1
    assert samples[("vxlan_sent_bytes_total", remote("192.0.2.1"))] == len(frame) - VXLAN_HLEN
    assert ("vxlan_received_frames_total", remote("192.0.2.3")) not in samples
    iface = (("interface", "vx0"),)
    assert samples[("vxlan_fdb_learned_total", iface)] == 2
    assert samples[("vxlan_fdb_aged_total", iface)] == 2
    assert samples[("vxlan_fdb_entries", iface)] == 0
    assert samples[("vxlan_drops_total", (("interface", "vx0"), ("reason", "wrong_vni")))] == 1


def test_remote_counters_are_bounded_and_split_mixed_batches() -> None:
    counters = RemoteCounters(limit=2)
    for i in range(5):
        counters.sent(f"198.51.100.{i}", 1, 10)
    assert set(counters.table) == {"198.51.100.0", "198.51.100.1", OTHER}
    assert counters.table[OTHER][:2] == [3, 30]
    mixed = RemoteCounters()
    verdicts = bytearray([0, 0, 1, 0])
    mixed.received_bufs([20, 30, 40, 50], ["a", "b", "a", "a"], verdicts, 4, 3, 12 + 22 + 42, 8)
    assert mixed.as_dict()["a"]["rx_frames"] == 2 and mixed.as_dict()["a"]["rx_bytes"] == 12 + 42
    assert mixed.as_dict()["b"]["rx_bytes"] == 22


# ------------------------------------------------------------------------------- serving


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9586", ("127.0.0.1", 9586)), (":9586", ("", 9586)), ("[::1]:80", ("::1", 80)),
    ("localhost:1", ("localhost", 1)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9586", "127.0.0.1:", "127.0.0.1:0", "1.2.3.4:65536", "::1:80", "[nope]:1", "a:b"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(MetricsError):
        parse_address(text)


def test_option_wins_over_the_environment() -> None:
    assert address_option(None, {}) is None
    assert address_option(None, {"WGPY_METRICS": "127.0.0.1:1"}) == "127.0.0.1:1"
    assert address_option("127.0.0.1:2", {"WGPY_METRICS": "127.0.0.1:1"}) == "127.0.0.1:2"
    assert open_server(None, {}) is None


def test_busy_port_is_a_clear_error() -> None:
    first = MetricsServer("127.0.0.1", 0)
    try:
        with pytest.raises(MetricsError, match="cannot serve metrics"):
            MetricsServer("127.0.0.1", first.port)
    finally:
        first.close()


def test_daemon_parses_the_metrics_option() -> None:
    options = daemon.parse_args(["--metrics", "127.0.0.1:9586", "wg0", "-f"])
    assert options is not None and options.metrics == "127.0.0.1:9586" and options.foreground
    options = daemon.parse_args(["--metrics=:9", "wg0"])
    assert options is not None and options.metrics == ":9" and options.name == "wg0"
    assert daemon.parse_args(["wg0", "--metrics"]) is None
    options = daemon.parse_args(["wg0"])
    assert options is not None and options.metrics is None


async def test_scrapes_read_the_counters_on_the_loop_thread() -> None:
    """A scrape (from another thread, over HTTP) runs the snapshot on the loop's thread."""
    pair = Pair()
    pair.handshake()
    threads: list[int] = []

    def snapshot() -> dict[str, Any]:
        threads.append(threading.get_ident())
        return wg_stats(pair, "wgloop")

    server = MetricsServer("127.0.0.1", 0)
    server.start(asyncio.get_running_loop(), LoopCollector(snapshot, wg_metrics.families))
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        await asyncio.to_thread(server.close)
    assert threads == [threading.get_ident()]
    samples = parsed(text)
    labels = (("interface", "wgloop"), ("public_key", keys.to_base64(pair.peer_ab.public_key)))
    assert samples[("wireguard_sent_bytes_total", labels)] == pair.peer_ab.tx_bytes
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)  # process metrics


def test_a_stuck_loop_fails_the_scrape_not_the_loop() -> None:
    loop = asyncio.new_event_loop()  # never run: call_soon_threadsafe callbacks never fire
    try:
        collector = LoopCollector(lambda: {"interface": "x"}, wg_metrics.families, timeout=0.2)
        collector.bind(loop)
        collector._loop_thread = None  # as if bound from the loop's own (other) thread
        with pytest.raises(TimeoutError):
            list(collector.collect())
    finally:
        loop.close()


# ------------------------------------------------------------------------------- UAPI stats=1


def test_uapi_stats_request() -> None:
    pair = make_pair()
    interface, _tun, _bind = make_interface(pair.a.device)
    session = UapiSession(interface, stats=interface.stats)
    (reply,) = session.feed(b"stats=1\n\n")
    lines = reply.decode().split("\n")
    assert lines[0].startswith("json=") and lines[1:] == ["errno=0", "", ""]
    stats = json.loads(lines[0][len("json="):])
    assert stats["peers"][0]["public_key"] == keys.to_base64(pair.peer_ab.public_key)
    assert stats["peers"][0]["tx_bytes"] == pair.peer_ab.tx_bytes
    # get still works on the same session after it.
    (get,) = session.feed(b"get=1\n\n")
    assert get.endswith(b"errno=0\n\n") and b"public_key=" in get


def test_uapi_without_stats_refuses_it_as_wireguard_go_does() -> None:
    pair = make_pair()
    interface, _tun, _bind = make_interface(pair.a.device)
    session = UapiSession(interface)
    (reply,) = session.feed(b"stats=1\n\n")
    assert reply == f"errno={-EINVAL}\n\n".encode() and session.closed
