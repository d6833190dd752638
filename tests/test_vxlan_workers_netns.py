"""The VXLAN daemon's pumps and ``workers N`` against the kernel's vxlan, in namespaces.

With ``workers 1`` the pumps run on the event loop; with ``workers 2`` the TAP is multi-queue
and two threads each run a pump pair on their own queue and their own socket of an
SO_REUSEPORT group (tunnel/vxlan/workers.py). Each test: ping both ways, iperf3 TCP with many
streams both ways (default offloads), learning (the kernel's MAC in our FDB, ours in the
kernel's), and ``show``: the per-data-path tallies add up to the engine's counters, the pumps
carried traffic (not only the general way), and with two workers both carried some (16 TCP
flows each way: the chance that the flow hashes put all 16 on one worker is 2**-15).
The suite runs this once per twin (``WGPY_PURE=1`` for the pure pumps).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tunnel.lab.netns import Lab, missing_requirements, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

_missing = missing_requirements(("ip", "ping", "iperf3", "bridge"))
if _missing:
    pytestmark.append(pytest.mark.skip(reason=_missing))

K_ADDR, W_ADDR = "192.168.9.1", "192.168.9.2"
PURE = os.environ.get("WGPY_PURE") == "1"


@pytest.fixture
def lab() -> Iterator[Lab]:
    instance = Lab(f"vw{os.getpid() % 10000}")
    try:
        yield instance
    finally:
        instance.close()


def wgpy(lab: Lab, ns: str, *args: str) -> str:
    done = lab.run(ns, ["wg-py", "vxlan", *args], check=False, timeout=30,
                   env={"WGPY_VXLAN_RUN_DIR": str(lab.path("run"))})
    assert done.returncode == 0, done.stderr
    return done.stdout


def show(lab: Lab, ns: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(wgpy(lab, ns, "show", "vxlan0", "--json"))
    return out


def setup(lab: Lab, workers: int) -> tuple[str, str]:
    k, w = lab.namespace("k"), lab.namespace("w")
    lab.veth(k, w, ["10.98.0.1/24"], ["10.98.0.2/24"])  # veth0 / veth1
    lab.run(k, ["ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dstport", "4789",
                "remote", "10.98.0.2", "local", "10.98.0.1", "dev", "veth0"])
    lab.run(k, ["ip", "addr", "add", f"{K_ADDR}/24", "dev", "vxlan0"])
    lab.run(k, ["ip", "link", "set", "vxlan0", "up"])
    wgpy(lab, w, "add", "vxlan0", "id", "42", "dstport", "4789", "remote", "10.98.0.1",
         "local", "10.98.0.2", "dev", "veth1", "workers", str(workers))
    lab.run(w, ["ip", "addr", "add", f"{W_ADDR}/24", "dev", "vxlan0"])
    lab.run(w, ["ip", "link", "set", "vxlan0", "up"])
    return k, w


def settled_show(lab: Lab, ns: str) -> dict[str, Any]:
    """``show`` once two reads in a row agree (journals are applied within milliseconds)."""
    last: dict[str, Any] = {}

    def same() -> bool:
        nonlocal last
        info = show(lab, ns)
        stable = bool(last) and info["stats"] == last["stats"] and info["workers"] == last["workers"]
        last = info
        return stable

    assert wait_for(same, 10.0, interval=0.3)
    return last


@pytest.mark.parametrize("workers", [1, 2])
def test_kernel_peer_with_workers(lab: Lab, workers: int) -> None:
    k, w = setup(lab, workers)
    info = show(lab, w)
    assert info["config"]["workers"] == workers
    assert info["pump"] == ("pure" if PURE else "cython")
    assert len(info["workers"]) == workers
    if workers > 1:
        tids = info["worker_tids"]
        assert len(set(tids)) == workers and all(tids), tids
        queues = lab.run(w, ["ls", "/sys/class/net/vxlan0/queues"]).stdout.split()
        assert sum(q.startswith("rx-") for q in queues) == workers, queues
    assert lab.wait_ping(w, K_ADDR, timeout=10.0)
    assert lab.ping(w, K_ADDR, count=5) is not None
    assert lab.ping(k, W_ADDR, count=5) is not None
    # learning, both ways
    kernel_mac = lab.run(k, ["cat", "/sys/class/net/vxlan0/address"]).stdout.strip()
    assert f"{kernel_mac} dst 10.98.0.1 self" in wgpy(lab, w, "fdb", "show", "vxlan0")
    kernel_fdb = lab.run(k, ["bridge", "fdb", "show", "dev", "vxlan0"]).stdout
    assert f"{info['own_mac']} dst 10.98.0.2" in kernel_fdb
    # many TCP flows each way
    for reverse in (False, True):
        result = lab.iperf3(k, w, K_ADDR, seconds=2.0, reverse=reverse, extra=["-P", "16"])
        assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]
    time.sleep(0.2)
    info = settled_show(lab, w)
    stats, paths = info["stats"], info["workers"]
    assert stats["rx_packets"] > 1000 and stats["tx_packets"] > 1000, stats
    assert sum(p["rx_frames"] for p in paths) == stats["rx_packets"], (paths, stats)
    assert sum(p["tx_frames"] for p in paths) == stats["tx_packets"], (paths, stats)
    assert sum(p["pump_rx"] for p in paths) > 0 and sum(p["pump_tx"] for p in paths) > 0, paths
    if workers > 1:
        assert all(p["rx_frames"] > 0 and p["tx_frames"] > 0 for p in paths), paths
    drops = {k: v for k, v in info["drops"].items() if v}
    assert not {"rx_exception", "tx_exception", "tx_error"} & set(drops), drops
    # the daemon stops cleanly (worker threads joined, device gone)
    wgpy(lab, w, "del", "vxlan0")
    assert wait_for(lambda: lab.run(w, ["ip", "link", "show", "vxlan0"], check=False,
                                    timeout=5).returncode != 0, 10.0)


def test_multicast_group_with_two_workers_delivers_once(lab: Lab) -> None:
    """``group`` with ``workers 2``: only worker 0's socket joins, and the other socket of the
    SO_REUSEPORT group must not get the group's datagrams too (IP_MULTICAST_ALL would give it
    every group the host joined): a broadcast ping from the kernel side crosses as multicast
    and is answered exactly once per request (no "DUP!"), and unicast works both ways."""
    br = lab.namespace("br")
    lab.run(br, ["ip", "link", "add", "br0", "type", "bridge"])
    lab.run(br, ["ip", "link", "set", "br0", "up"])
    k, w = lab.namespace("k"), lab.namespace("w")
    for i, ns in enumerate((k, w), 1):
        lab.veth(ns, br, [f"10.97.0.{i}/24"], [], names=(f"eth{i}", f"p{i}"))
        lab.run(br, ["ip", "link", "set", f"p{i}", "master", "br0"])
    lab.run(k, ["ip", "link", "add", "vxlan0", "type", "vxlan", "id", "42", "dstport", "4789",
                "group", "239.1.1.7", "dev", "eth1"])
    lab.run(k, ["ip", "addr", "add", f"{K_ADDR}/24", "dev", "vxlan0"])
    lab.run(k, ["ip", "link", "set", "vxlan0", "up"])
    wgpy(lab, w, "add", "vxlan0", "id", "42", "dstport", "4789", "group", "239.1.1.7",
         "dev", "eth2", "workers", "2")
    lab.run(w, ["ip", "addr", "add", f"{W_ADDR}/24", "dev", "vxlan0"])
    lab.run(w, ["ip", "link", "set", "vxlan0", "up"])
    lab.run(w, ["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
    assert lab.wait_ping(k, W_ADDR, timeout=15.0)
    assert lab.ping(w, K_ADDR, count=3) is not None
    done = lab.run(k, ["ping", "-n", "-b", "-c", "10", "-i", "0.1", "-W", "1", "-w", "10",
                       "192.168.9.255"], check=False, timeout=20)
    replies = [line for line in done.stdout.splitlines() if "bytes from" in line]
    assert len(replies) == 10, done.stdout
    assert "DUP!" not in done.stdout, done.stdout
    assert all(W_ADDR in line for line in replies), done.stdout
    info = show(lab, w)
    assert len(info["workers"]) == 2
