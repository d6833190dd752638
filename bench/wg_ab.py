"""A/B of two wg-py daemons (e.g. the main checkout's and this one's), WireGuard, workers 1
(``--workers N``: both with ``WGPY_WORKERS=N``): TCP 1 and 4 streams, tunnel CPU per GB, in one
run, rounds alternated. Not a test.

    sudo .venv/bin/python bench/wg_ab.py --a /work/main/.venv/bin/wg-py --b .venv/bin/wg-py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from crypto import keys
from tunnel.lab.bench import INNER, OUTER, WG_MTU, Pair, process_cpu
from tunnel.lab.benchreport import per_gigabyte, tcp_figures
from tunnel.lab.netns import Lab


def wg_pair(lab: Lab, name: str, program: list[str], env: dict[str, str]) -> Pair:
    a, b = lab.namespace(f"{name}a"), lab.namespace(f"{name}b")
    lab.veth(a, b, [f"{OUTER[0]}/24"], [f"{OUTER[1]}/24"])
    privs = [keys.generate_private(), keys.generate_private()]
    for i, ns in enumerate((a, b)):
        iface = lab.start_daemon(ns, program, env=env)
        other = 1 - i
        conf = lab.path(f"{name}{i}.conf")
        conf.write_text(f"[Interface]\nPrivateKey = {keys.to_base64(privs[i])}\nListenPort = {51820 + i}\n\n"
                        f"[Peer]\nPublicKey = {keys.to_base64(keys.public_from_private(privs[other]))}\n"
                        f"AllowedIPs = {INNER[other]}/32\nEndpoint = {OUTER[other]}:{51820 + other}\n")
        lab.run(ns, ["wg", "setconf", iface, str(conf)])
        lab.run(ns, ["ip", "addr", "add", f"{INNER[i]}/24", "dev", iface])
        lab.run(ns, ["ip", "link", "set", "mtu", str(WG_MTU), "up", "dev", iface])
    pair = Pair(name, a, b, INNER[1])
    pair.pids = lab.daemon_pids(a) + lab.daemon_pids(b)
    if not lab.wait_ping(a, pair.server_addr, timeout=20):
        raise RuntimeError(f"{name}: no ping")
    return pair


def tcp(lab: Lab, pair: Pair, streams: int, seconds: int) -> tuple[float, float | None]:
    p0 = process_cpu(pair.pids)
    result = lab.iperf3(pair.server, pair.client, pair.server_addr, seconds=seconds,
                        extra=["-P", str(streams)] if streams > 1 else [])
    p1 = process_cpu(pair.pids)
    bps, nbytes = tcp_figures(result)
    return bps / 1e9, per_gigabyte(sum(p1.values()) - sum(p0.get(p, 0.0) for p in p1), nbytes)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time", type=int, default=5)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--env-a", action="append", default=[], help="KEY=VALUE for a's daemons only")
    p.add_argument("--env-b", action="append", default=[], help="KEY=VALUE for b's daemons only")
    p.add_argument("--json")
    opts = p.parse_args(argv)
    env = {"LOG_LEVEL": "error", **({"WGPY_WORKERS": str(opts.workers)} if opts.workers > 1 else {})}
    rows: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    lab = Lab(f"wab{os.getpid() % 10000}")
    try:
        env_a = {**env, **dict(kv.split("=", 1) for kv in opts.env_a)}
        env_b = {**env, **dict(kv.split("=", 1) for kv in opts.env_b)}
        pairs = {"a": wg_pair(lab, "a", [opts.a], env_a), "b": wg_pair(lab, "b", [opts.b], env_b)}
        for r in range(opts.rounds):
            for name in (("a", "b") if r % 2 == 0 else ("b", "a")):
                g1, c1 = tcp(lab, pairs[name], 1, opts.time)
                g4, c4 = tcp(lab, pairs[name], 4, opts.time)
                with open("/proc/loadavg") as f:
                    load = " ".join(f.read().split()[:3])
                row = {"tcp1_gbps": g1, "tcp1_cpu_s_per_gb": c1, "tcp4_gbps": g4, "tcp4_cpu_s_per_gb": c4,
                       "loadavg": load}
                rows[name].append(row)
                print(f"[{r + 1}/{opts.rounds}] {name} tcp1 {g1:.2f} Gbit/s {c1 or 0:.2f} s/GB  "
                      f"tcp4 {g4:.2f} Gbit/s {c4 or 0:.2f} s/GB  load {load}", flush=True)
    finally:
        lab.close()
    for name in ("a", "b"):
        med = {k: statistics.median(x[k] or 0 for x in rows[name]) for k in rows[name][0] if k != "loadavg"}
        print(name, {k: round(v, 2) for k, v in med.items()})
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"a": opts.a, "b": opts.b, "env_a": opts.env_a, "env_b": opts.env_b, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
