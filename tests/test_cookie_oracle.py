"""mac1, mac2 and the cookie reply against an oracle written here from the whitepaper (5.4.4, 5.4.7).

The oracle imports nothing of wg-py's crypto. It is built from:

- HASH(x) = BLAKE2s-256(x), MAC(key, x) = keyed BLAKE2s with a 16-byte output (``hashlib``);
- XAEAD(key, nonce24, plain, ad) = XChaCha20-Poly1305: the subkey HChaCha20(key, nonce[:16])
  (written below from draft-irtf-cfrg-xchacha, checked against its test vector) and
  ChaCha20-Poly1305 from ``cryptography`` with the nonce ``0^4 || nonce[16:24]``.
  (wg-py's XAEAD is pynacl's libsodium; the oracle's is this independent construction.)

Messages: mac1 = MAC(HASH("mac1----" || Spub_m'), msg_alpha) over the message up to mac1;
cookie = MAC(R_m, A_m') for the rotating secret R_m and the sender's address bytes A_m'
(IP then port, little endian, as wireguard-go's DstToBytes); the cookie reply is
type 3 || 3 zero bytes || receiver index || nonce24 || XAEAD(HASH("cookie--" || Spub_m), nonce,
cookie, mac1 of the message it answers); mac2 = MAC(cookie, msg_beta) over the message up to mac2.

Both directions are checked: wg-py's generator against the oracle's checker, and the oracle's
generator against wg-py's checker, with wrong keys and tampered fields rejected; then the same
through the Device's under-load path on both twins.
"""

from __future__ import annotations

import hashlib
import os
import struct
from types import ModuleType

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.cookie import CookieChecker, CookieGenerator
from tunnel.io.endpoint import Endpoint
from tunnel.wireguard.constants import UNDER_LOAD_HANDSHAKES_PER_SECOND
from tunnel.wireguard.datapath import load as load_datapath
from tunnel.wireguard.messages import Drop

from .wgpair import Pair

# ---- the oracle ---------------------------------------------------------------------------------

ORACLE_LABEL_MAC1 = b"mac1----"
ORACLE_LABEL_COOKIE = b"cookie--"
MASK = 0xFFFFFFFF


def o_hash(data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=32).digest()


def o_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def _rotl(v: int, n: int) -> int:
    return ((v << n) & MASK) | (v >> (32 - n))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20: the ChaCha20 state (constants, key, 16-byte nonce), 20 rounds, no final
    addition; output words 0-3 and 12-15, little endian."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _quarter(state, 0, 4, 8, 12)
        _quarter(state, 1, 5, 9, 13)
        _quarter(state, 2, 6, 10, 14)
        _quarter(state, 3, 7, 11, 15)
        _quarter(state, 0, 5, 10, 15)
        _quarter(state, 1, 6, 11, 12)
        _quarter(state, 2, 7, 8, 13)
        _quarter(state, 3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def o_xaead_encrypt(key: bytes, nonce: bytes, plain: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])).encrypt(bytes(4) + nonce[16:], plain, ad)


def o_xaead_decrypt(key: bytes, nonce: bytes, sealed: bytes, ad: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(hchacha20(key, nonce[:16])).decrypt(bytes(4) + nonce[16:], sealed, ad)
    except InvalidTag:
        return None


def o_mac1(responder_public: bytes, msg: bytes) -> bytes:
    return o_mac(o_hash(ORACLE_LABEL_MAC1 + responder_public), msg[: len(msg) - 32])


def o_mac2(cookie: bytes, msg: bytes) -> bytes:
    return o_mac(cookie, msg[: len(msg) - 16])


def o_with_macs(body: bytes, responder_public: bytes, cookie: bytes | None) -> bytes:
    """``body`` (the message without its 32 MAC bytes) with mac1 and mac2 (zero without cookie)."""
    msg = body + o_mac1(responder_public, body + bytes(32)) + bytes(16)
    mac2 = o_mac2(cookie, msg) if cookie is not None else bytes(16)
    return msg[:-16] + mac2


def o_cookie_reply(responder_public: bytes, receiver: int, nonce: bytes, cookie: bytes,
                   mac1: bytes) -> bytes:
    key = o_hash(ORACLE_LABEL_COOKIE + responder_public)
    return struct.pack("<I", 3) + struct.pack("<I", receiver) + nonce + o_xaead_encrypt(
        key, nonce, cookie, mac1)


def o_open_reply(responder_public: bytes, reply: bytes, mac1: bytes) -> tuple[int, bytes | None]:
    """(receiver index, cookie or None if it does not verify) of a 64-byte cookie reply."""
    assert len(reply) == 64 and reply[:4] == b"\x03\x00\x00\x00", reply[:4].hex()
    receiver = struct.unpack_from("<I", reply, 4)[0]
    key = o_hash(ORACLE_LABEL_COOKIE + responder_public)
    return receiver, o_xaead_decrypt(key, reply[8:32], reply[32:64], mac1)


def o_keypair() -> tuple[bytes, bytes]:
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def forged_initiation(responder_public: bytes, cookie: bytes | None = None) -> bytes:
    """A 148-byte initiation with random contents and a valid mac1 (and mac2 with a cookie)."""
    return o_with_macs(b"\x01\x00\x00\x00" + os.urandom(112), responder_public, cookie)


def source_bytes(ip: bytes, port: int) -> bytes:
    return ip + port.to_bytes(2, "little")


# ---- the oracle itself -------------------------------------------------------------------------


def test_oracle_hchacha20_vector_and_xaead_agree_with_libsodium() -> None:
    # draft-irtf-cfrg-xchacha-03, 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt as sodium_encrypt

    for size in (0, 1, 16, 63, 200):
        k, n, p, ad = os.urandom(32), os.urandom(24), os.urandom(size), os.urandom(size % 17)
        sealed = o_xaead_encrypt(k, n, p, ad)
        assert sealed == bytes(sodium_encrypt(p, ad, n, k))
        assert o_xaead_decrypt(k, n, sealed, ad) == p
        assert o_xaead_decrypt(k, n, sealed, ad + b"x") is None


# ---- wg-py's generator, the oracle's checker ---------------------------------------------------


def test_generator_mac1_mac2_and_reply_against_oracle() -> None:
    _, responder = o_keypair()
    generator = CookieGenerator(responder)
    msg = bytearray(b"\x01\x00\x00\x00" + os.urandom(144))
    generator.add_macs(msg, now=10.0)
    assert bytes(msg[-32:-16]) == o_mac1(responder, bytes(msg))
    assert bytes(msg[-16:]) == bytes(16)  # no cookie yet: mac2 is zero
    _, other = o_keypair()
    assert bytes(msg[-32:-16]) != o_mac1(other, bytes(msg))
    # A 92-byte response gets its MACs at the same offsets from the end.
    response = bytearray(b"\x02\x00\x00\x00" + os.urandom(88))
    generator.add_macs(response, now=10.0)
    assert bytes(response[-32:-16]) == o_mac1(responder, bytes(response))
    # The oracle's responder answers the response (the last message) with a cookie reply.
    cookie = os.urandom(16)
    mac1 = bytes(response[-32:-16])
    nonce = os.urandom(24)
    reply = o_cookie_reply(responder, 77, nonce, cookie, mac1)
    # Rejected: sealed for another responder key, bound to another message's mac1, tampered
    # nonce, tampered ciphertext or tag, wrong length.
    assert not generator.consume_reply(o_cookie_reply(other, 77, nonce, cookie, mac1), now=11.0)
    assert not generator.consume_reply(
        o_cookie_reply(responder, 77, nonce, cookie, bytes(msg[-32:-16])), now=11.0)
    for position in (8, 31, 32, 47, 48, 63):
        bad = bytearray(reply)
        bad[position] ^= 0x01
        assert not generator.consume_reply(bytes(bad), now=11.0), position
    assert not generator.consume_reply(reply[:63], now=11.0)
    assert generator.cookie is None
    generator.add_macs(msg, now=11.0)
    assert bytes(msg[-16:]) == bytes(16)
    # The intact reply was for the message before: mac1 of ``msg`` is the last one now.
    reply = o_cookie_reply(responder, 77, nonce, cookie, bytes(msg[-32:-16]))
    assert generator.consume_reply(reply, now=11.0)
    assert generator.cookie == cookie
    # mac2 = MAC(cookie, msg_beta), on initiations and responses alike.
    for message in (msg, response):
        generator.add_macs(message, now=12.0)
        assert bytes(message[-16:]) == o_mac2(cookie, bytes(message))
        assert bytes(message[-32:-16]) == o_mac1(responder, bytes(message))
    assert bytes(msg[-16:]) != o_mac2(os.urandom(16), bytes(msg))
    # Older than 120 s: no mac2 any more.
    generator.add_macs(msg, now=11.0 + 121.0)
    assert bytes(msg[-16:]) == bytes(16)


# ---- the oracle's generator, wg-py's checker ---------------------------------------------------


class Recorder:
    """A ``random`` for CookieChecker that remembers what it handed out (to learn R_m)."""

    def __init__(self) -> None:
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        self.draws.append(os.urandom(n))
        return self.draws[-1]

    def secrets(self) -> list[bytes]:
        return [d for d in self.draws if len(d) == 32]


def test_checker_against_oracle_messages_and_reply() -> None:
    _, responder = o_keypair()
    _, other = o_keypair()
    rng = Recorder()
    checker = CookieChecker(rng)
    checker.set_public_key(responder)
    msg = forged_initiation(responder)
    assert checker.check_mac1(msg)
    assert not checker.check_mac1(forged_initiation(other))
    for position in (0, 4, 60, 115, 116, 131):
        bad = bytearray(msg)
        bad[position] ^= 0x80
        assert not checker.check_mac1(bad), position
    assert checker.check_mac1(msg[:-16] + os.urandom(16))  # mac1 does not cover mac2
    source = source_bytes(bytes([192, 0, 2, 7]), 40000)
    now = 500.0
    assert not checker.check_mac2(msg, source, now)  # no secret yet
    reply = checker.create_reply(msg, 0x01020304, source, now)
    receiver, cookie = o_open_reply(responder, reply, msg[-32:-16])
    assert receiver == 0x01020304 and reply[1:4] == bytes(3)
    assert cookie is not None, "the oracle cannot open wg-py's cookie reply"
    # cookie = MAC(R_m, A_m') with the secret the checker drew.
    assert rng.secrets(), "the checker drew no secret"
    assert cookie == o_mac(rng.secrets()[-1], source)
    # Sealed for this responder and bound to this message's mac1 only.
    assert o_open_reply(other, reply, msg[-32:-16])[1] is None
    assert o_open_reply(responder, reply, forged_initiation(responder)[-32:-16])[1] is None
    # The oracle's mac2 with that cookie passes; from another address or port it does not.
    with_mac2 = forged_initiation(responder, cookie)
    assert checker.check_mac2(with_mac2, source, now + 1)
    assert not checker.check_mac2(with_mac2, source_bytes(bytes([192, 0, 2, 8]), 40000), now + 1)
    assert not checker.check_mac2(with_mac2, source_bytes(bytes([192, 0, 2, 7]), 40001), now + 1)
    assert not checker.check_mac2(forged_initiation(responder, os.urandom(16)), source, now + 1)
    bad = bytearray(with_mac2)
    bad[-1] ^= 1
    assert not checker.check_mac2(bad, source, now + 1)
    bad = bytearray(with_mac2)
    bad[50] ^= 1  # mac2 covers the body and mac1
    assert not checker.check_mac2(bad, source, now + 1)
    # The same cookie again within the 120 s (the secret does not change) ...
    again = checker.create_reply(with_mac2, 5, source, now + 60)
    assert o_open_reply(responder, again, with_mac2[-32:-16])[1] == cookie
    # ... and a new secret after it: the old cookie's mac2 stops passing.
    assert not checker.check_mac2(with_mac2, source, now + 121)
    fresh = checker.create_reply(with_mac2, 5, source, now + 121)
    fresh_cookie = o_open_reply(responder, fresh, with_mac2[-32:-16])[1]
    assert fresh_cookie is not None and fresh_cookie != cookie
    assert fresh_cookie == o_mac(rng.secrets()[-1], source)
    # IPv6 sources: 16 address bytes then the port.
    source6 = source_bytes(bytes.fromhex("20010db8" + "00" * 11 + "09"), 51820)
    reply6 = checker.create_reply(msg, 9, source6, now + 122)
    cookie6 = o_open_reply(responder, reply6, msg[-32:-16])[1]
    assert cookie6 == o_mac(rng.secrets()[-1], source6)
    assert checker.check_mac2(forged_initiation(responder, cookie6), source6, now + 122)


# ---- through the Device's under-load path (both twins) -----------------------------------------


@pytest.fixture
def pair(backend: ModuleType) -> Pair:
    native = backend.__name__ == "crypto._transport"
    return Pair(cipher=backend.TransportCipher, datapath=load_datapath("cython" if native else "pure"))


def receive(pair: Pair, side_device: object, datagrams: list[bytes], source: Endpoint) -> list[bytes]:
    out = side_device.receive_batch(  # type: ignore[attr-defined]
        [bytearray(d) for d in datagrams], [len(d) for d in datagrams], [source] * len(datagrams),
        pair.now)
    return [bytes(d) for d, _ in out.datagrams]


def test_device_under_load_answers_oracle_and_accepts_oracle_mac2(pair: Pair) -> None:
    """wg-py as the responder under load; the attacker and the oracle generate, the oracle checks."""
    b = pair.b.device
    assert b.public_key is not None
    responder = b.public_key
    attacker = Endpoint("203.0.113.5", 9999)
    # Forged initiations: only mac1 is valid (it needs nothing but b's public key).
    flood = [forged_initiation(responder) for _ in range(UNDER_LOAD_HANDSHAKES_PER_SECOND + 5)]
    replies = receive(pair, b, flood, attacker)
    assert b.drops[Drop.HANDSHAKE_AUTH] >= UNDER_LOAD_HANDSHAKES_PER_SECOND - 1
    assert replies and b.drops[Drop.COOKIE_SENT] == len(replies)
    # Each reply answers one forged message; the oracle opens it with that message's mac1.
    answered = flood[-len(replies):]
    cookies = set()
    for msg, reply in zip(answered, replies, strict=True):
        receiver, cookie = o_open_reply(responder, reply, msg[-32:-16])
        assert receiver == struct.unpack_from("<I", msg, 4)[0]
        assert cookie is not None
        cookies.add(cookie)
    assert len(cookies) == 1  # one secret, one source: one cookie
    cookie = cookies.pop()
    # A wrong-key mac1 is dropped as such, not answered.
    _, other = o_keypair()
    sent = b.drops[Drop.COOKIE_SENT]
    assert receive(pair, b, [forged_initiation(other)], attacker) == []
    assert b.drops[Drop.INVALID_MAC1] == 1
    # The oracle's mac2 with that cookie gets past the cookie check (then fails the handshake).
    auth = b.drops[Drop.HANDSHAKE_AUTH]
    assert receive(pair, b, [forged_initiation(responder, cookie)], attacker) == []
    assert b.drops[Drop.HANDSHAKE_AUTH] == auth + 1 and b.drops[Drop.COOKIE_SENT] == sent
    # A wrong mac2, or the right one from another port, earns another cookie reply instead.
    assert len(receive(pair, b, [forged_initiation(responder, os.urandom(16))], attacker)) == 1
    moved = Endpoint("203.0.113.5", 9998)
    assert len(receive(pair, b, [forged_initiation(responder, cookie)], moved)) == 1
    assert b.drops[Drop.COOKIE_SENT] == sent + 2 and b.drops[Drop.HANDSHAKE_AUTH] == auth + 1
    # The real peer a, under the same load, gets a reply the oracle opens too, and a's
    # initiation with the oracle-checked mac2 is then answered with a response.
    pair.peer_ab.last_initiation_sent = None
    init = bytes(pair.a.device.initiate(pair.peer_ab, pair.now).datagrams[0][0])
    assert init[-32:-16] == o_mac1(responder, init) and init[-16:] == bytes(16)
    [reply] = receive(pair, b, [init], pair.a.endpoint)
    a_cookie = o_open_reply(responder, reply, init[-32:-16])[1]
    assert a_cookie is not None
    receive(pair, pair.a.device, [reply], pair.b.endpoint)
    assert not pair.a.device.drops
    pair.now += 0.2
    pair.peer_ab.last_initiation_sent = None
    init = bytes(pair.a.device.initiate(pair.peer_ab, pair.now).datagrams[0][0])
    assert init[-16:] == o_mac2(a_cookie, init)
    assert [d[0] for d in receive(pair, b, [init], pair.a.endpoint)] == [2]


def test_device_consumes_oracle_cookie_reply(pair: Pair) -> None:
    """wg-py as the initiator; the oracle plays a responder under load."""
    a = pair.a.device
    responder = pair.b.device.public_key
    assert responder is not None
    init = bytes(a.initiate(pair.peer_ab, pair.now).datagrams[0][0])
    assert init[-32:-16] == o_mac1(responder, init)
    sender = struct.unpack_from("<I", init, 4)[0]
    cookie = os.urandom(16)
    # Forged replies are counted and change nothing.
    _, other = o_keypair()
    for forged in (
        o_cookie_reply(other, sender, os.urandom(24), cookie, init[-32:-16]),  # wrong key
        o_cookie_reply(responder, sender, os.urandom(24), cookie, os.urandom(16)),  # wrong mac1
        o_cookie_reply(responder, sender ^ 1, os.urandom(24), cookie, init[-32:-16]),  # no such index
    ):
        receive(pair, a, [forged], pair.b.endpoint)
    tampered = bytearray(o_cookie_reply(responder, sender, os.urandom(24), cookie, init[-32:-16]))
    tampered[40] ^= 4
    receive(pair, a, [bytes(tampered)], pair.b.endpoint)
    assert a.drops[Drop.INVALID_COOKIE_REPLY] == 4
    pair.now += 6.0
    retry = bytes(a.update_timers(pair.now).datagrams[0][0])
    assert retry[0] == 1 and retry[-16:] == bytes(16)
    # The genuine reply to the retry: the next initiation carries the oracle's mac2.
    sender = struct.unpack_from("<I", retry, 4)[0]
    receive(pair, a, [o_cookie_reply(responder, sender, os.urandom(24), cookie, retry[-32:-16])],
            pair.b.endpoint)
    assert a.drops[Drop.INVALID_COOKIE_REPLY] == 4
    pair.now += 6.0
    again = bytes(a.update_timers(pair.now).datagrams[0][0])
    assert again[0] == 1
    assert again[-32:-16] == o_mac1(responder, again)
    assert again[-16:] == o_mac2(cookie, again)
