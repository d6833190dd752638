# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""Prometheus metrics of real daemons in namespaces, scraped by a real Prometheus server.

Each test makes its own namespaces (tunnel.lab.netns.Lab), starts Debian's ``prometheus``
inside one of them with a temporary storage directory and a 1 s scrape interval, and queries
it through its HTTP API from inside that namespace; everything is stopped afterwards. Waits are
bounded; nothing is asserted on timing, only that counters move and rates are positive.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.netns import Lab, netns_factory, requires_root_netns, wait_for, wg_pair  # noqa: F401
from tests.test_wg_quick_netns import Side

pytestmark = [pytest.mark.netns, requires_root_netns]

METRICS_PORT = 9586
PROMETHEUS = "127.0.0.1:9090"
_GET = ("import sys, urllib.request\n"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n")


def http_get(lab: Lab, ns: str, url: str) -> str | None:
    """GET ``url`` from inside ``ns``; the body, or None if it failed."""
    done = lab.run(ns, [sys.executable, "-c", _GET, url], check=False, timeout=15)
    return done.stdout if done.returncode == 0 else None


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def start_prometheus(lab: Lab, ns: str, target: str) -> None:
    """Prometheus in ``ns`` on 127.0.0.1:9090 scraping ``target`` every second (job ``wgpy``)."""
    if shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus package is not installed (make deps installs it)")
    config = lab.path("prometheus.yml")
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: wgpy\n    static_configs:\n      - targets: ['{target}']\n"
    )
    storage = lab.path("prometheus-data")
    storage.mkdir()
    proc = lab.spawn(ns, ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={storage}",
                          f"--web.listen-address={PROMETHEUS}", "--log.level=warn"])
    ready = wait_for(lambda: not proc.alive() or http_get(lab, ns, f"http://{PROMETHEUS}/-/ready") is not None,
                     30.0, 0.5)
    assert ready and proc.alive(), f"prometheus did not start: {proc.output()}"


def query(lab: Lab, ns: str, expr: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API: the result vector (empty on failure)."""
    body = http_get(lab, ns, f"http://{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if body is None:
        return []
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_query(lab: Lab, ns: str, expr: str, timeout: float = 40.0) -> list[dict[str, Any]]:
    found: list[list[dict[str, Any]]] = []

    def check() -> bool:
        result = query(lab, ns, expr)
        if result:
            found.append(result)
        return bool(result)

    assert wait_for(check, timeout, 1.0), f"no result for {expr!r} within {timeout}s"
    return found[-1]


def test_prometheus_scrapes_rates_from_a_wg_py_daemon(netns_factory: Lab) -> None:
    """wg-py (metrics from WGPY_METRICS) <-> wg-py with ping and iperf3 traffic; Prometheus in
    b scrapes a's metrics over the veth and reports positive send/receive rates."""
    lab = netns_factory
    a, b = wg_pair(lab, "wg-py", "wg-py", env_a={"WGPY_METRICS": f"192.168.77.1:{METRICS_PORT}"})
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0)
    start_prometheus(lab, b.ns, f"192.168.77.1:{METRICS_PORT}")
    pinger = lab.spawn(a.ns, ["ping", "-i", "0.2", "-w", "60", "-q", b.inner4])
    try:
        lab.iperf3(b.ns, a.ns, b.inner4, seconds=3.0)
        up = wait_query(lab, b.ns, 'up{job="wgpy"} == 1')
        assert up[0]["metric"]["instance"] == f"192.168.77.1:{METRICS_PORT}"
        sel = f'{{interface="{a.iface}",public_key="{b.public}"}}'
        for name in ("wireguard_sent_bytes_total", "wireguard_received_bytes_total"):
            result = wait_query(lab, b.ns, f"rate({name}{sel}[10s]) > 0")
            assert float(result[0]["value"][1]) > 0
        handshake = wait_query(lab, b.ns, f"wireguard_latest_handshake_seconds{sel} > 0")
        assert float(handshake[0]["value"][1]) > 1.6e9  # a Unix time
        assert wait_query(lab, b.ns, f'wireguard_handshakes_total{sel} >= 1')
        assert wait_query(lab, b.ns, f'wireguard_drops_total{{interface="{a.iface}",reason="invalid_mac1"}}')
        assert wait_query(lab, b.ns, 'process_resident_memory_bytes{job="wgpy"} > 0')
    finally:
        pinger.stop()
    # The daemon's own counters, scraped directly, agree with wg show (same daemon, same moment
    # is impossible across two calls, so: the scrape is at least what wg showed before it).
    rx, tx = a.transfer_of(b)
    text = http_get(lab, a.ns, f"http://192.168.77.1:{METRICS_PORT}/metrics")
    assert text is not None
    got = samples(text)
    labels = frozenset({("interface", a.iface), ("public_key", b.public)})
    assert got[("wireguard_sent_bytes_total", labels)] >= tx > 0
    assert got[("wireguard_received_bytes_total", labels)] >= rx > 0


def test_metrics_through_wg_quick(netns_factory: Lab) -> None:
    """wg-quick starts the daemon with the interface name alone: WGPY_METRICS still reaches it."""
    side = Side(netns_factory, "wireguard-go")
    side.write()
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wg-py", "WGPY_METRICS": f"127.0.0.1:{METRICS_PORT}"}
    rc, out = side.run("wg-quick", "up", str(side.path), env=env)
    assert rc == 0, out
    try:
        assert netns_factory.wait_ping(side.ns, "10.9.0.2", timeout=15), out
        text = http_get(netns_factory, side.ns, f"http://127.0.0.1:{METRICS_PORT}/metrics")
        assert text is not None
        got = samples(text)
        labels = frozenset({("interface", side.iface), ("public_key", side.peer.public)})
        assert got[("wireguard_sent_bytes_total", labels)] > 0
        assert got[("wireguard_latest_handshake_seconds", labels)] > 1.6e9
    finally:
        side.run("wg-quick", "down", str(side.path), env=env)


def test_busy_metrics_port_fails_the_start(netns_factory: Lab) -> None:
    """The port is bound before the daemon detaches: a busy port is an error wg-py reports."""
    from tests.netns import implementation

    program = implementation("wg-py")
    lab = netns_factory
    ns = lab.namespace("m")
    holder = lab.spawn(ns, [sys.executable, "-c", "import socket, time\n"
                            "s = socket.socket(); s.bind(('127.0.0.1', 9586)); s.listen(); time.sleep(60)"])
    assert wait_for(lambda: ":9586 " in lab.run(ns, ["ss", "-Hltn"]).stdout, 10.0)
    name = lab.interface_name()
    done = lab.run(ns, [*program, "--metrics", "127.0.0.1:9586", name], check=False)
    holder.stop()
    assert done.returncode == 1
    assert "cannot serve metrics on 127.0.0.1:9586" in done.stdout + done.stderr
    assert not lab.link_exists(ns, name)
    # The same command on a free port: the detached daemon serves its (peerless) interface.
    lab.run(ns, [*program, "--metrics", "127.0.0.1:9587", name])
    text = http_get(lab, ns, "http://127.0.0.1:9587/metrics")
    assert text is not None
    assert samples(text)[("wireguard_peers", frozenset({("interface", name)}))] == 0


def test_vxlan_endpoint_metrics_per_remote(netns_factory: Lab) -> None:
    """wg-py vxlan (--metrics) against a kernel vxlan device: per-remote frames and bytes, FDB
    learning and drops in a scrape, and a positive rate in Prometheus."""
    from tests.test_vxlan_netns import kernel_vxlan, underlay_pair, wgpy_vxlan

    lab = netns_factory
    a, b = underlay_pair(lab, "10.99.9.1/24", "10.99.9.2/24")
    kernel_vxlan(lab, a, "id 42 dstport 4789 remote 10.99.9.2 local 10.99.9.1 dev eth0", "192.168.8.101/24")
    wgpy_vxlan(lab, b, "id 42 dstport 4789 remote 10.99.9.1 local 10.99.9.2 dev eth0 "
               f"--metrics 127.0.0.1:{METRICS_PORT}",
               "192.168.8.102/24")
    assert lab.wait_ping(b, "192.168.8.101", timeout=10.0)
    start_prometheus(lab, b, f"127.0.0.1:{METRICS_PORT}")
    pinger = lab.spawn(b, ["ping", "-i", "0.2", "-w", "60", "-q", "192.168.8.101"])
    try:
        expr = 'rate(vxlan_received_frames_total{interface="vxlan0",remote="10.99.9.1"}[10s]) > 0'
        result = wait_query(lab, b, expr)
        assert float(result[0]["value"][1]) > 0
    finally:
        pinger.stop()
    text = http_get(lab, b, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    assert text is not None
    got = samples(text)
    remote = frozenset({("interface", "vxlan0"), ("remote", "10.99.9.1")})
    assert got[("vxlan_received_frames_total", remote)] >= 3
    assert got[("vxlan_sent_frames_total", remote)] >= 3
    assert got[("vxlan_received_bytes_total", remote)] > got[("vxlan_received_frames_total", remote)] * 14
    iface = frozenset({("interface", "vxlan0")})
    assert got[("vxlan_fdb_learned_total", iface)] >= 1  # the kernel's MAC, learned from traffic
    assert got[("vxlan_fdb_entries", iface)] >= 2  # the flood entry and the learned MAC
