"""tunnel.wireguard.quick without root: file resolution, errors, hooks, and the command plans as data."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from crypto import keys
from tunnel.wireguard import config as wgconfig
from tunnel.wireguard import quick
from tunnel.wireguard.quick import Facts, Step

PRIVATE = keys.to_base64(bytes(range(32)))
PEER = keys.to_base64(keys.public_from_private(bytes(range(1, 33))))
PEER2 = keys.to_base64(keys.public_from_private(bytes(range(2, 34))))


def parse(text: str) -> wgconfig.WgQuickConfig:
    return wgconfig.parse_config(text, "wg0.conf")


def conf(interface: str = "", peer: str = "AllowedIPs = 10.0.0.2/32\n") -> str:
    return (f"[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 51820\n{interface}\n"
            f"[Peer]\nPublicKey = {PEER}\n{peer}")


def facts(**kw: object) -> Facts:
    base = Facts(daemon=["wg-py"], mtu=1420)
    for key, value in kw.items():
        setattr(base, key, value)
    return base


def argvs(steps: Sequence[Step]) -> list[str]:
    return [" ".join(s.argv) for s in steps if s.kind == "run"]


# --- resolution and errors ------------------------------------------------------------------


def test_name_resolves_to_etc_wireguard(tmp_path: Path) -> None:
    with pytest.raises(quick.QuickError, match="/etc/wireguard/wgq-none0.conf' does not exist"):
        quick.load("wgq-none0")


def test_path_gives_the_interface_name(tmp_path: Path) -> None:
    path = tmp_path / "office_1.conf"
    path.write_text(conf())
    cfg, iface, resolved = quick.load(str(path))
    assert iface == "office_1" and resolved == path and cfg.name == "office_1"


@pytest.mark.parametrize("name", ["bad name.conf", "waytoolonginterface0.conf", "wg0.cfg"])
def test_invalid_file_names_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(conf())
    with pytest.raises(quick.QuickError, match="valid interface name"):
        quick.load(str(path))


def test_bad_config_reports_file_and_line_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Step] = []
    monkeypatch.setattr(quick, "execute_step", lambda step, check=True: ran.append(step))
    path = tmp_path / "wg7.conf"
    path.write_text(conf(interface="PreUp = touch /nonexistent\nMTU = 12\n"))
    assert quick.main("up", [str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:5: MTU"), err
    assert ran == []


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert quick.main("up", []) == 1
    assert "usage: wg-py up" in capsys.readouterr().err


def test_down_of_a_missing_interface(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quick, "UAPI_DIR", tmp_path)
    path = tmp_path / "wgq9.conf"
    path.write_text(conf())
    assert quick.main("down", [str(path)]) == 1
    assert "`wgq9' is not a WireGuard interface" in capsys.readouterr().err


def test_hook_substitution() -> None:
    assert quick.substitute("ip link show %i && echo %i%i", "wg3") == \
        "ip link show wg3 && echo wg3wg3"
    cfg = parse(conf(interface="PreUp = echo %i > /tmp/x\nPostDown = logger %i down\n"))
    steps, _ = quick.plan_up("wg3", cfg, facts())
    assert steps[0] == Step("hook", script="echo wg3 > /tmp/x")
    down = quick.plan_down("wg3", cfg, None, facts())
    assert down[-1] == Step("hook", script="logger wg3 down")


def test_daemon_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WG_PY_IMPLEMENTATION", "wireguard-go --foo")
    assert quick.daemon_command() == ["wireguard-go", "--foo"]
    monkeypatch.delenv("WG_PY_IMPLEMENTATION")
    program = quick.daemon_command()
    assert program[0].endswith("wg-py") or program[-2:] == ["-m", "tunnel"]


# --- plans ----------------------------------------------------------------------------------


def test_up_plan_order_and_content() -> None:
    cfg = parse(conf(
        interface="Address = 10.0.0.1/24, fd00::1/64\nPreUp = pre\nPostUp = post\n",
        peer="AllowedIPs = 10.0.0.2/32, 10.1.0.0/16, fd00::/64, 192.168.9.7/24\n",
    ))
    steps, daemon_index = quick.plan_up("wg0", cfg, facts(mtu=1380))
    kinds = [s.kind for s in steps]
    assert kinds[:3] == ["hook", "daemon", "uapi"] and kinds[-1] == "hook"
    assert daemon_index == 1 and steps[1].argv == ("wg-py", "wg0")
    request = steps[2].script
    assert request.startswith("set=1\nprivate_key=") and request.endswith("\n\n")
    assert "replace_peers=true\n" in request and "allowed_ip=192.168.9.7/24\n" in request
    assert argvs(steps) == [
        "ip -4 address add 10.0.0.1/24 dev wg0",
        "ip -6 address add fd00::1/64 dev wg0",
        "ip link set mtu 1380 up dev wg0",
        # by prefix length, longest first (as wg-quick's sort -nr -k 2 -t /)
        "ip -6 route add fd00::/64 dev wg0",
        "ip -4 route add 10.0.0.2/32 dev wg0",
        "ip -4 route add 192.168.9.0/24 dev wg0",  # host bits masked, as wg shows them
        "ip -4 route add 10.1.0.0/16 dev wg0",
    ]
    route = [s for s in steps if s.argv[:4] == ("ip", "-4", "route", "add")][0]
    assert route.unless == ("ip", "-4", "route", "show", "dev", "wg0", "match", "10.0.0.2/32")


def test_table_off_and_numbered() -> None:
    off = parse(conf(interface="Table = off\n", peer="AllowedIPs = 0.0.0.0/0, 10.0.0.0/8\n"))
    steps, _ = quick.plan_up("wg0", off, facts())
    assert not [a for a in argvs(steps) if "route" in a or "rule" in a]
    numbered = parse(conf(interface="Table = 1234\n", peer="AllowedIPs = 0.0.0.0/0, ::/0\n"))
    steps, _ = quick.plan_up("wg0", numbered, facts())
    routes = [a for a in argvs(steps) if "route" in a]
    assert routes == ["ip -4 route add 0.0.0.0/0 dev wg0 table 1234",
                      "ip -6 route add ::/0 dev wg0 table 1234"]
    assert not [s for s in steps if s.kind == "uapi" and "fwmark=1234" in s.script]


def test_default_route_plan_like_wg_quick() -> None:
    cfg = parse(conf(interface="Address = 10.0.0.1/24\n", peer="AllowedIPs = 0.0.0.0/0\n"))
    steps, _ = quick.plan_up("wg0", cfg, facts(free_table=51821, have_iptables=True))
    assert Step("uapi", script="set=1\nfwmark=51821\n\n", iface="wg0") in steps
    runs = argvs(steps)
    assert runs[-5:] == [
        "ip -4 route add 0.0.0.0/0 dev wg0 table 51821",
        "ip -4 rule add not fwmark 51821 table 51821",
        "ip -4 rule add table main suppress_prefixlength 0",
        "sysctl -q net.ipv4.conf.all.src_valid_mark=1",
        "iptables-restore -n",
    ]
    rules = steps[-1].stdin or ""
    assert "-I PREROUTING ! -i wg0 -d 10.0.0.1 -m addrtype ! --src-type LOCAL -j DROP" in rules
    assert "--mark 51821 -p udp -j CONNMARK --save-mark" in rules
    assert 'wg-quick(8) rule for wg0' in rules
    # An explicit FwMark is the table, and no fwmark is set through the UAPI.
    marked = parse(conf(interface="FwMark = 0x1234\n", peer="AllowedIPs = ::/0\n"))
    steps, _ = quick.plan_up("wg0", marked, facts())
    assert "ip -6 rule add not fwmark 4660 table 4660" in argvs(steps)
    assert not [s for s in steps if s.kind == "uapi" and "fwmark=" in s.script
                and not s.script.startswith("set=1\nprivate_key")]
    delete = quick.plan_delete("wg0", marked, 4660, facts())
    assert [s.kind for s in delete] == ["remove_firewall", "delete_rules", "run",
                                        "wait_socket_gone"]
    assert delete[1].argv == ("4660",) and delete[2].argv == ("ip", "link", "delete", "dev", "wg0")


def test_dns_with_and_without_resolvconf() -> None:
    cfg = parse(conf(interface="DNS = 192.0.2.1, 2001:db8::1, example.com\n"))
    steps, _ = quick.plan_up("wg0", cfg, facts(have_resolvconf=True))
    dns = [s for s in steps if s.argv[:1] == ("resolvconf",)]
    assert dns[0].argv == ("resolvconf", "-a", "wg0", "-m", "0", "-x")
    assert dns[0].stdin == "nameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch example.com\n"
    assert quick.plan_delete("wg0", cfg, None, facts(have_resolvconf=True))[0].argv == \
        ("resolvconf", "-d", "wg0", "-f")
    steps, _ = quick.plan_up("wg0", cfg, facts(have_resolvconf=False))
    notes = [s.script for s in steps if s.kind == "note"]
    assert notes and "resolvconf not found" in notes[0]


def test_route_entries_follow_wg_semantics() -> None:
    cfg = parse(
        f"[Interface]\nPrivateKey = {PRIVATE}\n"
        f"[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.0.0.0/8, 10.5.5.5/32\n"
        "AllowedIPs = +10.6.0.0/16, -10.5.5.5/32\n"
        f"[Peer]\nPublicKey = {PEER2}\nAllowedIPs = 10.6.0.0/16, fd00::1/64\n"
    )
    assert quick.route_entries(cfg) == ["fd00::/64", "10.6.0.0/16", "10.0.0.0/8"]


def test_endpoint_names_resolved_before_anything_runs() -> None:
    cfg = parse(conf(peer="AllowedIPs = 10.0.0.2/32\nEndpoint = peer.example:4000\n"))
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[str, int]:
        calls.append((host, port))
        return "2001:db8::9", port

    found = quick.gather_facts(cfg, run=lambda argv: "", resolve=resolve)
    assert calls == [("peer.example", 4000)]
    steps, _ = quick.plan_up("wg0", cfg, found)
    assert "endpoint=[2001:db8::9]:4000\n" in steps[1].script


def fake_system(outputs: dict[str, str]) -> quick.Runner:
    return lambda argv: outputs.get(" ".join(argv), "")


def test_route_mtu_like_wg_quick() -> None:
    run = fake_system({
        "ip route get 192.0.2.1": "192.0.2.1 via 10.0.0.1 dev eth0 src 10.0.0.2 uid 0",
        "ip link show dev eth0": "2: eth0: <BROADCAST,UP> mtu 9000 qdisc fq state UP",
        "ip route get 198.51.100.1": "198.51.100.1 dev ppp0 src 10.0.0.3 mtu 1400",
        "ip route show default": "default via 10.0.0.1 dev eth1",
        "ip link show dev eth1": "3: eth1: <UP> mtu 1500",
    })
    assert quick.route_mtu(["192.0.2.1", "198.51.100.1"], run) == 8920
    assert quick.route_mtu(["198.51.100.1"], run) == 1320
    assert quick.route_mtu([], run) == 1420  # the default route's 1500
    assert quick.route_mtu([], fake_system({})) == 1420  # nothing known: 1500


def test_free_table_skips_used_ones() -> None:
    run = fake_system({"ip -4 route show table 51820": "default dev wg9",
                       "ip -6 route show table 51821": "default dev wg8"})
    assert quick.free_table(run) == 51822


def test_config_from_uapi_round_trips_through_showconf_form() -> None:
    lines = [
        f"private_key={bytes(range(32)).hex()}", "listen_port=51820", "fwmark=51820",
        f"public_key={keys.from_base64(PEER).hex()}", f"preshared_key={'00' * 32}",
        "protocol_version=1", "endpoint=[2001:db8::1]:9", "last_handshake_time_sec=0",
        "tx_bytes=0", "rx_bytes=0", "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.0/8", "allowed_ip=fd00::/64",
    ]
    cfg = quick.config_from_uapi(lines)
    assert cfg.interface.listen_port == 51820 and cfg.interface.fwmark == 51820
    peer = cfg.peers[0]
    assert peer.preshared_key is None and peer.persistent_keepalive == 25
    assert str(peer.endpoint) == "[2001:db8::1]:9"
    assert [str(a) for a in peer.allowed_ips] == ["10.0.0.0/8", "fd00::/64"]
    assert parse(wgconfig.format_config(cfg)) == cfg


# --- execution (with the system faked) ------------------------------------------------------


def test_failure_after_the_daemon_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse(conf(interface="Address = 10.0.0.1/24\n"))
    ran: list[Step] = []

    def execute(step: Step, check: bool = True) -> None:
        ran.append(step)
        if step.argv[:3] == ("ip", "link", "set") and check:
            raise quick.QuickError("boom")

    monkeypatch.setattr(quick, "execute_step", execute)
    monkeypatch.setattr(quick, "link_exists", lambda iface: False)
    monkeypatch.setattr(quick, "uapi_alive", lambda iface: False)
    monkeypatch.setattr(quick, "gather_facts", lambda cfg: facts())
    with pytest.raises(quick.QuickError):
        quick.up(cfg, "wg0")
    assert [s.kind for s in ran][:4] == ["daemon", "uapi", "run", "run"]
    assert ("ip", "link", "delete", "dev", "wg0") in [s.argv for s in ran[4:]]


def test_failure_before_the_daemon_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse(conf(interface="PreUp = false\n"))
    ran: list[Step] = []

    def execute(step: Step, check: bool = True) -> None:
        ran.append(step)
        raise quick.QuickError("hook failed")

    monkeypatch.setattr(quick, "execute_step", execute)
    monkeypatch.setattr(quick, "link_exists", lambda iface: False)
    monkeypatch.setattr(quick, "uapi_alive", lambda iface: False)
    monkeypatch.setattr(quick, "gather_facts", lambda cfg: facts())
    with pytest.raises(quick.QuickError):
        quick.up(cfg, "wg0")
    assert [s.kind for s in ran] == ["hook"]


def test_up_refuses_an_existing_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quick, "link_exists", lambda iface: True)
    with pytest.raises(quick.QuickError, match="`wg0' already exists"):
        quick.up(parse(conf()), "wg0")


def test_save_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wg0.conf"
    cfg = parse(conf(interface="Address = 10.0.0.1/24\nMTU = 1400\nPostUp = echo %i\n"
                     "SaveConfig = true\n"))
    reply = [f"private_key={bytes(range(32)).hex()}", "listen_port=4444",
             f"public_key={keys.from_base64(PEER2).hex()}", "allowed_ip=10.9.0.0/16"]
    monkeypatch.setattr(quick, "uapi_call", lambda iface, req, timeout=0: (reply, 0))
    monkeypatch.setattr(quick, "_run_output", fake_system({
        "ip -o address show dev wg0":
            "5: wg0    inet 10.0.0.1/24 scope global wg0\\       valid_lft forever\n"
            "5: wg0    inet6 fd00::1/64 scope global \\       valid_lft forever\n"
            "5: wg0    inet6 fe80::1/64 scope link \\       valid_lft forever\n",
        "ip link show dev wg0": "5: wg0: <POINTOPOINT,UP> mtu 1380 qdisc",
    }))
    quick.save_config("wg0", cfg, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = wgconfig.load_config(str(path))
    assert [str(a) for a in saved.interface.addresses] == ["10.0.0.1/24", "fd00::1/64"]
    assert saved.interface.mtu == 1380 and saved.interface.listen_port == 4444
    assert saved.interface.post_up == ["echo %i"] and saved.interface.save_config
    assert [keys.to_base64(p.public_key) for p in saved.peers] == [PEER2]
