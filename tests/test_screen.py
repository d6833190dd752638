"""The batch handshake screen (crypto._screen / crypto.screen) and the engine's flood handling.

The screen is checked against an independent oracle written here (hashlib's keyed BLAKE2s and
pynacl's XChaCha20-Poly1305 decryption), the two twins against each other on the same inputs
with a fixed random source, and the engine (both twins, fake clock) under a flood of forged
initiations that carry a valid mac1, as anyone knowing the public key can make them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random as pyrandom
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from crypto.backend import load as load_backend
from crypto.cookie import SCREENS
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard import device as device_module
from tunnel.wireguard.constants import UNDER_LOAD_HANDSHAKES_PER_SECOND
from tunnel.wireguard.datapath import load as load_datapath
from tunnel.wireguard.messages import Drop
from tunnel.wireguard.output import packet_buffer

from .wgpair import Pair, ipv4_packet

NAMES = ("cython", "pure")


def _name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython twin")
    return name


@pytest.fixture(params=NAMES)
def screen(request: pytest.FixtureRequest) -> ModuleType:
    return SCREENS.load(_name(request))


@pytest.fixture(params=NAMES)
def pair(request: pytest.FixtureRequest) -> Pair:
    name = _name(request)
    return Pair(cipher=load_backend(name).TransportCipher, datapath=load_datapath(name))


def mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def oracle_source(ip: str, port: int) -> bytes:
    return ipaddress.ip_address(ip).packed + port.to_bytes(2, "little")


def counting_random(n: int) -> bytes:
    """A fixed random source: the same bytes for the same request, in both twins."""
    return bytes((7 * i + n) & 0xFF for i in range(n))


def forged(mac1_key: bytes, rng: pyrandom.Random, kind: int = 1, size: int = 148,
           cookie: bytes | None = None, good_mac1: bool = True) -> bytearray:
    """A handshake message of random content with a valid mac1 (and mac2 if ``cookie``)."""
    msg = bytearray(rng.randbytes(size))
    msg[0:4] = bytes([kind, 0, 0, 0])
    off1 = size - 32
    msg[off1 : off1 + 16] = mac(mac1_key, bytes(msg[:off1])) if good_mac1 else rng.randbytes(16)
    msg[off1 + 16 :] = mac(cookie, bytes(msg[: off1 + 16])) if cookie is not None else bytes(16)
    return msg


KEYS = SimpleNamespace(mac1=bytes(range(32)), cookie=bytes(range(32, 64)), secret=bytes(range(64, 96)))


def run(screen: ModuleType, bufs: list[bytearray], sources: list[Any], load_after: int,
        secret: bytes = KEYS.secret, indices: list[int] | None = None) -> tuple[Any, ...]:
    verdicts = bytearray(len(bufs))
    replies: list[tuple[bytes, Any]] = []
    result = screen.screen_batch(
        KEYS.mac1, KEYS.cookie, secret, bufs, [len(b) for b in bufs],
        list(range(len(bufs))) if indices is None else indices, sources, load_after, counting_random,
        verdicts, replies,
    )
    return result, bytes(verdicts), replies


def test_cookie_reply_matches_an_independent_oracle(screen: ModuleType) -> None:
    rng = pyrandom.Random(1)
    source = Endpoint("203.0.113.7", 40000)
    msg = forged(KEYS.mac1, rng)
    (passed, invalid, cookies, counted), verdicts, replies = run(screen, [msg], [source], 0)
    assert (passed, invalid, cookies, counted) == ([], 0, 1, 1)
    assert verdicts[0] == screen.COOKIE
    reply, dest = replies[0]
    assert dest is source and len(reply) == 64
    assert reply[:4] == b"\x03\x00\x00\x00" and reply[4:8] == msg[4:8]  # to the sender's index
    nonce = reply[8:32]
    assert nonce == counting_random(24)
    cookie = crypto_aead_xchacha20poly1305_ietf_decrypt(bytes(reply[32:]), bytes(msg[116:132]), nonce, KEYS.cookie)
    assert cookie == mac(KEYS.secret, oracle_source("203.0.113.7", 40000))


def test_verdicts_follow_wireguard_order(screen: ModuleType) -> None:
    rng = pyrandom.Random(2)
    v4, v6 = Endpoint("198.51.100.1", 1), Endpoint("2001:db8::5", 65535)
    cookie6 = mac(KEYS.secret, oracle_source("2001:db8::5", 65535))
    bufs = [
        forged(KEYS.mac1, rng),                          # 1st valid: before load -> passed
        forged(KEYS.mac1, rng, good_mac1=False),         # bad mac1 -> dropped, not counted
        forged(KEYS.mac1, rng, kind=3, size=64),         # a cookie reply: passed as it is
        forged(KEYS.mac1, rng, kind=2, size=92),         # 2nd valid: load begins, no mac2 -> cookie
        forged(KEYS.mac1, rng, cookie=cookie6),          # valid mac2 for v6 -> passed under load
        forged(KEYS.mac1, rng, cookie=cookie6),          # same cookie, but from v4 -> cookie
    ]
    sources = [v4, v4, v4, v4, v6, v4]
    (passed, invalid, cookies, counted), verdicts, replies = run(screen, bufs, sources, 2)
    assert passed == [0, 2, 4]
    assert (invalid, cookies, counted) == (1, 2, 4)
    assert list(verdicts) == [screen.PASSED, screen.INVALID_MAC1, screen.PASSED, screen.COOKIE,
                              screen.PASSED_LOADED, screen.COOKIE]
    assert [dest for _, dest in replies] == [v4, v4]
    assert [r[4:8] for r, _ in replies] == [bytes(bufs[3][4:8]), bytes(bufs[5][4:8])]


def test_twins_agree_on_random_batches() -> None:
    if os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython twin")
    native, pure = SCREENS.load("cython"), SCREENS.load("pure")
    rng = pyrandom.Random(3)
    places = [Endpoint("10.1.2.3", 5), Endpoint("10.1.2.3", 6), Endpoint("fd00::9", 51820)]
    for _ in range(60):
        bufs, sources = [], []
        for _ in range(rng.randrange(1, 40)):
            source = rng.choice(places)
            cookie = mac(KEYS.secret, oracle_source(source.ip, source.port))
            kind, size = rng.choice([(1, 148), (2, 92), (3, 64)])
            choice = rng.random()
            msg = forged(KEYS.mac1, rng, kind, size, cookie=cookie if choice < 0.3 else None,
                         good_mac1=choice < 0.8)
            if 0.3 <= choice < 0.4:
                msg[-16:] = rng.randbytes(16)  # a wrong mac2
            bufs.append(msg)
            sources.append(source if rng.random() < 0.5 else rng.choice(places))
        load_after = rng.choice([-3, 0, 1, 5, 1000])
        a = run(native, [bytearray(b) for b in bufs], sources, load_after)
        b = run(pure, [bytearray(b) for b in bufs], sources, load_after)
        assert a == b


@pytest.mark.parametrize(
    "case",
    ["mac1_key", "cookie_key", "secret", "index", "short", "long", "no_secret", "random", "address", "port"],
)
def test_twins_raise_the_same_errors(case: str) -> None:
    if os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython twin")
    rng = pyrandom.Random(4)
    msg = forged(KEYS.mac1, rng)
    for screen in (SCREENS.load("cython"), SCREENS.load("pure")):
        keys = {"mac1": KEYS.mac1, "cookie": KEYS.cookie, "secret": KEYS.secret}
        bufs, lengths, indices = [bytearray(msg)], [148], [0]
        source: Any = Endpoint("192.0.2.1", 9)
        load_after, random = 0, counting_random
        if case in ("mac1_key", "cookie_key", "secret"):
            keys[case.split("_")[0]] = bytes(31)
        elif case == "index":
            indices = [1]
        elif case == "short":
            lengths = [39]
        elif case == "long":
            lengths = [149]
        elif case == "no_secret":
            keys["secret"] = b""
        elif case == "address":
            source = SimpleNamespace(ip="not an address", port=9)
        elif case == "port":
            source = SimpleNamespace(ip="192.0.2.1", port=70000)
        if case == "random":
            def random(n: int) -> bytes:  # a random source that returns too few bytes
                return b"x"
        with pytest.raises(ValueError):
            screen.screen_batch(keys["mac1"], keys["cookie"], keys["secret"], bufs, lengths, indices,
                                [source], load_after, random, bytearray(1), [])


def test_source_bytes_twins() -> None:
    if os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython twin")
    for screen in (SCREENS.load("cython"), SCREENS.load("pure")):
        for ip, port in (("127.0.0.1", 513), ("::1", 0), ("fe80::1:2", 65535)):
            assert screen.source_bytes(Endpoint(ip, port)) == oracle_source(ip, port)
            assert screen.source_bytes(Endpoint(ip, port)) == Endpoint(ip, port).source_bytes()


# --------------------------------------------------------------------------- the engine


class NoiseSpy:
    """Counts the engine's calls into the Noise handshake (where the Diffie-Hellmans are)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = device_module.noise.consume_initiation

        def spy(*args: Any) -> Any:
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(device_module.noise, "consume_initiation", spy)


def flood(pair: Pair, count: int, rng: pyrandom.Random, ports: int = 8) -> tuple[list[bytearray], list[Endpoint]]:
    """Forged initiations to b (valid mac1, random content) from ``ports`` attacker ports."""
    b = pair.b.device
    mac1_key = b.cookie_checker.mac1_key
    sources = [Endpoint("203.0.113.66", 30000 + p) for p in range(ports)]
    return [forged(mac1_key, rng) for _ in range(count)], [sources[i % ports] for i in range(count)]


def test_forged_initiations_under_load_get_cookies_and_never_reach_noise(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = NoiseSpy(monkeypatch)
    b = pair.b.device
    rng = pyrandom.Random(5)
    before = UNDER_LOAD_HANDSHAKES_PER_SECOND - 1
    bufs, sources = flood(pair, before + 200, rng)
    out = b.receive_batch(bufs, [148] * len(bufs), sources, pair.now)
    # Until the load threshold each one reaches Noise (and fails there); from the threshold
    # on, in the same batch, none does: each gets a cookie reply to its own source.
    assert spy.calls == before
    assert b.drops[Drop.HANDSHAKE_AUTH] == before
    assert b.drops[Drop.COOKIE_SENT] == 200
    assert [dest for _, dest in out.datagrams] == sources[before:]
    assert all(len(reply) == 64 and reply[0] == 3 for reply, _ in out.datagrams)
    # Later batches while under load: cookies only.
    for step in range(5):
        bufs, sources = flood(pair, 64, rng)
        out = b.receive_batch(bufs, [148] * 64, sources, pair.now + 0.1 * step)
        assert len(out.datagrams) == 64
    assert spy.calls == before
    assert b.drops[Drop.COOKIE_SENT] == 200 + 5 * 64


def test_garbage_without_mac1_is_dropped_and_counted(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = NoiseSpy(monkeypatch)
    b = pair.b.device
    rng = pyrandom.Random(6)
    bufs = [forged(b.cookie_checker.mac1_key, rng, good_mac1=False) for _ in range(300)]
    out = b.receive_batch(bufs, [148] * 300, [Endpoint("203.0.113.9", 1)] * 300, pair.now)
    assert not out.datagrams and not out.packets
    assert b.drops[Drop.INVALID_MAC1] == 300 and spy.calls == 0
    # Not counted as handshake load: a legitimate initiation right after needs no cookie.
    pair.send(pair.a, ipv4_packet("10.0.0.1", "10.0.0.2", b"through"))
    assert pair.b.delivered[-1] == ipv4_packet("10.0.0.1", "10.0.0.2", b"through")
    assert Drop.COOKIE_SENT not in b.drops


def test_legit_peer_completes_after_one_cookie_round_during_a_flood(pair: Pair) -> None:
    b = pair.b.device
    rng = pyrandom.Random(7)
    bufs, sources = flood(pair, 200, rng)
    b.receive_batch(bufs, [148] * 200, sources, pair.now)  # b is under load now
    # a's initiation arrives in the middle of a flood batch: it gets a cookie reply too.
    initiation = bytearray(pair.a.device.initiate(pair.peer_ab, pair.now).datagrams[0][0])
    bufs, sources = flood(pair, 64, rng)
    bufs.insert(30, initiation)
    sources.insert(30, pair.a.endpoint)
    out = b.receive_batch(bufs, [len(m) for m in bufs], sources, pair.now)
    to_a = [bytes(d) for d, dest in out.datagrams if dest == pair.a.endpoint]
    assert len(to_a) == 1 and to_a[0][0] == 3
    pair.a.device.receive_batch([bytearray(to_a[0])], [64], [pair.b.endpoint], pair.now)
    assert pair.peer_ab.cookies.cookie is not None
    # The retry carries mac2 and passes, even inside the next flood batch.
    pair.now += 5.5
    pair.peer_ab.last_initiation_sent = None
    initiation = bytearray(pair.a.device.initiate(pair.peer_ab, pair.now).datagrams[0][0])
    bufs, sources = flood(pair, 64, rng)
    bufs.insert(10, initiation)
    sources.insert(10, pair.a.endpoint)
    out = b.receive_batch(bufs, [len(m) for m in bufs], sources, pair.now)
    to_a = [bytes(d) for d, dest in out.datagrams if dest == pair.a.endpoint]
    assert [d[0] for d in to_a] == [2]  # the handshake response
    pair.a.device.receive_batch([bytearray(to_a[0])], [92], [pair.b.endpoint], pair.now)
    assert pair.peer_ab.current is not None
    # Data flows, and a transport message in a flood batch is delivered (handled first).
    packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"ping during the flood")
    sealed = pair.a.device.send_batch([packet_buffer(packet, 1420)], [len(packet)], pair.now)
    datagram = bytearray(sealed.datagrams[-1][0])
    bufs, sources = flood(pair, 63, rng)
    bufs.insert(40, datagram)
    sources.insert(40, pair.a.endpoint)
    out = b.receive_batch(bufs, [len(m) for m in bufs], sources, pair.now)
    assert [bytes(p) for p in out.packets] == [packet]
    assert b.drops[Drop.RATE_LIMITED] == 0


def test_a_cookie_holder_is_rate_limited_per_source(pair: Pair) -> None:
    b = pair.b.device
    rng = pyrandom.Random(8)
    bufs, sources = flood(pair, 200, rng)
    b.receive_batch(bufs, [148] * 200, sources, pair.now)  # under load
    # An attacker that reads its cookie replies makes valid mac2s: the token bucket (burst 5
    # per source address) stops all but the first few before Noise.
    source = Endpoint("198.51.100.200", 4242)
    cookie = mac(b.cookie_checker.secret_for(pair.now), oracle_source(source.ip, source.port))
    bufs = [forged(b.cookie_checker.mac1_key, rng, cookie=cookie) for _ in range(50)]
    b.receive_batch(bufs, [148] * 50, [source] * 50, pair.now)
    assert b.drops[Drop.RATE_LIMITED] == 45
    assert b.drops[Drop.HANDSHAKE_AUTH] == UNDER_LOAD_HANDSHAKES_PER_SECOND - 1 + 5


def test_load_ends_after_the_hold(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    b = pair.b.device
    rng = pyrandom.Random(9)
    bufs, sources = flood(pair, 200, rng)
    b.receive_batch(bufs, [148] * 200, sources, pair.now)
    spy = NoiseSpy(monkeypatch)
    later = pair.now + 2.5  # the load is held 1 s after the last counted message
    bufs, sources = flood(pair, 3, rng)
    out = b.receive_batch(bufs, [148] * 3, sources, later)
    assert not out.datagrams and spy.calls == 3
