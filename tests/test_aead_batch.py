"""The batch ChaCha20-Poly1305 of crypto/_chacha_batch.h, against the `cryptography` package.

The Cython transport seals and opens a whole batch (of at least 3 messages) with SIMD lanes
across packets when the CPU allows, else one packet at a time through OpenSSL EVP (and the
scalar code of _chacha_small.h for small messages). Each test forces each path in turn with the
private switch ``_set_batch_impl`` ("evp", "avx512": ChaCha20 in 16 lanes, "avx2": 8 lanes;
both use AVX-512 IFMA for Poly1305) and checks it against an independent implementation, so
that a wrong lane, counter, tail mask or limb shows up as a byte difference. The pure twin has
the same hooks and must give the same results where the API is shared.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from types import ModuleType

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.backend import load

IMPLS = ("evp", "avx512", "avx2")
INDEX = 0x01020304


@pytest.fixture(params=IMPLS)
def native(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The Cython transport module with the batch AEAD ``request.param`` in use."""
    module = load("cython")
    name = str(request.param)
    try:
        previous = module._set_batch_impl(name)
    except ValueError as error:  # a CPU without AVX-512 IFMA: stated, not silent
        pytest.skip(f"{name}: {error}")
    assert module._batch_impl() == name
    try:
        yield module
    finally:
        module._set_batch_impl(previous)


def wg_nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "little")


def buffers(payloads: list[bytes]) -> list[bytearray]:
    out = []
    for payload in payloads:
        buf = bytearray(16 + len(payload) + 16)
        buf[16 : 16 + len(payload)] = payload
        out.append(buf)
    return out


def seal_and_check(module: ModuleType, key: bytes, start: int, payloads: list[bytes]) -> list[bytearray]:
    """Seal ``payloads`` as one batch (mtu 0: no padding, so every byte length is exercised)
    and compare every message with `cryptography`'s."""
    cipher = module.TransportCipher(key, bytes(32), INDEX, send_counter=start)
    bufs = buffers(payloads)
    lengths = [len(p) for p in payloads]
    assert cipher.seal_batch(bufs, lengths, 0) == len(payloads)
    aead = ChaCha20Poly1305(key)
    for i, payload in enumerate(payloads):
        counter = start + i
        header = (4).to_bytes(4, "little") + INDEX.to_bytes(4, "little") + counter.to_bytes(8, "little")
        expected = header + aead.encrypt(wg_nonce(counter), payload, None)
        assert lengths[i] == len(expected)
        assert bytes(bufs[i]) == expected, (i, len(payload))
    return bufs


def open_all(module: ModuleType, key: bytes, bufs: list[bytearray]) -> tuple[int, list[int], list[int]]:
    cipher = module.TransportCipher(bytes(32), key, 1)
    lengths = [len(b) for b in bufs]
    results = [-1] * len(bufs)
    accepted = cipher.open_batch(bufs, lengths, results)
    return accepted, results, lengths


def test_every_length_0_to_1500_in_mixed_batches(native: ModuleType) -> None:
    rng = random.Random(17)
    sizes = list(range(1501))
    rng.shuffle(sizes)  # neighbours in a batch (and in the SIMD lanes) have unrelated lengths
    key = rng.randbytes(32)
    start = rng.randrange(2**62)
    at = 0
    while at < len(sizes):
        count = rng.choice((3, 7, 16, 33, 64, 65, 150))
        chunk = sizes[at : at + count]
        payloads = [rng.randbytes(size) for size in chunk]
        bufs = seal_and_check(native, key, start + at, payloads)
        accepted, results, lengths = open_all(native, key, bufs)
        assert results == [0] * len(chunk) and accepted == len(chunk)
        for buf, length, payload in zip(bufs, lengths, payloads, strict=True):
            assert length == len(payload)
            assert bytes(buf[16 : 16 + length]) == payload
        at += count


@pytest.mark.parametrize("count", [1, 2, 3, 4, 8, 9, 15, 16, 17, 63, 64, 65, 129])
def test_batch_sizes_and_random_counters(native: ModuleType, count: int) -> None:
    rng = random.Random(count)
    key = rng.randbytes(32)
    # counters around the 32-bit boundary (the two nonce words of a lane) and high up
    for start in (0, 2**32 - count // 2 - 1, rng.randrange(2**63)):
        payloads = [rng.randbytes(rng.choice((0, 1, 16, 64, 65, 1424, rng.randrange(1500)))) for _ in range(count)]
        bufs = seal_and_check(native, key, start, payloads)
        accepted, results, _ = open_all(native, key, bufs)
        assert accepted == count and results == [0] * count


def test_large_messages(native: ModuleType) -> None:
    rng = random.Random(3)
    key = rng.randbytes(32)
    sizes = [4095, 4096, 9000, 16383, 65535 - 32, 1, 65535 - 48]
    payloads = [rng.randbytes(size) for size in sizes]
    bufs = seal_and_check(native, key, 2**33, payloads)
    accepted, results, lengths = open_all(native, key, bufs)
    assert accepted == len(sizes) and results == [0] * len(sizes)
    assert [bytes(b[16 : 16 + n]) for b, n in zip(bufs, lengths, strict=True)] == payloads


def test_flipped_bits_are_rejected_and_not_decrypted(native: ModuleType) -> None:
    rng = random.Random(4)
    key = rng.randbytes(32)
    payloads = [rng.randbytes(rng.randrange(1, 1500)) for _ in range(48)]
    bufs = seal_and_check(native, key, 1000, payloads)
    tampered = {}
    for i in range(0, 48, 3):
        buf = bufs[i]
        # a bit of the ciphertext (any byte) or of the tag, by turns
        where = rng.randrange(16, len(buf) - 16) if i % 2 else rng.randrange(len(buf) - 16, len(buf))
        buf[where] ^= 1 << rng.randrange(8)
        tampered[i] = bytes(buf)
    accepted, results, lengths = open_all(native, key, bufs)
    assert accepted == 48 - len(tampered)
    for i, payload in enumerate(payloads):
        if i in tampered:
            assert results[i] == 2  # AUTH
            if native._batch_impl() != "evp":  # the batch path verifies before it decrypts
                assert bytes(bufs[i]) == tampered[i]
        else:
            assert results[i] == 0
            assert bytes(bufs[i][16 : 16 + lengths[i]]) == payload


def test_open_codes_match_the_pure_twin(native: ModuleType) -> None:
    """Replays, reordering, forgeries, short and over-limit messages in one batch: the same
    codes, counts, lengths and plaintexts as the pure reference (cryptography per packet)."""
    pure = load("pure")
    rng = random.Random(5)
    key = rng.randbytes(32)
    payloads = [rng.randbytes(rng.randrange(0, 1400)) for _ in range(40)]
    sent = seal_and_check(native, key, 9000, payloads)
    wire = [bytes(b) for b in sent]
    batch = wire[5:25] + wire[10:15] + wire[30:] + [wire[3]] * 3
    forged = bytearray(wire[26])
    forged[-1] ^= 0x80
    short = wire[27][:31]
    over_limit = bytearray(wire[28])
    over_limit[8:16] = (2**64 - 2**13 - 1).to_bytes(8, "little")
    batch += [bytes(forged), short, bytes(over_limit), wire[0]]
    rng.shuffle(batch)
    outcomes = []
    for module in (native, pure):
        receiver = module.TransportCipher(bytes(32), key, 1)
        # an earlier batch moves the window first, so that old counters are refused as replays
        first = [bytearray(w) for w in wire[20:22]]
        receiver.open_batch(first, [len(b) for b in first], [-1, -1])
        bufs = [bytearray(m) for m in batch]
        lengths = [len(m) for m in batch]
        results = [-1] * len(batch)
        accepted = receiver.open_batch(bufs, lengths, results)
        plain = [bytes(b[16 : 16 + n]) if r == 0 else None for b, n, r in zip(bufs, lengths, results, strict=True)]
        opened = [n if r == 0 else None for n, r in zip(lengths, results, strict=True)]
        outcomes.append((accepted, results, opened, plain))
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0][1]) == {0, 1, 2, 3, 4}


# RFC 8439 section 2.8.2: AEAD_CHACHA20_POLY1305 with additional data and a 32-bit constant.
RFC_KEY = bytes(range(0x80, 0xA0))
RFC_NONCE = bytes.fromhex("070000004041424344454647")
RFC_AD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC_PLAIN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
             b"sunscreen would be it.")
RFC_CIPHER = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
    "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116")
RFC_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


def test_rfc8439_aead_vector_through_the_batch(native: ModuleType) -> None:
    items = [(RFC_NONCE, RFC_AD, RFC_PLAIN)] * 5  # five lanes at once
    assert native._aead_batch(RFC_KEY, items, True) == [RFC_CIPHER + RFC_TAG] * 5
    opened = native._aead_batch(RFC_KEY, [(RFC_NONCE, RFC_AD, RFC_CIPHER + RFC_TAG),
                                          (RFC_NONCE, RFC_AD[:-1], RFC_CIPHER + RFC_TAG),
                                          (RFC_NONCE, RFC_AD, RFC_CIPHER[:-1] + b"\x00" + RFC_TAG),
                                          (RFC_NONCE, RFC_AD, RFC_TAG[:15])], False)
    assert opened == [RFC_PLAIN, None, None, None]


def test_general_aead_against_cryptography(native: ModuleType) -> None:
    rng = random.Random(6)
    key = rng.randbytes(32)
    items = [(rng.randbytes(12), rng.randbytes(rng.choice((0, 1, 12, 16, 17, 40))), rng.randbytes(rng.randrange(300)))
             for _ in range(37)]
    sealed = native._aead_batch(key, items, True)
    aead = ChaCha20Poly1305(key)
    assert sealed == [aead.encrypt(nonce, data, ad) for nonce, ad, data in items]
    assert native._aead_batch(key, [(n, a, s) for (n, a, _), s in zip(items, sealed, strict=True)], False) == [
        d for _, _, d in items]
    assert load("pure")._aead_batch(key, items, True) == sealed


def test_pure_twin_has_the_same_hooks() -> None:
    pure = load("pure")
    assert pure._batch_impl() == "pure"
    for name in ("auto", *IMPLS):
        assert pure._set_batch_impl(name) == "pure"
    with pytest.raises(ValueError, match="unknown batch AEAD"):
        pure._set_batch_impl("sse2")
    native = load("cython")
    with pytest.raises(ValueError, match="unknown batch AEAD"):
        native._set_batch_impl("sse2")


def test_auto_picks_the_batch_code_where_the_cpu_has_it() -> None:
    native = load("cython")
    previous = native._set_batch_impl("auto")
    try:
        flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
        has = all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512ifma"))
        assert native._batch_impl() == ("avx512" if has else "evp")
    finally:
        native._set_batch_impl(previous)


def test_cryptography_rejects_what_we_reject() -> None:
    """The oracle itself: a flipped tag bit is refused by `cryptography` too."""
    key = bytes(32)
    sealed = bytearray(ChaCha20Poly1305(key).encrypt(wg_nonce(1), b"abc", None))
    sealed[-1] ^= 1
    with pytest.raises(InvalidTag):
        ChaCha20Poly1305(key).decrypt(wg_nonce(1), bytes(sealed), None)


def test_env_var_chooses_the_path_at_import() -> None:
    import subprocess
    import sys

    code = "import crypto._transport as t; print(t._batch_impl())"
    command = [sys.executable, "-c", code]
    env = {**os.environ, "WGPY_AEAD": "evp"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "evp", done.stderr
    env["WGPY_AEAD"] = "neon"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "WGPY_AEAD=neon" in done.stderr
