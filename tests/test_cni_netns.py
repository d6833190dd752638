"""wg-py-cni on one node, driven as a container runtime drives it.

The test is the runtime: it execs the ``wg-py-cni`` console script inside a node namespace with
the CNI environment and config, CNI_NETNS pointing at a pod namespace it created, and Debian's
reference ``bridge`` and ``host-local`` plugins doing the delegated work. The node's mesh lease
is a state file the test writes in the agent's contract format. What the tests check is
observed independently with ``ip -j`` and ``ping`` inside the namespaces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.cni_runtime import Runtime, links, missing_cni, routes, write_state
from tests.netns import requires_root_netns
from tunnel.lab.netns import Lab

_REASON = missing_cni()
pytestmark = [pytest.mark.netns, requires_root_netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

NETWORK_CIDR = "10.61.0.0/16"
SUBNET = "10.61.3.0/24"
GATEWAY = "10.61.3.1"
TUNNEL_ADDRESS = "10.61.3.0"
MTU = 1380
MESH = "wgm0"


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A Lab for one test; everything it made is removed afterwards, failed or not."""
    instance = Lab()
    try:
        yield instance
    finally:
        instance.close()


def node(lab: Lab, version: str = "1.0.0") -> Runtime:
    """A node namespace with a veth end standing in for the mesh interface (this kernel has no
    dummy driver) carrying the node's tunnel address, and the node's lease."""
    ns = lab.namespace("n")
    lab.run(ns, ["ip", "link", "add", MESH, "type", "veth", "peer", "name", f"{MESH}p"])
    lab.run(ns, ["ip", "addr", "add", f"{TUNNEL_ADDRESS}/32", "dev", MESH])
    lab.run(ns, ["ip", "link", "set", f"{MESH}p", "up"])
    lab.run(ns, ["ip", "link", "set", MESH, "up"])
    rt = Runtime(lab, ns, MESH, f"{lab.prefix}net", version)
    write_state(rt.state_dir, MESH, network_cidr=NETWORK_CIDR, subnet=SUBNET, address=TUNNEL_ADDRESS, mtu=MTU)
    return rt


def pod(lab: Lab) -> str:
    return lab.namespace(f"p{len(lab.namespaces)}")


def one_address_range(address: str) -> dict[str, object]:
    return {"ranges": [[{"subnet": SUBNET, "rangeStart": address, "rangeEnd": address}]]}


def test_add_gives_the_pod_an_address_in_the_lease_the_mesh_mtu_and_a_route(lab: Lab) -> None:
    rt = node(lab)
    p = pod(lab)
    result = rt.add("c1", p)
    assert result["cniVersion"] == "1.0.0"
    sandbox = [i for i in result["interfaces"] if i.get("sandbox")]
    assert [i["name"] for i in sandbox] == ["eth0"]
    assert sandbox[0]["sandbox"] == f"/var/run/netns/{p}"
    (ip,) = result["ips"]
    assert result["interfaces"][ip["interface"]]["name"] == "eth0"
    assert ip["address"].endswith("/24") and ip["address"].startswith("10.61.3.")
    assert ip["gateway"] == GATEWAY
    assert {"dst": NETWORK_CIDR, "gw": GATEWAY} in result["routes"]
    assert "dns" in result
    # What the pod namespace really has.
    eth0 = links(lab, p)["eth0"]
    assert eth0["mtu"] == MTU
    assert "UP" in eth0["flags"]
    assert eth0["address"] == sandbox[0]["mac"]
    assert {(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"} == {
        (rt.pod_address(result), 24)}
    assert {"dst": NETWORK_CIDR, "gateway": GATEWAY, "dev": "eth0"}.items() <= next(
        r for r in routes(lab, p) if r["dst"] == NETWORK_CIDR).items()
    # The node side: the bridge carries the gateway with the mesh MTU.
    bridge = links(lab, rt.node_ns)["wgpy-cni0"]
    assert bridge["mtu"] == MTU
    assert (GATEWAY, 24) in {(a["local"], a["prefixlen"]) for a in bridge["addr_info"]}
    # Bookkeeping stayed in the test's directories.
    assert rt.reserved() == {rt.pod_address(result)}
    assert rt.cached() == ["c1:eth0.json"]


def test_two_pods_on_a_node_reach_each_other_and_the_node(lab: Lab) -> None:
    rt = node(lab)
    pa, pb = pod(lab), pod(lab)
    a = rt.pod_address(rt.add("ca", pa))
    b = rt.pod_address(rt.add("cb", pb))
    assert a != b
    assert lab.wait_ping(pa, b, 10.0)
    assert lab.ping(pb, a, 2) is not None
    for p in (pa, pb):
        assert lab.ping(p, GATEWAY, 1) is not None
        assert lab.ping(p, TUNNEL_ADDRESS, 1) is not None  # the node's mesh address
    assert lab.ping(rt.node_ns, a, 1) is not None


def test_del_removes_the_interface_and_address_and_the_address_is_reused(lab: Lab) -> None:
    rt = node(lab)
    only = "10.61.3.77"
    rt.extra = {"ipam": {**one_address_range(only), "dataDir": str(rt.ipam_dir)}}
    p1 = pod(lab)
    assert rt.pod_address(rt.add("c1", p1)) == only
    done = rt.call("DEL", "c1", p1)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert "eth0" not in links(lab, p1)
    assert rt.reserved() == set()
    assert rt.cached() == []
    # The one address of the range is free again: the next pod gets it.
    p2 = pod(lab)
    assert rt.pod_address(rt.add("c2", p2)) == only
    assert lab.ping(p2, GATEWAY, 1) is not None


def test_del_is_idempotent_and_works_without_the_mesh_state(lab: Lab) -> None:
    rt = node(lab)
    p = pod(lab)
    addr = rt.pod_address(rt.add("c1", p))
    (rt.state_dir / f"{MESH}.json").unlink()  # the agent left; the cache must carry DEL
    for _ in range(2):
        done = rt.call("DEL", "c1", p)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "eth0" not in links(lab, p)
    assert addr not in rt.reserved()
    # A DEL for something never added, and one without a netns (the runtime lost it).
    assert rt.call("DEL", "never", p).returncode == 0
    assert rt.call("DEL", "never", netns_path="").returncode == 0
    # The pod's namespace is already gone when DEL comes: the address is still released.
    write_state(rt.state_dir, MESH, network_cidr=NETWORK_CIDR, subnet=SUBNET, address=TUNNEL_ADDRESS, mtu=MTU)
    q = pod(lab)
    addr = rt.pod_address(rt.add("c2", q))
    assert addr in rt.reserved()
    lab.run(None, ["ip", "netns", "del", q])
    done = rt.call("DEL", "c2", q)
    assert done.returncode == 0, done.stdout + done.stderr
    assert addr not in rt.reserved() and rt.cached() == []


def test_del_after_a_failed_add_cleans_up_and_spares_other_pods(lab: Lab) -> None:
    rt = node(lab)
    only = "10.61.3.9"
    rt.extra = {"ipam": {**one_address_range(only), "dataDir": str(rt.ipam_dir)}}
    p1, p2 = pod(lab), pod(lab)
    assert rt.pod_address(rt.add("c1", p1)) == only
    failed = rt.call("ADD", "c2", p2)  # the range is exhausted: host-local fails inside bridge
    assert failed.returncode != 0
    err = failed.obj
    assert isinstance(err["code"], int) and "bridge" in err["msg"] and err["cniVersion"] == "1.0.0"
    for _ in range(2):
        done = rt.call("DEL", "c2", p2)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "eth0" not in links(lab, p2)  # whatever bridge left behind is gone
    assert rt.reserved() == {only}  # c1 keeps its address
    assert lab.ping(p1, GATEWAY, 1) is not None
    # An ADD that fails before delegating (no bridge on CNI_PATH) caches nothing; DEL is fine.
    p3 = pod(lab)
    missing = rt.call("ADD", "c3", p3, env={"CNI_PATH": str(lab.tmpdir)})
    assert missing.returncode != 0 and missing.obj["code"] == 101
    assert rt.cached() == ["c1:eth0.json"]
    assert rt.call("DEL", "c3", p3).returncode == 0
    assert rt.reserved() == {only}


def test_check_passes_then_fails_when_the_route_or_lease_goes(lab: Lab) -> None:
    rt = node(lab)
    p = pod(lab)
    result = rt.add("c1", p)
    conf = {**rt.config(), "prevResult": result}
    ok = rt.call("CHECK", "c1", p, conf=conf)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Someone deletes the pod's route to the mesh.
    lab.run(p, ["ip", "route", "del", NETWORK_CIDR])
    broken = rt.call("CHECK", "c1", p, conf=conf)
    assert broken.returncode != 0
    assert broken.obj["code"] == 104 and NETWORK_CIDR in broken.obj["msg"]
    lab.run(p, ["ip", "route", "add", NETWORK_CIDR, "via", GATEWAY, "dev", "eth0"])
    assert rt.call("CHECK", "c1", p, conf=conf).returncode == 0
    # An address removed.
    lab.run(p, ["ip", "addr", "del", result["ips"][0]["address"], "dev", "eth0"])
    gone = rt.call("CHECK", "c1", p, conf=conf)
    assert gone.obj["code"] == 104 and "address" in gone.obj["msg"]
    lab.run(p, ["ip", "addr", "add", result["ips"][0]["address"], "dev", "eth0"])
    lab.run(p, ["ip", "route", "add", NETWORK_CIDR, "via", GATEWAY, "dev", "eth0"])
    assert rt.call("CHECK", "c1", p, conf=conf).returncode == 0
    # The mesh moved this node to another subnet, then lost the lease altogether.
    write_state(rt.state_dir, MESH, network_cidr=NETWORK_CIDR, subnet="10.61.9.0/24", address="10.61.9.0", mtu=MTU)
    assert rt.call("CHECK", "c1", p, conf=conf).obj["code"] == 105
    (rt.state_dir / f"{MESH}.json").unlink()
    assert rt.call("CHECK", "c1", p, conf=conf).obj["code"] == 11
    write_state(rt.state_dir, MESH, network_cidr=NETWORK_CIDR, subnet=SUBNET, address=TUNNEL_ADDRESS, mtu=MTU)
    assert rt.call("CHECK", "c1", p, conf=conf).returncode == 0
    # A prevResult that is not what ADD gave (the runtime's record of another attachment).
    stale = {**conf, "prevResult": {**result, "ips": [{"interface": 2, "address": "10.61.3.200/24"}]}}
    assert rt.call("CHECK", "c1", p, conf=stale).obj["code"] == 104
    # Nothing cached for another container.
    assert rt.call("CHECK", "other", p, conf=conf).obj["code"] == 103


def _snapshot(lab: Lab, rt: Runtime, p: str) -> tuple[object, ...]:
    return (sorted(links(lab, rt.node_ns)), sorted(links(lab, p)), rt.cached(), rt.reserved(),
            sorted(p.name for p in rt.ipam_dir.iterdir()))


def test_bad_input_gives_a_cni_error_and_changes_nothing(lab: Lab) -> None:
    rt = node(lab)
    p = pod(lab)
    good = rt.config()
    cases: list[tuple[str, dict[str, object], int]] = [
        ("not json", {"stdin": "{not json"}, 6),
        ("json array", {"stdin": "[]"}, 6),
        ("no name", {"conf": {k: v for k, v in good.items() if k != "name"}}, 7),
        ("bad name", {"conf": {**good, "name": "-x"}}, 7),
        ("wrong type", {"conf": {**good, "type": "bridge"}}, 7),
        ("no mesh", {"conf": {k: v for k, v in good.items() if k != "mesh"}}, 7),
        ("unsupported version", {"conf": {**good, "cniVersion": "9.9.9"}}, 1),
        ("malformed version", {"conf": {**good, "cniVersion": "one"}}, 7),
        ("unknown key", {"conf": {**good, "bridgeName": "x"}}, 7),
        ("delegate key not allowed", {"conf": {**good, "delegate": {"name": "other"}}}, 7),
        ("mtu above the mesh", {"conf": {**good, "delegate": {"mtu": MTU + 1}}}, 7),
        ("range outside the lease", {"conf": {**good, "ipam": {
            "dataDir": str(rt.ipam_dir), "ranges": [[{"subnet": "10.61.4.0/24"}]]}}}, 7),
        ("route not a cidr", {"conf": {**good, "ipam": {"dataDir": str(rt.ipam_dir), "routes": [{"dst": "x"}]}}}, 7),
        ("bad command", {"env": {"CNI_COMMAND": "ATTACH"}}, 4),
        ("no container id", {"env": {"CNI_CONTAINERID": ""}}, 4),
        ("bad ifname", {"env": {"CNI_IFNAME": "eth0/x"}}, 4),
        ("relative netns", {"netns_path": "netns/x"}, 4),
        ("missing netns", {"netns_path": f"/var/run/netns/{lab.prefix}absent"}, 3),
        ("no mesh lease", {"conf": {**good, "mesh": "wgother"}}, 11),
        ("no bridge on CNI_PATH", {"env": {"CNI_PATH": str(lab.tmpdir)}}, 101),
    ]
    before = _snapshot(lab, rt, p)
    for label, kw, code in cases:
        done = rt.call("ADD", "c1", p, **kw)  # type: ignore[arg-type]
        assert done.returncode != 0, label
        err = json.loads(done.stdout)
        assert err["code"] == code, (label, err)
        assert isinstance(err["msg"], str) and err["msg"], label
        assert err["cniVersion"] in ("1.0.0", "1.1.0"), label
        assert _snapshot(lab, rt, p) == before, label
    # A broken state file is an error too, and still changes nothing.
    (rt.state_dir / f"{MESH}.json").write_text('{"interface": "wgm0", "subnet": "10.61.3.0/24"}')
    done = rt.call("ADD", "c1", p)
    assert done.returncode != 0 and done.obj["code"] == 100
    assert _snapshot(lab, rt, p) == before


def test_status_and_gc(lab: Lab) -> None:
    rt = node(lab, "1.1.0")
    pa, pb = pod(lab), pod(lab)
    ra = rt.add("ca", pa)
    rb = rt.add("cb", pb)
    assert ra["cniVersion"] == rb["cniVersion"] == "1.1.0"
    ok = rt.call("STATUS")
    assert ok.returncode == 0 and ok.stdout.strip() == "", ok.stdout + ok.stderr
    # GC: only ca is still valid; cb's address, interface and cache entry go.
    gc_conf = {**rt.config(), "cni.dev/valid-attachments": [{"containerID": "ca", "ifname": "eth0"}]}
    done = rt.call("GC", conf=gc_conf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rt.cached() == ["ca:eth0.json"]
    assert rt.reserved() == {rt.pod_address(ra)}
    assert "eth0" not in links(lab, pb)
    assert "eth0" in links(lab, pa) and lab.ping(pa, GATEWAY, 1) is not None
    # STATUS without a lease: 50, "plugin not available".
    (rt.state_dir / f"{MESH}.json").unlink()
    down = rt.call("STATUS")
    assert down.returncode != 0 and down.obj["code"] == 50
    # STATUS and GC need 1.1.0.
    assert rt.call("STATUS", conf={**rt.config(), "cniVersion": "1.0.0"}).obj["code"] == 1


def test_the_kubernetes_config_gives_a_default_route_that_check_accepts(lab: Lab) -> None:
    """docs/kubernetes.md's config: ``isDefaultGateway`` adds a default route via the bridge."""
    rt = node(lab)
    rt.extra = {"delegate": {"isDefaultGateway": True}}
    p = pod(lab)
    result = rt.add("c1", p)
    assert {"dst": "0.0.0.0/0", "gw": GATEWAY} in result["routes"]
    table = {r["dst"]: r.get("gateway") for r in routes(lab, p)}
    assert table["default"] == GATEWAY and table[NETWORK_CIDR] == GATEWAY
    ok = rt.call("CHECK", "c1", p, conf={**rt.config(), "prevResult": result})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lab.run(p, ["ip", "route", "del", "default"])
    broken = rt.call("CHECK", "c1", p, conf={**rt.config(), "prevResult": result})
    assert broken.obj["code"] == 104 and "0.0.0.0/0" in broken.obj["msg"]


def test_add_as_kubernetes_calls_it_keeps_the_prev_result_first(lab: Lab) -> None:
    """CNI_ARGS as containerd passes them for a pod, and a previous plugin's result."""
    rt = node(lab)
    p = pod(lab)
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": f"/var/run/netns/{p}"}],
            "ips": [{"interface": 0, "address": "127.0.0.1/8"}], "dns": {"nameservers": ["10.96.0.10"]}}
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c1"
    result = rt.add("c1", p, conf={**rt.config(), "prevResult": prev}, env={"CNI_ARGS": args})
    assert [i["name"] for i in result["interfaces"]][0] == "lo"
    assert result["ips"][0] == prev["ips"][0]
    ours = result["ips"][1]
    assert result["interfaces"][ours["interface"]]["name"] == "eth0"
    assert ours["address"].startswith("10.61.3.")
    assert result["dns"] == prev["dns"]
    assert "eth0" in links(lab, p)
