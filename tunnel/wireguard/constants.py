"""Protocol constants of WireGuard (identical in the kernel and wireguard-go), then ours.

Spec values first: changing one of those breaks interoperability. Implementation values after.
"""

from __future__ import annotations

from crypto.constants import CONSTRUCTION as CONSTRUCTION

# --- Protocol (whitepaper section 6 and the reference implementations) ---
# The handshake's values (construction, labels, handshake message types and sizes, the cookie
# secret's lifetime) are defined in crypto/constants.py, which the handshake code uses; they are
# re-exported here so that this page lists every spec value.
from crypto.constants import COOKIE_REFRESH_TIME as COOKIE_REFRESH_TIME
from crypto.constants import COOKIE_REPLY_SIZE as COOKIE_REPLY_SIZE
from crypto.constants import IDENTIFIER as IDENTIFIER
from crypto.constants import INITIATION_SIZE as INITIATION_SIZE
from crypto.constants import LABEL_COOKIE as LABEL_COOKIE
from crypto.constants import LABEL_MAC1 as LABEL_MAC1
from crypto.constants import MESSAGE_COOKIE_REPLY as MESSAGE_COOKIE_REPLY
from crypto.constants import MESSAGE_INITIATION as MESSAGE_INITIATION
from crypto.constants import MESSAGE_RESPONSE as MESSAGE_RESPONSE
from crypto.constants import RESPONSE_SIZE as RESPONSE_SIZE

MESSAGE_TRANSPORT = 4
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
