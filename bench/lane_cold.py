"""What a lane decision costs cold: ``datapath.lane``/``receive_lane`` against the lane snapshot.

In-process, no network: two engines (wg-py's ``Device``) complete a handshake in memory, then
each measured call runs after ``--sleep`` seconds of sleep (caches and TLBs go cold on this VM
within ~10 ms: docs/benchmarks.md, "Why wg-py's ping is above upstream's") and, for
comparison, warm (back to back). Reported: the median and p90 in microseconds of ``--count``
calls each, interleaved so that load changes hit every case alike, and the load average.

    .venv/bin/python bench/lane_cold.py [--count 300] [--sleep 0.01] [--twin cython|pure] [--json PATH]

Cases: an empty Python call (the floor: the call and the clock), ``datapath.lane`` on a
one-packet batch, the snapshot's ``SendLane.check`` (a hit) and ``decide`` (a hit), the same
pair for the inbound side (``receive_lane``, ``ReceiveLane.check``). The pumps call the
snapshot's ``decide`` from C (``_pump.pyx``), so their cost is a little below the Python call
measured here. With ``--pumps``, also one whole ``Outbound.run`` / ``Inbound.run`` of the pump
twin (TUN and UDP replaced by minimal in-memory objects; the seal, open, checks and lane
decision real) with its snapshot against the same pump whose snapshot is disabled (a
generation of None: every batch asks ``datapath``, as before this change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crypto import keys  # noqa: E402
from crypto.backend import HEADROOM  # noqa: E402
from tunnel.io.endpoint import Endpoint  # noqa: E402
from tunnel.wireguard import datapath as datapath_pair  # noqa: E402
from tunnel.wireguard import lane as lane_pair  # noqa: E402
from tunnel.wireguard.device import Device  # noqa: E402
from tunnel.wireguard.output import Output, packet_buffer  # noqa: E402

A_END = Endpoint("192.0.2.1", 51820)
B_END = Endpoint("192.0.2.2", 51821)


def ipv4(src: str, dst: str, payload: bytes) -> bytes:
    """A minimal IPv4 packet (what the lanes read: version, length, addresses)."""
    total = 20 + len(payload)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, 1, 0, 0])
    return header + bytes(map(int, src.split("."))) + bytes(map(int, dst.split("."))) + payload


def deliver(device: Device, out: Output, source: Endpoint, now: float) -> Output:
    bufs = [bytearray(d) for d, _ in out.datagrams]
    return device.receive_batch(bufs, [len(b) for b in bufs], [source] * len(bufs), now)


def established(twin: str) -> tuple[Device, Device, float]:
    """Two engines with a confirmed session both ways, a -> b and b -> a."""
    datapath = datapath_pair.load(twin)
    generation = lane_pair.load(twin).Generation
    a = Device(keys.generate_private(), datapath=datapath, generation=generation())
    b = Device(keys.generate_private(), datapath=datapath, generation=generation())
    assert a.public_key is not None and b.public_key is not None
    peer_ab, peer_ba = a.add_peer(b.public_key), b.add_peer(a.public_key)
    a.allowed_ips.insert("10.0.0.2/32", peer_ab)
    b.allowed_ips.insert("10.0.0.1/32", peer_ba)
    peer_ab.endpoint = B_END
    now = 1000.0
    packet = ipv4("10.0.0.1", "10.0.0.2", b"x" * 56)
    init = a.send_batch([packet_buffer(packet, a.mtu)], [len(packet)], now)
    response = deliver(b, init, A_END, now)
    confirm = deliver(a, response, B_END, now)
    deliver(b, confirm, A_END, now)
    assert peer_ab.current is not None and peer_ba.current is not None
    return a, b, now


class MemoryTun:
    """A TUN with one packet always waiting; writes are counted."""

    pending = 0
    needed = 0

    def __init__(self, packet: bytes) -> None:
        self.packet = packet
        self.written = 0

    def read(self, bufs: list[bytearray], lengths: list[int], headroom: int, mtu: int) -> int:
        bufs[0][headroom:headroom + len(self.packet)] = self.packet
        lengths[0] = len(self.packet)
        return 1

    def write_slots(self, bufs: list[bytearray], lengths: list[int], offset: int, verdicts: bytearray,
                    count: int) -> int:
        self.written += 1
        return 1


class MemoryUdp:
    """A UDP socket handing out prepared datagrams one per call; sends are dropped."""

    pending = 0

    def __init__(self, datagrams: list[bytes], source: Endpoint) -> None:
        self.datagrams = datagrams
        self.source = source
        self.next = 0

    def recv(self, bufs: list[bytearray], lengths: list[int], sources: list[Any]) -> int:
        datagram = self.datagrams[self.next % len(self.datagrams)]
        self.next += 1
        bufs[0][: len(datagram)] = datagram
        lengths[0] = len(datagram)
        sources[0] = self.source
        return 1

    def send_slots(self, bufs: list[bytearray], lengths: list[int], offset: int, count: int, endpoint: Any) -> int:
        return count


class NoGeneration:
    """Only for a pump's constructor: a device without a generation (its snapshots stay off)."""

    generation = None


def pump_cases(twin: str, a: Device, b: Device, packet: bytes, count: int) -> dict[str, Callable[[], Any]]:
    """Outbound.run on ``a`` and Inbound.run on ``b``, with and without the lane snapshots."""
    from tunnel.wireguard import pump as pump_pair

    pump = pump_pair.load(twin)
    keypair = a.peers[b.public_key].current  # type: ignore[index]
    assert keypair is not None
    datagrams = []
    for _ in range(4 * count + 8):  # fresh counters: every datagram opens
        buf = packet_buffer(packet, a.mtu)
        lengths = [len(packet)]
        keypair.cipher.seal_batch([buf], lengths, a.mtu)
        datagrams.append(bytes(buf[: lengths[0]]))
    cases: dict[str, Callable[[], Any]] = {}
    for label, snapshots in (("snapshot", True), ("datapath", False)):
        tun_a, tun_b = MemoryTun(packet), MemoryTun(packet)
        udp_a = MemoryUdp([], B_END)
        out = pump.Outbound(a if snapshots else NoGeneration(), tun_a, udp_a, None,
                            pump.Journal(0.002, lambda: None), lambda *_: None, HEADROOM)
        out.device = a
        bufs_a, lengths_a = [packet_buffer(packet, a.mtu)], [0]
        udp_b = MemoryUdp(datagrams[0 if snapshots else 1::2], A_END)
        out_b = pump.Outbound(b, tun_b, MemoryUdp([], A_END), None, pump.Journal(0.002, lambda: None),
                              lambda *_: None, HEADROOM)
        inb = pump.Inbound(b if snapshots else NoGeneration(), tun_b, out_b, lambda *_: None, 16)
        inb.device = b
        bufs_b, lengths_b, sources_b = [bytearray(2048)], [0], [None]

        def run_out(out: Any = out, bufs: list[bytearray] = bufs_a, lengths: list[int] = lengths_a) -> Any:
            assert out.run(bufs, lengths, HEADROOM, 1420, 1000.0) == 1 and out.lane is not None

        def run_in(inb: Any = inb, udp: Any = udp_b, bufs: list[bytearray] = bufs_b, lengths: list[int] = lengths_b,
                   sources: list[Any] = sources_b) -> Any:
            assert inb.run(udp, bufs, lengths, sources, 1000.0) == 1 and inb.opened == 1

        cases[f"Outbound.run ({label})"] = run_out
        cases[f"Inbound.run ({label})"] = run_in
    return cases


def measure(cases: dict[str, Callable[[], Any]], count: int, sleep: float) -> dict[str, list[float]]:
    """Microseconds per call of each case, ``count`` times, interleaved, after ``sleep``."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    clock = time.perf_counter_ns
    for _ in range(count):
        for name, call in cases.items():
            if sleep:
                time.sleep(sleep)
            start = clock()
            call()
            times[name].append((clock() - start) / 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--sleep", type=float, default=0.01)
    parser.add_argument("--twin", choices=["cython", "pure"], default="cython")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pumps", action="store_true", help="also a whole pump run, with and without snapshots")
    args = parser.parse_args()
    lanes = lane_pair.load(args.twin)
    a, b, now = established(args.twin)
    packet = ipv4("10.0.0.1", "10.0.0.2", b"x" * 56)
    bufs, lengths = [packet_buffer(packet, a.mtu)], [len(packet)]
    send = lanes.SendLane(a.generation)
    assert send.decide(a, bufs, lengths, HEADROOM, now) is not None and send.holds()
    # one datagram a -> b, sealed, for the inbound side (its header is all the lanes read)
    sealed = [packet_buffer(packet, a.mtu)]
    sealed_lengths = [len(packet)]
    keypair = a.peers[b.public_key].current  # type: ignore[index]
    assert keypair is not None
    keypair.cipher.seal_batch(sealed, sealed_lengths, a.mtu)
    sources = [A_END]
    receive = lanes.ReceiveLane(b.generation)
    assert receive.decide(b, sealed, sealed_lengths, sources, now) is not None and receive.holds()
    datapath = a.datapath

    def floor() -> None:
        return None

    cases: dict[str, Callable[[], Any]] = {
        "empty call": floor,
        "datapath.lane": lambda: datapath.lane(a, bufs, lengths, HEADROOM, now),
        "SendLane.check (hit)": lambda: send.check(bufs, lengths, HEADROOM, now),
        "SendLane.decide (hit)": lambda: send.decide(a, bufs, lengths, HEADROOM, now),
        "datapath.receive_lane": lambda: datapath.receive_lane(b, sealed, sealed_lengths, sources, now),
        "ReceiveLane.check (hit)": lambda: receive.check(sealed, sealed_lengths, sources, now),
    }
    if args.pumps:
        cases.update(pump_cases(args.twin, a, b, packet, args.count))
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    cold = measure(cases, args.count, args.sleep)
    warm = measure(cases, args.count, 0.0)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    result: dict[str, Any] = {"twin": args.twin, "count": args.count, "sleep": args.sleep,
                              "load_before": load_before, "load_after": load_after, "cases": {}}
    print(f"twin {args.twin}, {args.count} calls each, cold = after {args.sleep * 1000:.0f} ms of sleep; "
          f"load {' '.join(load_before)} -> {' '.join(load_after)}")
    print(f"{'case':28} {'cold median':>12} {'cold p90':>9} {'warm median':>12}")
    for name in cases:
        c, w = sorted(cold[name]), sorted(warm[name])
        row = {"cold_median": statistics.median(c), "cold_p90": c[int(len(c) * 0.9)],
               "warm_median": statistics.median(w)}
        result["cases"][name] = row
        print(f"{name:28} {row['cold_median']:12.1f} {row['cold_p90']:9.1f} {row['warm_median']:12.2f}")
    # the snapshot cases were hits (decide counts them; check is the same test)
    assert send.hits >= 2 * args.count and receive.check(sealed, sealed_lengths, sources, now) is not None
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
