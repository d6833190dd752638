"""wg-py-cni on the real mesh: etcd, ``wg-py mesh init``/``join`` on three nodes, two pods each.

The nodes, the hub and etcd come from :mod:`tests.meshlab` (the mesh tests' helpers): a real
etcd in the hub namespace, one ``wg-py mesh join`` agent per node namespace, each agent's state
file in the lab's state directory, which the plugin's ``stateDir`` points at. The plugin is exec'd
inside each node's namespace as a container runtime does (:class:`tests.cni_runtime.Runtime`), with
``CNI_NETNS`` a pod namespace, against Debian's reference ``bridge`` and ``host-local``.

Checked: the agent's l3 routing carries pod traffic (each remote node's whole leased subnet is
its peer's allowed IPs and is routed to the mesh interface; the local subnet goes to the bridge),
every pod pings every other pod and every remote node's tunnel address, and an agent restarted
after SIGKILL keeps its subnet, so the pods' CHECK still passes and their traffic still flows.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cni_runtime import CNI_BIN, PLUGIN, Runtime, links, missing_cni
from tests.meshlab import WAIT, MeshLab, etcd_missing, wait_converged
from tests.netns import requires_root_netns
from tunnel.cni.delegate import DEFAULT_BRIDGE
from tunnel.lab.netns import Lab, missing_requirements, wait_for

_REASON = missing_cni() or missing_requirements(("ip", "ping", "wg")) or etcd_missing()
pytestmark = [pytest.mark.netns, pytest.mark.slow, requires_root_netns,
              pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

NETWORK_CIDR = "10.63.0.0/16"
MTU = 1400  # not the mesh's default (1420): the pods' MTU must come from the mesh
NODES = (1, 2, 3)
PODS_PER_NODE = 2


@pytest.fixture
def mesh() -> Iterator[MeshLab]:
    with Lab() as lab:
        yield MeshLab(lab, network="pods")


def runtime(m: MeshLab, index: int) -> Runtime:
    """The node's runtime, its plugin reading the agent's state file where the agent writes it."""
    return Runtime(m.lab, m.nodes[index], m.ifaces[index], "pods", extra={"stateDir": str(m.state_dir)})


def allowed_ips(m: MeshLab, index: int) -> dict[str, set[str]]:
    """``wg show IFACE allowed-ips`` of node ``index``: public key -> prefixes."""
    out = m.lab.run(m.nodes[index], ["wg", "show", m.ifaces[index], "allowed-ips"]).stdout
    table: dict[str, set[str]] = {}
    for line in out.splitlines():
        key, _, prefixes = line.partition("\t")
        table[key] = set(prefixes.split()) - {"(none)"}
    return table


def route_dev(m: MeshLab, index: int, address: str) -> str:
    """The device node ``index``'s kernel sends a packet to ``address`` out of."""
    got: list[dict[str, Any]] = json.loads(m.lab.run(m.nodes[index], ["ip", "-j", "route", "get", address]).stdout)
    return str(got[0]["dev"])


def test_three_nodes_two_pods_each_on_the_real_mesh(mesh: MeshLab) -> None:
    m = mesh
    m.etcd.start()
    m.mesh("init", m.network, NETWORK_CIDR, "--subnet-len", "24", "--mtu", str(MTU))
    for i in NODES:
        m.join(i)
    wait_converged(m, list(NODES))
    states = {i: m.state(i) for i in NODES}
    subnet = {i: ipaddress.ip_network(s["subnet"]) for i, s in states.items() if s}
    tunnel = {i: str(s["address"]) for i, s in states.items() if s}
    assert len(subnet) == 3 and len(set(subnet.values())) == 3
    status = m.mesh("status", m.network)  # what docs/guide.md shows
    assert f"network {m.network}: {NETWORK_CIDR}, /24 per node, l3, 3 alive of 3" in status
    for i in NODES:
        assert any(line.split()[:4] == ["alive", str(subnet[i]), tunnel[i], f"node{i}"]
                   for line in status.splitlines()), status

    # Pods, added as the runtime does. Each gets an address of its node's leased subnet, not the
    # node's tunnel address (the bridge's gateway), and the mesh's inner MTU.
    rts = {i: runtime(m, i) for i in NODES}
    pods: dict[str, tuple[int, str, dict[str, Any]]] = {}  # pod namespace -> (node, address, result)
    container: dict[str, str] = {}  # pod namespace -> container ID
    for i in NODES:
        for k in range(PODS_PER_NODE):
            ns = m.lab.namespace(f"n{i}p{k}")
            result = rts[i].add(f"c{i}{k}", ns)
            address = rts[i].pod_address(result)
            assert ipaddress.ip_address(address) in subnet[i]
            assert address != tunnel[i]
            assert links(m.lab, ns)["eth0"]["mtu"] == MTU
            pods[ns] = (i, address, result)
            container[ns] = f"c{i}{k}"
    assert len({address for _, address, _ in pods.values()}) == len(NODES) * PODS_PER_NODE

    # The agent's l3 routing: each remote node's whole subnet is its peer's allowed IPs and is
    # routed to the mesh interface; the node's tunnel address (a /32) and the bridge do not clash.
    for i in NODES:
        table = allowed_ips(m, i)
        for j in NODES:
            if j != i:
                assert table[str(states[j]["public_key"])] == {str(subnet[j])}  # type: ignore[index]
        for _, (j, address, _) in pods.items():
            assert route_dev(m, i, address) == (DEFAULT_BRIDGE if j == i else m.ifaces[i])
        mesh_addrs = [a for a in links(m.lab, m.nodes[i])[m.ifaces[i]]["addr_info"] if a["family"] == "inet"]
        assert [(a["local"], a["prefixlen"]) for a in mesh_addrs] == [(tunnel[i], 32)]
        bridge_addrs = [a for a in links(m.lab, m.nodes[i])[DEFAULT_BRIDGE]["addr_info"] if a["family"] == "inet"]
        assert [(a["local"], a["prefixlen"]) for a in bridge_addrs] == [(tunnel[i], subnet[i].prefixlen)]

    # Every pod pings every other pod and every remote node's tunnel address.
    # First contact per pair of nodes gets a longer wait: a handshake answered with a cookie
    # reply (a loaded machine) is retried only after WireGuard's 5 s rekey timeout.
    for i, j in itertools.combinations(NODES, 2):
        src = next(p for p in pods if pods[p][0] == i)
        dst = next(p for p in pods if pods[p][0] == j)
        assert m.lab.wait_ping(src, pods[dst][1], 20.0), f"no pod path from node{i} to node{j} (handshake?)"
    unreachable = []
    for src, dst in itertools.permutations(pods, 2):
        if not m.lab.wait_ping(src, pods[dst][1], 8.0):
            unreachable.append(f"{src} -> {dst} ({pods[dst][1]})")
    for src, (i, _, _) in pods.items():
        for j in NODES:
            if j != i and not m.lab.wait_ping(src, tunnel[j], 8.0):
                unreachable.append(f"{src} -> node{j} tunnel address {tunnel[j]}")
    assert unreachable == []

    # docs/guide.md section 5, step 3 and 4, as a shell runs it: one more pod on node 1.
    guide_pod = m.lab.namespace("guide")
    pods_json, result_file, check_file = (m.lab.path(n) for n in ("pods.json", "pod1.result", "pod1.check"))
    pods_json.write_text(json.dumps(rts[1].config()))  # the guide's config plus the test's directories
    env = (f"CNI_CONTAINERID=pod1 CNI_NETNS=/var/run/netns/{guide_pod} CNI_IFNAME=eth0 "
           f"CNI_PATH={CNI_BIN} CNI_ARGS=")
    check_conf = (f"import json; c = json.load(open('{pods_json}')); "
                  f"c['prevResult'] = json.load(open('{result_file}')); print(json.dumps(c))")
    m.lab.run(m.nodes[1], ["sh", "-ec", f"CNI_COMMAND=ADD {env} {PLUGIN} < {pods_json} > {result_file}\n"
                           f"python3 -c \"{check_conf}\" > {check_file}\n"
                           f"CNI_COMMAND=CHECK {env} {PLUGIN} < {check_file}\n"])
    guide_address = rts[1].pod_address(json.loads(result_file.read_text()))
    assert ipaddress.ip_address(guide_address) in subnet[1]
    remote_pod = next(p for p in pods if pods[p][0] == 3)
    assert m.lab.wait_ping(guide_pod, pods[remote_pod][1], 8.0)
    assert m.lab.wait_ping(guide_pod, tunnel[3], 8.0)
    m.lab.run(m.nodes[1], ["sh", "-ec", f"CNI_COMMAND=DEL {env} {PLUGIN} < {pods_json}\n"])
    assert "eth0" not in links(m.lab, guide_pod)
    assert guide_address not in rts[1].reserved()

    # The agent on node 1 dies (SIGKILL) and comes back with the same key: same subnet, its
    # interface adopted, the pods' CHECK passes and their traffic flows again.
    old_pid = m.state(1)["pid"]  # type: ignore[index]
    m.agents[1].popen.kill()
    m.agents[1].popen.wait(10)
    m.join(1)
    # The killed agent's state file stays until the new agent writes its own.
    assert wait_for(lambda: (m.state(1) or {}).get("pid") not in (None, old_pid), WAIT, 0.2), \
        m.agents[1].output()[-3000:]
    wait_converged(m, list(NODES))
    assert m.state(1)["subnet"] == str(subnet[1])  # type: ignore[index]
    for ns, (i, _, result) in pods.items():
        if i == 1:
            done = rts[1].call("CHECK", container[ns], ns, conf={**rts[1].config(), "prevResult": result})
            assert done.returncode == 0, done.stdout + done.stderr
    node1_pod = next(p for p in pods if pods[p][0] == 1)
    node3_pod = next(p for p in pods if pods[p][0] == 3)
    assert m.lab.wait_ping(node3_pod, pods[node1_pod][1], 20.0)
    assert m.lab.wait_ping(node1_pod, tunnel[2], 20.0)
