# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""L2 over WireGuard in one process (tunnel/overlay), in network namespaces, on default offloads.

wg-py's endpoint runs inside the wg-py WireGuard daemon (``wg-py vxlan add NAME ... dev WGIFACE``)
and talks to the kernel's vxlan over wireguard-go (``ip link add vx0 type vxlan id 42 dstport
4789 local TUNNEL_ADDR dev wg0``: the two-device stack) and to itself. The kernel side is the
oracle of wire compatibility: it accepts only what its vxlan and UDP receive paths accept.
Throughput is printed (``-s``), never asserted on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crypto import keys
from tests.netns import (
    Lab,
    Node,
    configure,
    netns_factory,  # noqa: F401 - the fixture
    peer_section,
    requires_root_netns,
    start_node,
    wait_for,
    wg_pair,
)
from tunnel.wireguard import quick

pytestmark = [pytest.mark.netns, requires_root_netns]

VNI = 42
L2_ADDR = "10.77.0.{}"
MAC = "02:00:00:77:00:{:02x}"


def env(lab: Lab) -> dict[str, str]:
    return {"WGPY_VXLAN_RUN_DIR": str(lab.path("run"))}


def wgpy_vxlan(lab: Lab, ns: str, args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = lab.run(ns, ["wg-py", "vxlan", *args.split()], check=False, timeout=30, env=env(lab))
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def show(lab: Lab, ns: str, name: str = "vx0") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(wgpy_vxlan(lab, ns, f"show {name} --json").stdout)
    return out


def wg_stats(lab: Lab, node: Node) -> dict[str, Any]:
    """The wg-py daemon's ``stats=1`` answer (the UAPI socket is a file: reachable from here)."""
    lines, code = quick.uapi_call(node.iface, "stats=1\n\n")
    assert code == 0
    data: dict[str, Any] = json.loads(next(line for line in lines if line.startswith("json="))[5:])
    return data


UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "bin" / "wireguard-go-upstream"


def upstream_pair(lab: Lab) -> tuple[Node, Node]:
    """wg_pair with upstream wireguard-go (``../shared/bin``, with its offloads) as b."""
    if not UPSTREAM.exists():
        pytest.skip(f"{UPSTREAM} is not there")
    ns_a, ns_b = lab.namespace("a"), lab.namespace("b")
    lab.veth(ns_a, ns_b, ["192.168.77.1/24"], ["192.168.77.2/24"])
    a = start(lab, "wg-py", ns_a, 1)
    b = Node(lab, "wireguard-go-upstream", ns_b, lab.start_daemon(ns_b, [str(UPSTREAM)]), 2,
             keys.generate_private(), 51822, inner4="10.9.0.2", inner6="fd09::2")
    configure(a, peer_section(b, f"192.168.77.2:{b.port}"))
    configure(b, peer_section(a, f"192.168.77.1:{a.port}"))
    return a, b


def start(lab: Lab, impl: str, ns: str, index: int) -> Node:
    return start_node(lab, impl, ns, index, 51820 + index, env=env(lab) if impl == "wg-py" else None)


def l2_up(lab: Lab, node: Node, index: int, dev: str = "vx0") -> None:
    lab.run(node.ns, ["ip", "link", "set", dev, "address", MAC.format(index)])
    lab.run(node.ns, ["ip", "addr", "add", f"{L2_ADDR.format(index)}/24", "dev", dev])
    lab.run(node.ns, ["ip", "link", "set", dev, "up"])


def wgpy_l2(lab: Lab, node: Node, index: int, remote: str | None) -> None:
    wgpy_vxlan(lab, node.ns, f"add vx0 id {VNI} dstport 4789"
               + (f" remote {remote}" if remote else "") + f" dev {node.iface}")
    l2_up(lab, node, index)


def kernel_l2(lab: Lab, node: Node, index: int, remote: str) -> None:
    local = node.inner6 if ":" in remote else node.inner4
    lab.run(node.ns, ["ip", "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "dstport", "4789",
                      "remote", remote, "local", local, "dev", node.iface])
    l2_up(lab, node, index)


def l2_link(lab: Lab, a: Node, b: Node, family: int = 4) -> None:
    """vx0 on both: wg-py's endpoint inside a's daemon, and on b wg-py's too if b runs wg-py, else
    the kernel's vxlan over b's WireGuard; each with the other's tunnel address of ``family`` as
    its remote. Returns once a has an L2 ping answer from b."""
    a_addr, b_addr = (a.inner4, b.inner4) if family == 4 else (a.inner6, b.inner6)
    wgpy_l2(lab, a, 1, b_addr)
    if b.impl == "wg-py":
        wgpy_l2(lab, b, 2, a_addr)
    else:
        kernel_l2(lab, b, 2, a_addr)
    assert lab.wait_ping(a.ns, L2_ADDR.format(2), timeout=15), "no L2 reply a -> b"


def hub_and_kernel_sites(lab: Lab, sites: int) -> tuple[Node, list[Node]]:
    """a (wg-py) joined by its own veth to each of ``sites`` wireguard-go nodes (b, c, ...), every
    one configured as a's peer; returns once a pings each site through the tunnel."""
    ns_a = lab.namespace("a")
    a = start(lab, "wg-py", ns_a, 1)
    others = []
    for k in range(sites):
        index, net = k + 2, 77 + 11 * k  # 192.168.77.0/24 for b, 192.168.88.0/24 for c, ...
        ns = lab.namespace("bcdefgh"[k])
        lab.veth(ns_a, ns, [f"192.168.{net}.1/24"], [f"192.168.{net}.{index}/24"],
                 names=(f"veth{2 * k}", f"veth{2 * k + 1}"))
        others.append((start(lab, "wireguard-go", ns, index), net))
    configure(a, "".join(peer_section(node, f"192.168.{net}.{node.index}:{node.port}") for node, net in others))
    for node, net in others:
        configure(node, peer_section(a, f"192.168.{net}.1:{a.port}"))
    for node, _ in others:
        assert lab.wait_ping(a.ns, node.inner4, timeout=15), f"no tunnel to {node.ns}"
    return a, [node for node, _ in others]


@pytest.fixture
def two_kernel_sites(netns_factory: Lab) -> tuple[Lab, Node, Node, Node]:
    """(lab, a, b, c): :func:`hub_and_kernel_sites` with two sites, no L2 yet."""
    a, (b, c) = hub_and_kernel_sites(netns_factory, 2)
    return netns_factory, a, b, c


@pytest.fixture
def kernel_l2_pair(netns_factory: Lab) -> tuple[Lab, Node, Node]:
    """(lab, a, b): a wg-py with its endpoint inside, b the kernel's vxlan over wireguard-go, over
    IPv4 tunnel addresses; L2 ping a -> b works."""
    lab = netns_factory
    a, b = wg_pair(lab, "wg-py", "wireguard-go", env_a=env(lab))
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    l2_link(lab, a, b)
    return lab, a, b


def kernel_fdb(lab: Lab, ns: str) -> list[str]:
    return lab.run(ns, ["bridge", "fdb", "show", "dev", "vx0"]).stdout.splitlines()


def tcp_both_ways(lab: Lab, server: Node, client: Node, server_addr: str) -> list[str]:
    report = []
    for reverse in (False, True):
        result = lab.iperf3(server.ns, client.ns, server_addr, seconds=2, reverse=reverse)
        moved = result["end"]["sum_received"]["bytes"]
        assert moved > 1_000_000, result["end"]["sum_received"]
        bps = result["end"]["sum_received"]["bits_per_second"]
        report.append(f"{'server->client' if reverse else 'client->server'} {bps / 1e6:.0f} Mbit/s")
    return report


@pytest.mark.parametrize(("peer", "family"), [
    ("wireguard-go", 4), ("wireguard-go", 6), ("wg-py", 4), ("wg-py", 6), ("wireguard-go-upstream", 4)],
    ids=["wireguard-go-vtep4", "wireguard-go-vtep6", "wg-py-vtep4", "wg-py-vtep6", "wireguard-go-upstream-vtep4"])
def test_one_process_l2_ping_iperf3_learning(netns_factory: Lab, peer: str, family: int) -> None:
    """a: wg-py with the endpoint inside; b: the kernel vxlan over wireguard-go (Debian's, or
    upstream's with its offloads), or wg-py L2. With IPv6 tunnel addresses the kernel checks
    wg-py's UDP checksums (it drops a zero one)."""
    lab = netns_factory
    if peer == "wireguard-go-upstream":
        a, b = upstream_pair(lab)
    else:
        a, b = wg_pair(lab, "wg-py", peer, env_a=env(lab))
    assert lab.wait_ping(a.ns, b.inner4, timeout=15)
    a_addr, b_addr = (a.inner4, b.inner4) if family == 4 else (a.inner6, b.inner6)
    l2_link(lab, a, b, family)
    info = show(lab, a.ns)
    assert info["mtu"] == (1370 if family == 4 else 1350), info
    assert info["sender"] == f"in-process ({a.iface})", info
    assert info["config"]["local"] == a_addr
    assert lab.ping(b.ns, L2_ADDR.format(1), 3) is not None, "no L2 reply b -> a"
    report = tcp_both_ways(lab, b, a, L2_ADDR.format(2))
    print(f"\n[wg-py L2 a, {peer} b] " + "; ".join(report), file=sys.stderr)
    # learning across the tunnel: b's MAC at b's tunnel address, a's at a's
    fdb = wgpy_vxlan(lab, a.ns, "fdb show vx0").stdout
    assert re.search(rf"{MAC.format(2)} dst {re.escape(b_addr)}( |$)", fdb, re.M), fdb
    if peer != "wg-py":
        assert any(line.startswith(MAC.format(1)) and f"dst {a_addr} " in line + " " for line in kernel_fdb(lab, b.ns))
    info = show(lab, a.ns)
    stats = info["stats"]
    assert stats["rx_packets"] > 1000 and stats["tx_packets"] > 1000, stats
    # the steady state went through the endpoint's lanes (snapshot + journal), both ways
    assert info["lanes"]["tx_lane"] > 0 and info["lanes"]["rx_lane"] > 0, info["lanes"]
    # ... carried by the pump (tunnel/overlay/pump_ref.py): TAP batches sealed and sent whole by
    # it, and replies read from the TAP in the WireGuard inbound wake-up that delivered the request
    assert info["pump"]["tx_whole"] > 0 and info["pump"]["answers"] > 0, info["pump"]
    # the WireGuard daemon is one process: the endpoint's pid is the daemon's
    pids = lab.daemon_pids(a.ns)
    assert show(lab, a.ns)["pid"] in pids
    wgpy_vxlan(lab, a.ns, "del vx0")
    assert not lab.link_exists(a.ns, "vx0")
    assert lab.wait_ping(a.ns, b.inner4, timeout=5)  # the tunnel itself goes on


def test_replication_to_two_kernel_sites(two_kernel_sites: tuple[Lab, Node, Node, Node]) -> None:
    """a (wg-py L2, no remote) replicates to b and c (kernel vxlan over wireguard-go) through the
    all-zero FDB entries; ARP broadcasts reach both, unicast follows the learned entries."""
    lab, a, b, c = two_kernel_sites
    wgpy_l2(lab, a, 1, None)
    for node in (b, c):
        wgpy_vxlan(lab, a.ns, f"fdb append 00:00:00:00:00:00 vx0 dst {node.inner4}")
    kernel_l2(lab, b, 2, a.inner4)
    kernel_l2(lab, c, 3, a.inner4)
    for index in (2, 3):
        assert lab.wait_ping(a.ns, L2_ADDR.format(index), timeout=15), f"no L2 reply from site {index}"
    fdb = wgpy_vxlan(lab, a.ns, "fdb show vx0").stdout
    assert re.search(rf"{MAC.format(2)} dst {re.escape(b.inner4)}\b", fdb), fdb
    assert re.search(rf"{MAC.format(3)} dst {re.escape(c.inner4)}\b", fdb), fdb
    report = tcp_both_ways(lab, c, a, L2_ADDR.format(3))
    print("\n[replication, a -> c] " + "; ".join(report), file=sys.stderr)
    remotes = show(lab, a.ns)["stats"]["remotes"]
    assert b.inner4 in json.dumps(remotes) and c.inner4 in json.dumps(remotes), remotes


FORGE = r"""
import socket, sys
src, dst, smac = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3].replace(":", ""))
frame = b"\xff" * 6 + smac + b"\x08\x06" + bytes(28)
payload = bytes.fromhex("08000000") + (42 << 8).to_bytes(4, "big") + frame
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for _ in range(20):
    s.sendto(payload, (dst, 4789))
"""


def test_forged_vtep_is_dropped(two_kernel_sites: tuple[Lab, Node, Node, Node]) -> None:
    """c (a peer of a) sends VXLAN through its own tunnel with b's tunnel address as inner source
    and b's MAC: cryptokey routing drops it (b's address is not in c's allowed IPs), and a's
    FDB still points b's MAC at b."""
    lab, a, b, c = two_kernel_sites
    l2_link(lab, a, b)
    before = wgpy_vxlan(lab, a.ns, "fdb show vx0").stdout
    assert re.search(rf"{MAC.format(2)} dst {re.escape(b.inner4)}\b", before), before
    disallowed_before = wg_stats(lab, a)["drops"].get("disallowed_source", 0)
    # c claims b's tunnel address and sends from it through its tunnel to a
    lab.run(c.ns, ["ip", "addr", "add", f"{b.inner4}/32", "dev", "lo"])
    done = lab.run(c.ns, [sys.executable, "-c", FORGE, b.inner4, a.inner4, MAC.format(2)], check=False)
    assert done.returncode == 0, done.stderr
    assert wait_for(lambda: wg_stats(lab, a)["drops"].get("disallowed_source", 0) >= disallowed_before + 20, 10.0), \
        wg_stats(lab, a)["drops"]
    after = wgpy_vxlan(lab, a.ns, "fdb show vx0").stdout
    assert re.search(rf"{MAC.format(2)} dst {re.escape(b.inner4)}\b", after), after
    assert c.inner4 not in after
    assert show(lab, a.ns)["stats"]["fdb_migrated"] == 0
    assert lab.ping(a.ns, L2_ADDR.format(2), 2) is not None  # b still reachable


def test_deleting_the_wireguard_interface_removes_its_overlays(netns_factory: Lab) -> None:
    """Also: ``wg-py vxlan up FILE.conf`` with ``dev WGIFACE`` runs the endpoint inside."""
    lab = netns_factory
    a, b = wg_pair(lab, "wg-py", "wg-py", env_a=env(lab))
    conf = lab.path("vx0.conf")
    conf.write_text(f"id {VNI} dstport 4789\nremote {b.inner4} dev {a.iface}\naddress 10.77.0.1/24\n")
    wgpy_vxlan(lab, a.ns, f"up {conf}")
    info = show(lab, a.ns)
    assert info["sender"] == f"in-process ({a.iface})" and info["pid"] in lab.daemon_pids(a.ns), info
    assert "10.77.0.1/24" in lab.run(a.ns, ["ip", "addr", "show", "dev", "vx0"]).stdout
    # the TAP deleted by hand: the endpoint notices (housekeeping) and its control socket goes
    lab.run(a.ns, ["ip", "link", "del", "vx0"])
    assert wait_for(lambda: wgpy_vxlan(lab, a.ns, "show vx0", check=False).returncode == 1, 10.0)
    wgpy_vxlan(lab, a.ns, f"up {conf}")
    lab.run(a.ns, ["ip", "link", "del", a.iface])
    assert wait_for(lambda: not lab.link_exists(a.ns, "vx0"), 10.0)
    assert wgpy_vxlan(lab, a.ns, "show vx0", check=False).returncode == 1


def test_kernel_wireguard_dev_gets_a_separate_daemon(netns_factory: Lab) -> None:
    """dev of a non-wg-py interface (no wg-py UAPI socket): the separate VXLAN daemon, as before."""
    lab = netns_factory
    ns, other = lab.namespace("k"), lab.namespace("o")
    lab.veth(ns, other, ["10.66.0.1/24"], ["10.66.0.2/24"])
    wgpy_vxlan(lab, ns, "add vx0 id 5 remote 10.66.0.2 local 10.66.0.1 dev veth0")
    info = show(lab, ns)
    assert info["sender"] in ("pool", "raw") and info["mtu"] == 1450, info
    wgpy_vxlan(lab, ns, "del vx0")


def test_oversized_frames_are_dropped_and_counted_never_fragmented(kernel_l2_pair: tuple[Lab, Node, Node]) -> None:
    """The TAP's MTU raised past what the tunnel carries: a frame whose inner packet would exceed
    WGIFACE's MTU is dropped and counted (``tx_oversized``); frames that fit still go."""
    lab, a, b = kernel_l2_pair
    lab.run(a.ns, ["ip", "link", "set", "vx0", "mtu", "1450"])
    assert wait_for(lambda: show(lab, a.ns)["mtu"] == 1450, 5.0)  # the daemon's link check
    big = lab.run(a.ns, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-M", "do", "-s", "1400", L2_ADDR.format(2)],
                  check=False)
    assert big.returncode != 0, big.stdout  # 1428-byte IP packet: 1478 inside the 1420 tunnel
    assert show(lab, a.ns)["drops"].get("tx_oversized", 0) >= 3
    small = lab.run(a.ns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1300",
                           L2_ADDR.format(2)], check=False)
    assert small.returncode == 0, small.stdout


def link_mtu(lab: Lab, ns: str, dev: str) -> int:
    data: list[dict[str, Any]] = json.loads(lab.run(ns, ["ip", "-j", "link", "show", "dev", dev]).stdout)
    return int(data[0]["mtu"])


def test_the_tap_follows_the_wireguard_interface_mtu(kernel_l2_pair: tuple[Lab, Node, Node]) -> None:
    """``ip link set WGIFACE mtu X``: each endpoint's TAP becomes X - 50 (IPv4 underlay) or X - 70
    (IPv6), as at creation, within the daemon's housekeeping; frames of the new size still cross
    (DF set, to the kernel's vxlan); a TAP MTU set by hand is taken, and the next change of
    WGIFACE's MTU sets the TAP's from it again."""
    lab, a, b = kernel_l2_pair
    wgpy_vxlan(lab, a.ns, f"add vx6 id {VNI + 1} dstport 4790 remote {b.inner6} dev {a.iface}")
    assert (show(lab, a.ns)["mtu"], show(lab, a.ns, "vx6")["mtu"]) == (1370, 1350)

    def follows(wg_mtu: int) -> bool:
        return (show(lab, a.ns)["mtu"], show(lab, a.ns, "vx6")["mtu"]) == (wg_mtu - 50, wg_mtu - 70)

    lab.run(a.ns, ["ip", "link", "set", a.iface, "mtu", "1300"])
    assert wait_for(lambda: follows(1300), 10.0), (show(lab, a.ns)["mtu"], show(lab, a.ns, "vx6")["mtu"])
    assert (link_mtu(lab, a.ns, "vx0"), link_mtu(lab, a.ns, "vx6")) == (1250, 1230)
    fits = lab.run(a.ns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1222", L2_ADDR.format(2)],
                   check=False)  # a 1250-byte IP packet: vx0's new MTU, 1300 inside the tunnel
    assert fits.returncode == 0, fits.stdout + fits.stderr
    too_big = lab.run(a.ns, ["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1223", L2_ADDR.format(2)],
                      check=False)
    assert too_big.returncode != 0  # refused by a's own stack now (vx0's MTU), not sent
    assert show(lab, a.ns)["drops"].get("tx_oversized", 0) == 0

    lab.run(a.ns, ["ip", "link", "set", a.iface, "mtu", "1420"])  # and back up
    assert wait_for(lambda: follows(1420), 10.0)
    lab.run(a.ns, ["ip", "link", "set", "vx0", "mtu", "1000"])  # by hand: the endpoint takes it
    assert wait_for(lambda: show(lab, a.ns)["mtu"] == 1000, 5.0)
    lab.run(a.ns, ["ip", "link", "set", a.iface, "mtu", "1400"])  # WGIFACE's next change wins
    assert wait_for(lambda: follows(1400), 10.0)
    assert lab.wait_ping(a.ns, L2_ADDR.format(2), timeout=5)


def test_python_m_tunnel_runs_the_daemon_with_the_overlay(netns_factory: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m tunnel IFACE`` (quick.daemon_command's fallback without the wg-py script) runs
    the daemon with the overlay's handlers; ``python -m tunnel.wireguard.daemon IFACE`` cannot
    import them (the layers) and refuses ``ext=``, which ``wg-py vxlan add`` reports clearly."""
    lab = netns_factory
    ns = lab.namespace("a")
    nodes = {}
    for index, module in ((1, "tunnel"), (3, "tunnel.wireguard.daemon")):
        monkeypatch.setenv("WG_PY_IMPLEMENTATION", f"{sys.executable} -m {module}")
        nodes[module] = node = start(lab, "wg-py", ns, index)
        configure(node, "")
    monkeypatch.delenv("WG_PY_IMPLEMENTATION")
    with_overlay, without = nodes["tunnel"], nodes["tunnel.wireguard.daemon"]
    wgpy_vxlan(lab, ns, f"add vx0 id {VNI} dstport 4789 remote 10.9.0.2 dev {with_overlay.iface}")
    info = show(lab, ns)
    assert info["sender"] == f"in-process ({with_overlay.iface})" and info["mtu"] == 1370, info
    refused = wgpy_vxlan(lab, ns, f"add vx1 id {VNI} dstport 4789 remote 10.9.0.4 dev {without.iface}", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "python -m tunnel.wireguard.daemon has no overlay" in refused.stderr, refused.stderr
    assert not lab.link_exists(ns, "vx1")
