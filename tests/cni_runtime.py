"""A minimal container runtime for the wg-py-cni tests: exec the plugin as a runtime does.

:class:`Runtime` runs the ``wg-py-cni`` console script inside a node's namespace with the CNI
environment and the network config on stdin, against Debian's reference ``bridge`` and
``host-local`` plugins (``/usr/lib/cni``). Everything the plugin and host-local write goes to the
lab's temporary directory (``stateDir``, ``dataDir`` and host-local's ``ipam.dataDir``), so
nothing lands in ``/run/wg-py`` or ``/var/lib/cni``. :func:`write_state` writes a mesh state file
through the agent's writer, standing in for the agent in the single-node tests
(``tests/test_cni_mesh_netns.py`` runs the real agent).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunnel.lab.netns import Lab
from tunnel.mesh import state as mesh_state

CNI_BIN = "/usr/lib/cni"
PLUGIN = Path(sys.executable).parent / "wg-py-cni"


def missing_cni() -> str | None:
    """Why the CNI tests cannot run here (the plugin script or the reference plugins absent)."""
    if not os.access(PLUGIN, os.X_OK):
        return f"{PLUGIN} is missing: make build installs the wg-py-cni console script"
    for name in ("bridge", "host-local"):
        if not os.access(f"{CNI_BIN}/{name}", os.X_OK):
            return f"{CNI_BIN}/{name} is missing: apt-get install containernetworking-plugins (make deps)"
    return None


def write_state(directory: Path, iface: str, *, network_cidr: str, subnet: str, address: str, mtu: int,
                mode: str = "l3", nodes: list[dict[str, Any]] | None = None, network: str = "testnet") -> Path:
    """A mesh state file for the single-node tests, written by the agent's own writer
    (:func:`tunnel.mesh.state.write_state`, tmp + rename) in the shape ``Agent.state()`` has."""
    obj = {"network": network, "interface": iface, "mode": mode, "network_cidr": network_cidr,
           "subnet": subnet, "address": address, "mtu": mtu, "public_key": "", "nodes": nodes or [],
           "owned": {"peers": [], "routes": []}, "counters": {}, "pid": os.getpid(), "updated": 1.0}
    path = mesh_state.state_path(directory, iface)
    mesh_state.write_state(path, obj)
    return path


@dataclass
class Call:
    """One plugin invocation's outcome."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def obj(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


@dataclass
class Runtime:
    """Calls wg-py-cni for one node (its namespace ``node_ns``) with per-test directories."""

    lab: Lab
    node_ns: str
    mesh: str
    network: str
    version: str = "1.0.0"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = self.lab.path(f"cni-{self.node_ns}")
        self.state_dir = base / "state"
        self.data_dir = base / "cache"
        self.ipam_dir = base / "host-local"
        for d in (self.state_dir, self.data_dir, self.ipam_dir):
            d.mkdir(parents=True, exist_ok=True)

    def config(self, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": self.version, "name": self.network, "type": "wg-py-cni", "mesh": self.mesh,
            "stateDir": str(self.state_dir), "dataDir": str(self.data_dir),
            "ipam": {"dataDir": str(self.ipam_dir)},
        }
        conf.update(copy.deepcopy(self.extra))
        conf.update(overrides)
        return conf

    def call(self, command: str, container_id: str = "", pod_ns: str | None = None, *, ifname: str = "eth0",
             conf: dict[str, Any] | None = None, stdin: str | None = None, env: dict[str, str] | None = None,
             netns_path: str | None = None) -> Call:
        environ = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname,
            "CNI_NETNS": netns_path if netns_path is not None else (f"/var/run/netns/{pod_ns}" if pod_ns else ""),
            "CNI_PATH": CNI_BIN, "CNI_ARGS": "",
        }
        environ.update(env or {})
        text = stdin if stdin is not None else json.dumps(conf if conf is not None else self.config())
        done = self.lab.run(self.node_ns, [str(PLUGIN)], input=text, env=environ, check=False, timeout=60)
        return Call(done.returncode, done.stdout, done.stderr)

    def add(self, container_id: str, pod_ns: str, **kw: Any) -> dict[str, Any]:
        done = self.call("ADD", container_id, pod_ns, **kw)
        assert done.returncode == 0, f"ADD failed: {done.stdout}{done.stderr}"
        result: dict[str, Any] = done.obj
        return result

    def pod_address(self, result: dict[str, Any]) -> str:
        return str(result["ips"][0]["address"]).split("/")[0]

    def reserved(self) -> set[str]:
        """Addresses host-local holds for this network (its files named by address)."""
        directory = self.ipam_dir / self.network
        if not directory.is_dir():
            return set()
        return {p.name for p in directory.iterdir() if p.name[0].isdigit() and "last_reserved" not in p.name}

    def cached(self) -> list[str]:
        directory = self.data_dir / self.network
        return sorted(p.name for p in directory.glob("*.json")) if directory.is_dir() else []


def links(lab: Lab, ns: str) -> dict[str, dict[str, Any]]:
    """``ip -j addr show`` in ``ns`` by interface name."""
    return {entry["ifname"]: entry for entry in json.loads(lab.run(ns, ["ip", "-j", "addr", "show"]).stdout)}


def routes(lab: Lab, ns: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(lab.run(ns, ["ip", "-j", "-4", "route", "show"]).stdout)
    return out
