"""wg-py VXLAN against the Linux kernel's vxlan driver, in network namespaces.

Each test builds its own namespaces with a unique prefix (``tunnel.lab.netns.Lab``) and tears them
down in a ``finally`` even on failure (the daemons die with their namespaces; the Lab kills
every process left in them). Every wait is bounded. The daemons' control sockets live in the
Lab's temporary directory (``WGPY_VXLAN_RUN_DIR``), removed with it.

Offloads stay at their defaults on every interface. The kernel vxlan then sends its inner
TCP/UDP checksums partial (the field holds the pseudo-header sum: CHECKSUM_PARTIAL, which veth
carries across namespaces and our UDP socket reads as is); wg-py must hand them on partial or
finish them (issue 11), and ``rx_csum_partial`` in ``show`` counts them. Every TCP run checks
the other way too: an AF_PACKET capture on the kernel side (``tests/vxlan_wire.py capture``,
its own checksum code) finds every inner checksum wg-py sends complete and valid.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests import vxlan_wire
from tests.test_sched_slice import custom_slices, in_thread
from tunnel.lab.netns import CommandError, Lab, missing_requirements, wait_for
from tunnel.runtime import sched

pytestmark = [pytest.mark.netns, pytest.mark.slow]

_missing = missing_requirements(("ip", "ping", "iperf3", "bridge"))
if _missing:
    pytestmark.append(pytest.mark.skip(reason=_missing))

VXLAN_ADDR_K = "192.168.8.101"
VXLAN_ADDR_W = "192.168.8.102"


@pytest.fixture
def lab() -> Iterator[Lab]:
    instance = Lab(f"vx{__import__('os').getpid() % 10000}")
    try:
        yield instance
    finally:
        instance.close()


def env(lab: Lab) -> dict[str, str]:
    return {"WGPY_VXLAN_RUN_DIR": str(lab.path("run"))}


def wgpy(
    lab: Lab, ns: str, args: str, check: bool = True, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return lab.run(ns, ["wg-py", "vxlan", *args.split()], check=check, timeout=30,
                   env={**env(lab), **(extra or {})})


def show(lab: Lab, ns: str, name: str = "vxlan0") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(wgpy(lab, ns, f"show {name} --json").stdout)
    return out


def fdb_lines(lab: Lab, ns: str, name: str = "vxlan0") -> list[str]:
    return wgpy(lab, ns, f"fdb show {name}").stdout.splitlines()


WIRE = str(__import__("pathlib").Path(vxlan_wire.__file__).resolve())
PURE = __import__("os").environ.get("WGPY_PURE") == "1"


def tcp_both_ways(lab: Lab, k: str, w: str, k_addr: str, w_underlay: str, *,
                  seconds: float = 2.0, kernel_dev: str = "eth0") -> dict[str, Any]:
    """iperf3 TCP between the kernel side ``k`` (server, at ``k_addr``) and wg-py's ``w``, wg-py
    sending then receiving; each way must move data. While wg-py sends, an AF_PACKET capture
    on the kernel side checks the inner checksums of what arrives from ``w_underlay``: all
    complete and valid. Returns ``show`` of ``w`` afterwards."""
    out = lab.path(f"capture-{w}-{k_addr}.json")
    capture = lab.spawn(k, [sys.executable, WIRE, "capture", kernel_dev, w_underlay, "30",
                            str(out)])
    assert wait_for(lambda: "ready" in capture.output() or not capture.alive(), 10.0)
    assert capture.alive(), capture.output()
    sent = lab.iperf3(k, w, k_addr, seconds=seconds)
    capture.stop()
    received = lab.iperf3(k, w, k_addr, seconds=seconds, reverse=True)
    for result in (sent, received):
        assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]["sum_received"]
    seen = json.loads(out.read_text())
    assert seen["valid"] > 100, seen
    assert seen["partial"] == 0 and seen["wrong"] == 0, seen
    info = show(lab, w)
    assert info["rx_csum_partial"] > 100, info  # the kernel's partial checksums, handed on
    return info
def underlay_pair(lab: Lab, a_addr: str, b_addr: str) -> tuple[str, str]:
    """Two namespaces joined by a veth named eth0 on both sides."""
    a, b = lab.namespace("k"), lab.namespace("w")
    lab.veth(a, b, [a_addr], [], names=("eth0", "tmpeth"))
    # renaming needs the link down, which would flush IPv6 addresses: address it afterwards
    lab.run(b, ["ip", "link", "set", "tmpeth", "down"])
    lab.run(b, ["ip", "link", "set", "tmpeth", "name", "eth0"])
    lab.add_address(b, "eth0", b_addr)
    lab.run(b, ["ip", "link", "set", "eth0", "up"])
    return a, b


def bridged_hosts(lab: Lab, count: int, address: str = "10.77.0.{}/24",
                  querier: bool = False) -> list[str]:
    """``count`` namespaces whose eth0 (``address`` with i+1) sit on one Linux bridge (default
    settings: multicast snooping on). With ``querier`` the bridge also sends IGMP/MLD queries:
    a snooping bridge that knows of a querier forwards a group's traffic only to the ports it
    saw join (without one it floods), so a join that is never seen cuts that host off."""
    br = lab.namespace("br")
    extra = ["mcast_querier", "1"] if querier else []
    lab.run(br, ["ip", "link", "add", "br0", "type", "bridge", *extra])
    lab.run(br, ["ip", "link", "set", "br0", "up"])
    hosts = []
    for i in range(count):
        h = lab.namespace(f"h{i + 1}")
        lab.veth(h, br, [address.format(i + 1)], [], names=("eth0", f"p{i + 1}"))
        lab.run(br, ["ip", "link", "set", f"p{i + 1}", "master", "br0"])
        hosts.append(h)
    return hosts


def kernel_vxlan(lab: Lab, ns: str, opts: str, addr: str, mac: str | None = None,
                 addr6: str | None = None) -> None:
    """The seed's kernel-side commands, as is (plus an inner IPv6 address if given)."""
    lab.run(ns, ["ip", "link", "add", "vxlan0", "type", "vxlan", *opts.split()])
    if mac:
        lab.run(ns, ["ip", "link", "set", "vxlan0", "address", mac])
    lab.run(ns, ["ip", "addr", "add", addr, "dev", "vxlan0"])
    if addr6:
        lab.add_address(ns, "vxlan0", addr6)
    lab.run(ns, ["ip", "link", "set", "vxlan0", "up"])


def wgpy_vxlan(
    lab: Lab, ns: str, opts: str, addr: str | None, extra: dict[str, str] | None = None,
    addr6: str | None = None,
) -> None:
    done = wgpy(lab, ns, f"add vxlan0 {opts}", check=False, extra=extra)
    assert done.returncode == 0, done.stderr
    for address in (addr, addr6):
        if address:
            lab.add_address(ns, "vxlan0", address)
    lab.run(ns, ["ip", "link", "set", "vxlan0", "up"])


def ping_ok(lab: Lab, ns: str, addr: str) -> bool:
    return lab.wait_ping(ns, addr, timeout=10.0) and lab.ping(ns, addr, count=3) is not None


# ---- the seed's commands -------------------------------------------------------------------------


def test_seed_kernel_interop_ping_and_iperf3(lab: Lab) -> None:
    a, b = underlay_pair(lab, "10.99.0.1/24", "10.99.0.2/24")
    kernel_vxlan(lab, a, "id 42 dstport 4789 remote 10.99.0.2 local 10.99.0.1 dev eth0",
                 f"{VXLAN_ADDR_K}/24")
    wgpy_vxlan(lab, b, "id 42 dstport 4789 remote 10.99.0.1 local 10.99.0.2 dev eth0",
               f"{VXLAN_ADDR_W}/24")
    info = show(lab, b)
    assert info["mtu"] == 1500 - 50
    # the twin asked for, never a silent fallback to the pure one (a missing build is an error)
    assert info["datapath"] == ("pure" if PURE else "cython")
    assert info["io"] == ("pure" if PURE else "cython"), info["io"]
    assert info["config"]["vni"] == 42 and info["config"]["remote"] == "10.99.0.1"
    # TAP offloads on (this kernel offers IFF_VNET_HDR and TUNSETOFFLOAD on a TAP)
    assert "tso4" in info["offloads"] and "gro" in info["offloads"]
    # the pool sender, with UDP GSO (the veth takes it)
    assert info["sender"] == "pool" and info["source_port"].startswith("hashed over 16 ports")
    assert info["source_port"].endswith(", GSO")

    assert ping_ok(lab, b, VXLAN_ADDR_K)
    assert ping_ok(lab, a, VXLAN_ADDR_W)
    # the kernel learned our TAP's MAC at our underlay address, and we learned its MAC
    kernel_mac = lab.run(a, ["cat", "/sys/class/net/vxlan0/address"]).stdout.strip()
    assert f"{kernel_mac} dst 10.99.0.1 self" in fdb_lines(lab, b)
    kernel_fdb = lab.run(a, ["bridge", "fdb", "show", "dev", "vxlan0"]).stdout
    assert f"{info['own_mac']} dst 10.99.0.2" in kernel_fdb

    stats = tcp_both_ways(lab, a, b, VXLAN_ADDR_K, "10.99.0.2")["stats"]
    assert stats["rx_packets"] > 100 and stats["tx_packets"] > 100


def test_raw_sender_interop(lab: Lab) -> None:
    """WGPY_VXLAN_SENDER=raw: hashed source ports over the whole range, through a raw socket
    (no GSO); the kernel takes it, both ways, TCP included."""
    a, b = underlay_pair(lab, "10.99.4.1/24", "10.99.4.2/24")
    kernel_vxlan(lab, a, "id 42 dstport 4789 remote 10.99.4.2 local 10.99.4.1 dev eth0",
                 f"{VXLAN_ADDR_K}/24")
    wgpy_vxlan(lab, b, "id 42 dstport 4789 remote 10.99.4.1 local 10.99.4.2 dev eth0",
               f"{VXLAN_ADDR_W}/24", extra={"WGPY_VXLAN_SENDER": "raw"})
    info = show(lab, b)
    assert info["sender"] == "raw" and info["source_port"] == "hashed over the srcport range"
    assert ping_ok(lab, b, VXLAN_ADDR_K) and ping_ok(lab, a, VXLAN_ADDR_W)
    # TCP both ways through the batch path (RawBatch on this side), default offloads
    stats = tcp_both_ways(lab, a, b, VXLAN_ADDR_K, "10.99.4.2")["stats"]
    assert stats["rx_packets"] > 100 and stats["tx_packets"] > 100
    assert not stats["drops"].get("tx_error")


OUTER = {4: ("10.99.5.{}/24", "10.99.5.{}"), 6: ("fd00:995::{}/64", "fd00:995::{}")}
INNER = {4: VXLAN_ADDR_K, 6: "fd00:88::101"}


@pytest.mark.parametrize("plain", [False, True], ids=["offload", "no-offload"])
@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
@pytest.mark.parametrize("outer", [4, 6], ids=["outer4", "outer6"])
def test_kernel_peer_tcp_default_offloads(lab: Lab, outer: int, inner: int, plain: bool) -> None:
    """Issue 11: TCP both ways between the kernel's vxlan and wg-py on default offloads, IPv4
    and IPv6 inside, over IPv4 and IPv6 outside; with TSO on the TAP (super-frames cut natively,
    and coalesced back with the kernel's partial checksums) and with WGPY_NO_OFFLOAD=1 (plain
    TAP: partial checksums finished in software); ``show`` says which."""
    net, host = OUTER[outer]
    a, b = underlay_pair(lab, net.format(1), net.format(2))
    opts = "id 42 dstport 4789 remote {} local {} dev eth0"
    kernel_vxlan(lab, a, opts.format(host.format(2), host.format(1)), f"{VXLAN_ADDR_K}/24",
                 addr6="fd00:88::101/64")
    wgpy_vxlan(lab, b, opts.format(host.format(1), host.format(2)), f"{VXLAN_ADDR_W}/24",
               extra={"WGPY_NO_OFFLOAD": "1"} if plain else None, addr6="fd00:88::102/64")
    info = show(lab, b)
    if plain:
        assert info["offloads"] == "none (WGPY_NO_OFFLOAD=1)"
    else:
        assert info["offloads"].startswith("csum") and "gro" in info["offloads"]
    assert ping_ok(lab, b, INNER[inner])
    info = tcp_both_ways(lab, a, b, INNER[inner], host.format(2))
    stats = info["stats"]
    assert stats["rx_packets"] > 100 and stats["tx_packets"] > 100
    assert not any(k.startswith("tap_") or k.endswith("exception") for k in stats["drops"])


CONTAINER = {4: "192.168.8.103", 6: "fd00:88::103"}


@pytest.mark.parametrize("plain", [False, True], ids=["offload", "no-offload"])
@pytest.mark.parametrize("inner", [4, 6], ids=["inner4", "inner6"])
def test_kernel_peer_tcp_to_a_container_behind_a_bridge(lab: Lab, inner: int, plain: bool) -> None:
    """The usual L2 overlay: wg-py's TAP enslaved to a Linux bridge with a veth to a
    'container' namespace (MTU 1450 on its link, as a CNI sets it), default offloads
    everywhere. The kernel vxlan peer relies on TSO, so our UDP socket reads whole TCP
    super-packets (up to 64 KiB in one inner frame); written to the TAP as they are, the bridge
    drops them as larger than the MTU and TCP to the container moves nothing. wg-py must hand
    them on as GSO super-frames (or cut them, on a plain TAP): iperf3 TCP moves data both ways,
    and ``show`` counts the oversized frames it segmented."""
    a, b = underlay_pair(lab, "10.99.6.1/24", "10.99.6.2/24")
    kernel_vxlan(lab, a, "id 42 dstport 4789 remote 10.99.6.2 local 10.99.6.1 dev eth0",
                 f"{VXLAN_ADDR_K}/24", addr6="fd00:88::101/64")
    wgpy_vxlan(lab, b, "id 42 dstport 4789 remote 10.99.6.1 local 10.99.6.2 dev eth0", None,
               extra={"WGPY_NO_OFFLOAD": "1"} if plain else None)
    c = lab.namespace("c")
    lab.run(b, ["ip", "link", "add", "br0", "type", "bridge"])
    lab.run(b, ["ip", "link", "set", "vxlan0", "master", "br0"])
    lab.veth(c, b, [], [], names=("eth0", "vc0"))
    for ns, dev in ((c, "eth0"), (b, "vc0")):
        lab.run(ns, ["ip", "link", "set", dev, "mtu", "1450"])
    lab.run(b, ["ip", "link", "set", "vc0", "master", "br0"])
    lab.run(b, ["ip", "link", "set", "br0", "up"])
    lab.add_address(c, "eth0", f"{CONTAINER[4]}/24")
    lab.add_address(c, "eth0", f"{CONTAINER[6]}/64")
    assert show(lab, b)["mtu"] == 1450
    assert ping_ok(lab, a, CONTAINER[inner])
    sent = lab.iperf3(c, a, CONTAINER[inner], seconds=2)  # kernel peer -> container
    received = lab.iperf3(c, a, CONTAINER[inner], seconds=2, reverse=True)
    for result in (sent, received):
        assert result["end"]["sum_received"]["bytes"] > 1_000_000, result["end"]["sum_received"]
    info = show(lab, b)
    assert info["rx_tso_frames"] > 10, info
    assert not any(k.startswith("tap_") or k.endswith("exception")
                   for k in info["stats"]["drops"]), info["stats"]["drops"]


def test_fdb_commands_and_lifecycle(lab: Lab) -> None:
    a, b = underlay_pair(lab, "10.99.1.1/24", "10.99.1.2/24")
    # bad arguments: exit 1, nothing created
    for bad in ("add vxlan0 id 42 dev nosuchdev remote 10.99.1.1", "add vxlan0 remote 10.99.1.1",
                "add vxlan0 id 99999999", "add vxlan0 id 1 remote 239.1.1.1"):
        done = wgpy(lab, b, bad, check=False)
        assert done.returncode == 1 and done.stderr.strip(), bad
        assert not lab.link_exists(b, "vxlan0")
    for key, value in (("WGPY_SLICE", "5"), ("WGPY_GC", "sometimes")):  # a bad runtime policy
        done = wgpy(lab, b, "add vxlan0 id 7 remote 10.99.1.1", check=False, extra={key: value})
        assert done.returncode == 1 and key in done.stderr, done.stderr
        assert not lab.link_exists(b, "vxlan0")
    wgpy_vxlan(lab, b, "id 7 remote 10.99.1.1 dev eth0 ageing 100", "192.168.7.2/24")
    again = wgpy(lab, b, "add vxlan0 id 7 remote 10.99.1.1", check=False)
    assert again.returncode == 1 and "already" in again.stderr

    wgpy(lab, b, "fdb add vxlan0 02:00:00:00:00:aa dst 10.99.1.9")
    wgpy(lab, b, "fdb append vxlan0 00:00:00:00:00:00 dst 10.99.1.8")
    lines = fdb_lines(lab, b)
    assert "02:00:00:00:00:aa dst 10.99.1.9 self permanent" in lines
    assert "00:00:00:00:00:00 dst 10.99.1.8 self permanent" in lines
    assert any(line.startswith("00:00:00:00:00:00 dst 10.99.1.1") for line in lines)
    wgpy(lab, b, "fdb del vxlan0 02:00:00:00:00:aa")
    wgpy(lab, b, "fdb del vxlan0 00:00:00:00:00:00 dst 10.99.1.8")
    lines = fdb_lines(lab, b)
    assert not any("02:00:00:00:00:aa" in line or "10.99.1.8" in line for line in lines)
    assert wgpy(lab, b, "fdb del vxlan0 02:00:00:00:00:aa", check=False).returncode == 1
    text = wgpy(lab, b, "show vxlan0").stdout
    assert "vxlan id 7" in text and "drops:" in text
    # The runtime policies (tunnel/runtime), unset: the GC froze the start-up's objects, and the
    # scheduler slice follows the CPU pressure (auto): every thread has the 100 us slice after an
    # odd number of changes, the kernel's default after an even one (kernels with custom slices).
    info = show(lab, b)
    assert info["gc"]["mode"] == "freeze" and info["gc"]["freezes"] >= 1 and info["gc"]["frozen"] > 10_000
    assert info["sched"]["mode"] == "auto" and info["sched"]["error"] is None
    assert "gc: freeze" in text and "scheduler slice:" in text and "(auto)" in text
    if custom_slices():
        assert thread_slices(info["pid"]) in ({sched.DEFAULT_SLICE_US}, {kernel_default_slice()})
        assert info["sched"]["slice_us"] == (sched.DEFAULT_SLICE_US if info["sched"]["changes"] % 2
                                             else kernel_default_slice())

    # `ip link del` stops the daemon and removes its control socket
    pid = show(lab, b)["pid"]
    lab.run(b, ["ip", "link", "del", "vxlan0"])
    assert wait_for(lambda: not _alive(pid), 10.0)
    assert wgpy(lab, b, "show vxlan0", check=False).returncode == 1
    assert not list(lab.path("run").rglob("vxlan0.sock"))

    # `del` and SIGTERM stop it too, removing the device; this one asks for a fixed slice
    wgpy_vxlan(lab, b, "id 7 remote 10.99.1.1", None, extra={"WGPY_SLICE": "300"})
    info = show(lab, b)
    assert info["sched"]["mode"] == "fixed"
    if custom_slices():
        assert info["sched"]["slice_us"] == 300 and thread_slices(info["pid"]) == {300}
    wgpy(lab, b, "del vxlan0")
    assert not lab.link_exists(b, "vxlan0")
    wgpy_vxlan(lab, b, "id 7 remote 10.99.1.1", None)
    pid = show(lab, b)["pid"]
    lab.run(b, ["kill", "-TERM", str(pid)])
    assert wait_for(lambda: not _alive(pid), 10.0)
    assert wait_for(lambda: not lab.link_exists(b, "vxlan0"), 5.0)
    assert not list(lab.path("run").rglob("vxlan0.sock"))
    assert wgpy(lab, b, "del vxlan0", check=False).returncode == 1


def thread_slices(pid: int) -> set[int]:
    """The scheduler slices of every thread of process ``pid``, in microseconds."""
    return {sched.get_slice(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def kernel_default_slice() -> int:
    """The slice a thread of ours has without asking (the kernel's default)."""
    return int(in_thread(sched.get_slice))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# ---- multicast -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "underlay, group_ip", [("10.77.0.{}/24", "239.1.1.1"), ("fd00:77::{}/64", "ff05::4242")]
)
def test_multicast_group_three_hosts_mixed(lab: Lab, underlay: str, group_ip: str) -> None:
    """A kernel vxlan and two wg-py endpoints in one multicast group behind a snooping bridge
    with a querier: the bridge's MDB lists the group on the wg-py hosts' ports (our joins were
    seen), ping between every pair, and TCP both ways between every pair on default
    offloads (the kernel's partial checksums reach both wg-py hosts)."""
    h1, h2, h3 = bridged_hosts(lab, 3, underlay, querier=True)
    group = f"id 42 dstport 4789 group {group_ip} dev eth0"
    kernel_vxlan(lab, h1, group, "192.168.9.1/24")
    wgpy_vxlan(lab, h2, group, "192.168.9.2/24")
    wgpy_vxlan(lab, h3, group, "192.168.9.3/24")
    br = h1[: -len("h1")] + "br"
    assert lab.link_exists(br, "br0")

    def joined() -> bool:
        mdb = lab.run(br, ["bridge", "mdb", "show"]).stdout
        return all(f"port {p} grp {group_ip}" in mdb for p in ("p1", "p2", "p3"))

    assert wait_for(joined, 15.0), lab.run(br, ["bridge", "mdb", "show"]).stdout
    hosts = {h1: "192.168.9.1", h2: "192.168.9.2", h3: "192.168.9.3"}
    for src in hosts:
        for dst_ns, dst in hosts.items():
            if dst_ns != src:
                assert ping_ok(lab, src, dst), f"{src} -> {dst}"
    names = list(hosts)
    for i, server in enumerate(names):
        for client in names[i + 1:]:
            for reverse in (False, True):
                result = lab.iperf3(server, client, hosts[server], seconds=1, reverse=reverse)
                assert result["end"]["sum_received"]["bytes"] > 500_000, (server, client, reverse)
    for ns in (h2, h3):
        info = show(lab, ns)
        assert f"00:00:00:00:00:00 dst {group_ip} via eth0 self permanent" in info["fdb_lines"]
        assert info["stats"]["rx_packets"] > 0 and not info["drops"].get("own_source_mac")
        assert info["rx_csum_partial"] > 0  # from the kernel host h1


# ---- learning and moving ----------------------------------------------------------------------------


def test_mac_moving_between_kernel_vteps_is_followed(lab: Lab) -> None:
    k1, k2, w = bridged_hosts(lab, 3)
    mac = "02:00:00:00:00:50"
    kernel_vxlan(lab, k1, "id 42 dstport 4789 remote 10.77.0.3 local 10.77.0.1 dev eth0",
                 "192.168.10.50/24", mac=mac)
    kernel_vxlan(lab, k2, "id 42 dstport 4789 remote 10.77.0.3 local 10.77.0.2 dev eth0",
                 "192.168.10.60/24", mac="02:00:00:00:00:60")
    wgpy_vxlan(lab, w, "id 42 dstport 4789 remote 10.77.0.1 dev eth0", "192.168.10.3/24")
    wgpy(lab, w, "fdb append vxlan0 00:00:00:00:00:00 dst 10.77.0.2")

    assert ping_ok(lab, w, "192.168.10.50")
    assert f"{mac} dst 10.77.0.1 self" in fdb_lines(lab, w)

    # the host moves: its address and MAC leave k1 for k2
    lab.run(k1, ["ip", "addr", "del", "192.168.10.50/24", "dev", "vxlan0"])
    lab.run(k1, ["ip", "link", "set", "vxlan0", "address", "02:00:00:00:00:51"])
    lab.run(k2, ["ip", "link", "set", "vxlan0", "address", mac])
    lab.run(k2, ["ip", "addr", "add", "192.168.10.50/24", "dev", "vxlan0"])
    # traffic from its new place (an ARP request reaches us first): moved at once
    assert ping_ok(lab, k2, "192.168.10.3")
    assert wait_for(lambda: f"{mac} dst 10.77.0.2 self" in fdb_lines(lab, w), 5.0)
    assert show(lab, w)["stats"]["fdb_migrated"] >= 1
    assert ping_ok(lab, w, "192.168.10.50")


# ---- malformed packets -----------------------------------------------------------------------------

SEND_DATAGRAMS = """
import json, socket, sys
dst, port, items = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for hexdata in items:
    s.sendto(bytes.fromhex(hexdata), (dst, port))
"""


def _frame(src_mac: bytes) -> bytes:
    return b"\xff" * 6 + src_mac + b"\x08\x00" + bytes(46)


def _vxlan(first_word: int, vni_word: int, frame: bytes) -> bytes:
    return struct.pack(">II", first_word, vni_word) + frame


def test_malformed_datagrams_are_dropped_and_counted(lab: Lab) -> None:
    a, b = underlay_pair(lab, "10.99.2.1/24", "10.99.2.2/24")
    kernel_vxlan(lab, a, "id 42 dstport 4789 remote 10.99.2.2 local 10.99.2.1 dev eth0",
                 f"{VXLAN_ADDR_K}/24")
    wgpy_vxlan(lab, b, "id 42 dstport 4789 remote 10.99.2.1 local 10.99.2.2 dev eth0",
               f"{VXLAN_ADDR_W}/24")
    assert ping_ok(lab, a, VXLAN_ADDR_W)
    before = show(lab, b)
    own = bytes.fromhex(before["own_mac"].replace(":", ""))
    good_mac = bytes.fromhex("020000000077")
    cases = {
        "too_short": [b"\x08\x00\x00", _vxlan(0x08000000, 42 << 8, b"\x00" * 6)],
        "no_i_flag": [_vxlan(0x00000000, 42 << 8, _frame(good_mac))],
        "wrong_vni": [_vxlan(0x08000000, 43 << 8, _frame(good_mac))],
        "reserved_bits": [
            _vxlan(0x08000001, 42 << 8, _frame(good_mac)),
            _vxlan(0x88000000, 42 << 8, _frame(good_mac)),
            _vxlan(0x08000000, 42 << 8 | 1, _frame(good_mac)),
        ],
        "own_source_mac": [_vxlan(0x08000000, 42 << 8, _frame(own))],
        "invalid_source_mac": [
            _vxlan(0x08000000, 42 << 8, _frame(bytes.fromhex("010000000001"))),
            _vxlan(0x08000000, 42 << 8, _frame(bytes(6))),
        ],
    }
    payloads = [p.hex() for items in cases.values() for p in items]
    lab.run(a, [sys.executable, "-c", SEND_DATAGRAMS, "10.99.2.2", "4789", json.dumps(payloads)])

    def counted() -> bool:
        drops = show(lab, b)["drops"]
        return all(drops.get(k, 0) - before["drops"].get(k, 0) == len(v) for k, v in cases.items())

    assert wait_for(counted, 10.0), show(lab, b)["drops"]
    after = show(lab, b)
    assert not any(good_mac.hex(":") in line for line in after["fdb_lines"])
    assert after["pid"] == before["pid"]
    assert ping_ok(lab, a, VXLAN_ADDR_W) and ping_ok(lab, b, VXLAN_ADDR_K)


# ---- IPv6 underlay ---------------------------------------------------------------------------------


def test_ipv6_underlay_against_kernel(lab: Lab) -> None:
    a, b = underlay_pair(lab, "fd00:99::1/64", "fd00:99::2/64")
    kernel_vxlan(lab, a, "id 42 dstport 4789 remote fd00:99::2 local fd00:99::1 dev eth0",
                 f"{VXLAN_ADDR_K}/24")
    wgpy_vxlan(lab, b, "id 42 dstport 4789 remote fd00:99::1 local fd00:99::2 dev eth0",
               f"{VXLAN_ADDR_W}/24")
    assert show(lab, b)["mtu"] == 1500 - 70
    assert ping_ok(lab, b, VXLAN_ADDR_K)
    assert ping_ok(lab, a, VXLAN_ADDR_W)
    # a full-size frame (1430-byte inner packet) crosses without fragmenting the underlay
    big = lab.run(b, ["ping", "-c", "2", "-W", "2", "-M", "do", "-s", str(1430 - 28), VXLAN_ADDR_K],
                  check=False, timeout=20)
    assert big.returncode == 0, big.stdout
    kernel_mac = lab.run(a, ["cat", "/sys/class/net/vxlan0/address"]).stdout.strip()
    assert f"{kernel_mac} dst fd00:99::1 self" in fdb_lines(lab, b)


def test_socket_is_bound_in_namespace(lab: Lab) -> None:
    """The UDP socket is bound to dstport in the daemon's namespace (and not elsewhere)."""
    _, b = underlay_pair(lab, "10.99.3.1/24", "10.99.3.2/24")
    wgpy_vxlan(lab, b, "id 5 dstport 4790 remote 10.99.3.1", None)
    listening = lab.run(b, ["ss", "-Hlun"]).stdout
    assert ":4790 " in listening
    with pytest.raises(CommandError):
        lab.run(b, [sys.executable, "-c",
                    "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                    " s.bind(('0.0.0.0', 4790))"])
