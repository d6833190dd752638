"""The reconciler: desired nodes + what this agent installed + what the device reports -> actions.

Sans-I/O and pure: :func:`reconcile` reads nothing but its arguments (time is ``now``, a Unix
time of this machine) and returns a :class:`Plan`: the actions in the order to apply them
(removals first, then peers, then routes) and the :class:`Installed` state to remember once
they are applied. The backend (a WireGuard interface, or a fake) applies them.

Contracts:

* **Ownership.** Only peers and routes in ``installed`` are ever removed or changed; a peer or
  route someone else configured on the same interface is never touched. A desired peer whose key
  is already on the device but not in ``installed`` is adopted (updated and from then on owned):
  it is one of ours by key, as after an agent restart that lost its state.
* **Peers.** One per remote node: the node's subnet as its allowed IPs, the configured
  persistent keepalive, and an endpoint (below). A node whose subnet changes keeps its peer and
  gets new allowed IPs; a different key is a different node.
* **Routes.** One per remote node's subnet, through the interface.
* **Roaming.** The endpoint to program is the record's first endpoint, unless the device reports
  a handshake for that peer that is newer than the moment this agent first saw the record's
  current revision (``Node.seen_at``) and not older than :data:`ROAM_TRUST` seconds: then the
  peer authenticated itself from where it is now (a roamed or NATed node), and the learned
  endpoint stays. A record revised after that handshake wins again (the node re-announced).
  A record without endpoints never clears a learned endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tunnel.mesh.config import IPNetwork
from tunnel.mesh.record import Node

ROAM_TRUST = 300.0  # seconds a handshake-learned endpoint beats the record's (WireGuard rekeys every 120 s)

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A peer as this agent wants it on the device."""

    public_key: bytes
    allowed_ips: tuple[IPNetwork, ...]
    endpoint: Endpoint | None
    keepalive: int


@dataclass(frozen=True, slots=True)
class Observed:
    """A peer as the device reports it: current endpoint, last handshake (Unix time; None: never)."""

    endpoint: Endpoint | None
    last_handshake: float | None


@dataclass(slots=True)
class Installed:
    """What this agent installed and still owns."""

    peers: dict[bytes, PeerSpec] = field(default_factory=dict)
    routes: set[IPNetwork] = field(default_factory=set)

    def copy(self) -> Installed:
        return Installed(dict(self.peers), set(self.routes))


@dataclass(frozen=True, slots=True)
class AddPeer:
    spec: PeerSpec


@dataclass(frozen=True, slots=True)
class UpdatePeer:
    """Replace the allowed IPs and keepalive; set the endpoint only if ``set_endpoint``."""

    spec: PeerSpec
    set_endpoint: bool


@dataclass(frozen=True, slots=True)
class RemovePeer:
    public_key: bytes


@dataclass(frozen=True, slots=True)
class AddRoute:
    prefix: IPNetwork


@dataclass(frozen=True, slots=True)
class RemoveRoute:
    prefix: IPNetwork


Action = AddPeer | UpdatePeer | RemovePeer | AddRoute | RemoveRoute


@dataclass(slots=True)
class Plan:
    actions: list[Action]
    installed: Installed  # the state once every action is applied

    @property
    def empty(self) -> bool:
        return not self.actions


def endpoint_for(node: Node, observed: Observed | None, now: float) -> tuple[Endpoint | None, bool]:
    """The endpoint the peer should have, and whether that is a handshake-learned one."""
    advertised = node.endpoints[0] if node.endpoints else None
    if observed is not None and observed.endpoint is not None:
        handshake = observed.last_handshake
        if advertised is None:
            return observed.endpoint, True
        if handshake is not None and handshake > node.seen_at and now - handshake <= ROAM_TRUST:
            return observed.endpoint, True
    return advertised, False


def reconcile(
    desired: Mapping[bytes, Node],
    installed: Installed,
    observed: Mapping[bytes, Observed],
    now: float,
    keepalive: int,
    self_key: bytes | None = None,
) -> Plan:
    """The actions that take the device from ``installed`` to ``desired`` (see the module docstring).

    ``observed`` is every peer the device has (ours or not), keyed by public key. ``self_key``
    (this node) is never made a peer.
    """
    removals: list[Action] = []
    peer_actions: list[Action] = []
    route_actions: list[Action] = []
    after = Installed()
    wanted = {key: node for key, node in desired.items() if key != self_key}

    for key in sorted(installed.peers):
        if key not in wanted:
            removals.append(RemovePeer(key))
    for key in sorted(wanted):
        node = wanted[key]
        seen = observed.get(key)
        endpoint, learned = endpoint_for(node, seen, now)
        spec = PeerSpec(key, (node.subnet,), endpoint, keepalive)
        after.peers[key] = spec
        current = installed.peers.get(key)
        if current is None and seen is None:
            peer_actions.append(AddPeer(spec))
            continue
        on_device = seen.endpoint if seen is not None else (current.endpoint if current else None)
        set_endpoint = not learned and endpoint is not None and endpoint != on_device
        if current is None or set_endpoint or current.allowed_ips != spec.allowed_ips \
                or current.keepalive != spec.keepalive:
            peer_actions.append(UpdatePeer(spec, set_endpoint))
        elif current.endpoint != spec.endpoint:
            after.peers[key] = spec  # a learned endpoint: nothing to write, just remember it

    wanted_routes = {node.subnet for node in wanted.values()}
    for prefix in sorted(installed.routes - wanted_routes, key=_sort_key):
        removals.append(RemoveRoute(prefix))
    for prefix in sorted(wanted_routes - installed.routes, key=_sort_key):
        route_actions.append(AddRoute(prefix))
    after.routes = set(wanted_routes)
    return Plan(removals + peer_actions + route_actions, after)


def _sort_key(prefix: IPNetwork) -> tuple[int, int, int]:
    return (prefix.version, int(prefix.network_address), prefix.prefixlen)


def apply_partial(installed: Installed, plan: Plan, done: Mapping[int, bool]) -> Installed:
    """The installed state when only some actions succeeded (``done[i]`` for action ``i``).

    A failed removal stays owned (retried next time); a failed add is not owned (retried too,
    as an add); a failed update keeps the old spec.
    """
    result = installed.copy()
    for index, action in enumerate(plan.actions):
        if not done.get(index, False):
            continue
        if isinstance(action, RemovePeer):
            result.peers.pop(action.public_key, None)
        elif isinstance(action, AddPeer | UpdatePeer):
            result.peers[action.spec.public_key] = action.spec
        elif isinstance(action, AddRoute):
            result.routes.add(action.prefix)
        else:
            result.routes.discard(action.prefix)
    touched = {a.public_key if isinstance(a, RemovePeer) else a.spec.public_key
               for a in plan.actions if isinstance(a, AddPeer | UpdatePeer | RemovePeer)}
    for key, spec in plan.installed.peers.items():  # learned endpoints noted without an action
        if key not in touched and key in result.peers:
            result.peers[key] = spec
    return result
