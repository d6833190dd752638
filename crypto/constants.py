"""The handshake's protocol constants (whitepaper section 5.4 and 6): changing one breaks interop.

The handshake and cookie code of this package uses them; ``tunnel/wireguard/constants.py``
re-exports them beside the rest of WireGuard's spec values. Nothing here imports ``tunnel``.
"""

from __future__ import annotations

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
COOKIE_REFRESH_TIME = 120.0
