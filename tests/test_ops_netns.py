# ruff: noqa: F811 - pytest fixtures imported from tests.netns are parameters here
"""``wg-py show`` and ``wg-py top`` against real daemons in namespaces.

The pair: wg-py in namespace a, wireguard-go or wg-py in b (tests/netns.py ``wg_pair``). For top,
an L2 overlay rides the tunnel too: a wg-py VXLAN device in each namespace whose remote is the
peer's tunnel address (the guide's "L2 over WireGuard"). top runs in a tmux pane (a real
pseudo-terminal); the pane is captured and the session killed afterwards. Waits are bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns import Lab, Node, netns_factory, requires_root_netns, wait_for, wg_pair  # noqa: F401
from tests.test_sched_slice import custom_slices, in_thread
from tunnel.runtime import sched

pytestmark = [pytest.mark.netns, requires_root_netns]


def show_json(lab: Lab, node: Node) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(lab.run(node.ns, ["wg-py", "show", node.iface, "--json"]).stdout)
    return out[node.iface]


def test_show_adds_rates_drops_offloads_and_wg_still_works(netns_factory: Lab) -> None:
    lab = netns_factory
    a, b = wg_pair(lab, "wg-py", "wireguard-go")
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0)
    pinger = lab.spawn(a.ns, ["ping", "-i", "0.2", "-s", "1000", "-w", "40", "-q", b.inner4])
    rates: list[dict[str, Any]] = []
    try:
        def moving() -> bool:
            peer = show_json(lab, a)["peers"][0]
            rates.append(peer)
            return bool(peer["rx_rate"] > 0 and peer["tx_rate"] > 0)

        assert wait_for(moving, 20.0, 0.5), rates[-1:]
    finally:
        pinger.stop()
    stats = show_json(lab, a)
    (peer,) = stats["peers"]
    assert peer["public_key"] == b.public and peer["endpoint"] == f"192.168.77.2:{b.port}"
    assert set(peer["allowed_ips"]) == {f"{b.inner4}/32", f"{b.inner6}/128"}
    assert peer["handshakes"] >= 1 and peer["latest_handshake"] > 1.6e9
    assert stats["public_key"] == a.public and stats["listen_port"] == a.port
    impl = stats["implementation"]
    assert set(impl) == {"pumps", "batch_io", "cipher", "datapath"}
    assert set(impl.values()) <= {"cython", "pure"}
    assert stats["offloads"]["tun_vnet_hdr"] is True  # default offloads on
    assert "tso4" in stats["offloads"]["tun"]
    # The daemon's GC policy (WGPY_GC unset: freeze): its start-up objects were frozen.
    assert stats["gc"]["mode"] == "freeze" and stats["gc"]["freezes"] >= 1
    assert stats["gc"]["frozen"] > 10_000
    # The scheduler slice (WGPY_SLICE unset: auto): 100 us after an odd number of changes (CPU
    # pressure), the kernel's default after an even one, on a kernel with custom slices.
    assert stats["sched"]["mode"] == "auto" and stats["sched"]["error"] is None
    if custom_slices():
        default = in_thread(sched.get_slice)
        assert stats["sched"]["slice_us"] == (sched.DEFAULT_SLICE_US if stats["sched"]["changes"] % 2 else default)
    # The same daemon still answers the real wg (which never sends stats=1).
    rx, tx = a.transfer_of(b)
    assert 0 < rx <= show_json(lab, a)["peers"][0]["rx_bytes"]
    dump = a.wg("show", a.iface, "dump").splitlines()
    assert dump[1].split("\t")[0] == b.public
    text = lab.run(a.ns, ["wg-py", "show", a.iface]).stdout
    assert f"interface: {a.iface}" in text and f"peer: {b.public}" in text
    assert "rate: " in text and "drops: " in text and "twins: " in text and "offloads: tun " in text
    assert "gc: freeze" in text and "scheduler slice: " in text
    # All interfaces: ours is listed; wireguard-go's socket is skipped (it refuses stats=1) ...
    everything = json.loads(lab.run(a.ns, ["wg-py", "show", "--json"]).stdout)
    assert a.iface in everything and b.iface not in everything
    # ... and naming it is a clear error.
    done = lab.run(b.ns, ["wg-py", "show", b.iface], check=False)
    assert done.returncode == 1 and "not a wg-py daemon" in done.stderr


@pytest.fixture
def overlay(netns_factory: Lab) -> Iterator[tuple[Lab, Node, Node, dict[str, str]]]:
    """wg-py <-> wg-py, and a VXLAN device vx0 in each namespace over the tunnel, brought up by
    ``wg-py vxlan up vx0`` from a configuration file (what wg-py-vxlan@.service runs)."""
    lab = netns_factory
    a, b = wg_pair(lab, "wg-py", "wg-py")
    env = {"WGPY_VXLAN_RUN_DIR": str(lab.path("run"))}
    for node, peer, addr in ((a, b, "192.168.50.1/24"), (b, a, "192.168.50.2/24")):
        conf_dir = lab.path(f"conf-{node.index}")
        conf_dir.mkdir()
        (conf_dir / "vx0.conf").write_text(
            f"# L2 over WireGuard\nid 42 dstport 4789\nremote {peer.inner4} local {node.inner4}\n"
            f"address {addr}\nmtu 1350\n")
        lab.run(node.ns, ["wg-py", "vxlan", "up", "vx0"], env={**env, "WGPY_VXLAN_CONF_DIR": str(conf_dir)})
    link = lab.run(a.ns, ["ip", "-o", "link", "show", "dev", "vx0"]).stdout
    assert "mtu 1350" in link and ",UP" in link
    assert lab.wait_ping(a.ns, b.inner4, timeout=15.0)
    assert lab.wait_ping(a.ns, "192.168.50.2", timeout=15.0)  # L2 over WireGuard
    yield lab, a, b, env
    lab.run(b.ns, ["wg-py", "vxlan", "down", "vx0"], env=env)
    assert not lab.link_exists(b.ns, "vx0")


def test_top_once_json_lists_peers_and_remotes_by_rate(overlay: tuple[Lab, Node, Node, dict[str, str]]) -> None:
    lab, a, b, env = overlay
    pinger = lab.spawn(a.ns, ["ping", "-i", "0.2", "-s", "1200", "-w", "30", "-q", "192.168.50.2"])
    try:
        result: list[dict[str, Any]] = []

        def both_move() -> bool:
            out = json.loads(lab.run(a.ns, ["wg-py", "top", "--once", "--json", "--interval", "1"], env=env).stdout)
            result.append(out)
            mine = [r for r in out["rows"] if r["interface"] in (a.iface, "vx0")]
            return len(mine) == 2 and all(r["rx_rate"] > 0 for r in mine)

        assert wait_for(both_move, 30.0, 0.5), result[-1:]
    finally:
        pinger.stop()
    out = result[-1]
    rows = {(r["kind"], r["interface"]): r for r in out["rows"]}
    wg = rows[("wireguard", a.iface)]
    vx = rows[("vxlan", "vx0")]
    assert wg["peer"] == b.public and vx["peer"] == b.inner4
    ordered = [r["rx_rate"] + r["tx_rate"] for r in out["rows"]]
    assert ordered == sorted(ordered, reverse=True)
    assert out["interfaces"]["vx0"]["kind"] == "vxlan" and out["interfaces"][a.iface]["kind"] == "wireguard"

    # VXLAN frames ride inside the tunnel: the tunnel carries at least the overlay's bytes. The
    # two daemons are read one after the other, so compare their totals once traffic has stopped
    # (while it flows, the later read can count frames the earlier one had not seen yet).
    def settled() -> list[dict[str, Any]]:
        snap = json.loads(lab.run(a.ns, ["wg-py", "top", "--once", "--json", "--interval", "0.2"], env=env).stdout)
        return [r for r in snap["rows"] if (r["kind"], r["interface"]) in (("wireguard", a.iface), ("vxlan", "vx0"))]

    snapshots: list[list[dict[str, Any]]] = []
    assert wait_for(lambda: bool(snapshots.append(settled())) or (
        len(snapshots) > 1 and [r["rx_bytes"] for r in snapshots[-1]] == [r["rx_bytes"] for r in snapshots[-2]]),
        15.0, 0.5), snapshots[-2:]
    final = {r["kind"]: r for r in snapshots[-1]}
    assert final["wireguard"]["rx_bytes"] > final["vxlan"]["rx_bytes"] > 0


def test_top_live_view_in_tmux(overlay: tuple[Lab, Node, Node, dict[str, str]]) -> None:
    lab, a, b, env = overlay
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (make deps installs it)")
    sock = str(lab.path("tmux.sock"))
    session = "wgpytop"
    env_words = [f"{k}={v}" for k, v in env.items()]
    command = " ".join(["ip", "netns", "exec", a.ns, "env", *env_words, "wg-py", "top", "--interval", "0.5"])
    subprocess.run(["tmux", "-S", sock, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", command],
                   check=True, timeout=15, env=__import__("tunnel.lab.netns", fromlist=["tool_env"]).tool_env())
    pinger = lab.spawn(a.ns, ["ping", "-i", "0.2", "-w", "30", "-q", "192.168.50.2"])
    panes: list[str] = []
    try:
        def shows_everything() -> bool:
            done = subprocess.run(["tmux", "-S", sock, "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True, timeout=10, check=False)
            panes.append(done.stdout)
            text = done.stdout
            return (a.iface in text and b.public[:16] in text and "vx0" in text and b.inner4 in text
                    and "RX RATE" in text and "bit/s" in text)

        assert wait_for(shows_everything, 20.0, 0.5), panes[-1:] or "no pane captured"
    finally:
        pinger.stop()
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10, check=False)
    pane = panes[-1]
    assert "wireguard" in pane and "vxlan" in pane and "Ctrl-C quits" in pane
