"""VXLAN control socket requests (tunnel/vxlan/control.py ``handle_request``): answer or reject.

The input is one request line as the daemon reads it (bytes decoded with ``errors="replace"``).
Invariants: ``handle_request`` never raises and answers a JSON-serialisable object with ``ok``;
a rejected request (``ok`` false) leaves the FDB exactly as it was.
"""

from __future__ import annotations

import json

from tunnel.vxlan import VxlanConfig, VxlanEngine
from tunnel.vxlan.control import handle_request

OWN = bytes.fromhex("0200000000aa")


def _engine() -> VxlanEngine:
    engine = VxlanEngine(VxlanConfig(vni=42, remote="10.0.0.2", own_mac=OWN, maxaddress=8), now=0.0)
    engine.fdb.add(bytes.fromhex("020000000001"), "10.0.0.3", now=0.0, permanent=True)
    engine.fdb.learn(bytes.fromhex("020000000002"), "10.0.0.4", 0.0)
    return engine


def test_one_input(data: bytes) -> None:
    engine = _engine()
    for line in data.decode(errors="replace").split("\n")[:8]:
        before = engine.fdb.show(1.0)
        answer = handle_request(engine, line, 1.0)
        json.dumps(answer)
        assert isinstance(answer.get("ok"), bool), answer
        if not answer["ok"]:
            assert isinstance(answer.get("error"), str)
            assert engine.fdb.show(1.0) == before, (line, answer)


def seeds() -> list[bytes]:
    return [b"show", b"stop", b"fdb show",
            b"fdb add 02:00:00:00:00:09 dst 10.0.0.9 port 4790 vni 43 via eth0",
            b"fdb append 00:00:00:00:00:00 dst fd00::9\nfdb show",
            b"fdb del 02:00:00:00:00:01 dst 10.0.0.3\nfdb del 02:00:00:00:00:01",
            b"fdb add 02:00:00:00:00:0a dst 10.0.0.10 src_vni 7\nfdb del 02:00:00:00:00:0a dst 10.0.0.10"]


if __name__ == "__main__":
    import sys

    from fuzz.run import main

    raise SystemExit(main(["vxlan_control", *sys.argv[1:]]))
