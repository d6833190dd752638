"""TransportCipher: batch seal/open in place, for the Cython path and the pure reference alike.

Sealed bytes are checked against an independent seal computed here with ``cryptography``
directly from the wire format (header, padding rule, nonce), and each implementation's output
is opened by the other.
"""

from __future__ import annotations

import os
import random
import struct
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.backend import load

REJECT = 2**64 - 2**13 - 1
WINDOW = 8128
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
INDEX = 0xA1B2C3D4
MTU = 1420


def expected_padded(size: int, mtu: int) -> int:
    """The padding rule, written out from the spec: multiple of 16, never past the MTU."""
    if size > mtu:
        return size
    rounded = size if size % 16 == 0 else size + 16 - size % 16
    return min(rounded, mtu)


def reference_seal(key: bytes, index: int, counter: int, payload: bytes, mtu: int) -> bytes:
    """A whole type-4 message computed independently of both implementations."""
    padded = payload + bytes(expected_padded(len(payload), mtu) - len(payload))
    nonce = bytes(4) + counter.to_bytes(8, "little")
    header = (4).to_bytes(4, "little") + index.to_bytes(4, "little") + nonce[4:]
    return header + ChaCha20Poly1305(key).encrypt(nonce, padded, None)


def packet(payload: bytes, capacity: int | None = None) -> bytearray:
    """A buffer holding ``payload`` at HEADROOM, with room to seal it."""
    size = capacity if capacity is not None else 16 + len(payload) + 16 + 16
    buf = bytearray(size)
    buf[16 : 16 + len(payload)] = payload
    return buf


def pair(sender: ModuleType, receiver: ModuleType, send_counter: int = 0) -> tuple[Any, Any]:
    """A sending cipher (KEY_A out) and the peer's receiving cipher (KEY_A in)."""
    out = sender.TransportCipher(KEY_A, KEY_B, INDEX, send_counter=send_counter)
    inp = receiver.TransportCipher(KEY_B, KEY_A, 1)
    return out, inp


def sealed(module: ModuleType, counter: int, payload: bytes) -> bytearray:
    """A message at ``counter`` sealed by a fresh cipher of ``module`` (test-only shortcut)."""
    cipher = module.TransportCipher(KEY_A, KEY_B, INDEX, send_counter=counter)
    bufs, lengths = [packet(payload)], [len(payload)]
    assert cipher.seal_batch(bufs, lengths, MTU) == 1
    return bufs[0][: lengths[0]]


def open_one(cipher: Any, message: bytes | bytearray) -> tuple[int, bytes]:
    bufs, lengths, results = [bytearray(message)], [len(message)], [-1]
    cipher.open_batch(bufs, lengths, results)
    return results[0], bytes(bufs[0][16 : 16 + lengths[0]])


def test_constants_identical_in_both_modules() -> None:
    cython, pure = load("cython"), load("pure")
    for name in ("OK", "TOO_SHORT", "AUTH", "REPLAY", "COUNTER_LIMIT", "EXPIRED", "REASONS"):
        assert getattr(cython, name) == getattr(pure, name), name
    for module in (cython, pure):
        assert (module.OK, module.TOO_SHORT, module.AUTH) == (0, 1, 2)
        assert (module.REPLAY, module.COUNTER_LIMIT, module.EXPIRED) == (3, 4, 5)
        assert module.REASONS == ("ok", "too_short", "auth", "replay", "counter_limit", "expired")
        assert module.HEADROOM == 16 and module.TAG_SIZE == 16
        assert module.REJECT_AFTER_MESSAGES == REJECT
        assert module.WINDOW_SIZE == WINDOW


def test_seal_matches_independent_reference(backend: ModuleType) -> None:
    rng = random.Random(1)
    payloads = [rng.randbytes(size) for size in range(1501)]
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    bufs = [packet(p) for p in payloads]
    lengths = [len(p) for p in payloads]
    assert cipher.seal_batch(bufs, lengths, MTU) == len(payloads)
    assert cipher.send_counter == len(payloads)
    for counter, (payload, buf, length) in enumerate(zip(payloads, bufs, lengths, strict=True)):
        expected = reference_seal(KEY_A, INDEX, counter, payload, MTU)
        assert length == len(expected) == 32 + expected_padded(len(payload), MTU)
        assert bytes(buf[:length]) == expected, len(payload)


@pytest.mark.parametrize("opener_name", ["cython", "pure"])
def test_roundtrip_across_implementations(backend: ModuleType, opener_name: str) -> None:
    sender, receiver = pair(backend, load(opener_name))
    rng = random.Random(2)
    payloads = [rng.randbytes(size) for size in range(1501)]
    bufs = [packet(p) for p in payloads]
    lengths = [len(p) for p in payloads]
    assert sender.seal_batch(bufs, lengths, MTU) == len(payloads)
    results = [-1] * len(bufs)
    assert receiver.open_batch(bufs, lengths, results) == len(payloads)
    assert results == [0] * len(payloads)
    for payload, buf, length in zip(payloads, bufs, lengths, strict=True):
        assert length == expected_padded(len(payload), MTU)
        assert bytes(buf[16 : 16 + len(payload)]) == payload
        assert bytes(buf[16 + len(payload) : 16 + length]) == bytes(length - len(payload))


@pytest.mark.parametrize(
    ("size", "mtu", "padded"),
    [
        (0, 1420, 0),
        (1, 1420, 16),
        (15, 1420, 16),
        (16, 1420, 16),
        (17, 1420, 32),
        (1408, 1420, 1408),
        (1409, 1420, 1420),  # rounding up would pass the MTU: stop at it
        (1419, 1420, 1420),
        (1420, 1420, 1420),
        (1421, 1420, 1421),  # already past the MTU: no padding at all
        (1500, 1420, 1500),
        (0, 0, 0),
        (5, 0, 5),
        (9, 10, 10),
        (10, 10, 10),
        (33, 40, 40),
    ],
)
def test_padding_rule_and_exact_capacity(backend: ModuleType, size: int, mtu: int, padded: int) -> None:
    assert backend.padded_length(size, mtu) == padded
    payload = os.urandom(size)
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    buf = packet(payload, capacity=16 + padded + 16)
    lengths = [size]
    assert cipher.seal_batch([buf], lengths, mtu) == 1
    assert lengths == [16 + padded + 16]
    assert bytes(buf) == reference_seal(KEY_A, INDEX, 0, payload, mtu)


def test_header_bytes_exact_and_counters_advance(backend: ModuleType) -> None:
    start = 2**40 + 5
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX, send_counter=start)
    for batch in range(3):
        bufs = [packet(b"x" * i) for i in range(4)]
        lengths = [0, 1, 2, 3]
        assert cipher.seal_batch(bufs, lengths, MTU) == 4
        for i, buf in enumerate(bufs):
            counter = start + 4 * batch + i
            assert bytes(buf[:16]) == struct.pack("<IIQ", 4, INDEX, counter)
            assert bytes(buf[:16]) == b"\x04\x00\x00\x00\xd4\xc3\xb2\xa1" + counter.to_bytes(8, "little")
            assert cipher.counter_of(buf) == counter
    assert cipher.send_counter == start + 12
    assert cipher.remote_index == INDEX
    with pytest.raises(ValueError):
        cipher.counter_of(bytearray(15))


def test_keepalive_is_32_bytes(backend: ModuleType) -> None:
    sender, receiver = pair(backend, backend)
    bufs, lengths = [bytearray(32)], [0]
    assert sender.seal_batch(bufs, lengths, MTU) == 1
    assert lengths == [32]
    results = [-1]
    assert receiver.open_batch(bufs, lengths, results) == 1
    assert (results, lengths) == ([0], [0])


def test_buffer_too_small_raises_before_touching_the_batch(backend: ModuleType) -> None:
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    good = packet(b"a" * 20)
    bad = packet(b"b" * 20, capacity=16 + 32 + 16 - 1)  # 20 pads to 32: one byte short
    bufs, lengths = [good, bad], [20, 20]
    before = [bytes(good), bytes(bad)]
    with pytest.raises(ValueError):
        cipher.seal_batch(bufs, lengths, MTU)
    assert [bytes(good), bytes(bad)] == before
    assert lengths == [20, 20]
    assert cipher.send_counter == 0
    # The length itself may not overrun the buffer either, nor be negative.
    for length in (-1, len(good) - 15):
        with pytest.raises(ValueError):
            cipher.seal_batch([bytearray(good)], [length], MTU)
    assert cipher.send_counter == 0
    # With the missing byte the same batch seals.
    bufs[1] = packet(b"b" * 20, capacity=16 + 32 + 16)
    assert cipher.seal_batch(bufs, lengths, MTU) == 2
    assert lengths == [64, 64]


def test_bad_arguments(backend: ModuleType) -> None:
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    with pytest.raises(ValueError):
        backend.TransportCipher(KEY_A[:31], KEY_B, INDEX)
    with pytest.raises(ValueError):
        backend.TransportCipher(KEY_A, KEY_B + b"x", INDEX)
    for index in (-1, 2**32):
        with pytest.raises(ValueError):
            backend.TransportCipher(KEY_A, KEY_B, index)
    with pytest.raises(ValueError):
        backend.TransportCipher(KEY_A, KEY_B, INDEX, send_counter=REJECT + 1)
    with pytest.raises(ValueError):
        cipher.seal_batch([packet(b"")], [], MTU)
    with pytest.raises(ValueError):
        cipher.seal_batch([packet(b"")], [0], -1)
    with pytest.raises(ValueError):
        cipher.open_batch([bytearray(32)], [32], [])
    with pytest.raises(ValueError):
        cipher.open_batch([bytearray(32)], [33], [-1])
    with pytest.raises(BufferError):  # read-only: both twins say BufferError
        cipher.seal_batch([bytes(64)], [0], MTU)
    with pytest.raises(BufferError):
        cipher.open_batch([bytes(64)], [32], [0])
    assert cipher.send_counter == 0
    assert cipher.seal_batch([], [], MTU) == 0
    assert cipher.open_batch([], [], []) == 0


@pytest.mark.parametrize("case", [
    "key-int", "key-list", "key-str", "index-float", "index-none", "counter-float",
    "seal-tuple-bufs", "seal-tuple-lengths", "open-tuple-bufs", "open-tuple-results", "seal-none",
    "padded-float", "replay-float", "counter-of-int",
])
def test_bad_argument_types_are_type_errors_in_both_twins(backend: ModuleType, case: str) -> None:
    """Same API, same errors. Before: the Cython twin made a key of 32 zero bytes out of the int
    32 (``bytes(32)``) and truncated float counters; the pure twin took tuples for the batch lists
    and keys given as lists of ints."""
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    calls: dict[str, Any] = {
        "key-int": lambda: backend.TransportCipher(32, KEY_B, INDEX),
        "key-list": lambda: backend.TransportCipher(list(KEY_A), KEY_B, INDEX),
        "key-str": lambda: backend.TransportCipher("k" * 32, KEY_B, INDEX),
        "index-float": lambda: backend.TransportCipher(KEY_A, KEY_B, 1.5),
        "index-none": lambda: backend.TransportCipher(KEY_A, KEY_B, None),
        "counter-float": lambda: backend.TransportCipher(KEY_A, KEY_B, INDEX, send_counter=1.0),
        "seal-tuple-bufs": lambda: cipher.seal_batch((packet(b"x"),), [1], MTU),
        "seal-tuple-lengths": lambda: cipher.seal_batch([packet(b"x")], (1,), MTU),
        "open-tuple-bufs": lambda: cipher.open_batch((bytearray(64),), [64], [0]),
        "open-tuple-results": lambda: cipher.open_batch([bytearray(64)], [64], (0,)),
        "seal-none": lambda: cipher.seal_batch(None, [1], MTU),
        "padded-float": lambda: backend.padded_length(1.5, MTU),
        "replay-float": lambda: backend.ReplayFilter().validate(1.0),
        "counter-of-int": lambda: cipher.counter_of(16),
    }
    with pytest.raises(TypeError):
        calls[case]()
    assert cipher.send_counter == 0


def test_bytes_like_keys_are_taken(backend: ModuleType) -> None:
    """The other side of the rule above: any bytes-like key of 32 bytes works, the same key."""
    reference = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    for send, receive in ((bytearray(KEY_A), memoryview(KEY_B)), (memoryview(bytearray(KEY_A)), bytearray(KEY_B))):
        cipher = backend.TransportCipher(send, receive, INDEX)
        bufs = [packet(b"same"), packet(b"same")]
        lengths = [4, 4]
        assert cipher.seal_batch(bufs[:1], lengths[:1], MTU) == reference.seal_batch(bufs[1:], lengths[1:], MTU) == 1
        assert bufs[0] == bufs[1]
        reference = backend.TransportCipher(KEY_A, KEY_B, INDEX)


@pytest.mark.parametrize("where", ["tag", "ciphertext", "counter", "truncated", "extended"])
def test_tampering_is_auth_and_does_not_burn_the_counter(backend: ModuleType, where: str) -> None:
    _, receiver = pair(backend, backend)
    message = sealed(backend, 77, b"hello, tunnel" * 5)
    forged = bytearray(message)
    if where == "tag":
        forged[-1] ^= 0x01
    elif where == "ciphertext":
        forged[20] ^= 0x80
    elif where == "counter":
        forged[8] ^= 0x02
    elif where == "truncated":
        forged = forged[:-1]
    else:
        forged += b"\x00"
    assert open_one(receiver, forged)[0] == backend.AUTH
    status, plain = open_one(receiver, message)
    assert (status, plain[:65]) == (backend.OK, b"hello, tunnel" * 5)


def test_replayed_packet_is_rejected(backend: ModuleType) -> None:
    _, receiver = pair(backend, backend)
    message = sealed(backend, 5, b"once")
    assert open_one(receiver, message)[0] == backend.OK
    assert open_one(receiver, message)[0] == backend.REPLAY
    # Twice within one batch: the first copy wins.
    other = sealed(backend, 6, b"twice")
    bufs = [bytearray(other), bytearray(other)]
    lengths, results = [len(other)] * 2, [-1, -1]
    assert receiver.open_batch(bufs, lengths, results) == 1
    assert results == [backend.OK, backend.REPLAY]
    assert lengths == [16, len(other)]  # a rejected packet keeps its length


def test_reordered_within_window_accepted_once(backend: ModuleType) -> None:
    sender, receiver = pair(backend, backend)
    bufs = [packet(bytes([i]) * i) for i in range(64)]
    lengths = list(range(64))
    assert sender.seal_batch(bufs, lengths, MTU) == 64
    messages = [bytes(b[:n]) for b, n in zip(bufs, lengths, strict=True)]
    order = list(range(64))
    random.Random(3).shuffle(order)
    shuffled = [bytearray(messages[i]) for i in order]
    results = [-1] * 64
    sizes = [len(messages[i]) for i in order]
    assert receiver.open_batch(shuffled, sizes, results) == 64
    for position, i in enumerate(order):
        assert bytes(shuffled[position][16 : 16 + i]) == bytes([i]) * i
    again = [bytearray(m) for m in messages]
    results = [-1] * 64
    assert receiver.open_batch(again, [len(m) for m in messages], results) == 0
    assert results == [backend.REPLAY] * 64


def test_older_than_window_is_replay(backend: ModuleType) -> None:
    _, receiver = pair(backend, backend)
    top = 9000
    assert open_one(receiver, sealed(backend, top, b"top"))[0] == backend.OK
    assert open_one(receiver, sealed(backend, top - WINDOW, b"edge"))[0] == backend.OK
    assert open_one(receiver, sealed(backend, top - WINDOW - 1, b"old"))[0] == backend.REPLAY
    assert open_one(receiver, sealed(backend, 0, b"ancient"))[0] == backend.REPLAY
    assert open_one(receiver, sealed(backend, top - 1, b"late"))[0] == backend.OK


def test_send_counter_limit(backend: ModuleType) -> None:
    sender, receiver = pair(backend, backend, send_counter=REJECT - 2)
    bufs = [packet(b"p" * 10) for _ in range(4)]
    lengths = [10] * 4
    untouched = [bytes(b) for b in bufs[2:]]
    assert sender.seal_batch(bufs, lengths, MTU) == 2
    assert lengths == [48, 48, 10, 10]
    assert [bytes(b) for b in bufs[2:]] == untouched
    assert sender.send_counter == REJECT
    assert sender.seal_batch(bufs[2:], lengths[2:], MTU) == 0
    assert [bytes(b) for b in bufs[2:]] == untouched
    assert sender.counter_of(bufs[1]) == REJECT - 1
    results = [-1, -1]
    assert receiver.open_batch(bufs[:2], lengths[:2], results) == 2


def test_receive_counter_limit_checked_before_the_tag(backend: ModuleType) -> None:
    _, receiver = pair(backend, backend)
    for counter in (REJECT, REJECT + 1, 2**64 - 1):
        genuine = reference_seal(KEY_A, INDEX, counter, b"late", MTU)
        assert open_one(receiver, genuine)[0] == backend.COUNTER_LIMIT
        garbage = genuine[:16] + bytes(len(genuine) - 16)
        assert open_one(receiver, garbage)[0] == backend.COUNTER_LIMIT
    last = reference_seal(KEY_A, INDEX, REJECT - 1, b"last", MTU)
    assert open_one(receiver, last) == (backend.OK, b"last" + bytes(12))


def test_too_short(backend: ModuleType) -> None:
    _, receiver = pair(backend, backend)
    bufs = [bytearray(40) for _ in range(4)]
    lengths, results = [0, 1, 16, 31], [-1] * 4
    assert receiver.open_batch(bufs, lengths, results) == 0
    assert results == [backend.TOO_SHORT] * 4
    assert lengths == [0, 1, 16, 31]


def test_mixed_batch(backend: ModuleType) -> None:
    _, receiver = pair(backend, backend)
    good = sealed(backend, 10, b"good")
    forged = bytearray(sealed(backend, 11, b"bad"))
    forged[-3] ^= 0xFF
    limit = reference_seal(KEY_A, INDEX, REJECT, b"", MTU)
    messages = [good, bytearray(20), forged, good, limit, sealed(backend, 12, b"")]
    bufs = [bytearray(m) for m in messages]
    lengths, results = [len(m) for m in messages], [-1] * len(messages)
    assert receiver.open_batch(bufs, lengths, results) == 2
    assert [backend.REASONS[r] for r in results] == [
        "ok",
        "too_short",
        "auth",
        "replay",
        "counter_limit",
        "ok",
    ]
    assert lengths[0] == 16 and lengths[5] == 0


def test_zero(backend: ModuleType) -> None:
    sender, receiver = pair(backend, backend)
    message = sealed(backend, 0, b"before")
    assert not receiver.zeroed
    sender.zero()
    receiver.zero()
    receiver.zero()  # idempotent
    assert receiver.zeroed
    buf = packet(b"plain")
    before = bytes(buf)
    lengths = [5]
    assert sender.seal_batch([buf], lengths, MTU) == 0
    assert bytes(buf) == before and lengths == [5]
    assert sender.send_counter == 0
    bufs = [bytearray(message), bytearray(10)]
    results = [-1, -1]
    assert receiver.open_batch(bufs, [len(message), 10], results) == 0
    assert results == [backend.EXPIRED, backend.EXPIRED]


def test_batches_of_varying_size_reuse_scratch(backend: ModuleType) -> None:
    sender, receiver = pair(backend, backend)
    counter = 0
    for size in (3, 200, 1, 500, 0, 50):
        payloads = [os.urandom(i % 97) for i in range(size)]
        bufs = [packet(p) for p in payloads]
        lengths = [len(p) for p in payloads]
        assert sender.seal_batch(bufs, lengths, MTU) == size
        for buf, length, payload in zip(bufs, lengths, payloads, strict=True):
            assert bytes(buf[:length]) == reference_seal(KEY_A, INDEX, counter, payload, MTU)
            counter += 1
        results = [-1] * size
        assert receiver.open_batch(bufs, lengths, results) == size


@settings(max_examples=60, deadline=None)
@given(
    counters=st.lists(st.integers(0, 20000), min_size=1, max_size=40, unique=True),
    order=st.lists(st.integers(0, 39), max_size=120),
)
def test_open_sequence_agrees_across_backends(counters: list[int], order: list[int]) -> None:
    """Any arrival order, duplicates included: both receivers give the same verdicts."""
    pure, cython = load("pure"), load("cython")
    messages = [sealed(pure, c, c.to_bytes(3, "little")) for c in counters]
    arrivals = [messages[i % len(messages)] for i in order]
    verdicts = []
    for module in (pure, cython):
        receiver = module.TransportCipher(KEY_B, KEY_A, 1)
        bufs = [bytearray(m) for m in arrivals]
        lengths, results = [len(m) for m in arrivals], [-1] * len(arrivals)
        receiver.open_batch(bufs, lengths, results)
        verdicts.append(results)
    assert verdicts[0] == verdicts[1]
    # And both agree with the plain rule: first arrival accepted unless out of the window.
    seen: set[int] = set()
    highest = 0
    for message, verdict in zip(arrivals, verdicts[0], strict=True):
        counter = int.from_bytes(message[8:16], "little")
        fresh = counter not in seen and (counter > highest or highest - counter <= WINDOW)
        assert verdict == (0 if fresh else 3)
        if fresh:
            seen.add(counter)
            highest = max(highest, counter)


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    counter=st.integers(0, REJECT - 1),
    size=st.integers(0, 200),
    flip=st.integers(8 * 8, 8 * (16 + 208 + 16) - 1),
)
def test_small_and_large_messages_against_the_reference(key: bytes, counter: int, size: int, flip: int) -> None:
    """Around the size where the Cython cipher switches from its scalar small-message code to
    OpenSSL (128 bytes), with any key and counter: the seal is the reference's, the opener of
    either implementation accepts it, and any flipped bit past the receiver index is refused."""
    payload = random.Random(counter ^ size).randbytes(size)
    cython, pure = load("cython"), load("pure")
    bufs, lengths = [packet(payload)], [size]
    assert cython.TransportCipher(key, KEY_B, INDEX, send_counter=counter).seal_batch(bufs, lengths, MTU) == 1
    message = bytes(bufs[0][: lengths[0]])
    assert message == reference_seal(key, INDEX, counter, payload, MTU)
    for module in (cython, pure):
        status, plain = open_one(module.TransportCipher(KEY_B, key, 1), message)
        assert (status, plain[:size]) == (module.OK, payload)
        if flip < 8 * len(message):
            forged = bytearray(message)
            forged[flip // 8] ^= 1 << (flip % 8)
            limit = int.from_bytes(forged[8:16], "little") >= REJECT  # checked before the tag
            expected = module.COUNTER_LIMIT if limit else module.AUTH
            assert open_one(module.TransportCipher(KEY_B, key, 1), forged)[0] == expected


# --- RFC 8439 vectors and OpenSSL on random small inputs (the hand-written small-message code) ---

RFC8439_282_PLAINTEXT = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
                         b"future, sunscreen would be it.")
RFC8439_282_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC8439_282_KEY = bytes.fromhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
RFC8439_282_NONCE = bytes.fromhex("070000004041424344454647")
RFC8439_282_CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116")
RFC8439_282_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")

# Section 2.4.2: ChaCha20 from block counter 1, nonce 00000000 0000004a 00000000: the same
# keystream WireGuard's AEAD uses for counter 0x4a000000 (nonce = 4 zero bytes || counter LE).
RFC8439_242_KEY = bytes(range(32))
RFC8439_242_COUNTER = int.from_bytes(bytes.fromhex("0000004a00000000"), "little")
RFC8439_242_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d")


def test_rfc8439_aead_vector_section_2_8_2(backend: ModuleType) -> None:
    """The RFC's AEAD example, byte for byte, through the one-shot AEAD of each twin (in the
    Cython module: the hand-written code the transport uses for small messages)."""
    sealed_bytes = backend.aead_seal(RFC8439_282_KEY, RFC8439_282_NONCE, RFC8439_282_PLAINTEXT, RFC8439_282_AAD)
    assert sealed_bytes == RFC8439_282_CIPHERTEXT + RFC8439_282_TAG
    assert backend.aead_open(RFC8439_282_KEY, RFC8439_282_NONCE, sealed_bytes, RFC8439_282_AAD) == RFC8439_282_PLAINTEXT
    for i in range(len(sealed_bytes)):  # any flipped byte, of the ciphertext or the tag: refused
        forged = bytearray(sealed_bytes)
        forged[i] ^= 0x80
        assert backend.aead_open(RFC8439_282_KEY, RFC8439_282_NONCE, bytes(forged), RFC8439_282_AAD) is None
    assert backend.aead_open(RFC8439_282_KEY, RFC8439_282_NONCE, sealed_bytes, RFC8439_282_AAD[:-1]) is None
    assert backend.aead_open(RFC8439_282_KEY, bytes(12), sealed_bytes, RFC8439_282_AAD) is None
    assert backend.aead_open(RFC8439_282_KEY, RFC8439_282_NONCE, sealed_bytes[:15], RFC8439_282_AAD) is None


def test_aead_bad_arguments(backend: ModuleType) -> None:
    with pytest.raises(ValueError):
        backend.aead_seal(bytes(31), bytes(12), b"x")
    with pytest.raises(ValueError):
        backend.aead_seal(bytes(32), bytes(8), b"x")
    with pytest.raises(ValueError):
        backend.aead_open(bytes(32), bytes(13), bytes(16))
    with pytest.raises(TypeError):
        backend.aead_seal(bytes(32), bytes(12), "text")


def test_rfc8439_keystream_section_2_4_2_through_the_transport(backend: ModuleType) -> None:
    """The transport's small-message seal (114 bytes, padded to 128) encrypts with the RFC's
    ChaCha20 keystream; its tag is OpenSSL's over the padded message."""
    cipher = backend.TransportCipher(RFC8439_242_KEY, KEY_B, INDEX, send_counter=RFC8439_242_COUNTER)
    bufs, lengths = [packet(RFC8439_282_PLAINTEXT)], [len(RFC8439_282_PLAINTEXT)]
    assert cipher.seal_batch(bufs, lengths, MTU) == 1
    assert lengths[0] == 16 + 128 + 16
    message = bytes(bufs[0][: lengths[0]])
    assert message[16 : 16 + 114] == RFC8439_242_CIPHERTEXT
    assert message == reference_seal(RFC8439_242_KEY, INDEX, RFC8439_242_COUNTER, RFC8439_282_PLAINTEXT, MTU)


def test_small_messages_against_openssl_random(backend: ModuleType) -> None:
    """Random keys, nonces, additional data and messages of 0..128 bytes: the one-shot AEAD and
    the transport's batch seal/open agree with OpenSSL (``cryptography``) byte for byte, and a
    flipped bit is refused."""
    rng = random.Random(8439)
    for size in range(129):
        for _ in range(3):
            key, nonce = rng.randbytes(32), rng.randbytes(12)
            ad, payload = rng.randbytes(rng.randrange(0, 40)), rng.randbytes(size)
            expected = ChaCha20Poly1305(key).encrypt(nonce, payload, ad)
            assert backend.aead_seal(key, nonce, payload, ad) == expected
            assert backend.aead_open(key, nonce, expected, ad) == payload
            forged = bytearray(expected)
            bit = rng.randrange(8 * len(forged))
            forged[bit // 8] ^= 1 << (bit % 8)
            assert backend.aead_open(key, nonce, bytes(forged), ad) is None
            # The transport: WireGuard's nonce, no additional data, padding to 16 (<= 128 here).
            counter = rng.randrange(REJECT)
            cipher = backend.TransportCipher(key, KEY_B, INDEX, send_counter=counter)
            bufs, lengths = [packet(payload)], [size]
            assert cipher.seal_batch(bufs, lengths, MTU) == 1
            message = bytes(bufs[0][: lengths[0]])
            assert message == reference_seal(key, INDEX, counter, payload, MTU)
            status, plain = open_one(backend.TransportCipher(KEY_B, key, 1), message)
            assert (status, plain[:size]) == (backend.OK, payload)
            forged = bytearray(message)
            bit = rng.randrange(8 * 16, 8 * len(forged))  # past the counter: ciphertext or tag
            forged[bit // 8] ^= 1 << (bit % 8)
            assert open_one(backend.TransportCipher(KEY_B, key, 1), bytes(forged))[0] == backend.AUTH


def test_native_lengths_are_kept_ints_without_leaks() -> None:
    """The native twin writes each length as the module's kept int of that value
    (include/wgpy_ints.h): a batch that alternates plaintext and datagram lengths in its slots
    makes no new int per packet, and no reference leaks per call."""
    if os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    import sys

    native = load("cython")
    sender, receiver = pair(native, native)
    bufs = [packet(bytes(1400)) for _ in range(8)]  # lengths above CPython's small ints
    lengths = [1400] * 8
    assert sender.seal_batch(bufs, lengths, MTU) == 8
    first = lengths[0]
    assert all(value is first for value in lengths)  # one object for the batch, not one per packet
    before = sys.getrefcount(first)
    for _ in range(200):
        lengths[:] = [int(str(1400))] * 8  # fresh int objects of the plaintext length each time
        assert sender.seal_batch(bufs, lengths, MTU) == 8
    assert lengths[0] is first  # the same object every call
    assert sys.getrefcount(first) == before  # 8 held by the list as before, nothing leaked
    results = [-1] * 8
    assert receiver.open_batch(bufs, lengths, results) == 8
    opened = lengths[0]
    assert opened == expected_padded(1400, MTU) and all(value is opened for value in lengths)
    assert sys.getrefcount(first) == before - 8  # the list let go of the datagram lengths
