"""WireGuard's primitives: HASH, MAC, HMAC, KDF1..3 over BLAKE2s; AEAD, XAEAD; X25519.

Names follow the whitepaper (section 5.4). All functions are pure and take bytes.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

KEY_SIZE = 32
HASH_SIZE = 32
MAC_SIZE = 16
TAG_SIZE = 16
XNONCE_SIZE = 24


class DecryptError(Exception):
    """An AEAD tag did not verify (a forged, corrupted or wrongly keyed message)."""


class DHError(Exception):
    """X25519 produced the all-zero shared secret (a low-order public key)."""


def hash_(*parts: bytes) -> bytes:
    """HASH(input): BLAKE2s-256 over the concatenation of the parts."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, input): keyed BLAKE2s with a 16-byte output."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC(key, input): HMAC over BLAKE2s-256 (block size 64)."""
    return _hmac.new(key, data, hashlib.blake2s).digest()


def kdf(n: int, key: bytes, data: bytes) -> tuple[bytes, ...]:
    """KDFn(key, input): HKDF over HMAC-BLAKE2s, returning n 32-byte outputs (n in 1..3)."""
    prk = hmac(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac(prk, prev + bytes([i]))
        out.append(prev)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    return kdf(1, key, data)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = kdf(2, key, data)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = kdf(3, key, data)
    return a, b, c


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plain, ad): ChaCha20-Poly1305 with a 64-bit little-endian counter nonce."""
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of aead_encrypt; raises DecryptError when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise DecryptError("aead tag mismatch") from None


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD(key, nonce, plain, ad): XChaCha20-Poly1305 with a 24-byte nonce."""
    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
    except CryptoError:
        raise DecryptError("xaead tag mismatch") from None


def dh_generate(random32: bytes) -> bytes:
    """A Curve25519 private key from 32 random bytes (clamping happens inside X25519)."""
    if len(random32) != KEY_SIZE:
        raise ValueError("a private key is 32 bytes")
    # Clamp like `wg genkey` so the stored form matches what wg prints.
    k = bytearray(random32)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    return bytes(k)


def dh_public(private: bytes) -> bytes:
    """DH-Pubkey(private)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def dh(private: bytes, public: bytes) -> bytes:
    """DH(private, public); raises DHError on an all-zero result (low-order point)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError:
        raise DHError("low-order public key") from None
    if shared == bytes(32):
        raise DHError("all-zero shared secret")
    return shared
