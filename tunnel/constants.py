"""Protocol constants of WireGuard (identical in the kernel and wireguard-go), then ours.

Spec values first: changing one of those breaks interoperability. Implementation values after.
"""

from __future__ import annotations

# --- Protocol (whitepaper section 6 and the reference implementations) ---
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TRANSPORT_TAG_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + TRANSPORT_TAG_SIZE  # a keepalive
PADDING_MULTIPLE = 16

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.334
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most one consumed initiation per peer per 20 ms
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18 retries, then give up
# Initiators refresh a keypair on receive once it is this old (180 - 10 - 5 = 165 s).
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME  # 540 s after the last handshake

# --- Implementation (ours, free to tune) ---
# wireguard-go's handshake queue is 1024 deep and counts as "under load" at 1/8 full. A sans-I/O
# engine has no queue, so it counts handshake messages received over the last second instead.
UNDER_LOAD_HANDSHAKES_PER_SECOND = 1024 // 8
UNDER_LOAD_HOLD = 1.0
MAX_STAGED_PACKETS = 128  # per peer, waiting for a handshake (wireguard-go: QueueStagedSize)
DEFAULT_MTU = 1420
