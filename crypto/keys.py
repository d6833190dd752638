"""Keys in the forms wg(8) uses: 44-character base64 (configuration, CLI) and 64 hex (UAPI)."""

from __future__ import annotations

import base64
import os

from crypto.primitives import KEY_SIZE, dh_generate, dh_public


class KeyError_(ValueError):
    """A key string is not a valid 32-byte key in the expected encoding."""


def from_base64(text: str) -> bytes:
    """Parse a wg base64 key: exactly 44 characters ending in '=', decoding to 32 bytes."""
    text = text.strip()
    if len(text) != 44 or text[43] != "=" or text[42] not in "AEIMQUYcgkosw048":
        raise KeyError_("Key is not the correct length or format")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character (a plain ValueError)
        raise KeyError_("Key is not the correct length or format") from None
    if len(raw) != KEY_SIZE:
        raise KeyError_("Key is not the correct length or format")
    return raw


def to_base64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def from_hex(text: str) -> bytes:
    """Parse a UAPI hex key: exactly 64 hexadecimal characters."""
    if len(text) != 2 * KEY_SIZE:
        raise KeyError_("hex key must be 64 characters")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeyError_("hex key has a non-hex character") from None


def to_hex(key: bytes) -> str:
    return key.hex()


def generate_private(random32: bytes | None = None) -> bytes:
    """A new clamped Curve25519 private key (from os.urandom unless bytes are given)."""
    return dh_generate(random32 if random32 is not None else os.urandom(KEY_SIZE))


def generate_preshared(random32: bytes | None = None) -> bytes:
    return random32 if random32 is not None else os.urandom(KEY_SIZE)


def public_from_private(private: bytes) -> bytes:
    return dh_public(private)
