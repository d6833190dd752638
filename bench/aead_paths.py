"""The WireGuard tunnel with each AEAD path of crypto/_transport.pyx, run after run (issue 17).

For each round and each path (``WGPY_AEAD=evp``: OpenSSL per packet; ``auto``: the batch code
of crypto/_chacha_batch.h where the CPU has it), a fresh wg-py pair in namespaces
(``tunnel.lab.bench.build_pair``), then an iperf3 UDP flood of 64-byte payloads (received kpps,
and the daemons' CPU per received packet) and one TCP stream (tunnel CPU per GB). The order of
the two paths alternates from round to round, so a rising machine load does not favour one.
Needs root, iperf3 and the built extensions; about 25 s per path and round.

    .venv/bin/python bench/aead_paths.py [--rounds 4] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os

from tunnel.lab import bench
from tunnel.lab.netns import Lab

PATHS = ("evp", "auto")


def one_run(mode: str, tag: str, seconds: int) -> str:
    """Build a wg-py pair whose daemons use the AEAD path ``mode``, measure, tear down."""
    os.environ["WGPY_AEAD"] = mode  # the daemons inherit it (tunnel.lab.netns.tool_env)
    try:
        with Lab(f"aep{os.getpid() % 1000}{tag}") as lab:
            pair = bench.build_pair(lab, "wgpy")
            before = sum(bench.process_cpu(pair.pids).values())
            kpps = bench.measure_udp(lab, pair, seconds)
            after = sum(bench.process_cpu(pair.pids).values())
            tcp = bench.measure_tcp(lab, pair, 1, seconds)
    finally:
        os.environ.pop("WGPY_AEAD", None)
    per_packet = (after - before) / (kpps * 1e3 * seconds) * 1e9 if kpps else float("nan")
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    return (f"{mode:5} udp64 {kpps:6.1f} kpps  tunnel cpu {per_packet:6.0f} ns/received packet  "
            f"tcp x1 {tcp['gbps']:.2f} Gbit/s {tcp['cpu_tunnel']:.2f} s/GB  load {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    for round_ in range(args.rounds):
        order = PATHS if round_ % 2 == 0 else PATHS[::-1]
        for mode in order:
            print(f"round {round_} {one_run(mode, f'{round_}{mode[0]}', args.seconds)}", flush=True)


if __name__ == "__main__":
    main()
