"""Helpers for the mesh tests: a real etcd, namespaces on one bridge, agents run as ``wg-py mesh join``.

Topology: a hub namespace holds a bridge (underlay 10.77.0.0/24, hub 10.77.0.254) and the etcd
server (listening on the hub address only); node ``i`` lives in its own namespace, attached to
the bridge by a veth, underlay address 10.77.0.i. Everything belongs to a
:class:`tunnel.lab.netns.Lab` and goes away with it (etcd's data dir is in the lab's temp dir).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tunnel.lab.netns import CommandError, Lab, Process, wait_for

HUB_ADDR = "10.77.0.254"
CLIENT_PORT = 2379
WAIT = 30.0


def etcd_missing() -> str | None:
    for tool in ("etcd", "etcdctl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian etcd-server / etcd-client)"
    return None


@dataclass
class Etcd:
    """An etcd server in ``ns`` (None: this namespace), data in ``data_dir``."""

    lab: Lab
    ns: str | None
    host: str
    data_dir: Path
    port: int = CLIENT_PORT
    tls: dict[str, str] = field(default_factory=dict)  # cert, key, cacert (server side, client certs required)
    process: Process | None = None
    auth: str = ""  # root's password once auth is enabled

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        peer = f"http://{self.host}:{self.port + 1}"
        argv = ["etcd", "--name", "m", "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"m={peer}", "--log-level", "warn"]
        if self.tls:
            argv += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                     "--trusted-ca-file", self.tls["cacert"], "--client-cert-auth"]
        self.process = self.lab.spawn(self.ns, argv)
        if not wait_for(lambda: self.healthy() or not self.process_alive(), timeout, 0.2) or not self.healthy():
            raise CommandError(f"etcd did not start: {self.process.output()[-2000:]}")

    def process_alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def _flags(self) -> list[str]:
        flags = [f"--endpoints={self.url}", "--command-timeout=3s"]
        if self.tls:
            flags += [f"--cacert={self.tls['cacert']}", f"--cert={self.tls['client_cert']}",
                      f"--key={self.tls['client_key']}"]
        if self.auth:
            flags.append(f"--user=root:{self.auth}")
        return flags

    def etcdctl(self, *args: str, check: bool = True) -> str:
        return self.lab.run(self.ns, ["etcdctl", *self._flags(), *args], check=check,
                            env={"ETCDCTL_API": "3"}).stdout

    def healthy(self) -> bool:
        try:
            done = self.lab.run(self.ns, ["etcdctl", *self._flags(), "endpoint", "health"], check=False,
                                timeout=10, env={"ETCDCTL_API": "3"})
        except CommandError:
            return False
        return "is healthy" in done.stdout + done.stderr

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class MeshLab:
    """A hub with etcd and up to 250 node namespaces on one bridge."""

    def __init__(self, lab: Lab, network: str = "m") -> None:
        self.lab = lab
        self.network = network
        self.hub = lab.namespace("hub")
        # A fixed MAC: a bridge without one takes the lowest MAC of its ports, so it changes as
        # nodes are added, and a node that resolved the hub's address before that sends to the
        # old MAC, which the hub then drops as not its own, until the neighbour entry times out
        # (~25 s of "no etcd endpoint answered" on an early node, seen in this test).
        lab.run(self.hub, ["ip", "link", "add", "br0", "address", "02:77:00:00:00:fe", "type", "bridge"])
        lab.run(self.hub, ["ip", "addr", "add", f"{HUB_ADDR}/24", "dev", "br0"])
        lab.run(self.hub, ["ip", "link", "set", "br0", "up"])
        self.etcd = Etcd(lab, self.hub, HUB_ADDR, lab.path("etcd-data"))
        self.nodes: dict[int, str] = {}
        self.ifaces: dict[int, str] = {}
        self.agents: dict[int, Process] = {}
        self.state_dir = lab.path("state")

    def node(self, index: int) -> str:
        if index not in self.nodes:
            ns = self.lab.namespace(f"n{index}")
            self.lab.veth(ns, self.hub, [f"10.77.0.{index}/24"], [], names=("eth0", f"h{index}"))
            self.lab.run(self.hub, ["ip", "link", "set", f"h{index}", "master", "br0"])
            self.nodes[index] = ns
            self.ifaces[index] = self.lab.interface_name()
        return self.nodes[index]

    def mesh(self, *args: str, ns: str | None = None, check: bool = True,
             env: dict[str, str] | None = None) -> str:
        argv = [sys.executable, "-m", "tunnel.cli", "mesh", *args]
        if "--etcd" not in args:
            argv += ["--etcd", self.etcd.url]
        return self.lab.run(ns or self.hub, argv, check=check, env=env).stdout

    def join(self, index: int, *extra: str, env: dict[str, str] | None = None) -> Process:
        ns = self.node(index)
        argv = [sys.executable, "-m", "tunnel.cli", "mesh", "join", self.network, self.ifaces[index],
                "--endpoint", f"10.77.0.{index}", "--name", f"node{index}",
                "--key-file", str(self.lab.path(f"node{index}.key")), "--state-dir", str(self.state_dir),
                "--interval", "1", *extra]
        if "--etcd" not in extra:
            argv += ["--etcd", self.etcd.url]
        proc = self.lab.spawn(ns, argv, env=env)
        self.agents[index] = proc
        return proc

    def state(self, index: int) -> dict[str, Any] | None:
        try:
            data = json.loads((self.state_dir / f"{self.ifaces[index]}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def address(self, index: int) -> str | None:
        state = self.state(index)
        return str(state["address"]) if state else None

    def peers(self, index: int) -> set[str]:
        """The public keys (base64) in ``wg show IFACE peers`` of node ``index``."""
        done = self.lab.run(self.nodes[index], ["wg", "show", self.ifaces[index], "peers"], check=False)
        return set(done.stdout.split()) if done.returncode == 0 else set()

    def key_of(self, index: int) -> str | None:
        state = self.state(index)
        return str(state["public_key"]) if state else None


def converged(m: MeshLab, members: list[int]) -> bool:
    """Every member's agent lists exactly the members, and its interface has the others as peers."""
    keys = {m.key_of(i) for i in members}
    if None in keys:
        return False
    for i in members:
        state = m.state(i)
        if state is None or {n["public_key"] for n in state["nodes"]} != keys:
            return False
        if m.peers(i) != keys - {m.key_of(i)}:
            return False
    return True


def wait_converged(m: MeshLab, members: list[int], timeout: float = WAIT) -> None:
    """Wait (bounded) for :func:`converged`; fail the test with the agents' logs if it never is."""
    if not wait_for(lambda: converged(m, members), timeout, 0.2):
        logs = "\n".join(f"--- node{i}\n{m.agents[i].output()[-3000:]}" for i in members if i in m.agents)
        pytest.fail(f"members {members} did not converge\n{logs}")
