"""Type stub of the Cython handshake screen; behaviour is documented in crypto/screen.py."""

from collections.abc import Callable, Sequence
from typing import Any, Final

PASSED: Final[int]
PASSED_LOADED: Final[int]
INVALID_MAC1: Final[int]
COOKIE: Final[int]
MAC_SIZE: Final[int]
KEY_SIZE: Final[int]
NONCE_SIZE: Final[int]
REPLY_SIZE: Final[int]

def source_bytes(source: Any) -> bytes: ...
def screen_batch(
    mac1_key: bytes,
    cookie_key: bytes,
    secret: bytes,
    bufs: Sequence[bytes | bytearray | memoryview],
    lengths: Sequence[int],
    indices: Sequence[int],
    sources: Sequence[Any],
    load_after: int,
    random: Callable[[int], bytes],
    verdicts: bytearray,
    replies: list[tuple[bytes, Any]],
) -> tuple[list[int], int, int, int]: ...
