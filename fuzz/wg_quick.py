"""wg-quick files (tunnel/wireguard/config.py): parse or ConfigError; what parses round-trips.

Invariants: ``parse_config`` raises nothing but :class:`ConfigError`; a parsed config formats
back (``format_config``) to text that parses to an equal config; ``strip`` and ``to_uapi_set``
do not raise, and the UAPI request ``wg setconf`` would send parses (``parse_set``).
Bytes that are not UTF-8 are rejected before parsing, as ``load_config`` does.
"""

from __future__ import annotations

import base64

from tunnel.wireguard.config import ConfigError, format_config, parse_config, strip, to_uapi_set
from tunnel.wireguard.uapi import parse_set


def _resolve(host: str, port: int) -> tuple[str, int]:
    return ("192.0.2.77", port)


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        cfg = parse_config(text, "wg0.conf")
    except ConfigError:
        return
    again = parse_config(format_config(cfg), "wg0.conf")
    assert again == cfg, (cfg, again)
    strip(cfg)
    for append in (False, True):
        request = to_uapi_set(cfg, _resolve, append=append)
        lines = request.split("\n")
        assert lines[0] == "set=1" and request.endswith("\n\n")
        parse_set(lines[1:-2])


def _key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def seeds() -> list[bytes]:
    full = f"""# comment
[Interface]
PrivateKey = {_key(1)}
ListenPort = 51820
FwMark = 0x1234
Address = 10.0.0.1/24, fd00::1/64
DNS = 1.1.1.1, 2606:4700::1111, example.com
MTU = 1420
Table = off
PreUp = echo pre   # trailing
PostUp = iptables -A FORWARD -i %i -j ACCEPT
PreDown = echo down
PostDown = echo post
SaveConfig = true

[Peer]
PublicKey = {_key(2)}
PresharedKey = {_key(3)}
AllowedIPs = 10.0.0.2/32, fd00::2/128, 0.0.0.0/0
Endpoint = 192.0.2.1:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {_key(4)}
AllowedIPs = +10.9.0.0/16, -10.8.0.0/16
Endpoint = [2001:db8::1]:4500
PersistentKeepalive = off

[Peer]
PublicKey = {_key(5)}
Endpoint = vpn.example.com:51820
"""
    minimal = f"[Interface]\nPrivateKey={_key(9)}\n"
    return [full.encode(), minimal.encode(), b"[Interface]\n", b"[Peer]\nPublicKey = x\n"]


if __name__ == "__main__":
    from fuzz.run import main

    raise SystemExit(main(["wg_quick"]))
