"""Primitives, keys, TAI64N, the handshake against an independent Noise implementation, cookies."""

from __future__ import annotations

import pytest
from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

from crypto import keys, noise, tai64n
from crypto.cookie import CookieChecker, CookieGenerator
from crypto.primitives import (
    DecryptError,
    DHError,
    aead_decrypt,
    aead_encrypt,
    dh,
    kdf1,
    kdf2,
    kdf3,
    xaead_decrypt,
    xaead_encrypt,
)
from tunnel.wireguard.constants import CONSTRUCTION, IDENTIFIER, INITIATION_SIZE, RESPONSE_SIZE

# Vectors from wireguard-go device/kdf_test.go (key, input, t0, t1, t2), hex.
KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_vectors(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    k, d = bytes.fromhex(key), bytes.fromhex(data)
    assert kdf1(k, d).hex() == t0
    assert [x.hex() for x in kdf2(k, d)] == [t0, t1]
    assert [x.hex() for x in kdf3(k, d)] == [t0, t1, t2]


def test_aead_roundtrip_and_forgery() -> None:
    key = bytes(range(32))
    sealed = aead_encrypt(key, 7, b"hello", b"ad")
    assert aead_decrypt(key, 7, sealed, b"ad") == b"hello"
    with pytest.raises(DecryptError):
        aead_decrypt(key, 8, sealed, b"ad")
    nonce = bytes(24)
    sealed = xaead_encrypt(key, nonce, b"cookie", b"m")
    assert xaead_decrypt(key, nonce, sealed, b"m") == b"cookie"
    with pytest.raises(DecryptError):
        xaead_decrypt(key, nonce, sealed, b"x")


def test_dh_rejects_low_order_point() -> None:
    with pytest.raises(DHError):
        dh(keys.generate_private(), bytes(32))


def test_key_encodings() -> None:
    priv = keys.generate_private()
    text = keys.to_base64(priv)
    assert len(text) == 44 and keys.from_base64(text) == priv
    assert keys.from_hex(priv.hex()) == priv
    for bad in ["", "abc", text[:-1], text[:-1] + "A", "!" * 43 + "=", text[:42] + "B="]:
        with pytest.raises(ValueError):
            keys.from_base64(bad)
    with pytest.raises(ValueError):
        keys.from_hex("zz" * 32)


def test_tai64n() -> None:
    stamp = tai64n.encode(1_700_000_000.5)
    assert len(stamp) == 12
    assert int.from_bytes(stamp[:8], "big") == 0x400000000000000A + 1_700_000_000
    # nanoseconds rounded down to the whitener granularity
    assert int.from_bytes(stamp[8:], "big") % (1 << 24) == 0
    assert tai64n.after(tai64n.encode(1_700_000_001), stamp)
    assert not tai64n.after(stamp, stamp)


def _noise(initiator: bool, private: bytes, remote_public: bytes, psk: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(CONSTRUCTION)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(NoiseKeypair.STATIC, private)
    if initiator:
        conn.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, remote_public)
    conn.set_psks(psk)
    conn.set_prologue(IDENTIFIER)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("psk", [bytes(32), bytes(range(32))])
def test_handshake_as_responder_against_noiseprotocol(psk: bytes) -> None:
    ours = noise.StaticIdentity.from_private(keys.generate_private())
    theirs_private = keys.generate_private()
    theirs = _noise(True, theirs_private, ours.public, psk)
    stamp = tai64n.encode(1_700_000_000)
    body = theirs.write_message(stamp)
    msg = bytearray(INITIATION_SIZE)
    msg[0] = 1
    msg[4:8] = (1234).to_bytes(4, "little")
    msg[8 : 8 + len(body)] = body
    consumed = noise.consume_initiation(ours, msg)
    assert consumed.remote_static == keys.public_from_private(theirs_private)
    assert consumed.timestamp == stamp and consumed.sender_index == 1234
    hs = noise.Handshake(consumed.remote_static, preshared_key=psk)
    noise.accept_initiation(hs, consumed)
    response = noise.create_response(hs, 99, keys.generate_private())
    assert len(response) == RESPONSE_SIZE
    assert theirs.read_message(bytes(response[12:60])) == b""
    assert theirs.handshake_finished
    session = noise.derive_keys(hs)
    assert not session.is_initiator
    # Their first transport message decrypts with our receive key, and vice versa.
    assert aead_decrypt(session.receive_key, 0, theirs.encrypt(b"ping"), b"") == b"ping"
    assert theirs.decrypt(aead_encrypt(session.send_key, 0, b"pong", b"")) == b"pong"


@pytest.mark.parametrize("psk", [bytes(32), bytes(range(32))])
def test_handshake_as_initiator_against_noiseprotocol(psk: bytes) -> None:
    ours = noise.StaticIdentity.from_private(keys.generate_private())
    theirs_private = keys.generate_private()
    theirs = _noise(False, theirs_private, ours.public, psk)
    hs = noise.Handshake(keys.public_from_private(theirs_private), preshared_key=psk)
    stamp = tai64n.encode(1_700_000_000)
    msg = noise.create_initiation(ours, hs, 77, keys.generate_private(), stamp)
    assert theirs.read_message(bytes(msg[8:116])) == stamp
    body = theirs.write_message(b"")
    response = bytearray(RESPONSE_SIZE)
    response[0] = 2
    response[4:8] = (5).to_bytes(4, "little")
    response[8:12] = (77).to_bytes(4, "little")
    response[12:60] = body
    noise.consume_response(ours, hs, response)
    session = noise.derive_keys(hs)
    assert session.is_initiator and session.remote_index == 5 and session.local_index == 77
    assert theirs.decrypt(aead_encrypt(session.send_key, 0, b"ping", b"")) == b"ping"
    assert aead_decrypt(session.receive_key, 0, theirs.encrypt(b"pong"), b"") == b"pong"


def test_response_with_wrong_psk_fails() -> None:
    a = noise.StaticIdentity.from_private(keys.generate_private())
    b = noise.StaticIdentity.from_private(keys.generate_private())
    hs_a = noise.Handshake(b.public, preshared_key=bytes(32))
    msg = noise.create_initiation(a, hs_a, 1, keys.generate_private(), tai64n.encode(1e9))
    hs_b = noise.Handshake(a.public, preshared_key=b"\x01" * 32)
    noise.accept_initiation(hs_b, noise.consume_initiation(b, msg))
    response = noise.create_response(hs_b, 2, keys.generate_private())
    with pytest.raises(noise.HandshakeError):
        noise.consume_response(a, hs_a, response)


def test_tampered_initiation_fails() -> None:
    a = noise.StaticIdentity.from_private(keys.generate_private())
    b = noise.StaticIdentity.from_private(keys.generate_private())
    msg = noise.create_initiation(a, noise.Handshake(b.public), 1, keys.generate_private(), bytes(12))
    for position in (8, 40, 41, 90, 115):
        bad = bytearray(msg)
        bad[position] ^= 1
        with pytest.raises(noise.HandshakeError):
            noise.consume_initiation(b, bad)


def test_cookie_mac1_mac2_and_reply() -> None:
    responder_public = keys.public_from_private(keys.generate_private())
    checker = CookieChecker()
    checker.set_public_key(responder_public)
    generator = CookieGenerator(responder_public)
    msg = bytearray(INITIATION_SIZE)
    msg[0] = 1
    generator.add_macs(msg, now=0.0)
    assert checker.check_mac1(msg)
    source = bytes([10, 0, 0, 1]) + (51820).to_bytes(2, "little")
    assert not checker.check_mac2(msg, source, now=0.0)
    reply = checker.create_reply(msg, 1, source, now=0.0)
    assert len(reply) == 64
    assert generator.consume_reply(reply, now=1.0)
    assert not generator.consume_reply(reply, now=1.0)  # only one reply per message
    generator.add_macs(msg, now=2.0)
    assert checker.check_mac2(msg, source, now=2.0)
    assert not checker.check_mac2(msg, b"\x0a\x00\x00\x02" + source[4:], now=2.0)
    # The secret rotates after 120 s: an old cookie stops working.
    assert not checker.check_mac2(msg, source, now=200.0)
    # The generator stops sending mac2 when its cookie is older than 120 s.
    generator.add_macs(msg, now=130.0)
    assert msg[-16:] == bytes(16)
    tampered = bytearray(msg)
    tampered[10] ^= 1
    assert not checker.check_mac1(tampered)
