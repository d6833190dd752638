"""Mesh control-plane benchmark (not a test): join and removal times, and 200 simulated agents.

    .venv/bin/python bench/mesh.py [--agents 200] [--ttl 4] [--skip-netns]

1. netns, 5 real nodes (``wg-py mesh join``, real etcd 3.4 in a hub namespace): 4 nodes
   converge, then node 5 joins; measured: from spawning node 5's agent to every other node
   getting a ping reply from node 5's tunnel address (each node polled with ``ping -c1 -W0.2``).
2. the same mesh: SIGKILL node 5's agent; measured: until no other node has its peer
   (``wg show IFACE peers`` polled), against the target TTL + 2 s.
3. N simulated agents in this process (the same Agent code, FakeBackend instead of an
   interface) against one etcd on loopback: all start at once (time to full convergence), then
   one more joins (time until every agent has its peer). Also reported: CPU seconds of this
   process and of etcd over each interval (independent of the machine's load), the leases
   re-granted during the storm (0 when every keepalive made it), and ``/proc/loadavg``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crypto import keys  # noqa: E402
from tests.meshlab import MeshLab  # noqa: E402
from tunnel.lab.netns import Lab, wait_for  # noqa: E402
from tunnel.mesh.agent import Agent, AgentOptions  # noqa: E402
from tunnel.mesh.backend import FakeBackend  # noqa: E402
from tunnel.mesh.config import Keys, NetworkConfig  # noqa: E402
from tunnel.mesh.etcd import EtcdOptions, EtcdStore  # noqa: E402


def netns_part(ttl: int) -> dict[str, float]:
    with Lab() as lab:
        m = MeshLab(lab)
        m.etcd.start()
        m.mesh("init", m.network, "10.60.0.0/16")
        for i in (1, 2, 3, 4):
            m.join(i, "--ttl", str(ttl))
        assert wait_for(lambda: all(m.state(i) and len(m.state(i)["nodes"]) == 4 for i in (1, 2, 3, 4)), 60, 0.2)
        m.node(5)
        start = time.monotonic()
        m.join(5, "--ttl", str(ttl))
        assert wait_for(lambda: m.address(5) is not None, 30, 0.01)
        pending = {1, 2, 3, 4}
        deadline = start + 60
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                done = lab.run(m.nodes[i], ["ping", "-c1", "-W0.2", m.address(5) or ""], check=False)
                if done.returncode == 0:
                    pending.discard(i)
        join_s = time.monotonic() - start
        key5 = m.key_of(5)
        start = time.monotonic()
        m.agents[5].popen.kill()
        ok = wait_for(lambda: all(key5 not in m.peers(i) for i in (1, 2, 3, 4)), 60, 0.02)
        removal_s = time.monotonic() - start
        assert ok and not pending
        return {"join_to_all_ping_s": join_s, "kill_to_removed_everywhere_s": removal_s}


def cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (None: this process)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def simulated(count: int, ttl: int, url: str, etcd_pid: int | None = None) -> dict[str, float]:
    store = EtcdStore(EtcdOptions((url,), timeout=30.0))
    config = NetworkConfig(ipaddress.ip_network("10.0.0.0/16"), 24)
    await store.put(Keys("sim").config, config.to_json().encode())
    agents: list[tuple[Agent, FakeBackend, asyncio.Event]] = []

    def make(i: int) -> tuple[Agent, FakeBackend, asyncio.Event]:
        private = keys.generate_private()
        backend = FakeBackend()
        agent = Agent(store, backend, AgentOptions(
            network="sim", iface=f"sim{i}", private_key=private, public_key=keys.public_from_private(private),
            endpoints=((f"192.0.2.{i % 250 + 1}", 51820),), name=f"sim{i}", ttl=ttl, interval=30.0, resync=600.0))
        return agent, backend, asyncio.Event()

    tasks = []
    start = time.monotonic()
    cpu, etcd_cpu = cpu_of(None), cpu_of(etcd_pid) if etcd_pid else 0.0
    for i in range(count):
        agents.append(make(i))
        tasks.append(asyncio.ensure_future(agents[-1][0].run(agents[-1][2])))
    while any(len(b.peers) < count - 1 for _, b, _ in agents):
        await asyncio.sleep(0.05)
        if time.monotonic() - start > 600:
            raise RuntimeError("no convergence in 600 s")
    converge_s = time.monotonic() - start
    converge_cpu = cpu_of(None) - cpu
    converge_etcd = (cpu_of(etcd_pid) - etcd_cpu) if etcd_pid else 0.0
    regrants = sum(a.counters.lease_regrants for a, _, _ in agents)
    await asyncio.sleep(2.0)  # let the storm's last coalesced reconciles and keepalives settle
    extra = make(count)
    start = time.monotonic()
    cpu, etcd_cpu = cpu_of(None), cpu_of(etcd_pid) if etcd_pid else 0.0
    tasks.append(asyncio.ensure_future(extra[0].run(extra[2])))
    await extra[0].joined.wait()
    key = extra[0].options.public_key
    while any(key not in b.peers for _, b, _ in agents):
        await asyncio.sleep(0.01)
    join_s = time.monotonic() - start
    join_cpu = cpu_of(None) - cpu
    join_etcd = (cpu_of(etcd_pid) - etcd_cpu) if etcd_pid else 0.0
    for _, _, stop in [*agents, extra]:
        stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {f"{count}_agents_start_to_converged_s": converge_s, f"{count}_agents_converge_agents_cpu_s": converge_cpu,
            f"{count}_agents_converge_etcd_cpu_s": converge_etcd, f"{count}_agents_lease_regrants": regrants,
            f"join_visible_to_{count}_agents_s": join_s, f"join_{count}_agents_cpu_s": join_cpu,
            f"join_{count}_etcd_cpu_s": join_etcd}


def simulated_part(count: int, ttl: int) -> dict[str, float]:
    with Lab() as lab:
        from tests.meshlab import Etcd

        etcd = Etcd(lab, None, "127.0.0.1", lab.path("etcd-sim"), port=23000 + (id(lab) % 500) * 2)
        etcd.start()
        pid = etcd.process.popen.pid if etcd.process is not None else None
        return asyncio.run(simulated(count, ttl, etcd.url, pid))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--ttl", type=int, default=4)
    parser.add_argument("--skip-netns", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {}
    if not args.skip_netns:
        results.update(netns_part(args.ttl))
        print(f"5 nodes: join -> all ping {results['join_to_all_ping_s']:.2f} s; "
              f"SIGKILL -> removed everywhere {results['kill_to_removed_everywhere_s']:.2f} s (TTL {args.ttl} s)")
    sim = simulated_part(args.agents, 30)
    results.update(sim)
    for name, value in sim.items():
        print(f"{name}: {value:.2f}")
    print("loadavg:", Path("/proc/loadavg").read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
