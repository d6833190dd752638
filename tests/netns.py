"""Namespace test helpers, shared by every netns test module (the code is in tunnel.lab.netns).

Use in a test module::

    from tests.netns import netns_factory, requires_root_netns  # noqa: F401 (fixture)

    pytestmark = [pytest.mark.netns, requires_root_netns]

    def test_x(netns_factory: Lab) -> None:
        a, b = wg_pair(netns_factory, "wg-py", "wireguard-go")

``netns_factory`` yields a :class:`tunnel.lab.netns.Lab` whose namespaces, processes, daemons and
sockets are removed when the test ends, failed or not. ``wg_pair`` builds two namespaces joined
by a veth with a WireGuard daemon in each, configured with the real ``wg``.

Implementations: ``wg-py`` (this package's daemon) and ``wireguard-go`` (Debian's; a test that
needs it skips when it is not installed). ``WGPY_INTEROP_PAIRS`` overrides the pairs the interop tests use,
e.g. ``wireguard-go:wireguard-go,wg-py:wg-py``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from crypto import keys
from tunnel.lab.netns import (
    CommandError,
    Lab,
    iperf3_bits_per_second,
    missing_requirements,
    wait_for,
)
from tunnel.wireguard import quick

__all__ = [
    "CommandError", "Lab", "Node", "implementation", "interop_pairs", "iperf3_bits_per_second",
    "netns_factory", "requires_root_netns", "wait_for", "wg_pair",
]

_REASON = missing_requirements(("ip", "wg", "ping", "ss"))
requires_root_netns = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

OUTER = {4: ("192.168.77.{}/24", "192.168.77.{}"), 6: ("fd77::{}/64", "[fd77::{}]")}
DEFAULT_PAIRS = "wg-py:wireguard-go,wireguard-go:wg-py,wg-py:wg-py"


@pytest.fixture
def netns_factory() -> Iterator[Lab]:
    """A Lab for one test; everything it made is removed afterwards."""
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def implementation(name: str) -> list[str]:
    """The command line that starts implementation ``name`` (skips the test if unavailable)."""
    if name == "wireguard-go":
        if shutil.which("wireguard-go") is None:
            pytest.skip("wireguard-go is not installed")
        return ["wireguard-go"]
    if name == "wg-py":
        return quick.daemon_command()
    raise ValueError(name)


def interop_pairs() -> list[tuple[str, str]]:
    text = os.environ.get("WGPY_INTEROP_PAIRS", DEFAULT_PAIRS)
    return [(p.split(":")[0], p.split(":")[1]) for p in text.split(",") if ":" in p]


@dataclass
class Node:
    """One WireGuard end: namespace, interface, keys, outer and inner addresses."""

    lab: Lab = field(repr=False)
    impl: str
    ns: str
    iface: str
    index: int  # 1 or 2: the host part of every address
    private: bytes = field(repr=False)
    port: int
    veth: str = ""
    inner4: str = ""
    inner6: str = ""
    peers: list[Node] = field(default_factory=list, repr=False)

    @property
    def public(self) -> str:
        return keys.to_base64(keys.public_from_private(self.private))

    def wg(self, *args: str, input: str | None = None) -> str:
        return self.lab.run(self.ns, ["wg", *args], input=input).stdout

    def endpoint_of(self, peer: Node) -> str:
        for line in self.wg("show", self.iface, "endpoints").splitlines():
            key, _, endpoint = line.partition("\t")
            if key == peer.public:
                return endpoint
        return ""

    def transfer_of(self, peer: Node) -> tuple[int, int]:
        """(received, sent) bytes for ``peer`` as ``wg show transfer`` reports them."""
        for line in self.wg("show", self.iface, "transfer").splitlines():
            key, rx, tx = line.split("\t")
            if key == peer.public:
                return int(rx), int(tx)
        return 0, 0

    def alive(self) -> bool:
        """The daemon still answers on its UAPI socket."""
        return quick.uapi_alive(self.iface)

    def setconf(self, text: str) -> None:
        path = self.lab.path(f"{self.iface}-{len(self.peers)}.conf")
        path.write_text(text)
        self.lab.run(self.ns, ["wg", "setconf", self.iface, str(path)], timeout=120)


def start_node(lab: Lab, impl: str, ns: str, index: int, port: int,
               env: dict[str, str] | None = None) -> Node:
    program = implementation(impl)
    iface = lab.start_daemon(ns, program, env=env)
    return Node(lab, impl, ns, iface, index, keys.generate_private(), port,
                inner4=f"10.9.0.{index}", inner6=f"fd09::{index}")


def peer_section(peer: Node, endpoint: str | None, keepalive: int | None = None,
                 allowed: str | None = None) -> str:
    text = f"[Peer]\nPublicKey = {peer.public}\n"
    text += f"AllowedIPs = {allowed or f'{peer.inner4}/32, {peer.inner6}/128'}\n"
    if endpoint:
        text += f"Endpoint = {endpoint}\n"
    if keepalive:
        text += f"PersistentKeepalive = {keepalive}\n"
    return text


def configure(node: Node, peer_text: str, mtu: int = 1420) -> None:
    """wg setconf with our key, port and the given [Peer] sections; addresses; MTU; up."""
    node.setconf(f"[Interface]\nPrivateKey = {keys.to_base64(node.private)}\n"
                 f"ListenPort = {node.port}\n\n{peer_text}")
    node.lab.run(node.ns, ["ip", "addr", "add", f"{node.inner4}/24", "dev", node.iface])
    node.lab.run(node.ns, ["ip", "addr", "add", f"{node.inner6}/64", "dev", node.iface, "nodad"])
    node.lab.run(node.ns, ["ip", "link", "set", "mtu", str(mtu), "up", "dev", node.iface])


def wg_pair(
    lab: Lab,
    impl_a: str,
    impl_b: str,
    outer: int = 4,
    mtu: int = 1420,
    veth_mtu: int = 1500,
    env_a: dict[str, str] | None = None,
) -> tuple[Node, Node]:
    """Namespaces ``a`` and ``b`` joined by a veth (192.168.77.0/24 and fd77::/64), a daemon in
    each, peered over ``outer`` IPv4 or IPv6 with inner 10.9.0.0/24 and fd09::/64. ``env_a``:
    extra environment for a's daemon."""
    ns_a, ns_b = lab.namespace("a"), lab.namespace("b")
    lab.veth(ns_a, ns_b, ["192.168.77.1/24", "fd77::1/64"], ["192.168.77.2/24", "fd77::2/64"])
    if veth_mtu != 1500:
        for ns, dev in ((ns_a, "veth0"), (ns_b, "veth1")):
            lab.run(ns, ["ip", "link", "set", "dev", dev, "mtu", str(veth_mtu)])
    a = start_node(lab, impl_a, ns_a, 1, 51821, env_a)
    b = start_node(lab, impl_b, ns_b, 2, 51822)
    a.veth, b.veth = "veth0", "veth1"
    host = OUTER[outer][1]
    configure(a, peer_section(b, f"{host.format(2)}:{b.port}"), mtu)
    configure(b, peer_section(a, f"{host.format(1)}:{a.port}"), mtu)
    a.peers.append(b)
    b.peers.append(a)
    return a, b


def handshake_done(a: Node, b: Node) -> bool:
    out = a.wg("show", a.iface, "latest-handshakes")
    return any(line.startswith(b.public) and not line.endswith("\t0")
               for line in out.splitlines())


def count_allowed_ips(node: Node) -> int:
    """How many allowed IPs ``wg show IFACE allowed-ips`` lists (lines are KEY<TAB>IPS)."""
    out = node.wg("show", node.iface, "allowed-ips")
    return sum(len(re.findall(r"[0-9a-f:.]+/\d+", line.partition("\t")[2]))
               for line in out.splitlines())
