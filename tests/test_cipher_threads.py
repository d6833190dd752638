"""One TransportCipher shared by several threads (the WireGuard daemon's ``workers N``).

The security-critical property: no send counter (ChaCha20-Poly1305 nonce) is ever used twice
for one key, whichever thread seals. Every sealed message is parsed and opened here with the
independent ``cryptography`` package, so the checks do not trust the code under test. Both
twins (the Cython cipher releases the GIL while it seals, so its threads really overlap; the
pure twin's ``cryptography`` calls may switch threads between any two packets).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from crypto.backend import load

REJECT = 2**64 - 2**13 - 1
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
INDEX = 0x01020304
MTU = 1420
PAYLOAD = 1400
TIMEOUT = 60.0


@pytest.fixture(params=["cython/evp", "cython/avx512", "cython/avx2", "pure"])
def backend(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The transport under test (conftest's ``backend``, narrowed here): the Cython twin under
    each of its batch AEAD paths (batches here are 16-64 packets, so the SIMD code seals and
    opens them unless "evp"), and the pure twin, which has one path."""
    name, _, path = str(request.param).partition("/")
    if name == "cython" and os.environ.get("WGPY_PURE") == "1":
        pytest.skip("WGPY_PURE=1 disables the Cython backend")
    module = load(name)
    if not path:
        yield module
        return
    try:
        previous = module._set_batch_impl(path)
    except ValueError as error:  # a CPU without AVX-512 IFMA: stated, not silent
        pytest.skip(f"{path}: {error}")
    yield module
    module._set_batch_impl(previous)


def _batch(count: int, tag: int) -> tuple[list[bytearray], list[int]]:
    """``count`` buffers holding distinct payloads (tag, i) at HEADROOM, room to seal them."""
    bufs = []
    for i in range(count):
        buf = bytearray(16 + MTU + 32)
        buf[16:24] = struct.pack("<II", tag, i)
        bufs.append(buf)
    return bufs, [PAYLOAD] * count


def _run_threads(targets: list[Any]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"


def _seal_concurrently(cipher: Any, workers: int, rounds: int, batch: int) -> list[bytes]:
    """Each of ``workers`` threads seals ``rounds`` batches (all released together by a barrier
    per round); returns every sealed message."""
    barrier = threading.Barrier(workers, timeout=TIMEOUT)
    sealed: list[list[bytes]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for r in range(rounds):
                bufs, lengths = _batch(batch, w * 1_000_000 + r)
                barrier.wait()
                done = cipher.seal_batch(bufs, lengths, MTU)
                sealed[w].extend(bytes(bufs[i][: lengths[i]]) for i in range(done))
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    _run_threads([lambda w=w: work(w) for w in range(workers)])
    assert not errors, errors
    return [m for ms in sealed for m in ms]


def _reference_open(message: bytes) -> tuple[int, bytes]:
    """(counter, plaintext) of a type-4 message, opened with the independent library."""
    kind, index, counter = struct.unpack_from("<IIQ", message)
    assert (kind, index) == (4, INDEX)
    nonce = bytes(4) + message[8:16]
    try:
        plain = ChaCha20Poly1305(KEY_A).decrypt(nonce, message[16:], None)
    except InvalidTag:  # pragma: no cover - a failure of the code under test
        raise AssertionError(f"message with counter {counter} does not authenticate") from None
    return counter, plain


@pytest.mark.parametrize("workers", [2, 4])
def test_threads_sealing_one_keypair_never_share_a_counter(backend: ModuleType, workers: int) -> None:
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    rounds, batch = 40, 64
    messages = _seal_concurrently(cipher, workers, rounds, batch)
    total = workers * rounds * batch
    assert len(messages) == total
    opened = [_reference_open(m) for m in messages]
    counters = [c for c, _ in opened]
    assert len(set(counters)) == total, "a counter (nonce) was used twice"
    assert sorted(counters) == list(range(total))  # no gap either: nothing failed here
    assert cipher.send_counter == total
    # every payload sealed once, intact
    tags = {p[:8] for _, p in opened}
    assert len(tags) == total


def test_threads_stop_exactly_at_the_counter_limit(backend: ModuleType) -> None:
    start = REJECT - 100
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX, send_counter=start)
    messages = _seal_concurrently(cipher, 4, 5, 16)  # 320 asked, 100 available
    counters = sorted(_reference_open(m)[0] for m in messages)
    assert counters == list(range(start, REJECT))
    assert cipher.send_counter == REJECT
    bufs, lengths = _batch(1, 0)
    assert cipher.seal_batch(bufs, lengths, MTU) == 0


def _sealed_stream(backend: ModuleType, count: int) -> list[bytes]:
    sender = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    out: list[bytes] = []
    for start in range(0, count, 64):
        bufs, lengths = _batch(min(64, count - start), start)
        done = sender.seal_batch(bufs, lengths, MTU)
        out.extend(bytes(bufs[i][: lengths[i]]) for i in range(done))
    return out


def test_a_replay_is_refused_whichever_thread_opens_it(backend: ModuleType) -> None:
    """Two threads open the same datagrams with one receiving keypair at the same time: each
    counter is accepted exactly once in total."""
    messages = _sealed_stream(backend, 2048)
    receiver = backend.TransportCipher(KEY_B, KEY_A, 7)
    workers = 2
    barrier = threading.Barrier(workers, timeout=TIMEOUT)
    verdicts: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            for start in range(0, len(messages), 64):
                chunk = messages[start : start + 64]
                bufs = [bytearray(m) for m in chunk]
                lengths = [len(m) for m in chunk]
                results = [0] * len(chunk)
                barrier.wait()
                receiver.open_batch(bufs, lengths, results)
                verdicts[w].extend(results)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    _run_threads([lambda w=w: work(w) for w in range(workers)])
    assert not errors, errors
    ok, replay = backend.OK, backend.REPLAY
    for i in range(len(messages)):
        got = sorted(v[i] for v in verdicts)
        assert got == sorted([ok, replay]), f"datagram {i}: {got}"


def test_zero_while_another_thread_seals(backend: ModuleType) -> None:
    """zero() from another thread mid-traffic: no crash, no error; afterwards nothing is sealed
    and every datagram is EXPIRED; everything sealed before still authenticates."""
    cipher = backend.TransportCipher(KEY_A, KEY_B, INDEX)
    started = threading.Event()
    stop = threading.Event()
    sealed: list[bytes] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for r in range(10_000):
                if stop.is_set():
                    return
                bufs, lengths = _batch(64, r)
                done = cipher.seal_batch(bufs, lengths, MTU)
                sealed.extend(bytes(bufs[i][: lengths[i]]) for i in range(done))
                started.set()
                if done == 0:
                    return
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(TIMEOUT)
    cipher.zero()
    assert cipher.zeroed
    stop.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert not errors, errors
    bufs, lengths = _batch(4, 0)
    assert cipher.seal_batch(bufs, lengths, MTU) == 0
    results = [0] * 4
    assert cipher.open_batch(bufs, [64] * 4, results) == 0
    assert results == [backend.EXPIRED] * 4
    counters = [_reference_open(m)[0] for m in sealed]
    assert len(set(counters)) == len(counters)
