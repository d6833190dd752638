"""Where a ping's time goes: per-hop latency through the tunnels, from kernel timestamps.

    .venv/bin/python bench/hops.py [--only wgpy,wggo,wgpy-vxlan,kvxlan] [--blocks 4] [--pings 100]
        [--wireguard-go PATH]

Builds the same namespace pairs as ``wg-py bench`` (``tunnel.lab.bench.build_pair``; removed on the
way out), and for each block of ``--pings`` pings (10 ms apart) through each contender in turn
records every packet on the four interfaces of the path (both TUNs or TAPs, both veth ends) with
an AF_PACKET socket and ``SO_TIMESTAMPNS``: the kernel's own timestamp of when the packet passed,
so the recorder's own scheduling does not matter. Inner ICMP packets are matched by sequence
number; each outer datagram (a WireGuard transport message, or a VXLAN datagram to port 4789)
is the first to leave (or arrive) after the inner packet it carries. The VXLAN contenders
(``wgpy-vxlan``, the kernel's ``kvxlan``) have a TAP (Ethernet frames) where the WireGuard ones
have a TUN; for ``kvxlan`` the "tx"/"rx" hops are the kernel's own encapsulation. Prints the
median of each hop, in microseconds:

  client tx     request on the client's TUN -> its datagram leaves the client's veth
  server rx     the datagram reaches the server's veth -> the request on the server's TUN
  server kernel the request on the server's TUN -> the echo reply on it (the kernel's part)
  server tx     the reply on the server's TUN -> its datagram leaves the server's veth
  client rx     the datagram reaches the client's veth -> the reply on the client's TUN

The taps cost every contender alike (about 0.1 ms per round trip here); compare contenders
within one run. Needs root. Method and latest figures: docs/benchmarks.md, "Latency".
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunnel.lab.bench import Pair, build_pair  # noqa: E402
from tunnel.lab.netns import Lab  # noqa: E402

SO_TIMESTAMPNS = 35
ETH_P_ALL = 3
PACKET_OUTGOING = 4
CONTENDERS = ("wgpy", "wggo", "wgpy-vxlan", "kvxlan")
HOPS = ("client tx", "server rx", "server kernel", "server tx", "client rx", "total")

Event = tuple[int, bool, bytes]  # (kernel time in ns, outgoing, first bytes)


def record(iface: str, seconds: float, out: str) -> None:
    """The recorder (run inside a namespace): every packet on ``iface`` for ``seconds``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    events: list[tuple[int, bool, str]] = []
    Path(out + ".ready").touch()
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(events) < 100_000:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        data, ancillary, _, address = sock.recvmsg(128, 64)
        stamp = next((struct.unpack("qq", d[:16]) for lvl, kind, d in ancillary if kind == SO_TIMESTAMPNS), None)
        if stamp is not None:
            events.append((stamp[0] * 1_000_000_000 + stamp[1], address[2] == PACKET_OUTGOING, data.hex()))
    Path(out).write_text(json.dumps(events))


def icmp_echo(data: bytes) -> tuple[int, int] | None:
    """(ICMP type, sequence) of an IPv4 echo request/reply as seen on a TUN (IP) or a TAP
    (Ethernet), else None."""
    for ip in (data, data[14:] if data[12:14] == b"\x08\x00" else b""):
        if len(ip) >= 28 and ip[0] >> 4 == 4 and ip[9] == 1:
            return ip[20], int.from_bytes(ip[26:28], "big")
    return None


VXLAN_PORT = (4789).to_bytes(2, "big")


def is_transport(data: bytes) -> bool:
    """An Ethernet/IPv4/UDP frame carrying a WireGuard transport message (type 4) or a VXLAN
    datagram (to port 4789, the I flag set)."""
    if not (len(data) > 42 and data[12:14] == b"\x08\x00" and data[23] == 17):
        return False
    return data[42] == 4 or (data[36:38] == VXLAN_PORT and data[42] == 0x08)


def links(lab: Lab, namespace: str) -> tuple[str, str]:
    """(tunnel interface, veth) of a contender's namespace."""
    out = lab.run(namespace, ["ip", "-o", "link"]).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    veth = next(n for n in names if n.startswith("veth"))
    return next(n for n in names if n not in ("lo", veth)), veth


def ping_block(lab: Lab, pair: Pair, pings: int, workdir: str) -> dict[str, list[Event]]:
    """Ping ``pings`` times with the four recorders running; their events per interface."""
    seconds = pings * 0.01 + 5
    recorders: list[subprocess.Popen[bytes]] = []
    files: dict[str, str] = {}
    (client_tun, client_veth), (server_tun, server_veth) = links(lab, pair.client), links(lab, pair.server)
    for tag, namespace, iface in (("client_tun", pair.client, client_tun), ("client_veth", pair.client, client_veth),
                                  ("server_tun", pair.server, server_tun), ("server_veth", pair.server, server_veth)):
        files[tag] = os.path.join(workdir, f"{tag}.json")
        recorders.append(subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, __file__,
                                           "--record", iface, str(seconds), files[tag]]))
    try:
        deadline = time.monotonic() + 10
        while not all(os.path.exists(f + ".ready") for f in files.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the packet recorders did not start")
            time.sleep(0.05)
        time.sleep(0.3)
        lab.run(pair.client, ["ping", "-n", "-q", "-c", str(pings), "-i", "0.01", "-W", "1", pair.server_addr],
                check=False, timeout=pings * 0.02 + 10)
        for recorder in recorders:
            recorder.wait(timeout=seconds + 10)
    finally:
        for recorder in recorders:
            if recorder.poll() is None:
                recorder.kill()
    events: dict[str, list[Event]] = {}
    for tag, path in files.items():
        events[tag] = [(t, out, bytes.fromhex(h)) for t, out, h in json.loads(Path(path).read_text())]
        for stale in (path, path + ".ready"):
            os.unlink(stale)
    return events


def hops(events: dict[str, list[Event]]) -> dict[str, list[float]]:
    """Per-ping hop times in microseconds, for every ping seen on all four interfaces."""
    def inner(tag: str, kind: int) -> dict[int, int]:
        found = {}
        for t, _, data in events[tag]:
            echo = icmp_echo(data)
            if echo is not None and echo[0] == kind:
                found[echo[1]] = t
        return found

    def outer(tag: str, outgoing: bool) -> list[int]:
        return sorted(t for t, out, data in events[tag] if out == outgoing and is_transport(data))

    def after(times: list[int], t: int) -> int | None:
        i = bisect.bisect_right(times, t)
        return times[i] if i < len(times) else None

    client_req, client_rep = inner("client_tun", 8), inner("client_tun", 0)
    server_req, server_rep = inner("server_tun", 8), inner("server_tun", 0)
    client_out, client_in = outer("client_veth", True), outer("client_veth", False)
    server_in, server_out = outer("server_veth", False), outer("server_veth", True)
    result: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for seq, start in client_req.items():
        if seq not in server_req or seq not in server_rep or seq not in client_rep:
            continue
        sent = after(client_out, start)
        arrived = after(server_in, sent) if sent is not None else None
        answered = after(server_out, server_rep[seq])
        back = after(client_in, answered) if answered is not None else None
        if sent is None or arrived is None or answered is None or back is None:
            continue
        stamps = (start, sent, arrived, server_req[seq], server_rep[seq], answered, back, client_rep[seq])
        spans = (stamps[1] - stamps[0], stamps[3] - stamps[2], stamps[4] - stamps[3], stamps[5] - stamps[4],
                 stamps[7] - stamps[6], stamps[7] - stamps[0])
        for hop, span in zip(HOPS, spans, strict=True):
            result[hop].append(span / 1000)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="wgpy,wggo", help="contenders, from " + ",".join(CONTENDERS))
    parser.add_argument("--blocks", type=int, default=4, help="blocks of pings per contender")
    parser.add_argument("--pings", type=int, default=100, help="pings per block (10 ms apart)")
    parser.add_argument("--wireguard-go", metavar="PATH", default="wireguard-go",
                        help="the wireguard-go binary of the wggo contender (default: the one on the PATH)")
    parser.add_argument("--record", nargs=3, metavar=("IFACE", "SECONDS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record(args.record[0], float(args.record[1]), args.record[2])
        return 0
    names = [n for n in args.only.split(",") if n]
    if not names or any(n not in CONTENDERS for n in names):
        parser.error("--only takes " + ", ".join(CONTENDERS))
    if not 1 <= args.pings <= 1000 or not 1 <= args.blocks <= 20:
        parser.error("--pings must be 1..1000 and --blocks 1..20")
    samples: dict[str, dict[str, list[float]]] = {name: {hop: [] for hop in HOPS} for name in names}
    with Lab() as lab, tempfile.TemporaryDirectory() as workdir:
        pairs = {name: build_pair(lab, name, {"wggo": args.wireguard_go}) for name in names}
        for block in range(args.blocks):
            for name in names[block % len(names):] + names[: block % len(names)]:
                for hop, values in hops(ping_block(lab, pairs[name], args.pings, workdir)).items():
                    samples[name][hop].extend(values)
                print(f"block {block + 1}/{args.blocks} {name}: {len(samples[name]['total'])} pings matched",
                      flush=True)
    print(f"\nmedian per hop, us ({args.blocks} x {args.pings} pings per contender)")
    print(f"{'hop':14s}" + "".join(f"{name:>12s}" for name in names))
    for hop in HOPS:
        cells = [statistics.median(samples[n][hop]) if samples[n][hop] else float("nan") for n in names]
        print(f"{hop:14s}" + "".join(f"{c:12.1f}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
