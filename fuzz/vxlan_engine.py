"""VXLAN datagrams and frames through the engine (tunnel/vxlan/engine.py), both ``_fast`` twins.

Input: a flags byte (bit 0 proxy ARP, bit 1 learning, bit 2 a 4-byte receive-buffer slack),
then length-prefixed records (fuzz.common); each record is received as a datagram (from one
of three VTEPs) and also transmitted as a TAP frame.
For each twin (``tunnel.vxlan._fast`` and ``fast_ref``) the batch forms ``receive_bufs`` /
``transmit_bufs`` run on one engine and the per-packet forms ``receive`` / ``transmit_batch`` on
another. Invariants: nothing raises; the batch and per-packet forms deliver the same frames and
count the same drops; the two twins give the same verdicts, ports, counters and FDB.
"""

from __future__ import annotations

import socket
import struct
from array import array
from typing import Any

from fuzz.common import join_records, split_records
from tunnel.vxlan import VxlanConfig, VxlanEngine
from tunnel.vxlan.fast import load
from tunnel.vxlan.header import encode_header

TWINS = {name: load(name) for name in ("cython", "pure")}
OWN = bytes.fromhex("0200000000aa")
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
SOURCES = ("10.0.0.5", "10.0.0.6", "fd00::7")
HEADROOM = 8


def _engine(fast: Any, proxy: bool, learning: bool) -> VxlanEngine:
    engine = VxlanEngine(VxlanConfig(vni=42, remote="10.0.0.1", proxy=proxy, learning=learning,
                                     maxaddress=16), 0.0, fast)
    engine.set_own_mac(OWN)
    engine.fdb.add(MAC_B, "10.0.0.9", now=0.0, permanent=True)
    engine.fdb.append(bytes(6), "10.0.0.3", now=0.0, vni=77)
    engine.neigh.learn(socket.inet_aton("192.168.1.9"), MAC_B, 0.0)
    return engine


def _run(fast: Any, records: list[bytes], proxy: bool, learning: bool, slack: int) -> tuple[Any, ...]:
    batch, single = _engine(fast, proxy, learning), _engine(fast, proxy, learning)
    n = len(records)
    sources = [SOURCES[i % 3] for i in range(n)]
    bufs = [bytearray(r) + bytearray(slack) for r in records]
    lengths = [len(r) for r in records]
    verdicts = bytearray(n)
    delivered = batch.receive_bufs(bufs, lengths, sources, n, 5.0, verdicts)
    want = [single.receive(r, (s, 4789), 5.0) for r, s in zip(records, sources, strict=True)]
    assert delivered == sum(w is not None for w in want)
    for i, w in enumerate(want):
        assert (verdicts[i] == 0) == (w is not None), (i, verdicts[i], records[i])
        if w is not None:
            assert bytes(bufs[i][8 : lengths[i]]) == bytes(w)
    assert batch.drops == single.drops, (batch.drops, single.drops)
    assert batch.fdb.show(5.0) == single.fdb.show(5.0)
    rx = (bytes(verdicts), dict(batch.drops), batch.stats(), batch.fdb.show(5.0))

    txbufs = [bytearray(HEADROOM) + bytearray(r) + bytearray(slack) for r in records]
    txverdicts = bytearray(n)
    sports = array("H", bytes(2 * n))
    plan = batch.transmit_bufs(txbufs, lengths, n, 6.0, HEADROOM, txverdicts, sports)
    single_tx = single.transmit_batch([bytearray(HEADROOM) + bytearray(r) for r in records], 6.0, HEADROOM)
    got = []
    for start, end, remote in plan.items:
        for i in range(start, end):
            if txverdicts[i] in (fast.TX_OK, fast.TX_ARP):
                got.append((encode_header(remote.vni) + records[i], (remote.ip, remote.port), sports[i]))
    assert sorted(got) == sorted((bytes(p), a, s) for p, a, s in single_tx.datagrams)
    assert plan.local == single_tx.local
    assert batch.stats() == single.stats()
    tx = (bytes(txverdicts), list(sports), plan.local, batch.stats())
    return rx, tx


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags, records = data[0], split_records(data[1:], limit=32)
    proxy, learning, slack = bool(flags & 1), bool(flags & 2), 4 if flags & 4 else 0
    outcomes = [_run(fast, records, proxy, learning, slack) for fast in TWINS.values()]
    assert outcomes[0] == outcomes[1], outcomes


def _eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def seeds() -> list[bytes]:
    hdr = encode_header(42)
    ipv4 = struct.pack("!BBHHHBBH4s4sHH", 0x45, 0, 28, 1, 0, 64, 17, 0, socket.inet_aton("192.168.1.1"),
                       socket.inet_aton("192.168.1.9"), 1234, 80)
    ipv6 = bytes([0x60, 0, 0, 0, 0, 8, 6, 64]) + bytes(15) + b"\1" + bytes(15) + b"\2" + b"\x04\xd2\x00\x50" + bytes(4)
    arp = _eth(b"\xff" * 6, MAC_A, 0x0806, struct.pack(
        ">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC_A, socket.inet_aton("192.168.1.1"),
        bytes(6), socket.inet_aton("192.168.1.9")))
    frames = [_eth(MAC_B, MAC_A, 0x0800, ipv4), _eth(MAC_A, MAC_B, 0x86DD, ipv6), arp,
              _eth(OWN, MAC_A, 0x8100, b"\x00\x05\x08\x00" + ipv4), b"tiny"]
    return [bytes([f]) + join_records([hdr + fr for fr in frames] + frames) for f in (0, 1, 3, 7)]


if __name__ == "__main__":
    import sys

    from fuzz.run import main

    raise SystemExit(main(["vxlan_engine", *sys.argv[1:]]))
