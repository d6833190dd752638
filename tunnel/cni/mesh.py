"""The mesh agent's state file, as the plugin reads it (sans-I/O).

Contract with ``wg-py mesh join`` (issue 13): the agent keeps ``<stateDir>/<IFACE>.json``
(default ``/run/wg-py/mesh``), written atomically (tmp + rename) and removed on a clean exit::

    {"network": NAME, "interface": IFACE, "mode": "l3" | "l2",
     "network_cidr": "10.x.0.0/16", "subnet": "10.x.3.0/24", "address": "10.x.3.0",
     "mtu": 1420, "nodes": [{"name", "public_key", "subnet", "address", "endpoints", "alive"}],
     "updated": 1700000000.0}

The plugin needs ``interface``, ``network_cidr``, ``subnet``, ``address`` and ``mtu``; it checks
that they agree with each other (the subnet inside the network, the MTU sane) and ignores the
rest, so the agent may add fields.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from tunnel.cni.spec import MESH_STATE_INVALID, CniError, parse_network

DEFAULT_STATE_DIR = "/run/wg-py/mesh"
STATE_DIR_ENV = "WGPY_MESH_STATE_DIR"
MIN_MTU = 1280  # what IPv6 needs; an inner MTU below it is a broken state
MAX_MTU = 65535

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class MeshState:
    """What the plugin uses of the node's mesh state."""

    network: str
    interface: str
    mode: str
    network_cidr: Network
    subnet: Network
    address: Address | None
    mtu: int


def parse_state(obj: Any, mesh: str) -> MeshState:
    """Validate the decoded state file for mesh interface ``mesh`` (error 100 on any fault)."""

    def bad(msg: str) -> CniError:
        return CniError(MESH_STATE_INVALID, f"mesh state for {mesh}: {msg}")

    if not isinstance(obj, dict):
        raise bad("not a JSON object")
    if obj.get("interface") != mesh:
        raise bad(f"it describes interface {obj.get('interface')!r}")
    mode = obj.get("mode", "l3")
    if mode not in ("l3", "l2"):
        raise bad(f"unknown mode {mode!r}")
    network_cidr = parse_network(obj.get("network_cidr"), "network_cidr", MESH_STATE_INVALID)
    subnet = parse_network(obj.get("subnet"), "subnet", MESH_STATE_INVALID)
    if subnet.version != network_cidr.version or not subnet.subnet_of(network_cidr):  # type: ignore[arg-type]
        raise bad(f"subnet {subnet} is not inside network {network_cidr}")
    if subnet.num_addresses < 4:
        raise bad(f"subnet {subnet} is too small for pods")
    mtu = obj.get("mtu")
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not MIN_MTU <= mtu <= MAX_MTU:
        raise bad(f"mtu {mtu!r} is not an integer in [{MIN_MTU}, {MAX_MTU}]")
    address: Address | None = None
    if obj.get("address") not in (None, ""):
        try:
            address = ipaddress.ip_address(str(obj["address"]).split("/")[0])
        except ValueError as exc:
            raise bad(f"address {obj['address']!r} is not an IP address") from exc
    network = obj.get("network", "")
    return MeshState(network if isinstance(network, str) else "", mesh, mode, network_cidr, subnet,
                     address, mtu)
