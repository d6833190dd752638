"""Backends: what applies a reconciler :class:`~tunnel.mesh.reconcile.Plan` to a data plane.

:class:`WireGuardBackend` drives an ordinary wg-py interface: it starts the wg-py daemon for
IFACE as ``wg-py up`` does (or adopts a running one: an agent restarted after SIGKILL finds its
interface still forwarding), configures it through the UAPI socket
``/var/run/wireguard/IFACE.sock`` (the protocol ``wg`` speaks, so ``wg show IFACE`` shows what
the mesh made), and sets the node's tunnel address and the routes to remote subnets with
``ip``. All peer changes of one plan go in one UAPI ``set``, which wg-py applies atomically.

:class:`FakeBackend` keeps peers and routes in memory (the unit tests and the 200-agent
benchmark run the same agent code on it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tunnel.mesh.config import IPAddress, IPNetwork
from tunnel.mesh.reconcile import (
    AddPeer,
    AddRoute,
    Endpoint,
    Observed,
    PeerSpec,
    Plan,
    RemovePeer,
    RemoveRoute,
    UpdatePeer,
)
from tunnel.wireguard.quick import daemon_command, uapi_socket

log = logging.getLogger("tunnel.mesh")

COMMAND_TIMEOUT = 30.0


class BackendError(RuntimeError):
    """The data plane refused or could not be reached; the message says which step."""


class Backend(Protocol):
    async def setup(self, private_key: bytes, listen_port: int, address: IPAddress, mtu: int) -> bool: ...
    async def observe(self) -> dict[bytes, Observed]: ...
    async def apply(self, plan: Plan) -> dict[int, bool]: ...
    async def teardown(self) -> None: ...


def peer_lines(action: AddPeer | UpdatePeer | RemovePeer) -> list[str]:
    """The UAPI ``set`` lines of one peer action."""
    if isinstance(action, RemovePeer):
        return [f"public_key={action.public_key.hex()}", "remove=true"]
    spec = action.spec
    lines = [f"public_key={spec.public_key.hex()}", "replace_allowed_ips=true"]
    lines += [f"allowed_ip={prefix}" for prefix in spec.allowed_ips]
    if spec.endpoint is not None and (isinstance(action, AddPeer) or action.set_endpoint):
        host, port = spec.endpoint
        lines.append(f"endpoint=[{host}]:{port}" if ":" in host else f"endpoint={host}:{port}")
    lines.append(f"persistent_keepalive_interval={spec.keepalive}")
    return lines


def parse_get(lines: list[str]) -> tuple[dict[str, str], dict[bytes, Observed]]:
    """A ``get=1`` reply: the device keys, and each peer's endpoint and last handshake."""
    device: dict[str, str] = {}
    peers: dict[bytes, Observed] = {}
    key: bytes | None = None
    endpoint: Endpoint | None = None
    sec = nsec = 0

    def flush() -> None:
        if key is not None:
            peers[key] = Observed(endpoint, sec + nsec / 1e9 if sec else None)

    for line in lines:
        name, sep, value = line.partition("=")
        if not sep:
            continue
        if name == "public_key":
            flush()
            key, endpoint, sec, nsec = bytes.fromhex(value), None, 0, 0
        elif key is None:
            device[name] = value
        elif name == "endpoint":
            host, _, port = value.rpartition(":")
            endpoint = (host.strip("[]"), int(port))
        elif name == "last_handshake_time_sec":
            sec = int(value)
        elif name == "last_handshake_time_nsec":
            nsec = int(value)
    flush()
    return device, peers


async def uapi_request(iface: str, request: str, timeout: float = COMMAND_TIMEOUT) -> list[str]:
    """One UAPI request on IFACE's socket; the reply lines. BackendError unless ``errno=0``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(uapi_socket(iface)))
            try:
                writer.write(request.encode())
                await writer.drain()
                data = bytearray()
                while not (data.endswith(b"\n\n") and b"errno=" in data[-64:]):
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        raise BackendError(f"UAPI {iface}: {exc}") from None
    lines = data.decode(errors="replace").split("\n")
    for index in range(len(lines) - 1, -1, -1):
        if lines[index].startswith("errno="):
            if lines[index] != "errno=0":
                raise BackendError(f"UAPI {iface}: {lines[index]}")
            return lines[:index]
    raise BackendError(f"UAPI {iface}: reply without errno")


async def run(argv: list[str], check: bool = True) -> tuple[int, str]:
    """Run a command; (exit code, combined output). BackendError on a non-zero exit if ``check``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(COMMAND_TIMEOUT):
            out, _ = await proc.communicate()
    except (OSError, TimeoutError) as exc:
        raise BackendError(f"{' '.join(argv)}: {exc}") from None
    text = out.decode(errors="replace").strip()
    if check and proc.returncode != 0:
        raise BackendError(f"{' '.join(argv)}: exit {proc.returncode}: {text}")
    return proc.returncode or 0, text


class WireGuardBackend:
    """A wg-py interface configured through UAPI plus ``ip`` (see the module docstring)."""

    def __init__(self, iface: str, network: IPNetwork) -> None:
        self.iface = iface
        self.network = network
        self.adopted = False

    async def _alive(self) -> bool:
        try:
            await uapi_request(self.iface, "get=1\n\n", timeout=5.0)
        except BackendError:
            return False
        return True

    async def setup(self, private_key: bytes, listen_port: int, address: IPAddress, mtu: int) -> bool:
        """Start (or adopt) the interface; returns True if an existing one was adopted."""
        self.adopted = await self._alive()
        if not self.adopted:
            await run([*daemon_command(), self.iface])
        lines = await uapi_request(self.iface, "get=1\n\n")
        device, _ = parse_get(lines)
        body = []
        if device.get("private_key") != private_key.hex():
            body.append(f"private_key={private_key.hex()}")
        if device.get("listen_port") != str(listen_port):
            body.append(f"listen_port={listen_port}")
        if body:
            await uapi_request(self.iface, "set=1\n" + "\n".join(body) + "\n\n")
        await run(["ip", "link", "set", "dev", self.iface, "mtu", str(mtu), "up"])
        await self.set_address(address)
        return self.adopted

    async def set_address(self, address: IPAddress) -> None:
        """The node's tunnel address as a host address on IFACE; stale mesh addresses go."""
        bits = address.max_prefixlen
        _, text = await run(["ip", "-o", f"-{address.version}", "addr", "show", "dev", self.iface])
        for line in text.splitlines():
            fields = line.split()
            if "inet" in fields or "inet6" in fields:
                cidr = fields[fields.index("inet6" if "inet6" in fields else "inet") + 1]
                host = cidr.split("/")[0]
                if host != str(address) and _in(host, self.network):
                    await run(["ip", "addr", "del", cidr, "dev", self.iface], check=False)
        extra = ["nodad"] if address.version == 6 else []
        await run(["ip", "addr", "replace", f"{address}/{bits}", "dev", self.iface, *extra])

    async def observe(self) -> dict[bytes, Observed]:
        _, peers = parse_get(await uapi_request(self.iface, "get=1\n\n"))
        return peers

    async def apply(self, plan: Plan) -> dict[int, bool]:
        done: dict[int, bool] = {}
        peer_indices = [i for i, a in enumerate(plan.actions) if isinstance(a, AddPeer | UpdatePeer | RemovePeer)]
        if peer_indices:
            body = ["set=1"]
            for index in peer_indices:
                action = plan.actions[index]
                assert isinstance(action, AddPeer | UpdatePeer | RemovePeer)
                body += peer_lines(action)
            try:
                await uapi_request(self.iface, "\n".join(body) + "\n\n")
                ok = True
            except BackendError as exc:
                log.error("%s: peer update failed: %s", self.iface, exc)
                ok = False
            done.update(dict.fromkeys(peer_indices, ok))
        for index, action in enumerate(plan.actions):
            if isinstance(action, AddRoute):
                code, text = await run(["ip", "route", "replace", str(action.prefix), "dev", self.iface], False)
            elif isinstance(action, RemoveRoute):
                code, text = await run(["ip", "route", "del", str(action.prefix), "dev", self.iface], False)
                if code and ("No such process" in text or "Cannot find device" in text):
                    code = 0  # already gone: what we wanted
            else:
                continue
            if code:
                log.error("%s: route %s failed: %s", self.iface, action, text)
            done[index] = code == 0
        return done

    async def teardown(self) -> None:
        await run(["ip", "link", "del", "dev", self.iface], check=False)


def _in(host: str, network: IPNetwork) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host) in network
    except ValueError:
        return False


@dataclass
class FakeBackend:
    """Peers and routes in memory; ``learned`` injects handshake-learned endpoints (tests)."""

    peers: dict[bytes, PeerSpec] = field(default_factory=dict)
    routes: set[IPNetwork] = field(default_factory=set)
    learned: dict[bytes, Observed] = field(default_factory=dict)
    address: IPAddress | None = None
    up: bool = False
    fail: bool = False
    applied: int = 0

    async def setup(self, private_key: bytes, listen_port: int, address: IPAddress, mtu: int) -> bool:
        adopted = self.up
        self.up = True
        self.address = address
        return adopted

    async def observe(self) -> dict[bytes, Observed]:
        if self.fail:
            raise BackendError("fake backend failing")
        result = {key: Observed(spec.endpoint, None) for key, spec in self.peers.items()}
        for key, seen in self.learned.items():
            if key in result:
                result[key] = seen
        return result

    async def apply(self, plan: Plan) -> dict[int, bool]:
        if self.fail:
            return {}
        for action in plan.actions:
            if isinstance(action, RemovePeer):
                self.peers.pop(action.public_key, None)
            elif isinstance(action, AddPeer | UpdatePeer):
                old = self.peers.get(action.spec.public_key)
                endpoint = action.spec.endpoint
                if isinstance(action, UpdatePeer) and not action.set_endpoint and old is not None:
                    endpoint = old.endpoint
                self.peers[action.spec.public_key] = PeerSpec(
                    action.spec.public_key, action.spec.allowed_ips, endpoint, action.spec.keepalive)
            elif isinstance(action, AddRoute):
                self.routes.add(action.prefix)
            else:
                self.routes.discard(action.prefix)
        self.applied += len(plan.actions)
        return dict.fromkeys(range(len(plan.actions)), True)

    async def teardown(self) -> None:
        self.up = False
        self.peers.clear()
        self.routes.clear()

    def endpoints(self) -> Mapping[bytes, Endpoint | None]:
        return {key: spec.endpoint for key, spec in self.peers.items()}
