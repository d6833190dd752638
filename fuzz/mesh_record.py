"""Mesh store values (tunnel/mesh/record.py, tunnel/mesh/config.py): parse or reject.

Input: a selector byte, then length-prefixed records (fuzz.common). Selector % 4:
0: the network config value -> ``NetworkConfig.from_json`` (ConfigError only; what parses
   round-trips through ``to_json``);
1: a claim ``token, value`` -> ``parse_claim`` (RecordError only; round-trips);
2: a node record ``token, value`` -> ``parse_record`` (RecordError only; round-trips);
3: ``build_view`` over claims and records (alternating token/value records): never raises,
   every key is either used or in ``rejects``.
"""

from __future__ import annotations

import ipaddress

from fuzz.common import join_records, split_records
from tunnel.mesh.config import ConfigError, NetworkConfig, key_token, subnet_token
from tunnel.mesh.record import Claim, NodeRecord, RecordError, build_view, parse_claim, parse_record

CONFIG = NetworkConfig(ipaddress.ip_network("10.244.0.0/16"), 24)
CONFIG6 = NetworkConfig(ipaddress.ip_network("fd00:244::/48"), 64)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, records = data[0] % 4, split_records(data[1:])
    config = CONFIG6 if data[0] & 0x80 else CONFIG
    if mode == 0:
        try:
            parsed = NetworkConfig.from_json(records[0] if records else b"")
        except ConfigError:
            return
        assert NetworkConfig.from_json(parsed.to_json()) == parsed
    elif mode in (1, 2):
        token = _text(records[0]) if records else ""
        raw = records[1] if len(records) > 1 else b""
        try:
            if mode == 1:
                claim = parse_claim(token, raw, config)
                assert parse_claim(token, claim.to_json(), config) == claim
            else:
                record = parse_record(token, raw, config)
                assert parse_record(token, record.to_json(), config) == record
        except RecordError:
            return
    else:
        half = len(records) // 2
        pairs = [(_text(records[i]), records[i + 1]) for i in range(0, len(records) - 1, 2)]
        claims = dict(pairs[: half // 2 + 1])
        nodes = {t: (v, n) for n, (t, v) in enumerate(pairs[half // 2 + 1 :])}
        view = build_view(config, claims, nodes)
        assert len(view.claims) + sum(k.startswith("claims/") for k in view.rejects) == len(claims)
        assert len(view.nodes) + sum(k.startswith("nodes/") for k in view.rejects) <= len(nodes)


def seeds() -> list[bytes]:
    pk, pk2 = bytes(range(32)), bytes(range(1, 33))
    subnet = ipaddress.ip_network("10.244.3.0/24")
    claim = Claim(subnet, pk, "node-a", 1_700_000_000)
    record = NodeRecord(pk, subnet, "node-a", (("192.0.2.1", 51820), ("2001:db8::1", 51820)))
    ctoken, ntoken = subnet_token(subnet), key_token(pk)
    out = [
        b"\x00" + join_records([CONFIG.to_json().encode()]),
        b"\x00" + join_records([b'{"version": 1, "network": "fd00::/48", "subnet_len": 64, "mode": "l2"}']),
        b"\x01" + join_records([ctoken.encode(), claim.to_json().encode()]),
        b"\x02" + join_records([ntoken.encode(), record.to_json().encode()]),
        b"\x03" + join_records([ctoken.encode(), claim.to_json().encode(), ntoken.encode(),
                                record.to_json().encode(), key_token(pk2).encode(), b"{}"]),
    ]
    return out


if __name__ == "__main__":
    import sys

    from fuzz.run import main

    raise SystemExit(main(["mesh_record", *sys.argv[1:]]))
