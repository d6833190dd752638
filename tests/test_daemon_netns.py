"""The wg-py daemon for real: TUN devices, UDP sockets and the real ``wg``, in namespaces.

Each test builds its own namespaces through :class:`tunnel.lab.netns.Lab` (unique names, everything
removed afterwards, failures included) and bounds every wait. Nothing here asserts on timing:
"recent" handshakes are checked to be Unix times (not "seconds ago"), with a wide margin.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import Lab, Node, implementation, requires_root_netns, wait_for, wg_pair
from tunnel.lab import netns
from tunnel.lab.netns import UAPI_DIR, tool_env

pytestmark = [pytest.mark.netns, requires_root_netns]


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Namespaces, daemons and sockets of one test, removed afterwards whatever happened."""
    with netns.lab() as instance:
        yield instance


def _dump_peer(node: Node, peer: Node) -> list[str]:
    """The ``wg show IFACE dump`` line of ``peer``, split on tabs (8 fields)."""
    lines = node.wg("show", node.iface, "dump").splitlines()
    assert len(lines[0].split("\t")) == 4  # private, public, listen port, fwmark
    for line in lines[1:]:
        fields = line.split("\t")
        if fields[0] == peer.public:
            return fields
    raise AssertionError(f"{peer.public} not in the dump of {node.iface}: {lines}")


def _ping_both_ways(lab: Lab, a: Node, b: Node) -> None:
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0), f"{a.impl} -> {b.impl} does not answer"
    assert lab.ping(a.ns, b.inner4, count=3) is not None
    assert lab.ping(b.ns, a.inner4, count=3) is not None


def _check_dump(a: Node, b: Node) -> None:
    fields = _dump_peer(a, b)
    public, psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
    assert endpoint == f"192.168.77.{b.index}:{b.port}"
    assert set(allowed.split(",")) == {f"{b.inner4}/32", f"{b.inner6}/128"}
    assert psk == "(none)" and keepalive == "off"
    now = time.time()
    assert now - 600 < int(handshake) <= now + 5  # Unix time of the last handshake
    assert int(rx) > 0 and int(tx) > 0
    header = a.wg("show", a.iface, "dump").splitlines()[0].split("\t")
    assert header[1] == a.public and int(header[2]) == a.port


@pytest.mark.parametrize("impl_b", ["wireguard-go", "wg-py"])
def test_ping_both_ways_and_dump(lab: Lab, impl_b: str) -> None:
    a, b = wg_pair(lab, "wg-py", impl_b)
    _ping_both_ways(lab, a, b)
    _check_dump(a, b)
    if impl_b == "wg-py":
        _check_dump(b, a)
    # The kernel counts what crossed the TUN device (ip -s link): at least the pings.
    stats = lab.run(a.ns, ["cat", f"/sys/class/net/{a.iface}/statistics/rx_packets"])
    assert int(stats.stdout) >= 3


def _start_foreground(lab: Lab, ns: str) -> tuple[str, subprocess.Popen[bytes], Path]:
    program = implementation("wg-py")
    name = lab.interface_name()
    log = lab.path(f"fg-{name}.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            lab.argv(ns, [*program, "-f", name]), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=tool_env({"LOG_LEVEL": "verbose"}),
        )
    sock = UAPI_DIR / f"{name}.sock"
    try:
        if not wait_for(lambda: sock.exists() or proc.poll() is not None, 15.0):
            raise AssertionError(f"no UAPI socket: {log.read_text(errors='replace')}")
        assert proc.poll() is None, log.read_text(errors="replace")
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return name, proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("how", ["link-del", "sigterm", "socket-removed"])
def test_foreground_daemon_exits_cleanly(lab: Lab, how: str) -> None:
    ns = lab.namespace("f")
    name, proc, log = _start_foreground(lab, ns)
    sock = UAPI_DIR / f"{name}.sock"
    try:
        assert lab.link_exists(ns, name)
        assert oct(sock.stat().st_mode & 0o777) == oct(0o700)  # created under umask 077
        if how == "link-del":
            lab.run(ns, ["ip", "link", "del", name])
        elif how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            sock.unlink()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {how}: {log.read_text()}") from None
        assert code == 0, log.read_text(errors="replace")
        assert not sock.exists()
        assert not lab.link_exists(ns, name)  # SIGTERM / socket removal take the device down
    finally:
        _stop(proc)


def test_daemonized_second_instance_fails(lab: Lab) -> None:
    ns = lab.namespace("d")
    program = implementation("wg-py")
    name = lab.start_daemon(ns, program)  # returned 0 with the socket in place
    assert lab.link_exists(ns, name)
    again = lab.run(ns, [*program, name], check=False, timeout=30)
    assert again.returncode == 1 and name in again.stderr
    assert (UAPI_DIR / f"{name}.sock").exists()  # the first daemon's socket is untouched
    lab.run(ns, ["ip", "link", "del", name])
    assert wait_for(lambda: not (UAPI_DIR / f"{name}.sock").exists(), 10.0)
    assert wait_for(lambda: not lab.daemon_pids(ns), 10.0)


def _df_ping(lab: Lab, ns: str, addr: str, size: int) -> bool:
    """One IPv4 ping of ``size`` bytes in all (IP header included) with DF set: True if answered."""
    done = lab.run(ns, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(size - 28), addr],
                   check=False, timeout=10)
    return done.returncode == 0


def test_tun_moved_to_another_namespace_keeps_working(lab: Lab) -> None:
    """UDP stays where the daemon started; the TUN device lives on in namespace ``c``."""
    a, b = wg_pair(lab, "wg-py", "wireguard-go")
    c = lab.namespace("c")
    lab.run(a.ns, ["ip", "link", "set", a.iface, "netns", c])
    lab.run(c, ["ip", "addr", "add", f"{a.inner4}/24", "dev", a.iface])
    lab.run(c, ["ip", "link", "set", "mtu", "1420", "up", "dev", a.iface])
    assert lab.wait_ping(c, b.inner4, timeout=15.0)
    assert lab.ping(b.ns, a.inner4, count=3) is not None
    # The MTU is followed in the new namespace. Down to 1300: a 1300-byte packet still
    # crosses, a 1301-byte one (DF) is not sent: nothing reaches b.
    lab.run(c, ["ip", "link", "set", "mtu", "1300", "dev", a.iface])
    assert wait_for(lambda: _df_ping(lab, c, b.inner4, 1300), 10.0)
    received = b.transfer_of(a)[0]
    assert not _df_ping(lab, c, b.inner4, 1301)
    assert b.transfer_of(a)[0] == received
    assert lab.ping(b.ns, a.inner4, count=2) is not None
    # Up to 1440 on both ends (the veth's 1500 holds 1440 + 60 bytes of WireGuard, UDP and IP):
    # a 1440-byte packet crosses only if wg-py follows the new MTU (with 1420 or 1300 it would
    # drop it as too big).
    lab.run(c, ["ip", "link", "set", "mtu", "1440", "dev", a.iface])
    lab.run(b.ns, ["ip", "link", "set", "mtu", "1440", "dev", b.iface])
    assert wait_for(lambda: _df_ping(lab, c, b.inner4, 1440), 10.0)
    # Deleting it there stops the daemon (its socket goes).
    lab.run(c, ["ip", "link", "del", a.iface])
    assert wait_for(lambda: not (UAPI_DIR / f"{a.iface}.sock").exists(), 10.0)
    assert wait_for(lambda: not lab.daemon_pids(a.ns), 10.0)


def test_large_mtu(lab: Lab) -> None:
    """A 34 KB device MTU: big pings cross (the outer datagrams are IP-fragmented)."""
    a, b = wg_pair(lab, "wg-py", "wg-py", mtu=34000)
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0)
    big = lab.run(a.ns, ["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "30000", b.inner4],
                  check=False, timeout=20)
    assert big.returncode == 0, big.stdout + big.stderr
    # Larger than the MTU is refused by the kernel before it reaches us (-M do).
    over = lab.run(a.ns, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "34100", b.inner4],
                   check=False, timeout=20)
    assert over.returncode != 0



def test_ipv6_outer_transport(lab: Lab) -> None:
    a, b = wg_pair(lab, "wg-py", "wireguard-go", outer=6)
    _ping_both_ways(lab, a, b)
    assert a.endpoint_of(b) == f"[fd77::2]:{b.port}"
    assert b.endpoint_of(a) == f"[fd77::1]:{a.port}"
    assert lab.ping(a.ns, b.inner6, count=2) is not None


def test_source_address_failover(lab: Lab) -> None:
    """Replies leave from the address the peer used; when it goes, another one takes over."""
    a, b = wg_pair(lab, "wg-py", "wireguard-go")
    lab.add_address(a.ns, a.veth, "192.168.77.3/24")
    b.wg("set", b.iface, "peer", a.public, "endpoint", f"192.168.77.3:{a.port}")
    assert lab.wait_ping(b.ns, a.inner4, timeout=15.0)
    assert lab.ping(a.ns, b.inner4, count=2) is not None
    # a answered from .3, not from the primary .1 the route would pick: b still sees .3.
    assert b.endpoint_of(a) == f"192.168.77.3:{a.port}"
    lab.run(a.ns, ["ip", "addr", "del", "192.168.77.3/24", "dev", a.veth])
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0)
    assert b.endpoint_of(a) == f"192.168.77.1:{a.port}"
    assert lab.ping(b.ns, a.inner4, count=2) is not None


def test_hostile_datagrams_leave_it_running(lab: Lab) -> None:
    a, b = wg_pair(lab, "wg-py", "wireguard-go")
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0)
    script = (
        "import os, random, socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "r = random.Random(7)\n"
        "sizes = [0, 1, 3, 4, 31, 32, 33, 64, 91, 92, 93, 147, 148, 149, 1500, 65000]\n"
        "for i in range(3000):\n"
        "    kind = struct.pack('<I', r.randrange(0, 6))\n"
        "    body = kind + os.urandom(r.choice(sizes))\n"
        f"    s.sendto(body[: r.choice(sizes)] if i % 3 else body, ('192.168.77.1', {a.port}))\n"
    )
    lab.run(b.ns, ["python3", "-c", script], timeout=60)
    assert a.alive()
    assert lab.ping(a.ns, b.inner4, count=3) is not None
    assert lab.ping(b.ns, a.inner4, count=3) is not None
