# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""wg-py against wireguard-go and against itself, in network namespaces, configured with `wg`.

Pairs come from ``tests.netns.interop_pairs()`` (``WGPY_INTEROP_PAIRS`` overrides them); the
first implementation of a pair is node ``a``, the second ``b``. Every test builds its own
namespaces through the ``netns_factory`` fixture, which removes them even when the test fails.
Throughput numbers are printed (``pytest -s``) but never asserted on: tests do not time things.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.netns import (
    Lab,
    Node,
    configure,
    count_allowed_ips,
    handshake_done,
    interop_pairs,
    iperf3_bits_per_second,
    netns_factory,  # noqa: F401 - the fixture
    peer_section,
    requires_root_netns,
    start_node,
    wait_for,
    wg_pair,
)

pytestmark = [pytest.mark.netns, requires_root_netns]

PAIRS = interop_pairs()
PAIR_IDS = [f"{a}-{b}" for a, b in PAIRS]
IMPLS = sorted({name for pair in PAIRS for name in pair})


def ping_both_ways(a: Node, b: Node) -> None:
    assert a.lab.wait_ping(a.ns, b.inner4, timeout=15), "no IPv4 reply a -> b"
    assert a.lab.ping(a.ns, b.inner6, 2) is not None, "no IPv6 reply a -> b"
    assert b.lab.ping(b.ns, a.inner4, 2) is not None, "no IPv4 reply b -> a"
    assert b.lab.ping(b.ns, a.inner6, 2) is not None, "no IPv6 reply b -> a"


@pytest.mark.parametrize("outer", [4, 6], ids=["outer4", "outer6"])
@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_ping_inner_v4_v6(netns_factory: Lab, impl_a: str, impl_b: str, outer: int) -> None:
    a, b = wg_pair(netns_factory, impl_a, impl_b, outer=outer)
    ping_both_ways(a, b)
    assert handshake_done(a, b) and handshake_done(b, a)
    expected = "[fd77::2]" if outer == 6 else "192.168.77.2"
    assert a.endpoint_of(b) == f"{expected}:{b.port}"
    rx, tx = a.transfer_of(b)
    assert rx > 0 and tx > 0


@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_iperf3_tcp_udp_both_ways(netns_factory: Lab, impl_a: str, impl_b: str) -> None:
    lab = netns_factory
    a, b = wg_pair(lab, impl_a, impl_b)
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    report = []
    for udp in (False, True):
        for reverse in (False, True):
            result = lab.iperf3(b.ns, a.ns, b.inner4, seconds=2, udp=udp, reverse=reverse,
                                bandwidth="200M")
            bps = iperf3_bits_per_second(result)
            if udp:
                received = result["end"]["sum"]["packets"] - result["end"]["sum"]["lost_packets"]
                assert received > 0
            else:
                assert result["end"]["sum_received"]["bytes"] > 0
            direction = "b->a" if reverse else "a->b"
            report.append(f"{'udp' if udp else 'tcp'} {direction} {bps / 1e6:.0f} Mbit/s")
    print(f"\n[{impl_a} a, {impl_b} b] " + "; ".join(report))


@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_large_device_mtu(netns_factory: Lab, impl_a: str, impl_b: str) -> None:
    a, b = wg_pair(netns_factory, impl_a, impl_b, mtu=34000, veth_mtu=65535)
    assert a.lab.wait_ping(a.ns, b.inner4, timeout=15)
    for src, dst in ((a, b), (b, a)):
        done = src.lab.run(src.ns, ["ping", "-c", "2", "-i", "0.2", "-W", "3", "-M", "do",
                                    "-s", "33000", dst.inner4], check=False)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_roaming_port_and_address(netns_factory: Lab, impl_a: str, impl_b: str) -> None:
    """b moves to a new outer address and port; a follows it from b's authenticated packets."""
    lab = netns_factory
    a, b = wg_pair(lab, impl_a, impl_b)
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    lab.run(b.ns, ["sysctl", "-q", "-w", "net.ipv4.conf.veth1.promote_secondaries=1"])
    lab.run(b.ns, ["ip", "addr", "add", "192.168.77.3/24", "dev", "veth1"])
    lab.run(b.ns, ["ip", "addr", "del", "192.168.77.2/24", "dev", "veth1"])
    b.wg("set", b.iface, "listen-port", "51999")
    b.port = 51999
    assert lab.wait_ping(b.ns, a.inner4, timeout=15), "b cannot reach a after moving"
    assert wait_for(lambda: a.endpoint_of(b) == "192.168.77.3:51999", 5.0), a.endpoint_of(b)
    assert lab.ping(a.ns, b.inner4, 2) is not None
    assert lab.ping(a.ns, b.inner6, 2) is not None


@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_cryptokey_routing_more_specific_peer(
    netns_factory: Lab, impl_a: str, impl_b: str
) -> None:
    """a routes 10.9.0.0/24 to b; adding peer c with 10.9.0.3/32 moves .3's traffic to c."""
    lab = netns_factory
    ns_a, ns_b, ns_c = lab.namespace("a"), lab.namespace("b"), lab.namespace("c")
    lab.veth(ns_a, ns_b, ["192.168.77.1/24"], ["192.168.77.2/24"])
    lab.veth(ns_a, ns_c, ["192.168.88.1/24"], ["192.168.88.3/24"], names=("veth2", "veth3"))
    a = start_node(lab, impl_a, ns_a, 1, 51821)
    b = start_node(lab, impl_b, ns_b, 2, 51822)
    c = start_node(lab, impl_b, ns_c, 3, 51823)
    configure(a, peer_section(b, f"192.168.77.2:{b.port}", allowed="10.9.0.0/24"))
    configure(b, peer_section(a, f"192.168.77.1:{a.port}"))
    configure(c, peer_section(a, f"192.168.88.1:{a.port}"))
    lab.run(b.ns, ["ip", "addr", "add", "10.9.0.3/32", "dev", b.iface])  # b answers for .3 too
    assert lab.wait_ping(a.ns, "10.9.0.3", timeout=15)
    b_rx_before = b.transfer_of(a)[0]
    assert b_rx_before > 0
    a.wg("set", a.iface, "peer", c.public, "allowed-ips", "10.9.0.3/32",
         "endpoint", f"192.168.88.3:{c.port}")
    assert lab.wait_ping(a.ns, "10.9.0.3", timeout=15)
    assert lab.ping(a.ns, "10.9.0.3", 3) is not None
    assert c.transfer_of(a)[0] > 0, "c got nothing: the /32 did not take over"
    assert handshake_done(a, c)
    b_rx_mid = b.transfer_of(a)[0]
    assert lab.ping(a.ns, "10.9.0.3", 3) is not None
    assert b.transfer_of(a)[0] == b_rx_mid, "traffic for .3 still reaches b"
    assert lab.ping(a.ns, b.inner4, 2) is not None  # the rest of the /24 still goes to b
    allowed = a.wg("show", a.iface, "allowed-ips")
    assert f"{c.public}\t10.9.0.3/32" in allowed and f"{b.public}\t10.9.0.0/24" in allowed


@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_nat_with_persistent_keepalive(netns_factory: Lab, impl_a: str, impl_b: str) -> None:
    """a sits behind a MASQUERADE router r; b knows no endpoint for a and has no route back.

    a's PersistentKeepalive makes it handshake on its own; b then reaches a through the NAT."""
    lab = netns_factory
    ns_a, ns_r, ns_b = lab.namespace("a"), lab.namespace("r"), lab.namespace("b")
    lab.veth(ns_a, ns_r, ["10.1.1.2/24"], ["10.1.1.1/24"])
    lab.veth(ns_r, ns_b, ["192.168.77.254/24"], ["192.168.77.2/24"], names=("veth2", "veth3"))
    lab.run(ns_a, ["ip", "route", "add", "default", "via", "10.1.1.1"])
    lab.run(ns_r, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    lab.run(ns_r, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "veth2",
                   "-j", "MASQUERADE"])
    a = start_node(lab, impl_a, ns_a, 1, 51821)
    b = start_node(lab, impl_b, ns_b, 2, 51822)
    configure(b, peer_section(a, None))
    configure(a, peer_section(b, f"192.168.77.2:{b.port}", keepalive=1))
    assert wait_for(lambda: b.endpoint_of(a).startswith("192.168.77.254:"), 15.0), \
        f"b never heard a through the NAT: {b.endpoint_of(a)!r}"
    assert lab.wait_ping(b.ns, a.inner4, timeout=10), "b cannot reach a behind the NAT"
    assert lab.ping(b.ns, a.inner6, 2) is not None
    assert lab.ping(a.ns, b.inner4, 2) is not None


@pytest.mark.parametrize("impl", IMPLS)
def test_130k_allowed_ips_listed_back(netns_factory: Lab, impl: str) -> None:
    lab = netns_factory
    ns = lab.namespace("a")
    node = start_node(lab, impl, ns, 1, 51821)
    other = start_node(lab, impl, lab.namespace("b"), 2, 51822)
    count = 130_000
    nets = [f"10.{i >> 14}.{(i >> 6) & 0xFF}.{(i & 0x3F) << 2}/30" for i in range(count)]
    assert len(set(nets)) == count
    node.setconf(f"[Interface]\nListenPort = {node.port}\n\n[Peer]\n"
                 f"PublicKey = {other.public}\nAllowedIPs = {', '.join(nets)}\n")
    assert count_allowed_ips(node) == count
    listed = set(node.wg("show", node.iface, "allowed-ips").split())
    assert set(nets) <= listed
    assert node.alive()


HOSTILE = r'''
import json, os, random, socket, struct, subprocess, sys, threading
target, port, dev, ping_addr = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
captured = []
stop = threading.Event()
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
raw.bind((dev, 0))
raw.settimeout(0.2)
def sniff():
    while not stop.is_set():
        try:
            frame = raw.recv(70000)
        except socket.timeout:
            continue
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl:]
        if struct.unpack("!H", udp[2:4])[0] == port:
            captured.append(bytes(udp[8:]))
thread = threading.Thread(target=sniff)
thread.start()
subprocess.run(["ping", "-c", "5", "-i", "0.2", "-W", "2", ping_addr], capture_output=True)
stop.set()
thread.join()
rng = random.Random(7)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect((target, port))
sent = 0
def send(data):
    global sent
    try:
        sock.send(data)
        sent += 1
    except OSError:
        pass
for _ in range(400):
    send(rng.randbytes(rng.randrange(0, 1500)))
sizes = {1: 148, 2: 92, 3: 64, 4: 32}
for kind, size in sizes.items():
    head = struct.pack("<I", kind)
    for cut in (1, 2, 4, 5, 8, 16, size // 2, size - 1):
        send((head + rng.randbytes(size))[:cut])
    for extra in (1, 15, 16, 1000):
        send(head + rng.randbytes(size - 4 + extra))
    for _ in range(25):
        send(head + rng.randbytes(size - 4))
send(struct.pack("<I", 4) + rng.randbytes(65000))
for kind in (0, 5, 255, 0x01000000):
    send(struct.pack("<I", kind) + rng.randbytes(200))
for _ in range(3):
    for packet in captured:
        send(packet)
print(json.dumps({"captured": len(captured), "sent": sent}))
'''


@pytest.mark.parametrize(("impl_a", "impl_b"), PAIRS, ids=PAIR_IDS)
def test_hostile_input_leaves_tunnel_working(
    netns_factory: Lab, impl_a: str, impl_b: str
) -> None:
    """Random, truncated, oversized and replayed datagrams at each daemon's port."""
    lab = netns_factory
    a, b = wg_pair(lab, impl_a, impl_b)
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    script = lab.path("hostile.py")
    script.write_text(HOSTILE)
    for victim, attacker in ((a, b), (b, a)):
        endpoint_before = victim.endpoint_of(attacker)
        done = lab.run(attacker.ns, [sys.executable, str(script), f"192.168.77.{victim.index}",
                                     str(victim.port), attacker.veth, victim.inner4],
                       timeout=60)
        stats = json.loads(done.stdout)
        assert stats["captured"] > 0 and stats["sent"] > 500, stats
        assert victim.alive(), f"{victim.impl} stopped answering its UAPI socket"
        assert lab.daemon_pids(victim.ns), f"{victim.impl} is gone"
        assert lab.wait_ping(attacker.ns, victim.inner4, timeout=10)
        assert lab.ping(victim.ns, attacker.inner4, 2) is not None
        assert victim.endpoint_of(attacker) == endpoint_before, "a replay moved the endpoint"
