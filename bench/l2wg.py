"""One TCP stream through three stacks on one wg-py WireGuard pair, in one run (issue 12).

    .venv/bin/python bench/l2wg.py [--seconds 5] [--rounds 3]

Two namespaces joined by a veth, a wg-py daemon in each (peered, MTU 1420), and on top of that
tunnel, side by side:

  wg      plain wg-py WireGuard: iperf3 to the peer's tunnel address (10.9.0.2)
  l2      wg-py's one-process L2 overlay: ``wg-py vxlan add vx0 id 42 remote PEER dev WG``
          in each daemon (MTU 1370), iperf3 to 10.77.0.2
  kvx     the kernel's vxlan over wg-py: ``ip link add vxk type vxlan id 43 dstport 4790
          local TUNNEL remote PEER dev WG`` (MTU 1370), iperf3 to 10.78.0.2

Rounds alternate the three (wg, l2, kvx, wg, l2, ...), so a change in the machine's load hits
each alike. Per run: Gbit/s (iperf3's receiver), the CPU seconds of the two wg-py daemons per
GB moved (utime+stime from /proc/PID/stat: the daemons only; the kernel's vxlan work runs in
softirq and the senders' context, so for ``kvx`` it is not in that figure), the whole
machine's busy CPU seconds per GB (from /proc/stat: includes everyone else on the host), and
the load average at the start. Prints one JSON line per run and a summary (medians). Root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netns import Lab, wg_pair  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def busy_cpu() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def setup(lab: Lab) -> tuple[Any, Any, list[int]]:
    env = {"WGPY_VXLAN_RUN_DIR": str(lab.path("run"))}
    a, b = wg_pair(lab, "wg-py", "wg-py", env_a=env)
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    pids = lab.daemon_pids(a.ns) + lab.daemon_pids(b.ns)
    for node, peer, index in ((a, b, 1), (b, a, 2)):
        lab.run(node.ns, ["wg-py", "vxlan", "add", "vx0", "id", "42", "dstport", "4789", "remote", peer.inner4,
                          "dev", node.iface], env=env)
        lab.run(node.ns, ["ip", "addr", "add", f"10.77.0.{index}/24", "dev", "vx0"])
        lab.run(node.ns, ["ip", "link", "set", "vx0", "up"])
        lab.run(node.ns, ["ip", "link", "add", "vxk", "type", "vxlan", "id", "43", "dstport", "4790",
                          "local", node.inner4, "remote", peer.inner4, "dev", node.iface])
        lab.run(node.ns, ["ip", "link", "set", "vxk", "mtu", "1370"])
        lab.run(node.ns, ["ip", "addr", "add", f"10.78.0.{index}/24", "dev", "vxk"])
        lab.run(node.ns, ["ip", "link", "set", "vxk", "up"])
    for addr in ("10.77.0.2", "10.78.0.2"):
        assert lab.wait_ping(a.ns, addr, timeout=15), addr
    return a, b, pids


def run_one(lab: Lab, a: Any, b: Any, pids: list[int], name: str, addr: str, seconds: float) -> dict[str, Any]:
    load = os.getloadavg()
    cpu0 = sum(proc_cpu(p) for p in pids)
    busy0 = busy_cpu()
    result = lab.iperf3(b.ns, a.ns, addr, seconds=seconds)
    cpu = sum(proc_cpu(p) for p in pids) - cpu0
    busy = busy_cpu() - busy0
    moved = result["end"]["sum_received"]["bytes"]
    gbps = result["end"]["sum_received"]["bits_per_second"] / 1e9
    gb = moved / 1e9
    return {"stack": name, "gbit_s": round(gbps, 3), "bytes": moved,
            "daemon_cpu_s_per_gb": round(cpu / gb, 3) if gb else None,
            "host_busy_cpu_s_per_gb": round(busy / gb, 3) if gb else None,
            "loadavg": [round(x, 2) for x in load]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    stacks = [("wg", "10.9.0.2"), ("l2", "10.77.0.2"), ("kvx", "10.78.0.2")]
    results: list[dict[str, Any]] = []
    lab = Lab()
    try:
        a, b, pids = setup(lab)
        lab.iperf3(b.ns, a.ns, "10.77.0.2", seconds=1)  # warm-up
        for _ in range(args.rounds):
            for name, addr in stacks:
                row = run_one(lab, a, b, pids, name, addr, args.seconds)
                results.append(row)
                print(json.dumps(row), flush=True)
                time.sleep(0.5)
    finally:
        lab.close()
    summary: dict[str, Any] = {}
    for name, _ in stacks:
        rows = [r for r in results if r["stack"] == name]
        summary[name] = {key: round(statistics.median(r[key] for r in rows), 3)
                         for key in ("gbit_s", "daemon_cpu_s_per_gb", "host_busy_cpu_s_per_gb")}
    wg, l2, kvx = summary["wg"], summary["l2"], summary["kvx"]
    summary["ratios"] = {
        "l2_over_wg_gbit": round(l2["gbit_s"] / wg["gbit_s"], 3),
        "l2_over_kvx_gbit": round(l2["gbit_s"] / kvx["gbit_s"], 3),
        "l2_over_wg_daemon_cpu_per_gb": round(l2["daemon_cpu_s_per_gb"] / wg["daemon_cpu_s_per_gb"], 3),
    }
    print(json.dumps({"summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
