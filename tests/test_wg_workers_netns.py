"""The WireGuard daemon with ``workers 2`` against the real wireguard-go, in namespaces.

wg-py (``WGPY_WORKERS=2``: a multi-queue TUN, two worker threads each with its own queue and
its own sockets of an SO_REUSEPORT group, tunnel/wireguard/workers.py) in namespace ``a``,
upstream wireguard-go (``../shared/bin/wireguard-go-upstream``, with its offloads; Debian's
``wireguard-go`` if that is missing) in ``b``, configured with the real ``wg``, default offloads.
Checked: the TUN has two queues in sysfs; ping and ping6 both ways; iperf3 -P 4 both ways; the
``wg show`` transfer counters of both ends cover what iperf3 moved; the workers carried the
traffic on their lanes (the per-worker tallies of ``stats=1``); new handshakes while the
workers run, initiated by wg-py (its control thread, from a batch a worker handed over) and by
wireguard-go (the initiation reaches a worker and is handed over), then traffic on the new
sessions.
The suite runs this once per twin (``WGPY_PURE=1`` for the pure pumps and cipher).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from crypto import keys
from tests.netns import (
    Lab,
    Node,
    configure,
    iperf3_bits_per_second,
    peer_section,
    requires_root_netns,
    start_node,
    wait_for,
)
from tests.netns import netns_factory as netns_factory  # noqa: F401 (fixture)
from tunnel.wireguard import quick

pytestmark = [pytest.mark.netns, pytest.mark.slow, requires_root_netns]

UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "bin" / "wireguard-go-upstream"


def _peer_program() -> tuple[str, list[str]]:
    if UPSTREAM.exists():
        return "wireguard-go-upstream", [str(UPSTREAM)]
    if shutil.which("wireguard-go"):
        return "wireguard-go", ["wireguard-go"]
    pytest.skip("no wireguard-go to test against")


def workers_pair(lab: Lab, workers: int = 2) -> tuple[Node, Node]:
    impl, program = _peer_program()
    ns_a, ns_b = lab.namespace("a"), lab.namespace("b")
    lab.veth(ns_a, ns_b, ["192.168.77.1/24", "fd77::1/64"], ["192.168.77.2/24", "fd77::2/64"])
    a = start_node(lab, "wg-py", ns_a, 1, 51821, env={"WGPY_WORKERS": str(workers)})
    b = Node(lab, impl, ns_b, lab.start_daemon(ns_b, program), 2, keys.generate_private(), 51822,
             inner4="10.9.0.2", inner6="fd09::2")
    a.veth, b.veth = "veth0", "veth1"
    configure(a, peer_section(b, f"192.168.77.2:{b.port}"))
    configure(b, peer_section(a, f"192.168.77.1:{a.port}"))
    a.peers.append(b)
    b.peers.append(a)
    return a, b


def stats(node: Node) -> dict[str, Any]:
    """wg-py's ``stats=1`` answer (journals applied first)."""
    lines, code = quick.uapi_call(node.iface, "stats=1\n\n")
    assert code == 0
    data: dict[str, Any] = json.loads(next(line for line in lines if line.startswith("json="))[5:])
    return data


def ping(src: Node, dst: str, count: int = 3) -> None:
    src.lab.run(src.ns, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", dst], timeout=30)


def iperf(server: Node, client: Node, streams: int, seconds: int = 3, reverse: bool = False) -> tuple[float, int]:
    """(bits/s, bytes) of an iperf3 TCP run from ``client`` to ``server`` (``reverse``: the
    server sends)."""
    lab = server.lab
    lab.spawn(server.ns, ["iperf3", "-s", "-1", "-B", server.inner4])
    time.sleep(0.3)
    args = ["iperf3", "-c", server.inner4, "-t", str(seconds), "-P", str(streams), "-J"]
    if reverse:
        args.append("-R")
    out = lab.run(client.ns, args, timeout=60 + seconds).stdout
    report = json.loads(out)
    received = int(report["end"]["sum_received"]["bytes"])
    return iperf3_bits_per_second(report), received


def test_workers_2_against_wireguard_go(netns_factory: Lab) -> None:  # noqa: F811
    lab = netns_factory
    a, b = workers_pair(lab)
    queues = sorted(lab.run(a.ns, ["ls", f"/sys/class/net/{a.iface}/queues"]).stdout.split())
    assert queues == ["rx-0", "rx-1", "tx-0", "tx-1"]
    ping(a, b.inner4)
    ping(b, a.inner4)
    ping(a, b.inner6)
    ping(b, a.inner6)
    info = stats(a)
    assert [w["worker"] for w in info["workers"]] == [0, 1]
    assert all(w["tid"] > 0 for w in info["workers"])

    rx0, tx0 = a.transfer_of(b)
    rate_out, sent = iperf(b, a, 4)  # a -> b
    rate_in, received = iperf(b, a, 4, reverse=True)  # b -> a
    assert rate_out > 0 and rate_in > 0
    assert sent > 10_000_000 and received > 10_000_000

    def counted() -> bool:
        rx, tx = a.transfer_of(b)
        return tx - tx0 >= sent and rx - rx0 >= received

    assert wait_for(counted, timeout=5), "wg show transfer does not cover the iperf3 bytes"
    b_rx, b_tx = b.transfer_of(a)
    assert b_rx >= sent and b_tx >= received
    info = stats(a)
    workers = info["workers"]
    assert sum(w["tx_lane_batches"] for w in workers) > 100  # the lanes carried it
    assert sum(w["rx_lane_batches"] for w in workers) > 100
    assert not any(w["send_batch_error"] or w["receive_batch_error"] for w in workers)
    # the native build runs the lane batches through the fused one-nogil steps (fused_ref.py)
    fused = sum(w["fused_batches"] for w in workers)
    assert fused > 100 if os.environ.get("WGPY_PURE") != "1" else fused == 0

    # New handshakes while the workers run: a forgets b (remove and re-add the peer), so a's
    # next packet to b is handed over to the control thread, which initiates; then b forgets
    # a, so b initiates and a's worker hands the initiation over to be answered.
    for forgetting, other in ((a, b), (b, a)):
        rekey(forgetting, other)
        assert wait_for(lambda f=forgetting, o=other: handshake_done(f, o), timeout=20), (
            f"no new handshake after {forgetting.impl} forgot its peer")
        ping(a, b.inner4)
        ping(b, a.inner4)
    _, received2 = iperf(b, a, 4, seconds=2, reverse=True)
    assert received2 > 1_000_000
    info = stats(a)
    assert sum(w["handed_over"] for w in info["workers"]) > 0


def rekey(node: Node, peer: Node) -> None:
    """Drop ``node``'s session with ``peer`` (remove and re-add the peer), then send to it."""
    node.wg("set", node.iface, "peer", peer.public, "remove")
    node.wg("set", node.iface, "peer", peer.public, "endpoint", f"192.168.77.{peer.index}:{peer.port}",
            "allowed-ips", f"{peer.inner4}/32,{peer.inner6}/128")
    node.lab.run(node.ns, ["ping", "-c", "3", "-i", "0.3", "-W", "2", peer.inner4], check=False, timeout=30)


def handshake_done(node: Node, peer: Node) -> bool:
    out = node.wg("show", node.iface, "latest-handshakes")
    return any(line.startswith(peer.public) and not line.endswith("\t0") for line in out.splitlines())


def test_workers_daemon_exits_when_its_device_is_deleted(netns_factory: Lab) -> None:  # noqa: F811
    """``ip link del`` of the multi-queue TUN (every queue detached at once) under traffic: the
    workers notice, the control thread stops the daemon, its UAPI socket goes."""
    lab = netns_factory
    a, b = workers_pair(lab)
    ping(a, b.inner4)
    lab.spawn(b.ns, ["ping", "-i", "0.01", "-c", "500", "-W", "1", a.inner4])
    lab.run(a.ns, ["ip", "link", "del", a.iface])
    assert wait_for(lambda: not a.alive(), timeout=10), "the daemon still answers after its device went"
