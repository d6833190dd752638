"""``wg-py vxlan`` without devices: argument parsing, the control protocol (request handling,
the daemon's control server and the CLI client over a real unix socket), and the raw sender's
UDP checksum and source port (over loopback; the raw socket needs root)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunnel.vxlan import cli
from tunnel.vxlan.config import VxlanConfig
from tunnel.vxlan.control import ControlError, handle_request, request, socket_path
from tunnel.vxlan.daemon import VxlanDaemon
from tunnel.vxlan.engine import VxlanEngine
from tunnel.vxlan.sockets import RawSender, udp_checksum

# ---- argument parsing ------------------------------------------------------------------------


def test_parse_add_full() -> None:
    cfg, fg = cli.parse_add(
        "vx1 id 42 dstport 4790 group 239.1.1.1 dev eth0 srcport 1000 2000 ttl 5 ageing 60 "
        "maxaddress 10 nolearning proxy noudpcsum -f".split()
    )
    assert fg
    assert (cfg.name, cfg.vni, cfg.dstport, cfg.group, cfg.dev) == ("vx1", 42, 4790, "239.1.1.1", "eth0")
    assert cfg.srcport == (1000, 2000) and cfg.ttl == 5 and cfg.ageing == 60
    assert cfg.maxaddress == 10 and not cfg.learning and cfg.proxy and not cfg.udpcsum


def test_parse_add_defaults_and_forms() -> None:
    cfg, fg = cli.parse_add(["vxlan0", "vni", "7", "remote", "fd00::0001", "ttl", "auto"])
    assert not fg and cfg.dstport == 4789 and cfg.remote == "fd00::1" and cfg.ipv6 and cfg.ttl == 0
    assert cfg.learning and cfg.udpcsum and not cfg.proxy


@pytest.mark.parametrize(
    "args, words",
    [
        ("", "NAME"),
        ("vx0", "id"),
        ("vx0 id", "needs 1 argument"),
        ("vx0 id x", "not a number"),
        ("vx0 id 16777216", "out of range"),
        ("vx0 id 1 dstport 0", "out of range"),
        ("vx0 id 1 remote 10.0.0.1 group 239.1.1.1 dev eth0", "exclusive"),
        ("vx0 id 1 remote 239.1.1.1", "unicast"),
        ("vx0 id 1 group 10.0.0.1 dev eth0", "multicast"),
        ("vx0 id 1 group 239.1.1.1", "dev"),
        ("vx0 id 1 remote 10.0.0.1 local fd00::1", "family"),
        ("vx0 id 1 srcport 2000 1000", "srcport"),
        ("vx0 id 1 srcport 2000", "needs 2 arguments"),
        ("vx0 id 1 ttl 256", "out of range"),
        ("vx0 id 1 bogus", "unknown option"),
        ("a/b id 1", "invalid device name"),
        ("averyveryverylongname id 1", "invalid device name"),
        ("vx0 id 1 remote not-an-ip", "does not appear"),
    ],
)
def test_parse_add_errors(args: str, words: str) -> None:
    with pytest.raises(cli.UsageError) as err:
        cli.parse_add(args.split())
    assert words in str(err.value)


def test_main_errors_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGPY_VXLAN_RUN_DIR", str(tmp_path))
    assert cli.main([]) == 1
    assert cli.main(["frobnicate"]) == 1
    assert cli.main(["add", "vx0", "id", "1", "bogus"]) == 1
    assert cli.main(["show"]) == 1
    assert cli.main(["fdb", "add", "vx0", "zz:00:00:00:00:00", "dst", "10.0.0.1"]) == 1
    assert cli.main(["fdb", "add", "vx0", "02:00:00:00:00:01"]) == 1
    assert cli.main(["fdb", "flip", "vx0"]) == 1
    # no daemon: a clear message, exit 1
    assert cli.main(["show", "vx0"]) == 1
    assert cli.main(["del", "vx0"]) == 1
    err = capsys.readouterr().err
    assert "no such wg-py vxlan device" in err and "unknown option" in err
    assert cli.main(["--help"]) == 0


# ---- request handling (pure) -------------------------------------------------------------------


def _engine() -> VxlanEngine:
    engine = VxlanEngine(VxlanConfig(vni=42, remote="10.0.0.1", name="vx0"), now=0.0)
    engine.set_own_mac("02:00:00:00:00:01")
    return engine


def test_handle_request_fdb_and_show() -> None:
    engine = _engine()
    assert handle_request(engine, "fdb add 02:00:00:00:00:aa dst 10.0.0.9\n", 1.0)["ok"]
    assert handle_request(engine, "fdb append 00:00:00:00:00:00 dst 10.0.0.8 port 8472", 1.0)["ok"]
    lines = handle_request(engine, "fdb show", 2.0)["lines"]
    assert "02:00:00:00:00:aa dst 10.0.0.9 self permanent" in lines
    assert "00:00:00:00:00:00 dst 10.0.0.8 port 8472 self permanent" in lines
    engine.drops["wrong_vni"] += 3
    show = handle_request(engine, "show", 2.0, lambda: {"pid": 1})["show"]
    assert show["drops"] == {"wrong_vni": 3} and show["pid"] == 1 and show["config"]["vni"] == 42
    json.dumps(show)  # JSON-ready
    assert handle_request(engine, "fdb del 00:00:00:00:00:00 dst 10.0.0.8 port 8472", 3.0)["ok"]
    assert handle_request(engine, "fdb del 02:00:00:00:00:aa", 3.0)["ok"]
    assert handle_request(engine, "fdb show", 3.0)["lines"] == [
        "00:00:00:00:00:00 dst 10.0.0.1 self permanent"
    ]
    assert handle_request(engine, "stop", 3.0) == {"ok": True}


@pytest.mark.parametrize(
    "line",
    ["", "bogus", "fdb", "fdb add", "fdb add 02:00:00:00:00:aa", "fdb add zz dst 10.0.0.1",
     "fdb add 02:00:00:00:00:aa dst nope", "fdb add 02:00:00:00:00:aa dst 10.0.0.1 port x",
     "fdb append 02:00:00:00:00:aa dst 10.0.0.1", "fdb del 02:00:00:00:00:bb",
     "fdb add 02:00:00:00:00:aa dst", "show extra"],
)
def test_handle_request_errors(line: str) -> None:
    answer = handle_request(_engine(), line, 0.0)
    assert answer["ok"] is False and answer["error"]


# ---- the daemon's control server and the CLI client, over a real unix socket ---------------------


@pytest.fixture
def control_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VxlanDaemon]:
    """A daemon with an engine and its control server, but no TAP or UDP socket."""
    monkeypatch.setenv("WGPY_VXLAN_RUN_DIR", str(tmp_path))
    daemon = VxlanDaemon(VxlanConfig(vni=42, remote="10.0.0.1", name="vxt0"))
    daemon.engine = VxlanEngine(daemon.config, 0.0)
    daemon.control_path = socket_path("vxt0")
    daemon._open_control(daemon.control_path)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stopped = asyncio.Event()

    async def serve() -> None:
        assert daemon.control is not None
        server = await asyncio.start_unix_server(daemon._on_control, sock=daemon.control)
        daemon._stopping = stopped
        started.set()
        await stopped.wait()
        server.close()
        daemon.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield daemon
    finally:
        loop.call_soon_threadsafe(stopped.set)
        thread.join(10)
        loop.close()
        daemon.close()


def test_control_socket_mode_and_client(control_daemon: VxlanDaemon,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = control_daemon.control_path
    assert path.exists() and (path.stat().st_mode & 0o077) == 0
    assert cli.main(["fdb", "add", "vxt0", "02:00:00:00:00:aa", "dst", "10.0.0.9"]) == 0
    assert cli.main(["fdb", "show", "vxt0"]) == 0
    out = capsys.readouterr().out
    assert "02:00:00:00:00:aa dst 10.0.0.9 self permanent" in out
    assert "00:00:00:00:00:00 dst 10.0.0.1 self permanent" in out
    assert control_daemon.engine is not None
    control_daemon.engine.drops["reserved_bits"] += 2
    assert cli.main(["show", "vxt0", "--json"]) == 0
    show = json.loads(capsys.readouterr().out)
    assert show["drops"] == {"reserved_bits": 2} and show["config"]["hash_seed"] is None
    assert cli.main(["show", "vxt0"]) == 0
    text = capsys.readouterr().out
    assert "vxlan id 42 remote 10.0.0.1" in text and "reserved_bits 2" in text
    assert cli.main(["fdb", "del", "vxt0", "02:00:00:00:00:ff"]) == 1
    with pytest.raises(ControlError, match="unknown request"):
        request("vxt0", "nonsense")
    # stop: the daemon removes its socket, `del` returns once it is gone
    assert cli.main(["del", "vxt0"]) == 0
    assert not path.exists()


def test_stale_socket_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WGPY_VXLAN_RUN_DIR", str(tmp_path))
    path = socket_path("vxs0")
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    daemon = VxlanDaemon(VxlanConfig(vni=1, name="vxs0"))
    daemon._open_control(path)
    try:
        assert path.exists() and daemon.control is not None
    finally:
        daemon.close()
    assert not path.exists()


# ---- the raw sender: checksum and source port ----------------------------------------------------


def _reference_checksum(src: str, dst: str, udp: bytes) -> int:
    data = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">BBH", 0, 17, len(udp)) + udp
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


@pytest.mark.parametrize("size", [0, 1, 7, 8, 64, 1449, 1450])
def test_udp_checksum_matches_reference(size: int) -> None:
    payload = bytes((i * 37 + size) & 0xFF for i in range(size))
    src, dst, sport, dport = "10.1.2.3", "192.168.200.7", 40000, 4789
    pseudo = int.from_bytes(socket.inet_aton(src) + socket.inet_aton(dst), "big") + 17
    length = 8 + size
    header = struct.pack(">HHHH", sport, dport, length, 0)
    assert udp_checksum(pseudo, sport, dport, length, payload) == _reference_checksum(
        src, dst, header + payload
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_raw_sender_puts_the_source_port_on_the_wire(family: socket.AddressFamily, host: str) -> None:
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    sender = RawSender(VxlanConfig(vni=1, remote=host, dstport=port))
    try:
        for sport, size in ((40001, 100), (55555, 1001), (33333, 0)):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            sender.send(memoryview(payload), (host, port), sport)
            data, src = receiver.recvfrom(65536)  # the kernel drops a bad checksum
            assert data == payload and src[1] == sport
    finally:
        sender.close()
        receiver.close()


def test_fdb_takes_bridge_fdb_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``fdb append MAC NAME dst ADDR`` (bridge fdb's order) sends what ``NAME MAC`` sends."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(cli, "request", lambda name, line: sent.append((name, line)) or {"ok": True})
    assert cli.main(["fdb", "append", "00:00:00:00:00:00", "vx0", "dst", "10.9.0.2"]) == 0
    assert cli.main(["fdb", "append", "vx0", "00:00:00:00:00:00", "dst", "10.9.0.2"]) == 0
    assert sent == [("vx0", "fdb append 00:00:00:00:00:00 dst 10.9.0.2")] * 2
    assert cli.main(["fdb", "append", "zz:00", "vx0", "dst", "10.9.0.2"]) == 1
