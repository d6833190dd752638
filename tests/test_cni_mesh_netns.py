"""wg-py-cni across two nodes of a WireGuard mesh: every pod reaches every pod and remote node.

Two node namespaces joined by a veth each run a wg-py WireGuard interface. The mesh agent of
issue 13 is NOT used here: the test stands in for it, doing what the agent does in l3 mode
(each node's peer has the other node's subnet as allowed IPs, with a route for it through the
interface) and writing each node's state file in the agent's contract format. The plugin is
exec'd inside each node's namespace, as a runtime on that node would, for two pods per node.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from crypto import keys
from tests.cni_runtime import Runtime, links, missing_cni, write_state
from tests.netns import Node, requires_root_netns, start_node
from tunnel.lab.netns import Lab

_REASON = missing_cni()
pytestmark = [pytest.mark.netns, requires_root_netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

NETWORK_CIDR = "10.62.0.0/16"
MTU = 1420
# (index, subnet, tunnel address): node 2's address sits inside its subnet, away from the
# gateway, so host-local must be kept off it.
NODES = ((1, "10.62.1.0/24", "10.62.1.0"), (2, "10.62.2.0/24", "10.62.2.2"))


@pytest.fixture
def lab() -> Iterator[Lab]:
    instance = Lab()
    try:
        yield instance
    finally:
        instance.close()


def stand_in_agent(lab: Lab, nodes: list[Node], subnets: dict[int, str], addresses: dict[int, str]) -> None:
    """What ``wg-py mesh join`` does in l3 mode, done by hand: peers, addresses, routes."""
    for me in nodes:
        sections = []
        for other in nodes:
            if other is me:
                continue
            sections.append(f"[Peer]\nPublicKey = {other.public}\nAllowedIPs = {subnets[other.index]}\n"
                            f"Endpoint = 192.168.62.{other.index}:{other.port}\n")
        me.setconf(f"[Interface]\nPrivateKey = {keys.to_base64(me.private)}\nListenPort = {me.port}\n\n"
                   + "\n".join(sections))
        lab.run(me.ns, ["ip", "addr", "add", f"{addresses[me.index]}/32", "dev", me.iface])
        lab.run(me.ns, ["ip", "link", "set", "mtu", str(MTU), "up", "dev", me.iface])
        for other in nodes:
            if other is not me:
                lab.run(me.ns, ["ip", "route", "add", subnets[other.index], "dev", me.iface])


def test_pods_on_two_nodes_reach_every_pod_and_the_remote_node(lab: Lab) -> None:
    ns = {i: lab.namespace(f"n{i}") for i, _, _ in NODES}
    lab.veth(ns[1], ns[2], ["192.168.62.1/24"], ["192.168.62.2/24"])
    nodes = [start_node(lab, "wg-py", ns[i], i, 51830 + i) for i, _, _ in NODES]
    subnets = {i: s for i, s, _ in NODES}
    addresses = {i: a for i, _, a in NODES}
    stand_in_agent(lab, nodes, subnets, addresses)
    roster = [{"name": f"node{n.index}", "public_key": n.public, "subnet": subnets[n.index],
               "address": addresses[n.index], "endpoints": [f"192.168.62.{n.index}:{n.port}"], "alive": True}
              for n in nodes]
    pods: dict[str, tuple[int, str]] = {}  # pod namespace -> (node index, address)
    for n in nodes:
        rt = Runtime(lab, n.ns, n.iface, f"{lab.prefix}net")
        write_state(rt.state_dir, n.iface, network_cidr=NETWORK_CIDR, subnet=subnets[n.index],
                    address=addresses[n.index], mtu=MTU, nodes=roster)
        for k in range(2):
            p = lab.namespace(f"n{n.index}p{k}")
            result = rt.add(f"c{n.index}{k}", p)
            addr = rt.pod_address(result)
            assert addr.startswith(subnets[n.index].rsplit(".", 1)[0] + ".")
            assert addr != addresses[n.index]
            assert links(lab, p)["eth0"]["mtu"] == MTU
            pods[p] = (n.index, addr)
    assert len({addr for _, addr in pods.values()}) == 4
    first, second = (p for p in pods if pods[p][0] == 1), (p for p in pods if pods[p][0] == 2)
    a, b = next(first), next(second)
    assert lab.wait_ping(a, pods[b][1], 20.0), "no pod-to-pod path across the mesh (handshake?)"
    unreachable = []
    for src, dst in itertools.permutations(pods, 2):
        if not lab.wait_ping(src, pods[dst][1], 6.0):
            unreachable.append(f"{src} -> {dst} ({pods[dst][1]})")
    for src, (index, _) in pods.items():
        remote = 3 - index
        if not lab.wait_ping(src, addresses[remote], 6.0):
            unreachable.append(f"{src} -> node{remote} tunnel address {addresses[remote]}")
    assert unreachable == []
    # The traffic did cross the WireGuard interfaces (both directions counted by wg).
    for n in nodes:
        other = next(o for o in nodes if o is not n)
        received, sent = n.transfer_of(other)
        assert received > 0 and sent > 0
