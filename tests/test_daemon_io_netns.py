# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""The daemon's I/O paths for real, in namespaces: the offloaded fast path (TUN TSO + GRO, UDP
GSO + GRO), and the fallbacks it must keep working — the plain python-pytun TUN
(``WGPY_NO_OFFLOAD=1``), no TUN GRO (``WGPY_NO_TUN_GRO=1``) and the pure-Python I/O
(``WGPY_PURE=1``) — each against wg-py and wireguard-go; plus the standard fds of a daemonized
child (all /dev/null unless LOG_LEVEL asks for logs, as wireguard-go does).

What each path really did is seen from outside, on AF_PACKET taps: super-packets written to
the TUN (TUN GRO) on the paths that have it and never on the others, and UDP GSO messages
leaving the veth. (That the receiving socket's UDP GRO was used is not observed here: it is
checked in tests/test_io.py.)

Every test builds its own namespaces (unique names, removed afterwards whatever happens) and
bounds every wait; nothing asserts on timing or throughput.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.netns import Lab, netns_factory, requires_root_netns, wait_for, wg_pair  # noqa: F401
from tests.test_io import in_netns
from tunnel.lab.netns import iperf3_bits_per_second

pytestmark = [pytest.mark.netns, requires_root_netns]

# path -> (environment, what the daemon's log says, super-packets written to the TUN (TUN GRO))
PATHS = {
    "offload": ({}, "vnet_hdr=on", True),
    "no-offload": ({"WGPY_NO_OFFLOAD": "1"}, "plain (offloads disabled by WGPY_NO_OFFLOAD=1", False),
    "no-tun-gro": ({"WGPY_NO_TUN_GRO": "1"}, "vnet_hdr=on", False),
    "pure-io": ({"WGPY_PURE": "1"}, "pure I/O", True),
}
ETH_P_ALL = 0x0003
PACKET_HOST, PACKET_OUTGOING = 0, 4


@contextmanager
def largest_packets(ns: str, iface: str) -> Iterator[dict[int, int]]:
    """While the block runs, the largest packet (its whole length, as the kernel hands it to an
    AF_PACKET tap: a GSO super-packet counts whole) that came in (PACKET_HOST) and went out
    (PACKET_OUTGOING) on ``iface`` in namespace ``ns``."""
    sock = in_netns(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)))
    sock.bind((iface, 0))
    sock.setblocking(False)
    largest = {PACKET_HOST: 0, PACKET_OUTGOING: 0}
    stop = threading.Event()
    buf = bytearray(256)

    def watch() -> None:
        for _ in range(100000):  # bounded; stops when the block ends
            if stop.is_set():
                return
            if not select.select([sock], [], [], 0.1)[0]:
                continue
            for _ in range(1000):
                try:
                    size, address = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
                except BlockingIOError:
                    break
                kind = address[2]
                if kind in largest:
                    largest[kind] = max(largest[kind], size)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield largest
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def _daemon_log(lab: Lab, iface: str) -> str:
    return lab.path(f"daemon-{iface}.log").read_text(errors="replace")


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("peer", ["wg-py", "wireguard-go"])
def test_io_path_carries_tcp_both_ways(netns_factory: Lab, monkeypatch: pytest.MonkeyPatch,
                                       path: str, peer: str) -> None:
    env, says, tun_gro = PATHS[path]
    for key in ("WGPY_NO_OFFLOAD", "WGPY_NO_TUN_GRO", "WGPY_PURE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**env, "LOG_LEVEL": "verbose"}.items():
        monkeypatch.setenv(key, value)
    lab = netns_factory
    a, b = wg_pair(lab, "wg-py", peer)
    assert says in _daemon_log(lab, a.iface)
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    assert lab.ping(b.ns, a.inner4, count=2) is not None
    for reverse in (False, True):
        with largest_packets(a.ns, a.iface) as tun, largest_packets(a.ns, a.veth) as veth:
            result = lab.iperf3(b.ns, a.ns, b.inner4, seconds=1, reverse=reverse)
        assert result["end"]["sum_received"]["bytes"] > 0
        assert iperf3_bits_per_second(result) > 0
        if reverse:  # b sends the stream: a writes it into its TUN
            # TUN GRO on: wg-py writes super-packets, larger than the TUN's MTU (1420), into
            # the TUN; off: never a packet larger than the MTU.
            assert (tun[PACKET_HOST] > 1420) == tun_gro, tun
        else:  # a sends the stream over UDP
            # UDP GSO: one message of several datagrams leaves as one skb larger than the veth's
            # MTU (1500) (checked on every path: GSO is on in all of them).
            assert veth[PACKET_OUTGOING] > 1500, veth
    # Inner IPv6 TCP too (TSO6 / GRO of IPv6 segments).
    result = lab.iperf3(b.ns, a.ns, b.inner6, seconds=1, reverse=True)
    assert result["end"]["sum_received"]["bytes"] > 0
    assert a.alive()


@pytest.mark.parametrize("level", [None, "silent", "verbose"])
def test_daemonized_child_standard_fds(netns_factory: Lab, monkeypatch: pytest.MonkeyPatch,
                                       level: str | None) -> None:
    if level is None:
        monkeypatch.delenv("LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LOG_LEVEL", level)
    lab = netns_factory
    a, _ = wg_pair(lab, "wg-py", "wg-py")
    pids = lab.daemon_pids(a.ns)
    assert len(pids) == 1
    targets = [os.readlink(f"/proc/{pids[0]}/fd/{fd}") for fd in (0, 1, 2)]
    assert targets[0] == os.devnull
    if level == "verbose":
        log = str(lab.path(f"daemon-{a.iface}.log"))
        assert targets[1] == targets[2] == log
        assert wait_for(lambda: "UAPI listening" in _daemon_log(lab, a.iface), 10.0)
    else:
        assert targets[1] == targets[2] == os.devnull
