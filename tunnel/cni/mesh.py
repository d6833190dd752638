"""The mesh agent's state file, as the plugin reads it (sans-I/O).

Contract with ``wg-py mesh join`` (issue 13; the writer is :mod:`tunnel.mesh.state`, whose
docstring is the authority): the agent keeps ``<stateDir>/<IFACE>.json`` (default
``/run/wg-py/mesh``), written atomically (tmp + rename) after every reconcile and removed when it
leaves cleanly::

    {"network": NAME, "interface": IFACE, "mode": "l3",
     "network_cidr": "10.50.0.0/16", "subnet": "10.50.3.0/24", "address": "10.50.3.1",
     "mtu": 1420, "public_key": B64,
     "nodes": [{"name", "public_key", "subnet", "address", "endpoints", "alive"}],
     "owned": {...}, "counters": {...}, "pid": 4711, "updated": 1700000000.0}

``address`` is the node's tunnel address, a bare address (the agent puts it on IFACE as a /32,
or /128): the first host of ``subnet``, which is also the gateway host-local gives the bridge,
so the node answers pods and remote nodes on one address. ``mtu`` is the network config's inner
MTU (the agent accepts 576-65455; IPv6 needs at least 1280).

The plugin needs ``interface``, ``network_cidr``, ``subnet``, ``address`` and ``mtu``; it checks
that they agree with each other (the subnet inside the network, the MTU sane for the family) and
ignores the rest, so the agent may add fields. ``tests/test_cni_mesh_state.py`` writes the file
with the agent's own writer and reads it here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from tunnel.cni.spec import MESH_STATE_INVALID, CniError, parse_network

DEFAULT_STATE_DIR = "/run/wg-py/mesh"
STATE_DIR_ENV = "WGPY_MESH_STATE_DIR"
MIN_MTU = {4: 576, 6: 1280}  # per family: every IPv4 host takes 576, IPv6 needs 1280
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
    low = MIN_MTU[subnet.version]
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not low <= mtu <= MAX_MTU:
        raise bad(f"mtu {mtu!r} is not an integer in [{low}, {MAX_MTU}]")
    address: Address | None = None
    if obj.get("address") not in (None, ""):
        try:
            address = ipaddress.ip_address(str(obj["address"]).split("/")[0])
        except ValueError as exc:
            raise bad(f"address {obj['address']!r} is not an IP address") from exc
    network = obj.get("network", "")
    return MeshState(network if isinstance(network, str) else "", mesh, mode, network_cidr, subnet,
                     address, mtu)
