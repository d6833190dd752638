"""WireGuard datagrams through the engine's receive path (Device.receive_batch), both twins.

Two in-memory pairs (tests/wgpair.py) with a completed handshake and some traffic: one built on
the native twins (``tunnel.wireguard._datapath``, ``crypto._screen``, ``crypto._transport``),
one on the pure ones (``datapath_ref``, ``crypto.screen``, ``crypto.transport``). The pairs stay
up between inputs (as a real device does), so valid receiver indices keep reaching the AEAD.
Input: a flags byte (bit 0: the receiver is under load, so handshakes need a cookie; bit 1:
the batch goes to side ``a``, the initiator, instead of ``b``; bits 2-4: seconds to advance the
clock first; bit 5: recompute mac1 of every handshake-sized datagram for the receiver, as anyone
who knows its public key can, so mutations get past mac1 to the Noise decoding), then
length-prefixed datagrams (fuzz.common), all from one source endpoint.
Invariants: ``receive_batch`` never raises; no peer, key or allowed IP changes (the endpoint
may roam: that is the protocol); every delivered packet is an IP packet from an allowed IP of
the peer (the engine's inbound allowed-IPs check); the drop counters only grow.
atheris sees coverage of the pure twin only; the native twin runs the same inputs.
"""

from __future__ import annotations

import random
import types
from typing import Any
from unittest import mock

from crypto import keys
from crypto.backend import load as load_backend
from crypto.constants import INITIATION_SIZE, RESPONSE_SIZE
from crypto.cookie import CookieGenerator
from fuzz.common import join_records, split_records
from tests import wgpair
from tests.wgpair import Pair, Side, ipv4_packet, ipv6_packet
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.datapath import load as load_datapath

ATTACKER = Endpoint("198.51.100.9", 40000)


def _pair(native: bool) -> Pair:
    """A pair whose keys, ephemerals and indices come from a fixed seed: the same in every
    process and for both twins, so seeds captured once stay valid and the twins can be compared."""
    name = "cython" if native else "pure"
    rng = random.Random(15)
    fake_os = types.SimpleNamespace(urandom=rng.randbytes)
    generate = keys.generate_private
    with mock.patch.object(wgpair, "os", fake_os), \
            mock.patch.object(wgpair.keys, "generate_private", lambda: generate(rng.randbytes(32))):
        pair = Pair(cipher=load_backend(name).TransportCipher, datapath=load_datapath(name))
        pair.handshake()
        pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"), ipv6_packet("fd00::1", "fd00::2"))
        pair.send(pair.b, ipv4_packet("10.0.0.2", "10.0.0.1"))
    return pair


_PAIRS: list[Pair] = []


def pairs() -> list[Pair]:
    if not _PAIRS:
        _PAIRS.extend([_pair(True), _pair(False)])
    return _PAIRS


def _config(side: Side) -> list[Any]:
    dev = side.device
    return [(pk, peer.preshared_key, peer.persistent_keepalive, sorted(dev.allowed_ips.entries(peer)))
            for pk, peer in dev.peers.items()] + [dev.private_key]


def _check_source(side: Side, packet: bytes) -> None:
    dev = side.device
    assert packet and packet[0] >> 4 in (4, 6), packet[:4]
    src = packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]
    assert dev.allowed_ips.lookup(src) is not None, packet[:40]


def _add_mac1(bufs: list[bytearray], datagrams: list[bytes], side: Side, now: float) -> None:
    public = side.device.public_key
    assert public is not None
    for buf, datagram in zip(bufs, datagrams, strict=True):
        if len(datagram) in (INITIATION_SIZE, RESPONSE_SIZE):
            msg = bytearray(datagram)
            CookieGenerator(public).add_macs(msg, now)
            buf[: len(msg)] = msg


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags, datagrams = data[0], split_records(data[1:], limit=32)
    outcomes = []
    for pair in pairs():
        side = pair.a if flags & 2 else pair.b
        dev = side.device
        pair.now += (flags >> 2) & 7
        dev._under_load_until = float("inf") if flags & 1 else -1.0
        before, drops = _config(side), sum(dev.drops.values())
        bufs = [bytearray(d) + bytearray(16) for d in datagrams]  # slack, as the shell's slots have
        if flags & 0x20:
            _add_mac1(bufs, datagrams, side, pair.now)
        out = dev.receive_batch(bufs, [len(d) for d in datagrams], [ATTACKER] * len(bufs), pair.now)
        dev._under_load_until = -1.0
        for packet in out.packets:
            _check_source(side, bytes(packet))
        for datagram, endpoint in out.datagrams:
            assert len(datagram) >= 32 and isinstance(endpoint, Endpoint)
        assert _config(side) == before
        assert sum(dev.drops.values()) >= drops
        outcomes.append((dict(dev.drops), [bytes(p) for p in out.packets], len(out.datagrams)))
        pair.pump(side, dev.update_timers(pair.now))
    assert outcomes[0] == outcomes[1], outcomes


def seeds() -> list[bytes]:
    """Every datagram a fresh pair exchanges (initiation, response, transport, keepalive, and a
    cookie reply under load), captured from both twins' pairs."""
    out = []
    for native in (True, False):
        pair = _pair(native)
        a_sent = [d for d, _ in pair.a.sent]
        b_sent = [d for d, _ in pair.b.sent]
        pair.b.device._under_load_until = float("inf")
        pair.now += 200.0  # sessions expired: the next packet starts a new handshake
        pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2"))
        pair.b.device._under_load_until = -1.0
        cookies = [d for d, _ in pair.b.sent if d[0] == 3]
        out.append(b"\x00" + join_records(a_sent))
        out.append(b"\x02" + join_records(b_sent))
        out.append(b"\x21" + join_records([d for d, _ in pair.a.sent if d[0] == 1][-1:]))
        out.append(b"\x02" + join_records(cookies))
        out.append(b"\x00" + join_records([a_sent[0]] * 3 + a_sent[1:]))
    return list(dict.fromkeys(out))  # the twins' pairs are identical: so are their seeds


if __name__ == "__main__":
    import sys

    from fuzz.run import main

    raise SystemExit(main(["wg_receive", *sys.argv[1:]]))
