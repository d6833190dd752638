# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""``wg-py up|down`` and ``wg-quick`` with WG_QUICK_USERSPACE_IMPLEMENTATION=wg-py, in namespaces.

Namespace ``a`` runs the command under test; namespace ``b`` holds the peer (a daemon configured
with ``wg``). The Endpoint in a's file is the host name ``peer-b``, resolved through
``/etc/netns/A/hosts`` (``ip netns exec`` shows it as /etc/hosts), so name resolution is tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto import keys
from tests.netns import (
    Lab,
    Node,
    configure,
    implementation,
    netns_factory,  # noqa: F401 - the fixture
    peer_section,
    requires_root_netns,
    start_node,
    wait_for,
)
from tunnel.lab.netns import UAPI_DIR
from tunnel.wireguard import config as wgconfig

pytestmark = [pytest.mark.netns, requires_root_netns]


class Side:
    """Namespace ``a`` with a wg-quick file for interface ``iface``, peered with ``peer``."""

    def __init__(self, lab: Lab, peer_impl: str) -> None:
        self.lab = lab
        self.ns = lab.namespace("a")
        ns_b = lab.namespace("b")
        lab.veth(self.ns, ns_b, ["192.168.77.1/24"], ["192.168.77.2/24"])
        lab.etc_file(self.ns, "hosts", "127.0.0.1 localhost\n192.168.77.2 peer-b\n")
        self.peer = start_node(lab, peer_impl, ns_b, 2, 51822)
        self.iface = lab.interface_name()
        self.private = keys.generate_private()
        self.public = keys.to_base64(keys.public_from_private(self.private))
        self.path = lab.path(f"{self.iface}.conf")
        self.marks = lab.path("hooks.log")
        self.peer_self = Node(lab, "wg-py", self.ns, self.iface, 1, self.private, 51821,
                              inner4="10.9.0.1", inner6="fd09::1")
        configure(self.peer, peer_section(self.peer_self, f"192.168.77.1:{51821}",
                                          allowed="10.9.0.1/32, fd09::1/128"))

    def write(self, extra_interface: str = "", allowed: str = "", extra: str = "") -> Path:
        allowed = allowed or "10.9.0.2/32, fd09::2/128, 10.20.0.0/16"
        self.path.write_text(
            "[Interface]\n"
            f"PrivateKey = {keys.to_base64(self.private)}\n"
            "ListenPort = 51821\n"
            "Address = 10.9.0.1/24, fd09::1/64\n"
            f"PreUp = echo pre-up %i >> {self.marks}\n"
            f"PostUp = echo post-up %i >> {self.marks}\n"
            f"PreDown = echo pre-down %i >> {self.marks}\n"
            f"PostDown = echo post-down %i >> {self.marks}\n"
            f"{extra_interface}"
            "\n[Peer]\n"
            f"PublicKey = {self.peer.public}\n"
            f"AllowedIPs = {allowed}\n"
            f"Endpoint = peer-b:{self.peer.port}\n"
            f"{extra}"
        )
        return self.path

    def hooks(self) -> list[str]:
        return self.marks.read_text().splitlines() if self.marks.exists() else []

    def run(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        done = self.lab.run(self.ns, list(argv), check=False, timeout=90, env=env)
        return done.returncode, done.stdout + done.stderr

    def wg_py(self, command: str) -> tuple[int, str]:
        return self.run("wg-py", command, str(self.path))

    def link(self) -> bool:
        return self.lab.link_exists(self.ns, self.iface)

    def socket_gone(self) -> bool:
        return wait_for(lambda: not (UAPI_DIR / f"{self.iface}.sock").exists(), 10.0)

    def routes(self, *args: str) -> str:
        return self.lab.run(self.ns, ["ip", *args]).stdout


@pytest.mark.parametrize("peer_impl", ["wireguard-go", "wg-py"])
def test_wg_py_up_ping_down(netns_factory: Lab, peer_impl: str) -> None:
    implementation("wg-py")
    side = Side(netns_factory, peer_impl)
    side.write(extra_interface="DNS = 192.0.2.53\n")
    rc, out = side.wg_py("up")
    assert rc == 0, out
    assert side.hooks() == [f"pre-up {side.iface}", f"post-up {side.iface}"]
    assert netns_factory.wait_ping(side.ns, "10.9.0.2", timeout=15), out
    assert netns_factory.ping(side.ns, "fd09::2", 2) is not None
    assert netns_factory.ping(side.peer.ns, "10.9.0.1", 2) is not None
    link = side.routes("link", "show", "dev", side.iface)
    assert "mtu 1420" in link and ",UP" in link
    assert f"10.20.0.0/16 dev {side.iface}" in side.routes("-4", "route")
    assert "fd09::/64" in side.routes("-6", "route")
    endpoints = side.lab.run(side.ns, ["wg", "show", side.iface, "endpoints"]).stdout
    assert f"192.168.77.2:{side.peer.port}" in endpoints  # peer-b was resolved
    rc, out = side.wg_py("down")
    assert rc == 0, out
    assert not side.link()
    assert side.socket_gone()
    assert side.hooks()[2:] == [f"pre-down {side.iface}", f"post-down {side.iface}"]
    assert "10.20.0.0/16" not in side.routes("-4", "route")
    assert not netns_factory.daemon_pids(side.ns)  # the daemon exited with its device


@pytest.mark.parametrize(
    ("line", "body"),
    [(5, "Address = 10.9.0.300/24\n"), (6, "ListenPort = 70000\n"), (5, "Bogus = 1\n")],
)
def test_bad_config_leaves_nothing(netns_factory: Lab, line: int, body: str) -> None:
    implementation("wg-py")
    side = Side(netns_factory, "wireguard-go")
    path = side.write()
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(line - 1, body)
    path.write_text("".join(lines))
    rc, out = side.wg_py("up")
    assert rc == 1
    assert f"{path}:{line}: " in out, out
    assert not side.link()
    assert not (UAPI_DIR / f"{side.iface}.sock").exists()
    assert side.hooks() == []  # not even PreUp ran


def test_failure_after_start_rolls_back(netns_factory: Lab) -> None:
    implementation("wg-py")
    side = Side(netns_factory, "wireguard-go")
    side.write(extra_interface="PostUp = false\n")
    rc, out = side.wg_py("up")
    assert rc == 1, out
    assert "exited with status 1" in out
    assert not side.link()
    assert side.socket_gone()
    assert "10.20.0.0/16" not in side.routes("-4", "route")
    assert wait_for(lambda: not netns_factory.daemon_pids(side.ns), 10.0)


def test_unknown_host_creates_nothing(netns_factory: Lab) -> None:
    implementation("wg-py")
    side = Side(netns_factory, "wireguard-go")
    side.write()
    side.path.write_text(side.path.read_text().replace("peer-b:", "no-such-host.invalid:"))
    rc, out = side.wg_py("up")
    assert rc == 1 and "cannot resolve endpoint" in out, out
    assert not side.link() and side.hooks() == []


def test_default_route_uses_fwmark_table(netns_factory: Lab) -> None:
    implementation("wg-py")
    side = Side(netns_factory, "wg-py")
    side.write(allowed="0.0.0.0/0, ::/0")
    rc, out = side.wg_py("up")
    assert rc == 0, out
    fwmark = side.lab.run(side.ns, ["wg", "show", side.iface, "fwmark"]).stdout.strip()
    assert fwmark == "0xca6c"  # 51820
    rules = side.routes("-4", "rule")
    assert "not from all fwmark 0xca6c lookup 51820" in rules
    assert "suppress_prefixlength 0" in rules
    assert f"default dev {side.iface}" in side.routes("-4", "route", "show", "table", "51820")
    assert f"default dev {side.iface}" in side.routes("-6", "route", "show", "table", "51820")
    # Everything goes through the tunnel now, the endpoint's datagrams excepted (fwmark).
    assert netns_factory.wait_ping(side.ns, "10.9.0.2", timeout=15), out
    saved = side.lab.run(side.ns, ["iptables-save"]).stdout
    assert f"wg-quick(8) rule for {side.iface}" in saved
    rc, out = side.wg_py("down")
    assert rc == 0, out
    assert "51820" not in side.routes("-4", "rule") and "51820" not in side.routes("-6", "rule")
    assert "suppress_prefixlength" not in side.routes("-4", "rule")
    assert side.iface not in side.lab.run(side.ns, ["iptables-save"]).stdout
    assert not side.link() and side.socket_gone()


def test_save_config_writes_back(netns_factory: Lab) -> None:
    implementation("wg-py")
    side = Side(netns_factory, "wireguard-go")
    side.write(extra_interface="SaveConfig = true\nMTU = 1400\n")
    rc, out = side.wg_py("up")
    assert rc == 0, out
    extra = keys.to_base64(keys.public_from_private(keys.generate_private()))
    side.lab.run(side.ns, ["wg", "set", side.iface, "peer", extra, "allowed-ips", "10.77.0.0/16"])
    rc, out = side.wg_py("down")
    assert rc == 0, out
    assert side.path.stat().st_mode & 0o077 == 0
    saved = wgconfig.load_config(str(side.path))
    assert [str(a) for a in saved.interface.addresses] == ["10.9.0.1/24", "fd09::1/64"]
    assert saved.interface.mtu == 1400 and saved.interface.save_config
    assert saved.interface.listen_port == 51821
    assert saved.interface.private_key == side.private
    assert len(saved.interface.pre_up) == 1 and "%i" in saved.interface.pre_up[0]
    by_key = {keys.to_base64(p.public_key): p for p in saved.peers}
    assert set(by_key) == {side.peer.public, extra}
    assert [str(a) for a in by_key[extra].allowed_ips] == ["10.77.0.0/16"]
    assert str(by_key[side.peer.public].endpoint) == f"192.168.77.2:{side.peer.port}"
    rc, out = side.wg_py("up")  # the saved file brings it up again
    assert rc == 0, out
    assert netns_factory.wait_ping(side.ns, "10.9.0.2", timeout=15)


def test_wg_quick_with_wg_py_as_userspace_implementation(netns_factory: Lab) -> None:
    implementation("wg-py")
    side = Side(netns_factory, "wireguard-go")
    side.write()
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": "wg-py"}
    rc, out = side.run("wg-quick", "up", str(side.path), env=env)
    assert rc == 0, out
    assert f"[#] wg-py {side.iface}" in out
    assert netns_factory.wait_ping(side.ns, "10.9.0.2", timeout=15), out
    assert netns_factory.ping(side.ns, "fd09::2", 2) is not None
    assert f"10.20.0.0/16 dev {side.iface}" in side.routes("-4", "route")
    rc, out = side.run("wg-quick", "down", str(side.path), env=env)
    assert rc == 0, out
    assert not side.link()
    assert side.socket_gone()
    assert wait_for(lambda: not netns_factory.daemon_pids(side.ns), 10.0)
