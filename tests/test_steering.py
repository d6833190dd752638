"""The multi-queue TUN's steering program (tunnel/io/steering.py), against the kernel.

In a namespace of its own, a script opens a 4-queue TUN, attaches the program and makes the
stack send packets that carry no ``skb->hash`` out of it: ICMP echo requests (ping) and
unconnected UDP to 24 IPv4 and 24 IPv6 destinations (IPv6 automatic flow labels off: a
label's hash would otherwise be the packet's), and one IPv4 UDP datagram larger than
the MTU (fragments). It reads every queue and reports where each packet was read. Checked:
each packet was read on the queue :func:`fallback_hash` (the program's function in Python)
predicts, so the kernel runs the program we describe; the packets spread over the queues
(before this program they were all read on queue 0); the fragments of one datagram share a
queue. The model's own edge cases (short packets, fragments, IPv6 extension headers) are
checked in memory.
"""

from __future__ import annotations

import json
import struct
import sys

import pytest

from tests.netns import netns_factory, requires_root_netns  # noqa: F401 (fixture)
from tunnel.io.steering import PORT_PROTOCOLS, fallback_hash
from tunnel.lab.netns import Lab

QUEUES = 4

SCRIPT = r"""
import json, os, socket, subprocess, sys, time
from tunnel.io.offload import open_tun
from tunnel.io.steering import attach_flow_steering
name = sys.argv[1]
fds = [open_tun(name, vnet_hdr=False, multi_queue=True)[0] for _ in range(int(sys.argv[2]))]
if not attach_flow_steering(fds[0]):
    print(json.dumps({"attached": False})); sys.exit(0)
# IPv6 packets with an automatic flow label carry the hash the label was made from: without
# labels, IPv6 too leaves the stack without a hash (as forwarded traffic may)
for cmd in (["sysctl", "-qw", "net.ipv6.auto_flowlabels=0"],
            ["ip", "link", "set", name, "mtu", "1400", "up"],
            ["ip", "addr", "add", "10.77.0.1/16", "dev", name],
            ["ip", "-6", "addr", "add", "fd77::1/64", "dev", name, "nodad"],
            ["ip", "-6", "route", "add", "fd78::/64", "dev", name]):
    subprocess.run(cmd, check=True)
def drain():
    out = []
    for queue, fd in enumerate(fds):
        while True:
            try:
                out.append((queue, os.read(fd, 65536).hex()))
            except BlockingIOError:
                break
    return out
time.sleep(0.3)
drain()  # the device's own start-up packets (IPv6 router solicitations, MLD)
for i in range(24):
    subprocess.run(["ping", "-n", "-c", "1", "-W", "0.05", f"10.77.1.{i + 1}"], capture_output=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"steer", (f"10.77.2.{i + 1}", 4000 + i))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.sendto(b"steer", (f"fd78::{i + 1:x}", 4000 + i))
    subprocess.run(["ping", "-6", "-n", "-c", "1", "-W", "0.05", f"fd78::1:{i + 1:x}"], capture_output=True)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: fragment
    s.sendto(b"f" * 3000, ("10.77.3.1", 5000))
time.sleep(0.2)
print(json.dumps({"attached": True, "packets": drain()}))
"""


def _ipv4(proto: int, payload: bytes, frag: int = 0, ihl: int = 5) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return header + bytes(4 * (ihl - 5)) + payload


def _ipv6(next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, 64,
                       bytes(15) + b"\x01", bytes(15) + b"\x02") + payload


def test_model_reads_ports_only_where_the_program_can() -> None:
    ports_a, ports_b = struct.pack("!HH", 1000, 53), struct.pack("!HH", 1001, 53)
    for proto in PORT_PROTOCOLS:  # different ports, different hashes
        assert fallback_hash(_ipv4(proto, ports_a)) != fallback_hash(_ipv4(proto, ports_b))
        assert fallback_hash(_ipv6(proto, ports_a)) != fallback_hash(_ipv6(proto, ports_b))
    # the ports are found after IPv4 options
    assert fallback_hash(_ipv4(17, ports_a, ihl=7)) != fallback_hash(_ipv4(17, ports_b, ihl=7))
    # no ports: ICMP, a fragment (MF set or an offset), an IPv6 extension header
    assert fallback_hash(_ipv4(1, ports_a)) == fallback_hash(_ipv4(1, ports_b))
    for frag in (0x2000, 0x0010):
        assert fallback_hash(_ipv4(17, ports_a, frag)) == fallback_hash(_ipv4(17, ports_b, frag))
    assert fallback_hash(_ipv4(17, ports_a, 0x4000)) != fallback_hash(_ipv4(17, ports_b, 0x4000))  # DF only
    assert fallback_hash(_ipv6(0, ports_a)) == fallback_hash(_ipv6(0, ports_b))


def test_model_stops_with_zero_where_the_program_does() -> None:
    assert fallback_hash(b"") == 0
    assert fallback_hash(_ipv4(17, b"")[:19]) == 0  # the destination address is cut
    assert fallback_hash(_ipv4(17, b"\x00\x01")) == 0  # the ports are cut: the program stops at the read
    assert fallback_hash(_ipv6(58, b"")[:39]) == 0
    assert fallback_hash(b"\x50" + bytes(40)) == 0  # neither IPv4 nor IPv6
    assert fallback_hash(_ipv4(1, b"")) != 0


@requires_root_netns
def test_packets_without_a_hash_spread_by_their_flow(netns_factory: Lab) -> None:  # noqa: F811
    lab = netns_factory
    ns = lab.namespace()
    name = lab.interface_name()
    done = lab.run(ns, [sys.executable, "-c", SCRIPT, name, str(QUEUES)], timeout=60)
    result = json.loads(done.stdout)
    if not result["attached"]:
        pytest.fail("the kernel refused the steering program (TUNSETSTEERINGEBPF): " + done.stderr)
    packets = [(queue, bytes.fromhex(raw)) for queue, raw in result["packets"]]
    kinds: dict[str, int] = {}
    for queue, packet in packets:
        assert queue == fallback_hash(packet) % QUEUES, packet.hex()
        version = packet[0] >> 4
        proto = packet[9] if version == 4 else packet[6]
        kind = f"v{version}/{proto}"
        kinds[kind] = kinds.get(kind, 0) + 1
    # what was sent arrived: echo requests and UDP of both families, and the fragments
    assert kinds.get("v4/1", 0) >= 20 and kinds.get("v6/58", 0) >= 20, kinds
    assert kinds.get("v4/17", 0) >= 24 + 3 and kinds.get("v6/17", 0) >= 24, kinds
    assert len({queue for queue, _ in packets}) == QUEUES  # spread over all the queues
    fragments = [(queue, p) for queue, p in packets if p[0] >> 4 == 4 and p[16:20] == bytes([10, 77, 3, 1])]
    assert len(fragments) >= 3 and len({queue for queue, _ in fragments}) == 1
