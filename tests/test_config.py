"""wg-quick configuration files: every key, every error with FILE:LINE, round trips, UAPI output."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crypto.keys import to_base64
from tests.test_uapi import PRIV_A, PSK, PUB_B, PUB_C, FakeTarget, run_set
from tunnel.wireguard.config import (
    AllowedIP,
    ConfigError,
    Endpoint,
    WgQuickConfig,
    config_path,
    format_config,
    load_config,
    parse_config,
    strip,
    to_uapi_set,
)
from tunnel.wireguard.uapi_session import UapiSession

K_PRIV = to_base64(PRIV_A)
K_B = to_base64(PUB_B)
K_C = to_base64(PUB_C)
K_PSK = to_base64(PSK)

FULL = f"""\
# a comment line
[Interface]
PrivateKey = {K_PRIV}
ListenPort = 51820
FwMark = 0x1234
Address = 10.0.0.1/24, fd00::1/64
Address = 10.0.1.1
DNS = 1.1.1.1, 2606:4700::1111, example.com corp.internal
MTU = 1420
Table = 1234
PreUp = echo pre up   # trailing comment
PostUp = iptables -A FORWARD -i %i -j ACCEPT; echo  two  spaces
PreDown = echo pre down
PostDown = echo post down
PostDown = echo second
SaveConfig = true

[Peer]
PublicKey = {K_B}
PresharedKey = {K_PSK}
AllowedIPs = 10.0.0.2/32, fd00::2/128
AllowedIPs = 192.168.0.0/16
Endpoint = 192.0.2.1:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {K_C}
AllowedIPs = 10.9.0.0/16
Endpoint = [2001:db8::1]:4500
PersistentKeepalive = off
"""


def parse(text: str) -> WgQuickConfig:
    return parse_config(text, "wg0.conf")


def test_every_key() -> None:
    cfg = parse(FULL)
    i = cfg.interface
    assert (i.private_key, i.listen_port, i.fwmark) == (PRIV_A, 51820, 0x1234)
    assert [str(a) for a in i.addresses] == ["10.0.0.1/24", "fd00::1/64", "10.0.1.1/32"]
    assert [str(d) for d in i.dns] == ["1.1.1.1", "2606:4700::1111"]
    assert i.dns_search == ["example.com", "corp.internal"]
    assert (i.mtu, i.table, i.save_config) == (1420, "1234", True)
    assert i.pre_up == ["echo pre up"]
    assert i.post_up == ["iptables -A FORWARD -i %i -j ACCEPT; echo  two  spaces"]
    assert i.pre_down == ["echo pre down"] and i.post_down == ["echo post down", "echo second"]
    b, c = cfg.peers
    assert (b.public_key, b.preshared_key, b.persistent_keepalive) == (PUB_B, PSK, 25)
    assert [str(a) for a in b.allowed_ips] == ["10.0.0.2/32", "fd00::2/128", "192.168.0.0/16"]
    assert b.endpoint == Endpoint("192.0.2.1", 51820) and b.replace_allowed_ips
    assert (c.public_key, c.preshared_key, c.persistent_keepalive) == (PUB_C, None, 0)
    assert c.endpoint == Endpoint("2001:db8::1", 4500) and str(c.endpoint) == "[2001:db8::1]:4500"
    assert (b.line, c.line, i.line) == (18, 26, 2)


def test_case_whitespace_and_comments_like_wg() -> None:
    text = (
        "  [interface]  \n"
        f"privatekey={K_PRIV}#comment\n"
        "  LISTENPORT\t=\t 7 \r\n"
        "fwmark = OFF\n"
        "\t# only a comment\n"
        "   \n"
        "[ PEER ]\n"  # wg removes all whitespace from the line
        f"Public Key = {K_B[:10]} {K_B[10:]}\n"
        "allowedips = 10.0.0.0 / 8 ,  fd00::/8\n"
        "ENDPOINT = host.example.org : 1\n"
        "persistentkeepalive = Off\n"
    )
    cfg = parse(text)
    assert (cfg.interface.private_key, cfg.interface.listen_port, cfg.interface.fwmark) == (PRIV_A, 7, 0)
    (peer,) = cfg.peers
    assert peer.public_key == PUB_B and peer.persistent_keepalive == 0
    assert [str(a) for a in peer.allowed_ips] == ["10.0.0.0/8", "fd00::/8"]
    assert peer.endpoint == Endpoint("host.example.org", 1) and not peer.endpoint.is_literal


def test_wg_quick_key_spellings_and_values() -> None:
    text = (
        "[Interface]\n"
        "address=10.0.0.1/32,10.0.0.2/32 fd00::3\n"
        "dns = 9.9.9.9,search.example\n"
        "mtu = \n"
        "TABLE = off\n"
        "saveconfig = False\n"
        "POSTUP = a=b # c\n"
    )
    i = parse(text).interface
    assert [str(a) for a in i.addresses] == ["10.0.0.1/32", "10.0.0.2/32", "fd00::3/128"]
    assert [str(d) for d in i.dns] == ["9.9.9.9"] and i.dns_search == ["search.example"]
    assert (i.mtu, i.table, i.save_config, i.post_up) == (None, "off", False, ["a=b"])
    for table in ("auto", "main", "4294967295", "my_table.1"):
        assert parse(f"[Interface]\nTable = {table}\n").interface.table == table


def test_fwmark_forms() -> None:
    for text, mark in (("0", 0), ("off", 0), ("4294967295", 0xFFFFFFFF), ("0xffffffff", 0xFFFFFFFF), ("010", 10)):
        assert parse(f"[Interface]\nFwMark = {text}\n").interface.fwmark == mark


def test_allowed_ips_defaults_and_incremental_entries() -> None:
    peer = parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\nAllowedIPs=10.1.2.3, ::1, 10.0.0.1/8\n").peers[0]
    assert peer.allowed_ips == [
        AllowedIP(ipaddress.ip_address("10.1.2.3"), 32),
        AllowedIP(ipaddress.ip_address("::1"), 128),
        AllowedIP(ipaddress.ip_address("10.0.0.1"), 8),  # host bits kept (wg only warns)
    ]
    # '+' or '-' makes the change incremental; the last AllowedIPs line decides, as in wg
    peer = parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\nAllowedIPs=+10.0.0.0/8, -10.1.0.0/16\n").peers[0]
    assert not peer.replace_allowed_ips
    assert [a.remove for a in peer.allowed_ips] == [False, True]
    text = f"[Interface]\n[Peer]\nPublicKey={K_B}\nAllowedIPs=-10.1.0.0/16\nAllowedIPs=10.0.0.0/8\n"
    assert parse(text).peers[0].replace_allowed_ips
    assert parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\n").peers[0].replace_allowed_ips


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1:0", Endpoint("192.0.2.1", 0)),
        ("[fe80::1%eth0]:5", Endpoint("fe80::1%eth0", 5)),
        ("2001:db8::1:51820", Endpoint("2001:db8::1", 51820)),  # wg splits at the last colon
        ("vpn-1.example.com:65535", Endpoint("vpn-1.example.com", 65535)),
        ("[::ffff:10.0.0.1]:1", Endpoint("::ffff:10.0.0.1", 1)),
    ],
)
def test_endpoint_forms(value: str, expected: Endpoint) -> None:
    assert parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\nEndpoint={value}\n").peers[0].endpoint == expected


ERRORS = [
    ("PrivateKey = x", 2, "Key is not the correct length or format"),
    (f"PrivateKey = {K_PRIV[:-2]}B=", 2, "Key is not the correct length or format"),
    (f"PrivateKey = {K_PRIV}A", 2, "Key is not the correct length or format"),
    ("PrivateKey =", 2, "has no value"),
    ("Bogus = 1", 2, "unknown key `Bogus' in [Interface]"),
    ("PublicKey = " + K_B, 2, "unknown key `PublicKey' in [Interface]"),
    ("ListenPort = 65536", 2, "ListenPort is not a port number"),
    ("ListenPort = -1", 2, "ListenPort is not a port number"),
    ("ListenPort = http", 2, "ListenPort is not a port number"),
    ("FwMark = 0x100000000", 2, "FwMark is neither 0/off nor 0-0xffffffff"),
    ("FwMark = -1", 2, "FwMark is neither"),
    ("FwMark = 0X10", 2, "FwMark is neither"),
    ("Address = 10.0.0.300/24", 2, "Address is not an IP address or prefix: `10.0.0.300/24'"),
    ("Address = 10.0.0.1/33", 2, "Address is not an IP address or prefix"),
    ("DNS = 1.1.1", 2, "DNS server is not an IP address: `1.1.1'"),
    ("MTU = 1x", 2, "MTU is not a number"),
    ("MTU = 67", 2, "MTU is not a number"),
    ("Table = 4294967296", 2, "Table number out of range"),
    ("Table = a/b", 2, "Table is neither off, auto, a number nor a name"),
    ("SaveConfig = yes", 2, "`yes' is neither true nor false"),
    ("no equals sign", 2, "line unrecognized"),
    ("[Interface]", 2, "duplicate [Interface] section (first at line 1)"),
    ("[Wat]", 2, "unknown section `[Wat]'"),
    (f"[Peer]\nPublicKey = {K_B}\nAddress = 10.0.0.1/32", 4, "unknown key `Address' in [Peer]"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0.0/33", 4, "AllowedIP is not in the correct format"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs = ::/129", 4, "AllowedIP is not in the correct format"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0.0/", 4, "AllowedIP is not in the correct format"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0/8", 4, "Unable to parse IP address: `10.0.0'"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs = 10.0.0.0/8,", 4, "Unable to parse IP address: `'"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs = fe80::%eth0/64", 4, "Unable to parse IP address"),
    (f"[Peer]\nPublicKey = {K_B}\nAllowedIPs =", 4, "has no value"),
    (f"[Peer]\nPublicKey = {K_B}\nEndpoint = 192.0.2.1", 4, "Unable to find port of endpoint"),
    (f"[Peer]\nPublicKey = {K_B}\nEndpoint = 192.0.2.1:", 4, "Unable to find port of endpoint"),
    (f"[Peer]\nPublicKey = {K_B}\nEndpoint = [::1:5", 4, "Unable to find matching brace"),
    (f"[Peer]\nPublicKey = {K_B}\nEndpoint = [::1]5", 4, "Unable to find port of endpoint"),
    (f"[Peer]\nPublicKey = {K_B}\nEndpoint = 1.2.3.4:65536", 4, "Endpoint port is not a port number"),
    (f"[Peer]\nPublicKey = {K_B}\nEndpoint = bad!host:1", 4, "Endpoint host is neither an IP nor a name"),
    (f"[Peer]\nPublicKey = {K_B}\nPersistentKeepalive = 65536", 4, "PersistentKeepalive is neither"),
    (f"[Peer]\nPublicKey = {K_B}\nPersistentKeepalive = -1", 4, "PersistentKeepalive is neither"),
    (f"[Peer]\nPublicKey = {K_B}\nPresharedKey = abc", 4, "Key is not the correct length"),
    ("\n\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 4, "a peer is missing a public key"),
]


@pytest.mark.parametrize(("body", "line", "reason"), ERRORS)
def test_errors_name_file_and_line(body: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[Interface]\n{body}\n", "/etc/wireguard/wg7.conf")
    assert str(info.value).startswith(f"/etc/wireguard/wg7.conf:{line}: ")
    assert reason in str(info.value)
    assert (info.value.filename, info.value.line) == ("/etc/wireguard/wg7.conf", line)


def test_errors_outside_sections() -> None:
    with pytest.raises(ConfigError, match=r"^x.conf:2: key outside any section"):
        parse_config("# header\nListenPort = 1\n[Interface]\n", "x.conf")
    with pytest.raises(ConfigError, match=r"^x.conf:1: no \[Interface\] section"):
        parse_config("", "x.conf")
    with pytest.raises(ConfigError, match=r"^x.conf:4: a peer is missing a public key"):
        parse_config(f"[Interface]\n[Peer]\nPublicKey={K_B}\n[Peer]\n# no key\n", "x.conf")


def test_config_path_and_name() -> None:
    assert config_path("wg0") == (Path("/etc/wireguard/wg0.conf"), "wg0")
    assert config_path("a_b=c+d.e-f1234") == (Path("/etc/wireguard/a_b=c+d.e-f1234.conf"), "a_b=c+d.e-f1234")
    assert config_path("/tmp/x/my-vpn.conf") == (Path("/tmp/x/my-vpn.conf"), "my-vpn")
    assert config_path("./rel.conf") == (Path("rel.conf"), "rel")
    # like wg-quick, a bare argument that is a valid name (dots allowed) is a name
    assert config_path("rel.conf") == (Path("/etc/wireguard/rel.conf.conf"), "rel.conf")
    for bad in ("/tmp/toolongname12345.conf", "/tmp/wg0.cfg", "/tmp/.conf", "/tmp/a b.conf", "a" * 16):
        with pytest.raises(ValueError):
            config_path(bad)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wgtest0.conf"
    path.write_text(FULL)
    cfg = load_config(str(path))
    assert cfg.name == "wgtest0" and cfg.filename == str(path) and len(cfg.peers) == 2
    path.write_bytes(b"[Interface]\nPostUp = echo ok\nPostUp = echo \xff\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: not UTF-8"):
        load_config(str(path))
    path.write_text("[Interface]\nListenPort = 99999\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: "):
        load_config(str(path))


def test_format_config_round_trip() -> None:
    cfg = parse(FULL)
    text = format_config(cfg)
    again = parse(text)
    assert again == cfg
    assert format_config(again) == text
    # incremental allowed IPs survive the round trip too
    inc = parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\nAllowedIPs=10.0.0.0/8, -10.1.0.0/16\n")
    assert parse(format_config(inc)) == inc


def test_strip_keeps_only_wg_keys() -> None:
    cfg = parse(FULL)
    stripped = strip(cfg)
    for word in ("Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig"):
        assert word not in stripped
    back = parse(stripped)
    assert back.peers == cfg.peers
    i, j = back.interface, cfg.interface
    assert (i.private_key, i.listen_port, i.fwmark) == (j.private_key, j.listen_port, j.fwmark)
    assert not (i.addresses or i.dns or i.post_up or i.save_config)


def test_to_uapi_set_is_what_wg_setconf_sends() -> None:
    cfg = parse(FULL)
    assert to_uapi_set(cfg) == (
        "set=1\n"
        f"private_key={PRIV_A.hex()}\n"
        "listen_port=51820\n"
        "fwmark=4660\n"
        "replace_peers=true\n"
        f"public_key={PUB_B.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "endpoint=192.0.2.1:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.0.0.2/32\n"
        "allowed_ip=fd00::2/128\n"
        "allowed_ip=192.168.0.0/16\n"
        f"public_key={PUB_C.hex()}\n"
        "endpoint=[2001:db8::1]:4500\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.9.0.0/16\n"
        "\n"
    )
    bare = parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\nAllowedIPs=10.0.0.0/8,-10.1.0.0/16\n")
    assert to_uapi_set(bare).startswith(f"set=1\nprivate_key={'0' * 64}\nlisten_port=0\nfwmark=0\n")
    assert to_uapi_set(bare, append=True) == (
        f"set=1\npublic_key={PUB_B.hex()}\nallowed_ip=10.0.0.0/8\nallowed_ip=-10.1.0.0/16\n\n"
    )


def test_to_uapi_set_resolves_host_names() -> None:
    cfg = parse(f"[Interface]\n[Peer]\nPublicKey={K_B}\nEndpoint=vpn.example:7\n")
    with pytest.raises(ValueError, match="needs resolving"):
        to_uapi_set(cfg)
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[str, int]:
        asked.append((host, port))
        return "2001:db8::7", port

    assert "endpoint=[2001:db8::7]:7\n" in to_uapi_set(cfg, resolve)
    assert asked == [("vpn.example", 7)]


def test_to_uapi_set_applies_cleanly_through_a_session() -> None:
    cfg = parse(FULL)
    target = FakeTarget()
    run_set(target, f"public_key={PUB_C.hex()}\npreshared_key={PSK.hex()}\nallowed_ip=10.99.0.0/16")
    assert UapiSession(target).feed(to_uapi_set(cfg).encode()) == [b"errno=0\n\n"]
    assert (target.private_key, target.listen_port, target.fwmark) == (PRIV_A, 51820, 0x1234)
    assert target.peer_keys() == [PUB_B, PUB_C]
    assert target.peers[PUB_C].preshared_key is None  # replace_peers started it afresh
    assert target.peers[PUB_B].endpoint == ("192.0.2.1", 51820)
    assert len(list(target.allowed_ips(PUB_B))) == 3


@pytest.mark.skipif(shutil.which("wg-quick") is None or os.geteuid() != 0, reason="needs wg-quick and root")
def test_strip_matches_wg_quick_strip(tmp_path: Path) -> None:
    path = tmp_path / "wgpystrip0.conf"
    path.write_text(FULL)
    path.chmod(0o600)
    result = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    theirs = parse_config(result.stdout, "wg-quick-strip")
    ours = parse(strip(parse(FULL)))
    assert theirs == ours
